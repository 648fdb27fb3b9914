"""Crafted images for the tests of code that accepts images from outside."""

from __future__ import annotations

import struct
import zlib

__all__ = ["png_bomb"]


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body))
    return struct.pack(">I", len(body)) + kind + body + crc


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 8-bit grey PNG of zeros, written row by row through zlib: 20000 x 20000 is about
    390 KB on disk and 400 MB decoded (1.2 GB as RGB). A decompression bomb for tests."""
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then one zero byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks
