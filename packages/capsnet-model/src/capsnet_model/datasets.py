"""Facial expression data sets (RAF-DB, FER2013, AffectNet, class-per-folder) in one label order.

Canonical label order
---------------------
Every loader maps its data set's own labels to :data:`EXPRESSIONS`, the single label order
used by the models and metrics in this package::

    0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger

The per-data-set mappings (:data:`RAFDB_LABELS`, :data:`FER2013_LABELS`,
:data:`AFFECTNET_LABELS`, :data:`FOLDER_ALIASES`) are defined right below it and nowhere
else.

Every loader returns a :class:`FERDataset` whose items are ``(image, label)``: ``image`` an
``uint8`` ``H x W x 3`` RGB array (grayscale input is replicated to three channels), resized
to ``image_size`` when given and then passed through ``transform`` when given (so it may be
a tensor); ``label`` an index into :data:`EXPRESSIONS`.

Bad input raises :class:`DatasetError` naming the file (and line) at fault. With
``on_error="skip"`` bad rows are dropped instead and recorded in ``dataset.skipped``; an
empty split is always an error. Text files are read as UTF-8 (a byte-order mark is allowed):
a row holding other bytes, or a CSV row with more or fewer fields than the header, is a bad
row like any other. ``verify_images=True`` decodes every image at load time, on a few threads
and with a progress bar for large sets, so that a bad image is raised or skipped there and
never surfaces in ``__getitem__`` (mid-epoch, where skipping is impossible).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from fer_images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, read_rgb

# --------------------------------------------------------------------------- label order

#: The one canonical label order (index = class id used everywhere in this package).
EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
)

#: RAF-DB basic ``list_patition_label.txt`` labels 1..7 -> canonical names.
RAFDB_LABELS: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happiness",
    5: "sadness",
    6: "anger",
    7: "neutral",
}

#: FER2013 ``emotion`` 0..6 -> canonical names.
FER2013_LABELS: dict[int, str] = {
    0: "anger",
    1: "disgust",
    2: "fear",
    3: "happiness",
    4: "sadness",
    5: "surprise",
    6: "neutral",
}

#: AffectNet ``expression`` 0..6 -> canonical names (7..10 are excluded, see below).
AFFECTNET_LABELS: dict[int, str] = {
    0: "neutral",
    1: "happiness",
    2: "sadness",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
}

#: AffectNet ``expression`` values that are valid but not one of the seven expressions.
AFFECTNET_EXCLUDED: dict[int, str] = {
    7: "contempt",
    8: "none",
    9: "uncertain",
    10: "non-face",
}

#: Class-folder names (lower case) accepted by :func:`load_folder` -> canonical names.
FOLDER_ALIASES: dict[str, str] = {
    **{name: name for name in EXPRESSIONS},
    "neutrality": "neutral",
    "happy": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "disgusted": "disgust",
    "angry": "anger",
}

FER2013_USAGE: dict[str, str] = {
    "Training": "train",
    "PublicTest": "val",
    "PrivateTest": "test",
}

FER2013_PIXELS = 48 * 48
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ON_ERROR = ("raise", "skip")
#: Image checks (``verify_images=True``) show a progress bar from this many images on.
VERIFY_PROGRESS_MIN = 1000
# Decoding releases the GIL, so a few threads check images in parallel; more rarely helps
# because reading the files becomes the bottleneck.
_VERIFY_THREADS = max(1, min(8, os.cpu_count() or 1))

OnError = Literal["raise", "skip"]
Box = tuple[int, int, int, int]  # x, y, width, height
ImageSize = int | tuple[int, int]  # side, or (height, width)


def label_index(name: str) -> int:
    """Index of the canonical expression ``name`` in :data:`EXPRESSIONS`."""
    return EXPRESSIONS.index(name)


# --------------------------------------------------------------------------- samples


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


# --------------------------------------------------------------------------- dataset


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


# --------------------------------------------------------------------------- helpers


def _not_utf8(text: str) -> str | None:
    """Where ``text`` (decoded with ``errors="surrogateescape"``) held a byte that is not UTF-8
    (``"byte 0xff at character 3"``), or None when it is all UTF-8."""
    for i, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return f"byte 0x{ord(char) - 0xDC00:02x} at character {i + 1}"
    return None


def _image_problem(sample: FERSample) -> str | None:
    """Why the sample's image file cannot be used (``"<category>: <detail>"``), or None."""
    path = sample.image
    if not isinstance(path, Path):
        return None
    try:
        image = read_image(path)
    except Exception as exc:  # read_image alone decides what a bad image is, whatever it raises
        detail = str(exc) if isinstance(exc, DatasetError) else f"{type(exc).__name__}: {exc}"
        # The folder loader's `where` is the path already: do not repeat it.
        suffix = f": {path}"
        if str(path) in sample.where and detail.endswith(suffix):
            detail = detail[: -len(suffix)]
        return f"bad image: {detail}"
    if sample.box is not None and _clip_box(image.shape, sample.box) is None:
        return f"bad face box: {_box_outside(image.shape, sample.box)}"
    return None


class _Collector:
    """Gathers samples; routes row errors to raise or skip per ``on_error``.

    With ``verify_images`` the image files are decoded in :meth:`finish`, after every row has
    been read; skipped rows and images are then listed in file order all the same.
    """

    def __init__(self, on_error: str, verify_images: bool, progress: bool = True) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.verify_images = verify_images
        self.progress = progress
        self.samples: list[FERSample] = []
        self.skipped: list[SkippedRow] = []
        self.excluded: Counter[str] = Counter()
        # Position of each sample and skipped row among the rows read, to merge the image
        # checks' skips back into file order.
        self._sample_order: list[int] = []
        self._skip_order: list[int] = []
        self._rows = 0

    def error(self, where: str, reason: str, order: int | None = None) -> None:
        if self.on_error == "raise":
            raise DatasetError(f"{where}: {reason}")
        self.skipped.append(SkippedRow(where, reason))
        if order is None:
            order, self._rows = self._rows, self._rows + 1
        self._skip_order.append(order)

    def add_sample(self, sample: FERSample) -> None:
        self.samples.append(sample)
        self._sample_order.append(self._rows)
        self._rows += 1

    def add_file(
        self,
        path: Path,
        label: int,
        where: str,
        box: Box | None = None,
        landmarks: np.ndarray | None = None,
    ) -> None:
        if not path.is_file():
            self.error(where, f"missing image file: {path}")
            return
        self.add_sample(FERSample(path, label, box, where, landmarks))

    def _check_images(self, what: str) -> None:
        """Decodes every sample's image; drops (or raises on) the bad ones."""
        samples, order = self.samples, self._sample_order
        kept: list[int] = []
        show = self.progress and len(samples) >= VERIFY_PROGRESS_MIN
        chunk = 32 * _VERIFY_THREADS  # bounded, so a raise does not wait for the whole set
        bar = tqdm(
            total=len(samples),
            desc=f"checking {what} images",
            unit="image",
            disable=None if show else True,
            leave=False,
            dynamic_ncols=True,
        )
        with bar, ThreadPoolExecutor(_VERIFY_THREADS) as pool:
            for start in range(0, len(samples), chunk):
                part = samples[start : start + chunk]
                for i, problem in enumerate(pool.map(_image_problem, part), start=start):
                    bar.update()
                    if problem is None:
                        kept.append(i)
                    else:
                        self.error(samples[i].where, problem, order[i])
        self.samples = [samples[i] for i in kept]
        self._sample_order = [order[i] for i in kept]
        ranked = sorted(zip(self._skip_order, range(len(self.skipped)), strict=True))
        self.skipped = [self.skipped[k] for _, k in ranked]
        self._skip_order = [rank for rank, _ in ranked]

    def finish(self, name: str, split: str | None, source: Path, **kw: Any) -> FERDataset:
        if self.verify_images and self.samples:
            self._check_images(f"{name} {split}" if split else name)
        if not self.samples:
            raise DatasetError(
                f"empty split {split!r} in {name} data at {source}"
                + (f" ({len(self.skipped)} rows skipped)" if self.skipped else "")
            )
        return FERDataset(
            self.samples,
            name=name,
            split=split,
            skipped=self.skipped,
            excluded=self.excluded,
            **kw,
        )


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}")


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a directory: {path}")


