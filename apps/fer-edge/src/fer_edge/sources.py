"""Input sources for ``fer-edge run``: one image, a folder of images, a video file, a camera.

Each source yields :class:`Item` objects in order: a decoded RGB frame, or the error that kept
a file from decoding (so a run goes on past bad files and counts them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_export.faces import ImageDecodeError, decode_image

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Item",
    "Source",
    "SourceError",
    "open_source",
]

#: Files a folder run picks up (case-insensitive); everything else is skipped and counted.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
)
#: Files opened with ``cv2.VideoCapture`` instead of being decoded as one image.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
)


class SourceError(ValueError):
    """A source that cannot be opened at all (missing path, camera or video that won't open)."""


@dataclass
class Item:
    """One frame or image: ``rgb`` when it decoded, ``error`` when it did not.

    ``index`` is the frame number (video/camera, counting every frame read) or the position in
    the folder listing; ``name`` is the file name relative to the folder (images) or None.
    """

    index: int
    name: str | None
    rgb: np.ndarray | None = None
    error: str | None = None


class Source:
    """Base class: ``kind`` (``image``, ``folder``, ``video`` or ``camera``), ``fps`` (videos and
    cameras, 0 when unknown), ``skipped`` (files a folder run ignored), iteration over items."""

    kind: str = ""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.fps = 0.0
        self.skipped = 0

    def __iter__(self) -> Iterator[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the camera or video file (no-op for images)."""


class ImageSource(Source):
    """A single image file."""

    kind = "image"

    def __iter__(self) -> Iterator[Item]:
        path = Path(self.spec)
        yield _decode_file(0, path.name, path)


class FolderSource(Source):
    """The image files of a folder (sorted by relative path; ``recursive`` for subfolders)."""

    kind = "folder"

    def __init__(self, spec: str, recursive: bool = False) -> None:
        super().__init__(spec)
        root = Path(spec)
        found = root.rglob("*") if recursive else root.iterdir()
        files = sorted(
            (p for p in found if p.is_file() and not p.name.startswith(".")),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        self.files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        self.skipped = len(files) - len(self.files)
        self.root = root

    def __iter__(self) -> Iterator[Item]:
        for index, path in enumerate(self.files):
            yield _decode_file(index, path.relative_to(self.root).as_posix(), path)


class CaptureSource(Source):
    """A video file or a camera read with ``cv2.VideoCapture`` (frames converted to RGB)."""

    def __init__(self, spec: str, camera: bool) -> None:
        super().__init__(spec)
        self.kind = "camera" if camera else "video"
        target: int | str = int(spec) if camera else spec
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            self._capture.release()
            what = f"camera {spec}" if camera else f"video file {spec}"
            raise SourceError(f"cannot open {what} with OpenCV (cv2.VideoCapture)")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else 0.0

    def __iter__(self) -> Iterator[Item]:
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                return
            yield Item(index, None, rgb=np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            index += 1

    def close(self) -> None:
        self._capture.release()


def _decode_file(index: int, name: str, path: Path) -> Item:
    try:
        return Item(index, name, rgb=decode_image(path))
    except (ImageDecodeError, OSError) as exc:
        return Item(index, name, error=str(exc))


def open_source(spec: str, *, recursive: bool = False) -> Source:
    """The source named by ``spec``: an existing folder, video file (by suffix, see
    :data:`VIDEO_SUFFIXES`) or image file, or else a camera index (a non-negative integer).

    Raises :class:`SourceError` for a path that does not exist or a video/camera that does not
    open.
    """
    path = Path(spec)
    if path.is_dir():
        return FolderSource(spec, recursive=recursive)
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return CaptureSource(spec, camera=False)
        return ImageSource(spec)
    if re.fullmatch(r"\d+", spec):
        return CaptureSource(spec, camera=True)
    if path.exists():
        raise SourceError(f"source {spec} is neither a file nor a folder")
    raise SourceError(
        f"source not found: {spec} (expected an image, a folder, a video file or a camera index)"
    )
