"""FERSession's answers a user can act on: calibrated probabilities, abstention ("unknown"),
the data set in the metadata, and each face's own landmark AU map for models trained with
them (or a clear refusal when no landmark finder is installed)."""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fer_export.contract import UNKNOWN_LABEL, read_model
from fer_export.landmarks import (
    DLIB_ENV,
    DlibLandmarks,
    FaceAlignmentLandmarks,
    LandmarksUnavailableError,
    find_landmarks,
)
from fer_export.runtime import FERSession

torch = pytest.importorskip("torch", reason="exporting needs the export extra")
nn = torch.nn

SIZE = 64
THRESHOLD = 0.5
CALIBRATION = {
    "method": "temperature", "temperature": 0.8, "transform": "identity", "fitted_on": "val",
    "samples": 200, "ece_before": 0.12, "ece_after": 0.03, "nll_before": 0.9, "nll_after": 0.7,
}  # fmt: skip
ABSTENTION = {
    "threshold": THRESHOLD, "coverage_target": 0.9, "fitted_on": "val", "val_coverage": 0.91,
    "val_accuracy_covered": 0.95,
}  # fmt: skip


class ChannelLogits(nn.Module):
    """Logits from the crop's mean colour: class 1 ("happiness") = 20 (R - B), the others 0,
    so a red face is confidently class 1 and a grey one undecided among the other three."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes, self.image_size, self.use_attention = 4, SIZE, False
        w = torch.zeros(4, 3)
        w[1, 0], w[1, 2] = 20.0, -20.0
        self.register_buffer("w", w)

    def forward(self, image: Any, attention: Any = None) -> Any:
        return image.mean(dim=(2, 3)) @ self.w.T


def _scene(helpers: types.ModuleType, skin: tuple[int, int, int]) -> np.ndarray:
    """A 400 x 600 grey scene with one drawn 200 px face of ``skin`` colour."""
    scene = np.full((400, 600, 3), (120, 120, 120), np.uint8)
    scene[100:300, 200:400] = helpers.draw_face(200, skin)
    return scene


@pytest.fixture(scope="module")
def trusted_model(tmp_path_factory: pytest.TempPathFactory, helpers: types.ModuleType) -> Path:
    """An exported logit model with fer-train's annotations: data set, calibration,
    abstention at 0.5, provenance."""
    from fer_export.export import annotate_model, export_onnx

    path = tmp_path_factory.mktemp("trusted") / "model.onnx"
    export_onnx(ChannelLogits(), path, labels=helpers.LABELS)
    provenance = {
        "dataset": "rafdb", "synthetic": False, "sizes": {"train": 100, "val": 20, "test": 30},
        "split": "own", "test_accuracy": 0.9, "mean_class_accuracy": 0.85, "au_source": "none",
        "trained_with": "fer-train 0.1", "note": "trained on rafdb",
    }  # fmt: skip
    annotate_model(
        path, dataset="rafdb", calibration=CALIBRATION, abstention=ABSTENTION,
        provenance=provenance,
    )  # fmt: skip
    return path


def test_outside_contract_probabilities_unknown_and_dataset(
    trusted_model: Path, helpers: types.ModuleType, tmp_path: Path
) -> None:
    """The check from outside the repository: ``FERSession(path).predict(image)`` gives per
    face ``probabilities`` summing to 1 and a ``label`` that may be "unknown";
    ``FERSession(path).metadata`` has a key containing "dataset"."""
    confident = _scene(helpers, (230, 110, 80))  # red: class 1 far above the threshold
    undecided = _scene(helpers, (150, 150, 150))  # grey: three classes tie, 1/3 < 0.5
    png = tmp_path / "undecided.png"
    assert cv2.imwrite(str(png), cv2.cvtColor(undecided, cv2.COLOR_RGB2BGR))

    session = FERSession(trusted_model)
    assert any("dataset" in key for key in session.metadata)
    assert session.metadata["fer.dataset"] == "rafdb"
    for image, unknown in ((confident, False), (undecided, True), (str(png), True)):
        faces = session.predict(image)
        assert len(faces) == 1
        for face in faces:
            assert set(face.probabilities) == set(session.labels)
            assert all(isinstance(v, float) for v in face.probabilities.values())
            assert abs(sum(face.probabilities.values()) - 1.0) <= 1e-5
            assert (face.label == UNKNOWN_LABEL) is unknown
            assert face.abstained is unknown
            assert face.score == max(face.probabilities.values())
            assert (face.score < THRESHOLD) is unknown
            assert face.top_label == session.labels[face.label_index]
            if not unknown:
                assert face.label == face.top_label == "happiness" and face.score > 0.8


def test_prediction_fields_and_json(trusted_model: Path, helpers: types.ModuleType) -> None:
    session = FERSession(trusted_model)
    (face,) = session.predict(_scene(helpers, (150, 150, 150)))
    d = face.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {
        "box", "crop_box", "label", "label_index", "top_label", "score", "abstained",
        "probabilities", "raw_scores", "au_map",
    }  # fmt: skip
    assert "scores" not in d and not hasattr(face, "scores")
    assert d["label"] == UNKNOWN_LABEL and d["top_label"] in helpers.LABELS
    # raw_scores are the model's own logits; probabilities are softmax(logits / T).
    raw = np.array(list(face.raw_scores.values()))
    want = np.exp(raw / 0.8) / np.exp(raw / 0.8).sum()
    np.testing.assert_allclose(list(face.probabilities.values()), want, rtol=1e-6)
    assert face.au_map == "none"  # the model takes no AU map


def test_abstain_argument(trusted_model: Path, helpers: types.ModuleType) -> None:
    grey = _scene(helpers, (150, 150, 150))
    assert FERSession(trusted_model).abstain_threshold == THRESHOLD
    never = FERSession(trusted_model, abstain=None)
    assert never.abstain_threshold is None
    (face,) = never.predict(grey)
    assert face.label == face.top_label != UNKNOWN_LABEL and not face.abstained
    low = FERSession(trusted_model, abstain=0.2)  # grey's top probability is 1/3
    assert low.predict(grey)[0].label != UNKNOWN_LABEL
    high = FERSession(trusted_model, abstain=0.99)
    assert high.predict(_scene(helpers, (230, 110, 80)))[0].label == UNKNOWN_LABEL
    for bad in (1.5, -0.1, float("nan"), "always", True):
        with pytest.raises(ValueError, match="abstain"):
            FERSession(trusted_model, abstain=bad)  # type: ignore[arg-type]


def test_model_without_abstention_never_abstains(
    model_path: Path, helpers: types.ModuleType
) -> None:
    session = FERSession(model_path)
    assert session.abstain_threshold is None
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    (face,) = session.predict(rgb, faces="whole")
    assert not face.abstained and face.label == face.top_label
    assert abs(sum(face.probabilities.values()) - 1) <= 1e-5


# -- landmark AU maps ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landmarks_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """AVGGnet (VGG with AU attention) trained "with landmark maps" (its checkpoint says so),
    its last layer scaled up so its scores are O(1) and the AU map visibly matters; exported
    with the attention input. Returns (onnx path, torch model)."""
    from capsnet_model.checkpoint import ModelInfo, load_model, save_model
    from capsnet_model.data import Preprocess
    from capsnet_model.registry import create_model
    from fer_export.export import export_onnx

    folder = tmp_path_factory.mktemp("landmarks")
    torch.manual_seed(0)
    kwargs = {"image_size": SIZE, "width": 0.0625}
    model = create_model("avggnet", num_classes=7, **kwargs)
    with torch.no_grad():
        model.head[-1].weight.mul_(100.0)
    info = ModelInfo("avggnet", kwargs, preprocess=Preprocess(image_size=SIZE))
    info.attention = "landmarks"
    save_model(model, folder / "best.safetensors", info)
    path = export_onnx(folder / "best.safetensors", folder / "model.onnx", attention="input")
    loaded, _ = load_model(folder / "best.safetensors")
    return path, loaded.eval()


def _face_landmarks(offset: float = 0.0) -> np.ndarray:
    from capsnet_model.attention import mean_face_template

    # A face smaller than the template and off centre: its map differs from the template's.
    return mean_face_template() * SIZE * 0.7 + SIZE * 0.1 + offset


def _torch_scores(model: Any, rgb: np.ndarray, attention: np.ndarray, contract: Any) -> np.ndarray:
    x = torch.from_numpy(contract.preprocess(rgb[None]))
    with torch.no_grad():
        return np.asarray(model(x, torch.from_numpy(attention)[None, None]).numpy()[0])


def test_landmarks_model_onnx_equals_torch_with_landmark_map(
    landmarks_model: tuple[Path, Any],
) -> None:
    """Each face's map is painted from its landmarks by the model's fer.au_rule: ONNX Runtime
    gives what PyTorch gives when fed capsnet-model's landmark_attention_map."""
    from capsnet_model.attention import landmark_attention_map, template_attention_map

    path, model = landmarks_model
    contract = read_model(path).contract
    assert contract.au_source == "landmarks" and contract.attention == "input"
    assert len(contract.au_rule) == 20
    seen: list[tuple[int, ...]] = []

    def finder(crop: np.ndarray) -> np.ndarray:
        seen.append(crop.shape)
        return _face_landmarks()

    session = FERSession(path, landmarks=finder)
    assert session.au_source == "landmarks" and session.landmarks is finder
    rgb = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    (face,) = session.predict(rgb, faces="whole")
    assert seen == [(SIZE, SIZE, 3)] and face.au_map == "landmarks"
    got = np.array(list(face.raw_scores.values()))
    want = _torch_scores(model, rgb, landmark_attention_map(_face_landmarks(), SIZE), contract)
    template = _torch_scores(model, rgb, template_attention_map(SIZE), contract)
    atol = 1e-4  # export_onnx's tolerance
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    # The map matters here: the template's scores are far outside that tolerance.
    assert np.abs(template - want).max() > 20 * atol
    # A face whose landmarks are not found gets the template map, and says so.
    (fallback,) = FERSession(path, landmarks=lambda crop: None).predict(rgb, faces="whole")
    assert fallback.au_map == "template"
    np.testing.assert_allclose(list(fallback.raw_scores.values()), template, rtol=0, atol=atol)
    # The escape hatch: the template map, no finder needed.
    hatch = FERSession(path, au_source="template")
    assert hatch.au_source == "template" and hatch.landmarks is None
    (plain,) = hatch.predict(rgb, faces="whole")
    assert plain.au_map == "template"
    np.testing.assert_allclose(list(plain.raw_scores.values()), template, rtol=0, atol=atol)


