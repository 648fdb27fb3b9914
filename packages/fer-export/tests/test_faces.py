"""Image decoding (with a fuzz), cropping and the Haar face detector."""

from __future__ import annotations

import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_export.faces import (
    DetectorUnavailableError,
    FaceDetector,
    ImageDecodeError,
    ImageTooLargeError,
    ThreadLocalDetector,
    crop_with_margin,
    decode_image,
)
from fer_images.testing import png_bomb


def _decode_or_reject(data: bytes) -> None:
    """decode_image gives a valid RGB image or ImageDecodeError, nothing else."""
    try:
        out = decode_image(data)
    except ImageDecodeError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] > 0 and out.shape[1] > 0 and out.flags.c_contiguous


# -- decode_image -----------------------------------------------------------------------------


def test_decode_png_is_rgb(png_bytes: bytes) -> None:
    bgr = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR)
    rgb = decode_image(png_bytes)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])


def test_decode_path_and_bytearray(tmp_path: Path, jpeg_bytes: bytes) -> None:
    path = tmp_path / "face.jpg"
    path.write_bytes(jpeg_bytes)
    a = decode_image(path)
    np.testing.assert_array_equal(a, decode_image(str(path)))
    np.testing.assert_array_equal(a, decode_image(bytearray(jpeg_bytes)))
    np.testing.assert_array_equal(a, decode_image(memoryview(jpeg_bytes)))


def test_decode_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        decode_image(tmp_path / "nope.png")


def test_decode_text_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(ImageDecodeError, match="notes.txt"):
        decode_image(path)


def test_decode_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        decode_image(b"")
    assert issubclass(ImageDecodeError, ValueError)


