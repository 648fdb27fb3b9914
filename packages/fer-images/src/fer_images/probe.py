"""Image format and dimensions read from the header, without decoding a single pixel.

:func:`probe` recognises the formats in :data:`SUPPORTED_FORMATS` by their magic bytes and reads
the width and height the decoder will allocate for. Anything else -- an unknown format, a header
cut short, a header that contradicts itself -- raises :class:`ImageDecodeError`: a caller that
cannot know an image's size before decoding it cannot protect itself from a decompression bomb
(a few hundred kilobytes of PNG that inflate to gigabytes), so unknown means refused.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SUPPORTED_FORMATS", "ImageDecodeError", "ImageInfo", "probe"]


class ImageDecodeError(ValueError):
    """Bytes or a file that do not decode to an image (empty, truncated, unknown format...)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: ``format`` (see :data:`SUPPORTED_FORMATS`), ``width`` and
    ``height`` in pixels (the largest frame or canvas the header announces)."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _u16be(b: bytes, at: int) -> int:
    return int(struct.unpack_from(">H", b, at)[0])


def _u16le(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", b, at)[0])


def _u32be(b: bytes, at: int) -> int:
    return int(struct.unpack_from(">I", b, at)[0])


def _u32le(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", b, at)[0])


def _png(b: bytes) -> tuple[int, int]:
    # The first chunk must be IHDR (PNG spec 5.6); APNG frames lie inside this canvas.
    if b[12:16] != b"IHDR" or len(b) < 24:
        raise ImageDecodeError("PNG without an IHDR chunk first")
    return _u32be(b, 16), _u32be(b, 20)


# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); not C4
# (Huffman tables), C8 (reserved) or CC (arithmetic conditioning).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RSTn, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def _jpeg(b: bytes) -> tuple[int, int]:
    at = 2
    while at < len(b):
        if b[at] != 0xFF:
            raise ImageDecodeError(f"JPEG marker expected at byte {at}")
        while at < len(b) and b[at] == 0xFF:  # fill bytes may pad any marker
            at += 1
        if at >= len(b):
            break
        marker = b[at]
        at += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xDA:  # start of scan before any frame header
            raise ImageDecodeError("JPEG scan data before a frame header (SOF)")
        if at + 2 > len(b):
            break
        length = _u16be(b, at)
        if length < 2:
            raise ImageDecodeError(f"JPEG segment of length {length} at byte {at}")
        if marker in _JPEG_SOF:
            if at + 7 > len(b):
                break
            height, width = _u16be(b, at + 3), _u16be(b, at + 5)
            if height == 0:
                # The height would come later in a DNL segment: unknown before decoding.
                raise ImageDecodeError("JPEG whose height is defined after the scan (DNL)")
            return width, height
        at += length
    raise ImageDecodeError("JPEG cut short before its frame header (SOF)")


def _gif(b: bytes) -> tuple[int, int]:
    width, height = _u16le(b, 6), _u16le(b, 8)
    # Frames may lie outside the logical screen: take the first image descriptor into account.
    flags = b[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while at < len(b):
        block = b[at]
        if block == 0x2C:  # image descriptor
            if at + 10 > len(b):
                break
            left, top = _u16le(b, at + 1), _u16le(b, at + 3)
            fw, fh = _u16le(b, at + 5), _u16le(b, at + 7)
            return max(width, left + fw), max(height, top + fh)
        if block == 0x21:  # extension: label, then sub-blocks until a zero-length one
            at += 2
            while at < len(b) and b[at] != 0:
                at += b[at] + 1
            at += 1
            continue
        break
    return width, height


def _bmp(b: bytes) -> tuple[int, int]:
    header = _u32le(b, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        return _u16le(b, 18), _u16le(b, 20)
    width, height = struct.unpack_from("<ii", b, 18)
    return abs(int(width)), abs(int(height))  # negative height: rows stored top-down


def _webp(b: bytes) -> tuple[int, int]:
    chunk = b[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        width = int.from_bytes(b[24:27], "little") + 1
        height = int.from_bytes(b[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":  # lossy: key frame start code, then 14-bit sizes
        if b[23:26] != b"\x9d\x01\x2a":
            raise ImageDecodeError("WebP (VP8) without a key frame start code")
        return _u16le(b, 26) & 0x3FFF, _u16le(b, 28) & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2F, then two 14-bit sizes minus one
        if b[20] != 0x2F:
            raise ImageDecodeError("WebP (VP8L) without its signature byte")
        bits = _u32le(b, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageDecodeError(f"WebP with an unknown first chunk {bytes(chunk)!r}")


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8


def _tiff(b: bytes) -> tuple[int, int]:
    # Only the first page (IFD): that is the one OpenCV decodes.
    order = "<" if b[:2] == b"II" else ">"
    version = struct.unpack_from(order + "H", b, 2)[0]
    if version == 42:
        ifd = struct.unpack_from(order + "I", b, 4)[0]
        count_fmt, entry_size, count_size, value_at = "H", 12, 2, 8
    else:  # BigTIFF: 43, offsets of 8 bytes
        ifd = struct.unpack_from(order + "Q", b, 8)[0]
        count_fmt, entry_size, count_size, value_at = "Q", 20, 8, 12
    count = struct.unpack_from(order + count_fmt, b, ifd)[0]
    sizes: dict[int, int] = {}
    for i in range(min(int(count), 4096)):
        entry = ifd + count_size + i * entry_size
        tag, kind = struct.unpack_from(order + "HH", b, entry)
        if tag in (256, 257) and kind in _TIFF_TYPES:
            fmt, _ = _TIFF_TYPES[kind]
            sizes[tag] = int(struct.unpack_from(order + fmt, b, entry + value_at)[0])
        if len(sizes) == 2:
            return sizes[256], sizes[257]
    raise ImageDecodeError("TIFF whose first page has no ImageWidth/ImageLength tags")


_NETPBM_TOKEN = re.compile(rb"(?:\s|#[^\n\r]*[\n\r])*(\d{1,12})")


def _netpbm(b: bytes) -> tuple[int, int]:
    if b[:2] == b"P7":  # PAM: "WIDTH n" and "HEIGHT n" lines before ENDHDR
        head = b[: b.find(b"ENDHDR")] if b"ENDHDR" in b[:4096] else b[:0]
        width = re.search(rb"^WIDTH\s+(\d{1,12})", head, re.MULTILINE)
        height = re.search(rb"^HEIGHT\s+(\d{1,12})", head, re.MULTILINE)
        if not (width and height):
            raise ImageDecodeError("PAM header without WIDTH and HEIGHT before ENDHDR")
        return int(width.group(1)), int(height.group(1))
    # PBM/PGM/PPM/PFM: magic, then width and height as decimal text (comments allowed).
    at, values = 2, []
    for _ in range(2):
        match = _NETPBM_TOKEN.match(b, at, min(len(b), at + 4096))
        if match is None:
            raise ImageDecodeError(f"Netpbm header ({bytes(b[:2])!r}) without width and height")
        values.append(int(match.group(1)))
        at = match.end()
    return values[0], values[1]


def _sun_raster(b: bytes) -> tuple[int, int]:
    return _u32be(b, 4), _u32be(b, 8)


_HDR_SIZE = re.compile(rb"^[-+][XY] (\d{1,12}) [-+][XY] (\d{1,12})$", re.MULTILINE)


def _radiance(b: bytes) -> tuple[int, int]:
    # Header lines, a blank line, then "-Y <height> +X <width>" (or another orientation).
    head = b[:8192]
    blank = head.find(b"\n\n")
    match = _HDR_SIZE.search(head, blank + 2) if blank >= 0 else None
    if match is None:
        raise ImageDecodeError("Radiance HDR without a resolution line")
    line = match.group(0)
    first, second = int(match.group(1)), int(match.group(2))
    # "-Y h +X w" lists the height first; "+X w -Y h" the width first.
    return (second, first) if line[1:2] == b"Y" else (first, second)


_Reader = Callable[[bytes], tuple[int, int]]

#: (format name, magic test, header reader); tried in order.
_FORMATS: tuple[tuple[str, Callable[[bytes], bool], _Reader], ...] = (
    ("png", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    ("jpeg", lambda b: b.startswith(b"\xff\xd8\xff"), _jpeg),
    ("gif", lambda b: b[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("bmp", lambda b: b.startswith(b"BM"), _bmp),
    ("webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", _webp),
    ("tiff", lambda b: b[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("netpbm", lambda b: re.match(rb"P[1-7]\s", b[:3]) is not None, _netpbm),
    ("pfm", lambda b: re.match(rb"P[Ff]\s", b[:3]) is not None, _netpbm),
    ("sun-raster", lambda b: b.startswith(b"\x59\xa6\x6a\x95"), _sun_raster),
    ("radiance-hdr", lambda b: b.startswith((b"#?RADIANCE", b"#?RGBE")), _radiance),
)

#: Formats whose size :func:`probe` can read (everything OpenCV decodes except JPEG 2000,
#: AVIF and OpenEXR, whose sizes sit deep inside box structures).
SUPPORTED_FORMATS: tuple[str, ...] = tuple(name for name, _, _ in _FORMATS)


def probe(data: bytes | bytearray | memoryview) -> ImageInfo:
    """The :class:`ImageInfo` (format, width, height) of encoded image bytes.

    Reads headers only. Raises :class:`ImageDecodeError` for empty data, an unknown format, a
    header that is cut short or malformed, or a zero width or height.
    """
    raw = data if isinstance(data, bytes) else bytes(data)
    b = raw[:65536]  # every header but JPEG's and TIFF's sits at the start
    if not b:
        raise ImageDecodeError("no data (0 bytes)")
    for name, matches, read in _FORMATS:
        if not matches(b):
            continue
        try:
            width, height = read(raw if name in ("jpeg", "tiff") else b)
        except (struct.error, IndexError) as exc:
            raise ImageDecodeError(f"{name.upper()} header cut short or malformed") from exc
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"{name.upper()} header gives a {width}x{height} image")
        return ImageInfo(name, width, height)
    raise ImageDecodeError(
        f"unrecognised image format (first bytes {b[:8]!r}); supported: "
        + ", ".join(SUPPORTED_FORMATS)
    )