def _check_split(split: str, valid: Sequence[str], name: str) -> None:
    if split not in valid:
        raise ValueError(f"unknown {name} split {split!r}; valid: {', '.join(valid)}")


def _parse_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------- loaders


def load_rafdb(
    root: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """RAF-DB basic: ``root/basic/EmoLabel/list_patition_label.txt`` (``root`` may also be
    the ``basic`` folder itself), split ``"train"`` or ``"test"`` from the file-name prefix,
    aligned images ``basic/Image/aligned/<stem>_aligned.jpg``.

    ``verify_images=True`` decodes every image at load time (so bad ones raise or are
    skipped there instead of in ``__getitem__``), with a progress bar on stderr from
    :data:`VERIFY_PROGRESS_MIN` images on unless ``progress=False``; the same holds for
    :func:`load_affectnet` and :func:`load_folder`.
    """
    _check_split(split, ("train", "test"), "RAF-DB")
    root = Path(root)
    _require_dir(root, "RAF-DB root directory")
    basic = root if (root / "EmoLabel").is_dir() else root / "basic"
    labels_file = basic / "EmoLabel" / "list_patition_label.txt"
    _require_file(labels_file, "RAF-DB label file")
    image_dir = basic / "Image" / "aligned"
    _require_dir(image_dir, "RAF-DB aligned image directory")

    out = _Collector(on_error, verify_images, progress)
    # surrogateescape keeps a stray byte from ending the whole read: it becomes one bad row.
    with labels_file.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{labels_file}, line {line_no}"
            bad = _not_utf8(line)
            if bad is not None:
                out.error(where, f"bad row: not UTF-8 text ({bad})")
                continue
            parts = line.split()
            if len(parts) != 2:
                out.error(where, f"bad row: expected '<file name> <label>', got {line.strip()!r}")
                continue
            file_name, label_text = parts
            prefix = file_name.split("_", 1)[0]
            if prefix not in ("train", "test"):
                out.error(where, f"bad row: file name {file_name!r} has no train_/test_ prefix")
                continue
            label = _parse_int(label_text)
            if label not in RAFDB_LABELS:
                out.error(where, f"label out of range: {label_text!r} (valid 1..7)")
                continue
            if prefix != split:
                continue
            stem = Path(file_name).stem
            image_path = image_dir / f"{stem}_aligned.jpg"
            out.add_file(image_path, label_index(RAFDB_LABELS[label]), where)
    return out.finish("rafdb", split, labels_file, transform=transform, image_size=image_size)


def _csv_records(
    path: Path, required: Sequence[str], out: _Collector
) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, row)`` for each well-formed data row of the CSV file at ``path``.

    Column names are stripped of spaces. A row that is not UTF-8, has more or fewer fields
    than the header or that the csv module refuses goes to ``out.error`` (raised or skipped);
    a bad header always raises.
    """
    # surrogateescape keeps a stray byte from ending the whole read: it becomes one bad row.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DatasetError(f"{path}, line {reader.line_num}: bad CSV header: {exc}") from exc
        if header is None:
            raise DatasetError(f"CSV file is empty: {path}")
        bad = _not_utf8(",".join(header))
        if bad is not None:
            raise DatasetError(f"{path}, line {reader.line_num}: header is not UTF-8 text ({bad})")
        names = [name.strip() for name in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise DatasetError(
                f"CSV file {path} lacks column(s) {', '.join(missing)}; has: {', '.join(names)}"
            )
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                out.error(f"{path}, line {reader.line_num}", f"bad row: {exc}")
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            where = f"{path}, line {reader.line_num}"
            if len(fields) != len(names):
                out.error(
                    where,
                    f"bad row: {len(fields)} fields, expected {len(names)} ({', '.join(names)})",
                )
                continue
            problems = ((name, _not_utf8(value)) for name, value in zip(names, fields, strict=True))
            problem = next(((name, bad) for name, bad in problems if bad is not None), None)
            if problem is not None:
                out.error(where, f"bad row: column {problem[0]} is not UTF-8 text ({problem[1]})")
                continue
            yield where, dict(zip(names, fields, strict=True))


def load_fer2013(
    csv_path: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """FER2013 CSV (``emotion,pixels,Usage``; column names may carry leading spaces).

    ``split``: ``"train"`` (Training), ``"val"`` (PublicTest) or ``"test"`` (PrivateTest).
    Each row's 2304 space-separated pixels become a 48x48 image (replicated to RGB).
    """
    _check_split(split, tuple(FER2013_USAGE.values()), "FER2013")
    path = Path(csv_path)
    _require_file(path, "FER2013 CSV file")
    out = _Collector(on_error, verify_images=False)
    for where, row in _csv_records(path, ("emotion", "pixels", "Usage"), out):
        usage = (row.get("Usage") or "").strip()
        if usage not in FER2013_USAGE:
            out.error(where, f"bad row: Usage {usage!r} not one of {', '.join(FER2013_USAGE)}")
            continue
        if FER2013_USAGE[usage] != split:
            continue
        label = _parse_int(row.get("emotion") or "")
        if label not in FER2013_LABELS:
            out.error(where, f"label out of range: emotion {row.get('emotion')!r} (valid 0..6)")
            continue
        tokens = (row.get("pixels") or "").split()
        try:
            values = [int(token) for token in tokens]
        except ValueError:
            out.error(where, "bad pixels: not all pixel values are integers")
            continue
        if len(values) != FER2013_PIXELS:
            out.error(where, f"bad pixels: expected {FER2013_PIXELS} integers, got {len(values)}")
            continue
        if min(values) < 0 or max(values) > 255:
            out.error(where, "bad pixels: values outside 0..255")
            continue
        image = np.asarray(values, dtype=np.uint8).reshape(48, 48)
        out.add_sample(FERSample(image, label_index(FER2013_LABELS[label]), None, where))
    return out.finish("fer2013", split, path, transform=transform, image_size=image_size)


def _parse_landmarks(text: str) -> np.ndarray | None:
    """AffectNet ``facial_landmarks``: 136 numbers ``x1;y1;x2;y2;...`` -> (68, 2) or None."""
    try:
        values = [float(v) for v in text.replace(",", ";").split(";") if v.strip()]
    except ValueError:
        return None
    if len(values) != 136 or not np.isfinite(values).all():
        return None
    return np.asarray(values, dtype=np.float32).reshape(68, 2)


def load_affectnet(
    csv_path: str | Path,
    image_root: str | Path,
    split: str | None = None,
    *,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """AffectNet manual-annotation CSV (``training.csv`` / ``validation.csv`` layout).

    Images are ``image_root/<subDirectory_filePath>``, cropped to the ``face_*`` box. The
    optional ``facial_landmarks`` column (68 ``x;y`` pairs in full-image pixels) is kept per
    sample (see :meth:`FERDataset.item_with_landmarks`) for landmark-based AU attention.
    Expressions 0..6 are kept; 7..10 (contempt, none, uncertain, non-face) are left out and
    counted in ``dataset.excluded``. AffectNet ships one CSV per split, so ``split`` only
    labels the result (``None``, ``"train"``, ``"val"`` or ``"test"``).
    """
    if split not in (None, "train", "val", "test"):
        raise ValueError(f"unknown AffectNet split {split!r}; valid: None, train, val, test")
    path = Path(csv_path)
    _require_file(path, "AffectNet CSV file")
    root = Path(image_root)
    _require_dir(root, "AffectNet image root directory")
    out = _Collector(on_error, verify_images, progress)
    columns = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height")
    for where, row in _csv_records(path, (*columns, "expression"), out):
        label = _parse_int(row.get("expression") or "")
        if label in AFFECTNET_EXCLUDED:
            out.excluded[AFFECTNET_EXCLUDED[label]] += 1
            continue
        if label not in AFFECTNET_LABELS:
            out.error(where, f"label out of range: expression {row.get('expression')!r} (0..10)")
            continue
        raw_box = [(row.get(name) or "").strip() for name in columns[1:]]
        box: Box | None = None
        if any(raw_box):
            coords = [_parse_int(text) for text in raw_box]
            x, y, w, h = (-1 if c is None else c for c in coords)
            if None in coords or w <= 0 or h <= 0:
                out.error(where, f"bad face box: (x, y, width, height) = {raw_box}")
                continue
            box = (x, y, w, h)
        rel = (row.get("subDirectory_filePath") or "").strip()
        if not rel:
            out.error(where, "bad row: empty subDirectory_filePath")
            continue
        marks = None
        raw_marks = (row.get("facial_landmarks") or "").strip()
        if raw_marks:
            marks = _parse_landmarks(raw_marks)
            if marks is None:
                out.error(
                    where,
                    "bad landmarks: facial_landmarks must hold 136 numbers "
                    "(68 x;y pairs separated by ';')",
                )
                continue
        out.add_file(root / rel, label_index(AFFECTNET_LABELS[label]), where, box, marks)
    return out.finish("affectnet", split, path, transform=transform, image_size=image_size)


def load_folder(
    root: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """Class-per-folder tree ``root/<split>/<class>/*.jpg|*.jpeg|*.png``.

    Class folder names are matched case-insensitively against :data:`FOLDER_ALIASES`; an
    unknown folder raises (listing the accepted names) regardless of ``on_error``.
    """
    root = Path(root)
    _require_dir(root, "data set root directory")
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"split directory not found: {split_dir}; available: {', '.join(available) or 'none'}"
        )
    out = _Collector(on_error, verify_images, progress)
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        canonical = FOLDER_ALIASES.get(class_dir.name.strip().lower())
        if canonical is None:
            raise DatasetError(
                f"unknown expression folder {class_dir}; accepted names (any case): "
                f"{', '.join(sorted(FOLDER_ALIASES))}"
            )
        label = label_index(canonical)
        for image_path in sorted(class_dir.iterdir()):
            if image_path.is_file() and image_path.suffix.lower() in IMAGE_SUFFIXES:
                out.add_file(image_path, label, str(image_path))
    return out.finish("folder", split, split_dir, transform=transform, image_size=image_size)


LOADERS: dict[str, Callable[..., FERDataset]] = {
    "rafdb": load_rafdb,
    "fer2013": load_fer2013,
    "affectnet": load_affectnet,
    "folder": load_folder,
}


def load_dataset(
    kind: str, path: str | Path, split: str | None = None, **kwargs: Any
) -> FERDataset:
    """Dispatch to the loader for ``kind`` (``rafdb``, ``fer2013``, ``affectnet``, ``folder``;
    case, ``-`` and ``_`` ignored). ``path`` is the root directory, or the CSV file for
    FER2013 and AffectNet (which also needs ``image_root=``); ``split`` defaults to the
    loader's default."""
    key = kind.lower().replace("-", "").replace("_", "")
    loader = LOADERS.get(key)
    if loader is None:
        raise ValueError(f"unknown data set kind {kind!r}; valid: {', '.join(LOADERS)}")
    if key == "affectnet":
        if "image_root" not in kwargs:
            raise ValueError("load_dataset('affectnet', ...) needs image_root=")
        image_root = kwargs.pop("image_root")
        return loader(path, image_root, split, **kwargs)
    if split is None:
        return loader(path, **kwargs)
    return loader(path, split, **kwargs)
