"""probe(): the size the header announces equals what OpenCV decodes, for every format."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from fer_images import SUPPORTED_FORMATS, ImageDecodeError, ImageInfo, probe

# (suffix given to cv2.imencode, format probe() names, whether the image is float)
ENCODED = [
    (".png", "png", False),
    (".jpg", "jpeg", False),
    (".bmp", "bmp", False),
    (".gif", "gif", False),
    (".webp", "webp", False),
    (".tif", "tiff", False),
    (".ppm", "netpbm", False),
    (".pam", "netpbm", False),
    (".ras", "sun-raster", False),
    (".pfm", "pfm", True),
    (".hdr", "radiance-hdr", True),
]


def _encode(suffix: str, width: int, height: int, floating: bool) -> bytes:
    image = np.random.default_rng(width * 7 + height).integers(0, 255, (height, width, 3))
    array = image.astype(np.float32) / 255 if floating else image.astype(np.uint8)
    ok, buf = cv2.imencode(suffix, array)
    assert ok, suffix
    return buf.tobytes()


@pytest.mark.parametrize(("suffix", "name", "floating"), ENCODED, ids=[e[0] for e in ENCODED])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (53, 37), (300, 17)])
def test_probe_matches_what_opencv_decodes(
    suffix: str, name: str, floating: bool, width: int, height: int
) -> None:
    data = _encode(suffix, width, height, floating)
    info = probe(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert info == ImageInfo(name, width, height)
    assert decoded.shape[:2] == (height, width)


def test_every_supported_format_is_covered() -> None:
    assert {name for _, name, _ in ENCODED} == set(SUPPORTED_FORMATS)


@pytest.mark.parametrize("flag", ["IMWRITE_JPEG_PROGRESSIVE", "IMWRITE_JPEG_OPTIMIZE"])
def test_jpeg_variants(flag: str) -> None:
    image = np.zeros((41, 77, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [getattr(cv2, flag), 1])
    assert ok and probe(buf.tobytes()) == ImageInfo("jpeg", 77, 41)


def test_jpeg_frame_header_after_large_app_segments() -> None:
    _, buf = cv2.imencode(".jpg", np.zeros((10, 20, 3), np.uint8))
    data = buf.tobytes()
    app = b"\xff\xe1" + struct.pack(">H", 65535) + b"x" * 65533  # a full-size EXIF segment
    assert probe(data[:2] + app * 3 + data[2:]) == ImageInfo("jpeg", 20, 10)


def test_webp_lossless_and_grey_tiff() -> None:
    image = np.zeros((33, 65, 3), np.uint8)
    ok, lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and probe(lossless.tobytes()) == ImageInfo("webp", 65, 33)
    ok, tiff = cv2.imencode(".tif", image[:, :, 0])
    assert ok and probe(tiff.tobytes()) == ImageInfo("tiff", 65, 33)


def test_big_endian_tiff_and_bigtiff_headers() -> None:
    # One IFD entry each for ImageWidth (256) and ImageLength (257), type LONG.
    mm = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2)
    mm += struct.pack(">HHII", 256, 4, 1, 70000) + struct.pack(">HHII", 257, 4, 1, 3)
    assert probe(mm) == ImageInfo("tiff", 70000, 3)
    big = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2)
    big += struct.pack("<HHQQ", 256, 16, 1, 5) + struct.pack("<HHQQ", 257, 3, 1, 9)
    assert probe(big) == ImageInfo("tiff", 5, 9)


def test_gif_frame_outside_the_logical_screen_counts() -> None:
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 10, 0, 30000, 20000, 0)
    assert probe(header + descriptor) == ImageInfo("gif", 30010, 20000)


def test_netpbm_comments_and_radiance_orientation() -> None:
    assert probe(b"P5\n# made by hand\n 640 # width\n480\n255\n") == ImageInfo("netpbm", 640, 480)
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n+X 123 -Y 45\n"
    assert probe(hdr) == ImageInfo("radiance-hdr", 123, 45)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no data"),
        (b"hello world, not an image", "unrecognised image format"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "unrecognised image format"),  # JPEG 2000
        (b"\x00\x00\x00 ftypavif", "unrecognised image format"),
        (b"\x89PNG\r\n\x1a\n", "PNG without an IHDR"),
        (_png_header(0, 10), "gives a 0x10 image"),
        (b"\xff\xd8\xff\xe0\x00", "JPEG cut short"),
        (b"\xff\xd8\xff\xda\x00\x08", "scan data before a frame header"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10\x03", "DNL"),
        (b"BM" + b"\x00" * 10, "BMP header cut short"),
        (b"II*\x00" + struct.pack("<I", 10_000), "TIFF header cut short"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8Z", "unknown first chunk"),
        (b"P6\nfoo bar\n", "without width and height"),
        (b"P7\nDEPTH 3\nENDHDR\n", "PAM header without WIDTH"),
        (b"#?RADIANCE\n\n", "without a resolution line"),
    ],
)
def test_probe_refuses_what_it_cannot_size(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        probe(data)


def test_probe_reads_the_bomb_header() -> None:
    assert probe(_png_header(20000, 20000)) == ImageInfo("png", 20000, 20000)
    assert probe(memoryview(bytearray(_png_header(3, 4)))).pixels == 12
