"""Installed landmark detectors (face_alignment, dlib) behind one callable; fakes stand in for
the libraries, which are not installed here (their networks need downloads)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from capsnet_model.attention import landmark_attention_map, mean_face_template
from capsnet_model.data import FaceTensors, Preprocess
from capsnet_model.landmarks import (
    DLIB_ENV,
    DlibDetector,
    FaceAlignmentDetector,
    NoLandmarkDetector,
    find_detector,
)
from capsnet_model.synthetic import SyntheticFaces

SMALL = mean_face_template() * 20 + 5  # a 20 px face
LARGE = mean_face_template() * 50 + 10  # a 50 px face


def fake_face_alignment(faces: list[np.ndarray] | None) -> types.ModuleType:
    module = types.ModuleType("face_alignment")

    class LandmarksType:
        TWO_D = "2D"

    class FaceAlignment:
        def __init__(self, kind: str, device: str = "cpu") -> None:
            assert kind == "2D" and device == "cpu"

        def get_landmarks_from_image(self, image: np.ndarray) -> list[np.ndarray] | None:
            assert image.dtype == np.uint8 and image.shape[2] == 3
            return faces

    module.LandmarksType = LandmarksType  # type: ignore[attr-defined]
    module.FaceAlignment = FaceAlignment  # type: ignore[attr-defined]
    return module


def fake_dlib(faces: list[np.ndarray]) -> types.ModuleType:
    module = types.ModuleType("dlib")

    class Point:
        def __init__(self, x: float, y: float) -> None:
            self.x, self.y = round(x), round(y)

    class Shape:
        def __init__(self, points: np.ndarray) -> None:
            self.points = points

        def part(self, i: int) -> Point:
            return Point(*self.points[i])

    module.get_frontal_face_detector = lambda: (  # type: ignore[attr-defined]
        lambda image, upsample: list(range(len(faces)))
    )
    module.shape_predictor = lambda path: (  # type: ignore[attr-defined]
        lambda image, rect: Shape(faces[rect])
    )
    return module


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_face_alignment_largest_face(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "face_alignment", fake_face_alignment([SMALL, LARGE]))
    detector = find_detector()
    assert isinstance(detector, FaceAlignmentDetector)
    points = detector(0, np.zeros((64, 64, 3), np.uint8))
    assert points is not None and points.dtype == np.float32
    np.testing.assert_allclose(points, LARGE, atol=1e-5)


def test_face_alignment_no_face(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "face_alignment", fake_face_alignment(None))
    assert find_detector()(0, np.zeros((64, 64, 3), np.uint8)) is None


def test_dlib_needs_a_model_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    block(monkeypatch, "face_alignment")
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib([SMALL, LARGE]))
    monkeypatch.delenv(DLIB_ENV, raising=False)
    with pytest.raises(NoLandmarkDetector, match="shape predictor"):
        find_detector()
    model = tmp_path / "shape_predictor_68_face_landmarks.dat"
    with pytest.raises(NoLandmarkDetector, match="not found"):
        find_detector(dlib_model=str(model))
    model.write_bytes(b"x")
    monkeypatch.setenv(DLIB_ENV, str(model))
    detector = find_detector()
    assert isinstance(detector, DlibDetector)
    np.testing.assert_allclose(detector(0, np.zeros((64, 64, 3), np.uint8)), np.round(LARGE))


def test_nothing_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "face_alignment", "dlib")
    with pytest.raises(NoLandmarkDetector, match="pip install face-alignment"):
        find_detector()
    with pytest.raises(ValueError, match="unknown landmark detector 'mediapipe'"):
        find_detector("mediapipe")


def test_model_inputs_use_an_installed_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "face_alignment", fake_face_alignment([LARGE]))
    items = FaceTensors(SyntheticFaces(2, size=64), Preprocess(64), attention="landmarks")
    _, attention, _ = items[0]
    np.testing.assert_allclose(attention[0].numpy(), landmark_attention_map(LARGE, 64), atol=1e-6)
    assert items.fallbacks == 0
