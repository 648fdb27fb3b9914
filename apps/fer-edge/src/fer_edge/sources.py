"""Input sources for ``fer-edge run``: one image, a folder of images, a video file, a camera.

Each source yields :class:`Item` objects in order: a decoded RGB frame, or the error that kept
a file from decoding (so a run goes on past bad files and counts them). A folder accounts for
every entry it holds: each is either yielded or listed in ``skipped_entries`` with the reason;
a video that ends before the frame count its container announces leaves a warning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_export.faces import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Item",
    "Skipped",
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


@dataclass(frozen=True)
class Skipped:
    """A folder entry that was not processed: its path relative to the folder, and why."""

    name: str
    reason: str


class Source:
    """Base class: ``kind`` (``image``, ``folder``, ``video`` or ``camera``), ``fps`` (videos and
    cameras, 0 when unknown), ``skipped_entries`` (folder entries not processed, with reasons),
    ``warnings`` (known once iteration ends), iteration over items."""

    kind: str = ""

    def __init__(self, spec: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.fps = 0.0
        self.skipped_entries: list[Skipped] = []
        self.warnings: list[str] = []

    @property
    def skipped(self) -> int:
        """How many folder entries were not processed."""
        return len(self.skipped_entries)

    @property
    def total(self) -> int | None:
        """How many items iteration yields, when known (progress display); None otherwise."""
        return None

    def __iter__(self) -> Iterator[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the camera or video file (no-op for images)."""


class ImageSource(Source):
    """A single image file."""

    kind = "image"

    @property
    def total(self) -> int | None:
        return 1

    def __iter__(self) -> Iterator[Item]:
        path = Path(self.spec)
        yield _decode_file(0, path.name, path, self.max_pixels)


def _entry_kind(entry: os.DirEntry[str]) -> str:
    """``file``, ``dir``, ``dir-link`` (a link to a folder), ``broken-link`` or ``other``."""
    try:
        if entry.is_symlink() and not os.path.exists(entry.path):
            return "broken-link"
        if entry.is_dir():
            return "dir-link" if entry.is_symlink() else "dir"
        if entry.is_file():
            return "file"
    except OSError:
        return "other"
    return "other"


class FolderSource(Source):
    """The image files of a folder (sorted by relative path; ``recursive`` for subfolders).

    Every other entry is listed in ``skipped_entries`` with its reason: hidden files and
    folders (their names start with a dot: ``.DS_Store``, macOS ``._x.jpg`` resource forks,
    ``.git``), files without an image suffix, broken links, folders (without ``recursive``),
    links to folders (never followed: they may loop) and anything that is not a regular file
    (a FIFO named ``x.png`` would block the run).
    """

    kind = "folder"

    def __init__(
        self, spec: str, recursive: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        super().__init__(spec, max_pixels)
        self.root = Path(spec)
        self.recursive = recursive
        self.files: list[Path] = []
        self._scan(self.root)
        self.files.sort(key=self._name)
        self.skipped_entries.sort(key=lambda s: s.name)

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped_entries.append(Skipped(self._name(path), reason))

    def _scan(self, folder: Path) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if folder == self.root:
                raise SourceError(f"cannot list folder {folder}: {exc.strerror}") from exc
            self._skip(folder, f"folder cannot be listed ({exc.strerror})")
            return
        for entry in entries:
            path = Path(entry.path)
            kind = _entry_kind(entry)
            if entry.name.startswith("."):
                self._skip(path, "hidden folder" if kind == "dir" else "hidden file")
            elif kind == "broken-link":
                self._skip(path, "broken link")
            elif kind == "dir-link":
                self._skip(path, "link to a folder (not followed)")
            elif kind == "dir":
                if self.recursive:
                    self._scan(path)
                else:
                    self._skip(path, "folder (use --recursive to include subfolders)")
            elif kind != "file":
                self._skip(path, "not a regular file")
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                self._skip(path, f"not an image suffix ({path.suffix or 'none'})")
            else:
                self.files.append(path)

    @property
    def total(self) -> int | None:
        return len(self.files)

    def __iter__(self) -> Iterator[Item]:
        for index, path in enumerate(self.files):
            yield _decode_file(index, self._name(path), path, self.max_pixels)


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
        count = 0.0 if camera else float(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        #: Frames the container announces (0: unknown, and always for cameras).
        self.frame_count = int(count) if 0 < count < 1e9 else 0

    @property
    def total(self) -> int | None:
        return self.frame_count or None

    def __iter__(self) -> Iterator[Item]:
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                break
            yield Item(index, None, rgb=np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            index += 1
        if index < self.frame_count:
            self.warnings.append(
                f"video ended after {index} of the {self.frame_count} frames its container "
                "announces: the file is truncated or corrupt"
            )

    def close(self) -> None:
        self._capture.release()


def _decode_file(index: int, name: str, path: Path, max_pixels: int | None) -> Item:
    try:
        return Item(index, name, rgb=decode_image(path, max_pixels=max_pixels))
    except (ImageDecodeError, OSError) as exc:
        return Item(index, name, error=str(exc))


def open_source(
    spec: str, *, recursive: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Source:
    """The source named by ``spec``: an existing folder, video file (by suffix, see
    :data:`VIDEO_SUFFIXES`) or image file, or else a camera index (a non-negative integer).

    ``max_pixels``: images above it (read from their headers) become error items, undecoded.
    Raises :class:`SourceError` for a path that does not exist or a video/camera that does not
    open.
    """
    path = Path(spec)
    if path.is_dir():
        return FolderSource(spec, recursive=recursive, max_pixels=max_pixels)
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return CaptureSource(spec, camera=False)
        return ImageSource(spec, max_pixels)
    if re.fullmatch(r"\d+", spec):
        return CaptureSource(spec, camera=True)
    if path.exists():
        raise SourceError(f"source {spec} is neither a file nor a folder")
    raise SourceError(
        f"source not found: {spec} (expected an image, a folder, a video file or a camera index)"
    )
