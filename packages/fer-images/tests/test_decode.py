"""decode_rgb / read_rgb: bombs refused from the header, everything else decoded or refused."""

from __future__ import annotations

import resource
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fer_images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    check_pixels,
    decode_rgb,
    read_rgb,
)
from fer_images.testing import png_bomb


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _encoded(suffix: str = ".png", shape: tuple[int, int] = (30, 40)) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3)).astype(np.uint8)
    ok, buf = cv2.imencode(suffix, image)
    assert ok
    return buf.tobytes()


def test_decode_gives_rgb_in_the_right_channel_order() -> None:
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR
    _, buf = cv2.imencode(".png", bgr)
    rgb = decode_rgb(buf.tobytes())
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert (rgb[:, :, 0] == 200).all() and (rgb[:, :, 1:] == 0).all()


def test_the_bomb_is_refused_from_its_header_without_decoding() -> None:
    bomb = png_bomb(20000, 20000)  # ~390 KB; 400 MB decoded grey, 1.2 GB as RGB
    assert len(bomb) < 500_000
    before = _rss_mb()
    with pytest.raises(ImageTooLargeError) as info:
        decode_rgb(bomb)
    err = info.value
    assert (err.width, err.height, err.pixels) == (20000, 20000, 400_000_000)
    assert err.limit == DEFAULT_MAX_PIXELS and err.format == "png"
    assert "20000x20000" in str(err) and "40 megapixels" in str(err)
    assert isinstance(err, ImageDecodeError) and isinstance(err, ValueError)
    # Decoding would take over a gigabyte (peak resident size only ever grows).
    assert _rss_mb() - before < 100


@pytest.mark.parametrize(
    "header",
    [
        # JPEG: SOI, then a baseline frame header announcing 60000 x 60000.
        b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60000, 60000) + b"\x03" + b"\x00" * 9,
        b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 30000, -30000),
        b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0),
        b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (16383).to_bytes(3, "little") * 2,
        b"P6\n100000 100000\n255\n",
    ],
    ids=["jpeg", "bmp", "gif", "webp", "ppm"],
)
def test_bombs_in_other_formats_are_refused(header: bytes) -> None:
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_rgb(header)


def test_limit_is_configurable_and_none_disables_it() -> None:
    data = _encoded(shape=(30, 40))
    with pytest.raises(ImageTooLargeError, match="40x30"):
        decode_rgb(data, max_pixels=1199)
    assert decode_rgb(data, max_pixels=1200).shape == (30, 40, 3)
    assert decode_rgb(data, max_pixels=None).shape == (30, 40, 3)
    for bad in (0, -5, True):
        with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
            decode_rgb(data, max_pixels=bad)


def test_check_pixels_for_arrays() -> None:
    check_pixels(100, 100, 10_000)
    check_pixels(10**6, 10**6, None)
    with pytest.raises(ImageTooLargeError, match=r"frame: image is 101x100") as info:
        check_pixels(101, 100, 10_000, "frame")
    assert info.value.format == "array"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_require_complete_refuses_cut_short_files(suffix: str) -> None:
    data = _encoded(suffix, (64, 64))
    cut = data[: len(data) * 2 // 3]
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_rgb(cut, require_complete=True, where="x" + suffix)
    assert decode_rgb(data, require_complete=True).shape == (64, 64, 3)


def test_corrupt_body_with_a_valid_header_is_a_decode_error() -> None:
    data = bytearray(_encoded(".png"))
    data[40:] = b"\x00" * (len(data) - 40)
    with pytest.raises(ImageDecodeError, match="not a decodable png image"):
        decode_rgb(bytes(data), where="upload")


def test_read_rgb_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(_encoded(".jpg"))
    assert read_rgb(good).shape == (30, 40, 3)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="is a directory"):
        read_rgb(tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"notes\.png: unrecognised image format"):
        read_rgb(text)
    with pytest.raises(ImageDecodeError, match="over the limit of 100"):
        read_rgb(good, max_bytes=100)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(8000, 8000))
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: image is 8000x8000"):
        read_rgb(bomb)


# --- fuzz: every input ends in an image or an ImageDecodeError, never anything else -----------

SEEDS = [_encoded(s, (23, 31)) for s in (".png", ".jpg", ".bmp", ".gif", ".webp", ".tif", ".ppm")]
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _decode_or_refuse(data: bytes) -> None:
    try:
        rgb = decode_rgb(data, max_pixels=1_000_000)
    except ImageDecodeError as exc:
        assert str(exc)
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.shape[0] * rgb.shape[1] <= 1_000_000


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_refuse(data)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=12),
    cut=st.integers(0, 4096),
)
def test_fuzz_mutated_images(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for at, value in edits:
        data[at % len(data)] = value
    _decode_or_refuse(bytes(data[: max(1, len(data) - cut)]))


@FUZZ
@given(
    kind=st.sampled_from(["png", "jpeg", "bmp", "gif", "webp", "ppm"]),
    width=st.integers(0, 2**32 - 1),
    height=st.integers(0, 2**32 - 1),
)
def test_fuzz_headers_announcing_any_size(kind: str, width: int, height: int) -> None:
    """Crafted headers with any size: refused unless small, and never a large allocation."""
    w16, h16 = width & 0xFFFF, height & 0xFFFF
    header = {
        "png": png_bomb(1, 1)[:16] + struct.pack(">II", width, height) + b"\x08\x00\x00\x00\x00",
        "jpeg": b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", h16, w16) + b"\x03" * 10,
        "bmp": b"BM" + b"\x00" * 12 + struct.pack("<III", 40, width, height),
        "gif": b"GIF89a" + struct.pack("<HHBBB", w16, h16, 0, 0, 0),
        "webp": b"RIFF\x00\x00\x00\x00WEBPVP8X"
        + b"\x00" * 8
        + (width & 0xFFFFFF).to_bytes(3, "little")
        + (height & 0xFFFFFF).to_bytes(3, "little"),
        "ppm": f"P6\n{width} {height}\n255\n".encode(),
    }[kind]
    before = _rss_mb()
    _decode_or_refuse(header)
    assert _rss_mb() - before < 64


def test_fuzz_memory_stays_bounded() -> None:
    # A whole fuzz pass above must not have grown the process by anything like a bomb's size.
    assert _rss_mb() < 1024


def test_png_bomb_helper_is_a_real_png() -> None:
    small = png_bomb(7, 5)
    assert decode_rgb(small).shape == (5, 7, 3)
    with pytest.raises(ValueError, match="width and height"):
        png_bomb(0, 5)