def test_landmarks_per_face_in_one_batch(landmarks_model: tuple[Path, Any]) -> None:
    """Two faces of one image, each with its own landmarks (crop coordinates): each face's
    scores are those of its own map."""
    from capsnet_model.attention import landmark_attention_map

    path, model = landmarks_model
    contract = read_model(path).contract
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (SIZE, 2 * SIZE, 3), dtype=np.uint8)
    offsets = iter([0.0, 6.0])
    session = FERSession(path, landmarks=lambda crop: _face_landmarks(next(offsets)))
    boxes = [(0, 0, SIZE, SIZE), (SIZE, 0, SIZE, SIZE)]
    faces = session.predict(rgb, faces=boxes)
    assert [f.au_map for f in faces] == ["landmarks", "landmarks"]
    for face, offset in zip(faces, (0.0, 6.0), strict=True):
        x, y, w, h = face.crop_box
        crop = rgb[y : y + h, x : x + w]
        m = contract.landmark_attention(_face_landmarks(offset), crop.shape[:2])
        if crop.shape[:2] == (SIZE, SIZE):
            np.testing.assert_allclose(
                m, landmark_attention_map(_face_landmarks(offset), SIZE), atol=1e-5
            )
        face_rgb = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        want = _torch_scores(model, np.ascontiguousarray(face_rgb), m, contract)
        np.testing.assert_allclose(list(face.raw_scores.values()), want, rtol=0, atol=1e-4)


