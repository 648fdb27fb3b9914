"""Samples, image reading and the :class:`FERDataset` every loader returns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from capsnet_model.datasets.labels import EXPRESSIONS
from fer_images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ON_ERROR = ("raise", "skip")

OnError = Literal["raise", "skip"]
Box = tuple[int, int, int, int]  # x, y, width, height
ImageSize = int | tuple[int, int]  # side, or (height, width)


class DatasetError(ValueError):
    """Bad data set input (missing or unreadable file, bad row, empty split...)."""


@dataclass(frozen=True)
class FERSample:
    """One example: an image file or an in-memory array, a canonical label, an optional box.

    ``box`` is ``(x, y, width, height)`` in pixels, cropped out when the image is loaded.
    ``landmarks`` (68, 2), when known, are in the coordinates of the uncropped image.
    ``where`` names the origin (file, line) for error messages.
    """

    image: Path | np.ndarray
    label: int
    box: Box | None = None
    where: str = ""
    #: 68 (x, y) landmarks in the full image's pixel coordinates (AffectNet ships them).
    landmarks: np.ndarray | None = None


@dataclass(frozen=True)
class SkippedRow:
    """A row dropped under ``on_error="skip"``: where it came from (file, line) and why.

    ``reason`` reads ``"<category>: <detail>"``; the categories are ``missing image file``,
    ``bad image``, ``label out of range``, ``bad pixels``, ``bad face box``, ``bad landmarks``
    and ``bad row`` (unparsable, not UTF-8, or a CSV row with the wrong number of fields).
    """

    where: str
    reason: str


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """An in-memory ``uint8`` grey, RGB or RGBA array as ``H x W x 3`` RGB."""
    if image.dtype != np.uint8:
        raise DatasetError(f"expected an uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    raise DatasetError(f"unsupported image shape {image.shape}")


def read_image(path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into an ``uint8`` ``H x W x 3`` RGB array.

    Raises :class:`DatasetError` naming the file when it is missing, empty, not decodable, of
    an unsupported format, a JPEG / PNG cut short (no end-of-image marker / ``IEND`` chunk), or
    larger than ``max_pixels`` (default 40 MP, read from the header before decoding: see
    :mod:`fer_images`; ``None``: no limit).
    """
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        return read_rgb(path, max_pixels=max_pixels, require_complete=True)
    except ImageDecodeError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        if isinstance(exc, ImageTooLargeError):
            message = f"image too large ({detail}): {path}"
        elif detail.startswith("truncated"):
            message = f"{detail}: {path}"
        else:
            message = f"unreadable or corrupt image ({detail}): {path}"
        raise DatasetError(message) from exc


def _clip_box(shape: tuple[int, ...], box: Box) -> tuple[int, int, int, int] | None:
    """The box clipped to an image of ``shape``: (x0, y0, x1, y1), or None when nothing is left."""
    x, y, w, h = box
    height, width = shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _box_outside(shape: tuple[int, ...], box: Box) -> str:
    """The message for a box that :func:`_clip_box` leaves empty."""
    return f"face box {box} is empty or outside the {shape[1]}x{shape[0]} image"


def _crop_origin(image: np.ndarray, box: Box, where: str) -> tuple[int, int, int, int]:
    """The box clipped to the image: (x0, y0, x1, y1)."""
    clipped = _clip_box(image.shape, box)
    if clipped is None:
        raise DatasetError(f"{where}: {_box_outside(image.shape, box)}")
    return clipped


def _size_hw(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = (int(image_size[0]), int(image_size[1]))
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def _load_cropped(sample: FERSample) -> tuple[np.ndarray, tuple[int, int]]:
    """The sample's RGB image cropped to its box, and the crop's (x0, y0) in the full image."""
    if isinstance(sample.image, np.ndarray):
        image = _as_rgb(sample.image)
    else:
        try:
            image = read_image(sample.image)
        except DatasetError as exc:
            raise DatasetError(f"{sample.where}: {exc}" if sample.where else str(exc)) from exc
    origin = (0, 0)
    if sample.box is not None:
        x0, y0, x1, y1 = _crop_origin(image, sample.box, sample.where or str(sample.image))
        image, origin = image[y0:y1, x0:x1], (x0, y0)
    return np.ascontiguousarray(image), origin


def load_sample_image(sample: FERSample) -> np.ndarray:
    """The sample's RGB ``uint8`` image, cropped to its box (no resize, no transform)."""
    return _load_cropped(sample)[0]


class FERDataset(Dataset[tuple[Any, int]]):
    """Facial expression samples as ``(image, label)`` pairs in the canonical label order.

    ``image`` is an ``uint8`` ``H x W x 3`` RGB array, resized to ``image_size`` (``int`` or
    ``(height, width)``) when given, then passed through ``transform`` (any callable
    ``image -> image``, e.g. ``lambda im: albumentations_pipeline(image=im)["image"]``).
    """

    def __init__(
        self,
        samples: Sequence[FERSample],
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        image_size: ImageSize | None = None,
        name: str = "",
        split: str | None = None,
        skipped: Sequence[SkippedRow] = (),
        excluded: Counter[str] | None = None,
    ) -> None:
        self.samples: list[FERSample] = list(samples)
        self.transform = transform
        self.image_size = None if image_size is None else _size_hw(image_size)
        self.name = name
        self.split = split
        #: Rows dropped under ``on_error="skip"`` with the reason for each.
        self.skipped: list[SkippedRow] = list(skipped)
        #: Valid rows left out on purpose (e.g. AffectNet contempt), counted by category.
        self.excluded: Counter[str] = Counter() if excluded is None else excluded
        for sample in self.samples:
            if not 0 <= sample.label < len(EXPRESSIONS):
                raise DatasetError(f"{sample.where}: label {sample.label} out of range")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label, _ = self.item_with_landmarks(index, apply_transform=True)
        return image, label

    def item_with_landmarks(
        self, index: int, *, apply_transform: bool = False
    ) -> tuple[Any, int, np.ndarray | None]:
        """``(image, label, landmarks)``: the sample's 68 landmarks (or ``None``) moved into
        the coordinates of the returned image (crop and resize applied; ``transform`` is not
        applied unless asked, since it may move pixels the landmarks cannot follow)."""
        sample = self.samples[index]
        cropped, origin = _load_cropped(sample)
        image: Any = cropped
        marks = None
        if sample.landmarks is not None:
            marks = sample.landmarks.astype(np.float32) - np.asarray(origin, np.float32)
        if self.image_size is not None:
            height, width = self.image_size
            if marks is not None:
                marks = marks * np.array(
                    [width / image.shape[1], height / image.shape[0]], np.float32
                )
            shrink = height * width < image.shape[0] * image.shape[1]
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            image = cv2.resize(image, (width, height), interpolation=interp)
        if apply_transform and self.transform is not None:
            image = self.transform(image)
        return image, sample.label, marks

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.samples]

    @property
    def skip_reasons(self) -> Counter[str]:
        """How many rows were skipped for each reason."""
        return Counter(row.reason.split(":")[0] for row in self.skipped)

    def class_counts(self) -> dict[str, int]:
        """Samples per canonical expression, in :data:`EXPRESSIONS` order (zeros included)."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(EXPRESSIONS)}

    def label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.long)

    def __repr__(self) -> str:
        return (
            f"FERDataset(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
            f"skipped={len(self.skipped)})"
        )
