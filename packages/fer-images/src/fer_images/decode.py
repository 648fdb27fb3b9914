"""Decoding with a pixel limit checked on the header first: bytes or a file -> RGB ``uint8``.

The limit is the defence against decompression bombs: a 390 KB PNG can announce 20000 x 20000
pixels, which OpenCV would inflate into 1.2 GB (and a face detector run over it would take
gigabytes more, or crash). :func:`decode_rgb` reads the size from the header
(:func:`fer_images.probe.probe`) and refuses such an image before any pixel is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from fer_images.probe import ImageDecodeError, ImageInfo, probe

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageTooLargeError",
    "check_pixels",
    "decode_rgb",
    "read_rgb",
]

#: Default pixel limit: 40 megapixels (a 7296 x 5472 camera image fits; its RGB array is 120 MB).
DEFAULT_MAX_PIXELS = 40_000_000
#: Default largest file :func:`read_rgb` reads into memory (an uncompressed 40 MP BMP is 120 MB).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class ImageTooLargeError(ImageDecodeError):
    """An image whose size exceeds the pixel limit; ``width``, ``height``, ``pixels`` and
    ``limit`` say by how much (``format`` is the header's format, ``"array"`` for arrays)."""

    def __init__(self, where: str, width: int, height: int, limit: int, format: str) -> None:
        self.width, self.height, self.limit, self.format = width, height, limit, format
        self.pixels = width * height
        super().__init__(
            f"{where}: image is {width}x{height} ({self.pixels / 1e6:.1f} megapixels), over the "
            f"limit of {limit} pixels ({limit / 1e6:g} megapixels)"
        )


def _limit(max_pixels: int | None) -> int | None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    return max_pixels


def check_pixels(
    width: int, height: int, max_pixels: int | None, where: str = "image", format: str = "array"
) -> None:
    """Raise :class:`ImageTooLargeError` when ``width * height`` exceeds ``max_pixels``
    (``None``: no limit). For images already in memory, whose later processing still scales
    with their size."""
    limit = _limit(max_pixels)
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(where, width, height, limit, format)


def _complete(raw: bytes, info: ImageInfo, where: str) -> None:
    # OpenCV decodes a cut-short JPEG or PNG into a partly grey image with only a warning.
    if info.format == "jpeg" and b"\xff\xd9" not in raw[-1024:]:
        raise ImageDecodeError(f"{where}: truncated JPEG image (no end-of-image marker)")
    if info.format == "png" and b"IEND" not in raw[-64:]:
        raise ImageDecodeError(f"{where}: truncated PNG image (no IEND chunk)")


def decode_rgb(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    where: str = "image bytes",
    require_complete: bool = False,
) -> np.ndarray:
    """Encoded image bytes -> RGB ``uint8`` ``(H, W, 3)`` (C-contiguous).

    The header is read first (:func:`probe`); an image over ``max_pixels`` (``None``: no limit)
    raises :class:`ImageTooLargeError` without decoding. ``require_complete`` also refuses
    JPEG and PNG files that are cut short. Every other failure (empty, unknown format, corrupt)
    is an :class:`ImageDecodeError` whose message starts with ``where``.
    """
    limit = _limit(max_pixels)
    raw = data if isinstance(data, bytes) else bytes(data)
    try:
        info = probe(raw)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{where}: {exc}") from exc
    check_pixels(info.width, info.height, limit, where, info.format)
    if require_complete:
        _complete(raw, info, where)
    try:
        # IMREAD_COLOR: always 8-bit BGR (grayscale replicated, alpha dropped, 16-bit scaled).
        bgr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"{where}: cannot decode {info.format} image ({exc})") from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise ImageDecodeError(
            f"{where}: not a decodable {info.format} image ({len(raw)} bytes; truncated or corrupt)"
        )
    # The header was checked, but a decoder that disagrees with it must not slip past.
    check_pixels(bgr.shape[1], bgr.shape[0], limit, where, info.format)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def read_rgb(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    require_complete: bool = False,
) -> np.ndarray:
    """The image file at ``path`` as RGB ``uint8`` ``(H, W, 3)`` (see :func:`decode_rgb`).

    Raises :class:`FileNotFoundError` for a missing path, :class:`ImageDecodeError` for a
    directory, a file over ``max_bytes`` (not read), or anything :func:`decode_rgb` refuses;
    messages name the file.
    """
    file = Path(path)
    if not file.is_file():
        if file.is_dir():
            raise ImageDecodeError(f"{file}: is a directory, not an image file")
        if file.exists():
            raise ImageDecodeError(f"{file}: not a regular file")
        raise FileNotFoundError(f"image file not found: {file}")
    size = file.stat().st_size
    if size > max_bytes:
        raise ImageDecodeError(f"{file}: file is {size} bytes, over the limit of {max_bytes}")
    return decode_rgb(
        file.read_bytes(),
        max_pixels=max_pixels,
        where=str(file),
        require_complete=require_complete,
    )