def test_bad_landmarks_from_the_finder(landmarks_model: tuple[Path, Any]) -> None:
    path, _ = landmarks_model
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    session = FERSession(path, landmarks=lambda crop: np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"returned shape \(5, 2\) for face 0 of image 0"):
        session.predict(rgb, faces="whole")
    nan = FERSession(path, landmarks=lambda crop: np.full((68, 2), np.nan))
    assert nan.predict(rgb, faces="whole")[0].au_map == "template"  # not found
    with pytest.raises(ValueError, match="landmarks must be a callable"):
        FERSession(path, landmarks="dlib")  # type: ignore[arg-type]


def _hide_finders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make dlib and face_alignment unimportable, whatever this machine has installed."""
    monkeypatch.setitem(sys.modules, "dlib", None)
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    monkeypatch.delenv(DLIB_ENV, raising=False)


def test_landmarks_model_refused_without_a_finder(
    landmarks_model: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = landmarks_model
    _hide_finders(monkeypatch)
    with pytest.raises(LandmarksUnavailableError) as info:
        FERSession(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert str(path) in message
    assert "trained with landmark AU maps" in message
    assert "dlib is not installed" in message and "face_alignment is not installed" in message
    assert "pip install face-alignment" in message and DLIB_ENV in message
    assert "au_source='template'" in message
    # The escape hatch and an explicit finder both work without any installed finder.
    assert FERSession(path, au_source="template").au_source == "template"
    assert FERSession(path, landmarks=lambda crop: None).au_source == "landmarks"


def test_au_source_argument(
    landmarks_model: tuple[Path, Any], trusted_model: Path, model_path: Path
) -> None:
    path, _ = landmarks_model
    with pytest.raises(ValueError, match="au_source must be None"):
        FERSession(path, au_source="mesh", landmarks=lambda crop: None)
    # A template model cannot be given landmark maps it was not trained with.
    with pytest.raises(ValueError, match="trained with 'template' AU maps"):
        FERSession(model_path, au_source="landmarks")
    template = FERSession(model_path, au_source="template", landmarks=lambda crop: None)
    assert template.au_source == "template" and template.landmarks is None
    assert FERSession(trusted_model).au_source == "none"


# -- landmark finders (dlib and face_alignment stand-ins) ------------------------------------


class _Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y


def _fake_dlib(found_faces: int) -> types.ModuleType:
    """A stand-in for dlib: the detector finds ``found_faces`` rectangles, each wider than the
    last; the shape predictor puts landmark i at (left + i width / 5, 2 i)."""
    module = types.ModuleType("dlib")
    module.calls = []  # type: ignore[attr-defined]

    class Rect:
        def __init__(self, left: int, top: int, right: int, bottom: int) -> None:
            self.left, self.top, self.right, self.bottom = left, top, right, bottom

    class Shape:
        def __init__(self, rect: Rect) -> None:
            self.rect = rect

        def part(self, i: int) -> _Point:
            r = self.rect
            return _Point(r.left + i * (r.right - r.left) / 5, 2 * i)

    module.rectangle = Rect  # type: ignore[attr-defined]
    module.get_frontal_face_detector = lambda: (  # type: ignore[attr-defined]
        lambda image, upsample: [Rect(k * 10, 0, k * 10 + 5 + k, 5) for k in range(found_faces)]
    )

    def shape_predictor(path: str) -> Callable[[np.ndarray, Rect], Shape]:
        module.calls.append(path)  # type: ignore[attr-defined]
        return lambda image, rect: Shape(rect)

    module.shape_predictor = shape_predictor  # type: ignore[attr-defined]
    return module


def test_find_landmarks_dlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hide_finders(monkeypatch)
    predictor = tmp_path / "shape_predictor_68_face_landmarks.dat"
    predictor.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "dlib", _fake_dlib(found_faces=2))
    with pytest.raises(LandmarksUnavailableError, match="names no shape predictor file"):
        find_landmarks()
    monkeypatch.setenv(DLIB_ENV, str(tmp_path / "missing.dat"))
    with pytest.raises(LandmarksUnavailableError, match="missing.dat .* does not exist"):
        find_landmarks()
    monkeypatch.setenv(DLIB_ENV, str(predictor))
    finder = find_landmarks()
    assert isinstance(finder, DlibLandmarks)
    assert sys.modules["dlib"].calls == [str(predictor)]  # type: ignore[attr-defined]
    points = finder(np.zeros((50, 40, 3), np.uint8))
    assert points is not None and points.shape == (68, 2) and points.dtype == np.float32
    # Of the two faces found, the second spans the larger box (left 10, width 6).
    np.testing.assert_allclose(points[5], [16.0, 10.0])
    # No face found in the crop: the crop itself (0, 0, 39, 49) is the face rectangle.
    monkeypatch.setitem(sys.modules, "dlib", _fake_dlib(found_faces=0))
    points = find_landmarks("dlib")(np.zeros((50, 40, 3), np.uint8))
    assert points is not None
    np.testing.assert_allclose(points[5], [39.0, 10.0])


def test_find_landmarks_face_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_finders(monkeypatch)
    module = types.ModuleType("face_alignment")
    made: list[tuple[Any, str]] = []

    class FaceAlignment:
        def __init__(self, kind: Any, device: str) -> None:
            made.append((kind, device))

        def get_landmarks_from_image(self, image: np.ndarray) -> list[np.ndarray] | None:
            if not image.any():
                return None
            small, large = np.ones((68, 2)), np.arange(136, dtype=float).reshape(68, 2)
            return [small, large]

    module.LandmarksType = types.SimpleNamespace(TWO_D="2D")  # type: ignore[attr-defined]
    module.FaceAlignment = FaceAlignment  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "face_alignment", module)
    finder = find_landmarks()  # dlib is hidden: face_alignment is next
    assert isinstance(finder, FaceAlignmentLandmarks) and made == [("2D", "cpu")]
    points = finder(np.ones((20, 20, 3), np.uint8))
    assert points is not None
    np.testing.assert_array_equal(points, np.arange(136, dtype=np.float32).reshape(68, 2))
    assert finder(np.zeros((20, 20, 3), np.uint8)) is None
    with pytest.raises(ValueError, match="unknown landmark finder 'mediapipe'"):
        find_landmarks("mediapipe")


def test_session_finds_an_installed_finder(
    landmarks_model: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path, _ = landmarks_model
    _hide_finders(monkeypatch)
    predictor = tmp_path / "sp.dat"
    predictor.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "dlib", _fake_dlib(found_faces=1))
    monkeypatch.setenv(DLIB_ENV, os.fspath(predictor))
    session = FERSession(path)
    assert isinstance(session.landmarks, DlibLandmarks)
    (face,) = session.predict(np.zeros((SIZE, SIZE, 3), np.uint8), faces="whole")
    assert face.au_map == "landmarks"