def test_decode_grayscale_and_rgba_encoded() -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    ok, buf = cv2.imencode(".png", gray)
    assert ok
    out = decode_image(buf.tobytes())
    assert out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out[:, :, 1], gray)
    bgra = np.zeros((5, 7, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 128  # B, R, alpha
    ok, buf = cv2.imencode(".png", bgra)
    assert ok
    out = decode_image(buf.tobytes())
    assert out.shape == (5, 7, 3)
    assert (out[..., 0] == 200).all() and (out[..., 2] == 10).all()


def test_decode_arrays() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(rgb), rgb)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(decode_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(decode_image(gray[:, :, None]), decode_image(gray))
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_image(rgba), rgb)
    np.testing.assert_array_equal(decode_image(rgb[:, ::-1]), rgb[:, ::-1])  # non-contiguous


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 3), np.uint16), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_decode_bad_arrays(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_image(array)


def test_decode_wrong_type() -> None:
    with pytest.raises(TypeError, match="int"):
        decode_image(3)  # type: ignore[arg-type]


def test_decode_fuzz_random_bytes() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(300):
        n = int(rng.integers(1, 600))
        _decode_or_reject(rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def test_decode_fuzz_random_bytes_with_image_magic(png_bytes: bytes, jpeg_bytes: bytes) -> None:
    """Valid headers followed by garbage reach deeper into the decoders."""
    rng = np.random.default_rng(99)
    for _ in range(100):
        head = png_bytes[:33] if rng.random() < 0.5 else jpeg_bytes[:20]
        tail = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        _decode_or_reject(head + tail)


def test_decode_fuzz_truncated_png(png_bytes: bytes) -> None:
    for n in range(1, len(png_bytes), 7):
        _decode_or_reject(png_bytes[:n])
    with pytest.raises(ImageDecodeError):
        decode_image(png_bytes[: len(png_bytes) // 3])


def test_decode_fuzz_truncated_jpeg(jpeg_bytes: bytes) -> None:
    for n in range(1, len(jpeg_bytes), 11):
        _decode_or_reject(jpeg_bytes[:n])
    with pytest.raises(ImageDecodeError):
        decode_image(jpeg_bytes[:100])


def test_decode_fuzz_bit_flips(png_bytes: bytes, jpeg_bytes: bytes) -> None:
    rng = np.random.default_rng(7)
    for data in (png_bytes, jpeg_bytes):
        for _ in range(60):
            buf = bytearray(data)
            for i in rng.integers(0, len(buf), int(rng.integers(1, 6))):
                buf[int(i)] = int(rng.integers(0, 256))
            _decode_or_reject(bytes(buf))


# -- crop_with_margin -------------------------------------------------------------------------


def test_crop_with_margin_inside() -> None:
    img = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    crop, box = crop_with_margin(img, (20, 30, 40, 20), 0.25)
    assert box == (10, 25, 60, 30)
    np.testing.assert_array_equal(crop, img[25:55, 10:70])


def test_crop_with_margin_clipped() -> None:
    img = np.zeros((50, 60, 3), np.uint8)
    crop, box = crop_with_margin(img, (-10, 40, 30, 30), 0.2)
    assert box == (0, 34, 26, 16)
    assert crop.shape == (16, 26, 3)


@pytest.mark.parametrize("box", [(0, 0, 0, 5), (0, 0, 5, -1), (100, 100, 5, 5), (1, 2, 3)])
def test_crop_bad_boxes(box: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="box"):
        crop_with_margin(np.zeros((50, 60, 3), np.uint8), box, 0.1)


# -- pixel limit (decompression bombs) --------------------------------------------------------


def test_decode_refuses_a_bomb_before_decoding(tmp_path: Path) -> None:
    bomb = png_bomb(20000, 20000)
    with pytest.raises(ImageTooLargeError, match="20000x20000") as info:
        decode_image(bomb)
    assert info.value.limit == 40_000_000 and isinstance(info.value, ImageDecodeError)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: image is 20000x20000"):
        decode_image(path)


def test_decode_limit_applies_to_arrays_and_can_be_lifted(png_bytes: bytes) -> None:
    with pytest.raises(ImageTooLargeError, match="image array: image is 64x48"):
        decode_image(np.zeros((48, 64, 3), np.uint8), max_pixels=1000)
    with pytest.raises(ImageTooLargeError, match="64x48"):
        decode_image(png_bytes, max_pixels=3071)
    assert decode_image(png_bytes, max_pixels=3072).shape == (48, 64, 3)
    assert decode_image(png_bytes, max_pixels=None).shape == (48, 64, 3)


# -- FaceDetector -----------------------------------------------------------------------------


def test_detector_finds_drawn_face(
    face_scene: tuple[np.ndarray, tuple[int, int, int, int]],
) -> None:
    scene, (fx, fy, fw, fh) = face_scene
    boxes = FaceDetector().detect(scene)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # The cascade's box sits on the drawn face (its centre inside, a similar size).
    assert fx < x + w / 2 < fx + fw and fy < y + h / 2 < fy + fh
    assert 0.6 * fw < w < 1.3 * fw
    assert all(isinstance(v, int) for v in boxes[0])


def test_detector_largest_first_and_callable(helpers: types.ModuleType) -> None:
    scene = np.full((360, 640, 3), (90, 100, 110), np.uint8)
    scene[20:120, 20:120] = helpers.draw_face(100)
    scene[60:310, 300:550] = helpers.draw_face(250)
    boxes = FaceDetector()(scene)
    assert len(boxes) == 2
    assert boxes[0][2] * boxes[0][3] > boxes[1][2] * boxes[1][3]
    assert boxes[0][0] > 250 and boxes[1][0] < 100


def test_detector_nothing_in_noise_or_flat() -> None:
    detector = FaceDetector()
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.zeros((50, 50), np.uint8)) == []


def test_detector_missing_cascade(tmp_path: Path) -> None:
    with pytest.raises(DetectorUnavailableError, match="opencv-python-headless"):
        FaceDetector(cascade=tmp_path / "missing.xml")


def test_detector_opencv5_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(DetectorUnavailableError, match=r"opencv-python-headless>=4.9,<5"):
        FaceDetector()


def test_detector_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="scale_factor"):
        FaceDetector(scale_factor=1.0)
    with pytest.raises(ValueError, match="uint8"):
        FaceDetector().detect(np.zeros((10, 10, 3), np.float32))


class _SpyClassifier:
    """Stands in for the cascade: records the image size it searched, returns one box."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        self.box = box
        self.shapes: list[tuple[int, ...]] = []
        self.min_sizes: list[tuple[int, int]] = []

    def detectMultiScale(self, gray: np.ndarray, **kw: object) -> np.ndarray:
        self.shapes.append(gray.shape)
        self.min_sizes.append(kw["minSize"])  # type: ignore[arg-type]
        return np.array([self.box])


def test_detector_searches_a_scaled_down_copy_of_large_images() -> None:
    detector = FaceDetector(max_side=1000)
    spy = _SpyClassifier((100, 50, 40, 40))
    detector._classifier = spy
    # 4000 x 2000: searched at 1000 x 500, boxes and min size scaled by 4.
    assert detector.detect(np.zeros((2000, 4000), np.uint8)) == [(400, 200, 160, 160)]
    assert spy.shapes == [(500, 1000)] and spy.min_sizes == [(6, 6)]
    # At or under max_side: searched as is.
    assert detector.detect(np.zeros((1000, 800), np.uint8)) == [(100, 50, 40, 40)]
    assert spy.shapes[-1] == (1000, 800) and spy.min_sizes[-1] == (24, 24)
    unlimited = FaceDetector(max_side=None)
    unlimited._classifier = spy
    unlimited.detect(np.zeros((3000, 100), np.uint8))
    assert spy.shapes[-1] == (3000, 100)
    with pytest.raises(ValueError, match="max_side"):
        FaceDetector(max_side=8)


def test_detector_finds_a_face_in_a_large_image_at_full_scale_coordinates(
    helpers: types.ModuleType,
) -> None:
    # A 3000 x 2400 scene with a 600 px face at (1800, 900); searched at 1000 px.
    scene = np.full((2400, 3000, 3), (90, 100, 110), np.uint8)
    scene[900:1500, 1800:2400] = helpers.draw_face(600)
    boxes = FaceDetector(max_side=1000).detect(scene)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert 1800 < x + w / 2 < 2400 and 900 < y + h / 2 < 1500
    assert 0.6 * 600 < w < 1.3 * 600


# -- ThreadLocalDetector ----------------------------------------------------------------------


def test_thread_local_detector_makes_one_detector_per_thread(
    face_scene: tuple[np.ndarray, tuple[int, int, int, int]],
) -> None:
    import threading

    scene, _ = face_scene
    made: list[tuple[int, FaceDetector]] = []

    def factory() -> FaceDetector:
        made.append((threading.get_ident(), detector := FaceDetector()))
        return detector

    local = ThreadLocalDetector(factory)
    assert made == []  # nothing is made before the first call
    expected = FaceDetector()(scene)
    assert local(scene) == expected and local(scene) == expected
    assert len(made) == 1  # the same thread keeps its detector
    results: list[object] = []
    # One thread after the other: each still gets a detector of its own.
    for _ in range(2):
        worker = threading.Thread(target=lambda: results.append(local(scene)))
        worker.start()
        worker.join()
    assert results == [expected, expected]
    assert len(made) == 3 and len({id(d) for _, d in made}) == 3
    assert "FaceDetector" in repr(ThreadLocalDetector())


def test_thread_local_detector_is_safe_under_concurrent_calls(helpers: types.ModuleType) -> None:
    from concurrent.futures import ThreadPoolExecutor

    scenes = []
    for i in range(6):
        scene = np.full((300, 420, 3), (90, 100, 110), np.uint8)
        scene[40 + 5 * i : 240 + 5 * i, 60 + 10 * i : 260 + 10 * i] = helpers.draw_face(200)
        scenes.append(scene)
    expected = [FaceDetector()(s) for s in scenes]
    assert all(expected)
    local = ThreadLocalDetector()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(local, scenes * 4))
    assert got == expected * 4


def test_thread_local_detector_factory_errors_surface_on_first_call(tmp_path: Path) -> None:
    local = ThreadLocalDetector(lambda: FaceDetector(cascade=tmp_path / "missing.xml"))
    with pytest.raises(DetectorUnavailableError, match="missing.xml"):
        local(np.zeros((40, 40, 3), np.uint8))
