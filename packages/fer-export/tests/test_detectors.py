"""fer_export.detectors: the registry, its errors, "auto", and BlazeFace on real photos.

The first part runs everywhere: mediapipe is absent from the workspace (it pins numpy<2), so
its adapter is driven through a stand-in ``mediapipe`` module that answers like
``mp.solutions.face_detection``. The last part runs the real mediapipe 0.10.18 in the venv
that ``.ci/mediapipe-env`` builds (``FER_MEDIAPIPE_PYTHON``) on scikit-image's astronaut and
camera photos and matplotlib's grace_hopper.jpg, all shipped inside those wheels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from fer_export.detectors import (
    DETECTOR_CHOICES,
    MEDIAPIPE_VERSION,
    MediaPipeFaceDetector,
    MediaPipeUnavailableError,
    NamedDetector,
    UnknownDetectorError,
    detector_name,
    make_detector,
)
from fer_export.faces import DetectorUnavailableError, FaceDetector, ThreadLocalDetector

SRC = Path(__file__).resolve().parents[1] / "src" / "fer_export"


# -- a stand-in for mediapipe -----------------------------------------------------------------


class FakeFaceDetection:
    """Answers like ``mp.solutions.face_detection.FaceDetection``: ``detections`` with
    relative boxes and scores, the ones in ``BOXES`` (xmin, ymin, width, height, score)."""

    BOXES: ClassVar[list[tuple[float, float, float, float, float]]] = []
    made: ClassVar[list[FakeFaceDetection]] = []

    def __init__(self, model_selection: int = 0, min_detection_confidence: float = 0.5) -> None:
        self.model_selection = model_selection
        self.min_detection_confidence = min_detection_confidence
        self.seen: list[tuple[tuple[int, ...], int]] = []
        self.closed = False
        FakeFaceDetection.made.append(self)

    def process(self, image: np.ndarray) -> Any:
        assert not self.closed
        assert image.dtype == np.uint8 and image.ndim == 3 and image.flags.c_contiguous
        self.seen.append((image.shape, threading.get_ident()))
        detections = [
            types.SimpleNamespace(
                score=[score],
                location_data=types.SimpleNamespace(
                    relative_bounding_box=types.SimpleNamespace(xmin=x, ymin=y, width=w, height=h)
                ),
            )
            for x, y, w, h, score in self.BOXES
            if score >= self.min_detection_confidence
        ]
        return types.SimpleNamespace(detections=detections or None)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_mediapipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeFaceDetection]]:
    """A ``mediapipe`` module in sys.modules with ``solutions.face_detection``."""
    module = types.ModuleType("mediapipe")
    module.__version__ = "0.10.18"  # type: ignore[attr-defined]
    face_detection = types.SimpleNamespace(FaceDetection=FakeFaceDetection)
    module.solutions = types.SimpleNamespace(face_detection=face_detection)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mediapipe", module)
    monkeypatch.setattr(FakeFaceDetection, "BOXES", [])
    monkeypatch.setattr(FakeFaceDetection, "made", [])
    yield FakeFaceDetection


@pytest.fixture
def no_mediapipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import mediapipe`` fails as it does where it is not installed."""
    monkeypatch.setitem(sys.modules, "mediapipe", None)


def _broken_mediapipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    """A ``mediapipe`` package on sys.path whose ``__init__`` runs ``body``."""
    package = tmp_path / "mediapipe"
    package.mkdir()
    (package / "__init__.py").write_text(body)
    monkeypatch.delitem(sys.modules, "mediapipe", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))


# -- the registry -----------------------------------------------------------------------------


def test_choices() -> None:
    assert DETECTOR_CHOICES == ("auto", "haar", "mediapipe")


def test_haar_by_name_is_face_detector(
    face_scene: tuple[np.ndarray, tuple[int, int, int, int]],
) -> None:
    scene, _ = face_scene
    detector = make_detector("haar")
    assert isinstance(detector, NamedDetector) and isinstance(detector, ThreadLocalDetector)
    assert detector.name == "haar" and detector_name(detector) == "haar"
    assert detector(scene) == FaceDetector()(scene) and len(detector(scene)) == 1
    described = detector.describe()
    assert described["name"] == "haar" and described["cascade"].endswith(".xml")
    assert "fallback" not in described


@pytest.mark.parametrize("name", ["dlib", "", "haar2", "yunet"])
def test_unknown_name_lists_choices(name: str) -> None:
    with pytest.raises(UnknownDetectorError, match="expected one of auto, haar, mediapipe") as e:
        make_detector(name)
    assert repr(name) in str(e.value) and isinstance(e.value, ValueError)


def test_name_ignores_case_and_spaces(no_mediapipe: None) -> None:
    assert make_detector(" Haar ").name == "haar"
    with pytest.raises(MediaPipeUnavailableError):
        make_detector("MediaPipe")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "medium"}, "model must be one of short, full, got 'medium'"),
        ({"min_confidence": 0.0}, r"min_confidence must be in \(0, 1\], got 0.0"),
        ({"min_confidence": 1.5}, r"min_confidence must be in \(0, 1\], got 1.5"),
        ({"min_confidence": float("nan")}, r"min_confidence must be in \(0, 1\], got nan"),
        ({"min_confidence": "0.5"}, r"must be a number in \(0, 1\], got '0.5'"),
        ({"max_side": 8}, "max_side must be >= 32 or None, got 8"),
    ],
)
@pytest.mark.parametrize("name", ["haar", "auto", "mediapipe"])
def test_bad_settings_are_refused_for_every_name(
    name: str, options: dict[str, Any], message: str, no_mediapipe: None
) -> None:
    # Checked before anything is built, so a bad flag fails even where Haar is chosen.
    with pytest.raises(ValueError, match=message):
        make_detector(name, **options)


# -- mediapipe missing or unusable ------------------------------------------------------------


def test_mediapipe_missing_says_what_to_install(no_mediapipe: None) -> None:
    with pytest.raises(MediaPipeUnavailableError) as e:
        make_detector("mediapipe")
    message = str(e.value)
    assert message.startswith("the mediapipe face detector needs mediapipe, which is not installed")
    for needed in (
        f'pip install "mediapipe=={MEDIAPIPE_VERSION}"',
        "numpy<2",
        "opencv-contrib-python",
        "opencv-python-headless",
    ):
        assert needed in message
    # Callers may catch it as a detector problem or as an import problem.
    assert isinstance(e.value, DetectorUnavailableError) and isinstance(e.value, ImportError)
    assert e.value.reason == "the mediapipe face detector needs mediapipe, which is not installed"


def test_mediapipe_without_solutions_names_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("mediapipe")
    module.__version__ = "1.0.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mediapipe", module)
    with pytest.raises(MediaPipeUnavailableError, match=r"mediapipe 1\.0\.0 has no mediapipe"):
        MediaPipeFaceDetector()


def test_mediapipe_that_fails_to_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # What 0.10.x does next to numpy 2: its native part refuses to load.
    _broken_mediapipe(
        monkeypatch, tmp_path, "raise ImportError('numpy.core.multiarray failed to import')\n"
    )
    with pytest.raises(MediaPipeUnavailableError) as e:
        make_detector("mediapipe")
    assert "cannot be imported (ImportError: numpy.core.multiarray failed to import)" in str(
        e.value
    )


def test_mediapipe_missing_a_dependency(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _broken_mediapipe(monkeypatch, tmp_path, "import fer_no_such_dependency_xyz\n")
    with pytest.raises(MediaPipeUnavailableError, match="dependency fer_no_such_dependency_xyz"):
        make_detector("mediapipe")


# -- auto -------------------------------------------------------------------------------------


def test_auto_falls_back_to_haar_and_says_why(
    no_mediapipe: None, face_scene: tuple[np.ndarray, tuple[int, int, int, int]]
) -> None:
    scene, _ = face_scene
    detector = make_detector("auto")
    assert detector.name == "haar" and detector_name(detector) == "haar"
    assert detector.fallback_reason is not None and "not installed" in detector.fallback_reason
    assert "pip install" not in detector.fallback_reason  # the short reason, for a log line
    assert detector.describe()["fallback"] == detector.fallback_reason
    assert detector(scene) == FaceDetector()(scene)


def test_auto_is_the_default_and_falls_back_on_a_broken_mediapipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _broken_mediapipe(monkeypatch, tmp_path, "raise RuntimeError('protobuf too new')\n")
    detector = make_detector()
    assert detector.name == "haar"
    assert detector.fallback_reason is not None and "protobuf too new" in detector.fallback_reason


def test_auto_takes_mediapipe_when_it_imports(fake_mediapipe: type[FakeFaceDetection]) -> None:
    detector = make_detector("auto", model="full", min_confidence=0.7)
    assert detector.name == "mediapipe" and detector.fallback_reason is None
    assert detector.describe() == {
        "name": "mediapipe",
        "model": "full",
        "min_confidence": 0.7,
        "mediapipe": "0.10.18",
        "max_side": 2048,
    }
    (graph,) = fake_mediapipe.made  # built at once, in this thread
    assert graph.model_selection == 1 and graph.min_detection_confidence == 0.7


# -- the mediapipe adapter (through the stand-in) ---------------------------------------------


def test_boxes_in_pixels_largest_first_clipped(fake_mediapipe: type[FakeFaceDetection]) -> None:
    fake_mediapipe.BOXES = [
        (0.1, 0.2, 0.1, 0.1, 0.9),  # 20x10 px
        (0.5, 0.25, 0.25, 0.5, 0.8),  # 50x50 px
        (-0.05, 0.9, 0.2, 0.2, 0.95),  # crosses the left and bottom edges: clipped
        (1.2, 0.1, 0.1, 0.1, 0.99),  # wholly outside: dropped
        (0.3, 0.3, 0.2, 0.2, 0.4),  # under the threshold
    ]
    detector = MediaPipeFaceDetector(min_confidence=0.5)
    image = np.zeros((100, 200, 3), np.uint8)  # height 100, width 200
    # By area: 50x50, the clipped 30x10, then 20x10.
    assert detector(image) == [(100, 25, 50, 50), (0, 90, 30, 10), (20, 20, 20, 10)]
    scored = detector.detect_scored(image)
    assert [round(score, 2) for _, score in scored] == [0.8, 0.95, 0.9]
    assert detector.detect(np.zeros((100, 200), np.uint8)) == detector(image)  # grayscale


def test_no_faces_is_an_empty_list(fake_mediapipe: type[FakeFaceDetection]) -> None:
    assert make_detector("mediapipe")(np.zeros((64, 64, 3), np.uint8)) == []


def test_large_images_are_scaled_down_first(fake_mediapipe: type[FakeFaceDetection]) -> None:
    fake_mediapipe.BOXES = [(0.25, 0.5, 0.25, 0.25, 0.9)]
    detector = MediaPipeFaceDetector(max_side=1000)
    image = np.zeros((2000, 4000, 3), np.uint8)
    # Relative boxes map onto the full-size image.
    assert detector(image) == [(1000, 1000, 1000, 500)]
    (graph,) = fake_mediapipe.made
    assert graph.seen[-1][0] == (500, 1000, 3)
    assert MediaPipeFaceDetector(max_side=None)(image) == [(1000, 1000, 1000, 500)]
    assert fake_mediapipe.made[-1].seen[-1][0] == (2000, 4000, 3)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 2), np.uint8), np.zeros((0, 5, 3))],
)
def test_bad_images_are_value_errors(
    fake_mediapipe: type[FakeFaceDetection], bad: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="image"):
        make_detector("mediapipe")(bad)


def test_closed_detector_refuses(fake_mediapipe: type[FakeFaceDetection]) -> None:
    with MediaPipeFaceDetector() as detector:
        detector(np.zeros((8, 8, 3), np.uint8))
    assert fake_mediapipe.made[0].closed
    detector.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        detector(np.zeros((8, 8, 3), np.uint8))


def test_each_thread_gets_its_own_graph(fake_mediapipe: type[FakeFaceDetection]) -> None:
    fake_mediapipe.BOXES = [(0.25, 0.25, 0.5, 0.5, 0.9)]
    detector = make_detector("mediapipe")
    image = np.zeros((40, 40, 3), np.uint8)
    results: list[Sequence[Sequence[int]]] = []
    threads = [
        threading.Thread(target=lambda: results.extend(detector(image) for _ in range(3)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[(10, 10, 20, 20)]] * 9
    # The caller's graph (built by make_detector) plus one per worker thread; none shared.
    assert len(fake_mediapipe.made) == 4
    for graph in fake_mediapipe.made[1:]:
        assert len(graph.seen) == 3 and len({thread for _, thread in graph.seen}) == 1


# -- detector_name ----------------------------------------------------------------------------


def test_detector_name_of_what_a_session_may_hold(
    fake_mediapipe: type[FakeFaceDetection],
) -> None:
    assert detector_name(FaceDetector()) == "haar"
    assert detector_name(ThreadLocalDetector()) == "haar"  # FERSession's default
    assert detector_name(MediaPipeFaceDetector()) == "mediapipe"
    assert detector_name(make_detector("mediapipe")) == "mediapipe"
    assert detector_name(lambda rgb: [(0, 0, 1, 1)]) == "custom"
    assert detector_name(ThreadLocalDetector(lambda: FaceDetector())) == "custom"


# -- the real mediapipe, in its own venv ------------------------------------------------------

#: Face boxes (x, y, w, h) read off the photos by eye: cheek to cheek (ear to nose tip for
#: the camera operator's profile), hairline or hat brim to chin.
REFERENCE_FACES = {
    "astronaut": (185, 75, 85, 102),
    "grace_hopper": (172, 145, 180, 175),
    "camera": (185, 122, 72, 73),
}

_CHILD = r"""
import json, sys, threading
from pathlib import Path

import matplotlib.cbook
import numpy as np
from PIL import Image
from skimage import data

import fer_export.detectors as det

with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
    grace = np.asarray(Image.open(fh).convert("RGB"))
images = {"astronaut": data.astronaut(), "grace_hopper": grace, "camera": data.camera(),
          "blank": np.full((300, 400, 3), 128, np.uint8)}
out = {"module": det.__file__, "faces": str(Path(det.__file__).with_name("faces.py"))}
for model in det.MEDIAPIPE_MODELS:
    with det.MediaPipeFaceDetector(model=model) as one:
        out[model] = {name: one.detect_scored(image) for name, image in images.items()}
auto = det.make_detector("auto")
out["auto"] = auto.describe()
found = []
def work():
    found.extend(auto(images["astronaut"]) for _ in range(3))
threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["threads"] = found
json.dump(out, sys.stdout)
"""


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def real_mediapipe() -> dict[str, Any]:
    """What the child script above prints, run by FER_MEDIAPIPE_PYTHON."""
    python = os.environ.get("FER_MEDIAPIPE_PYTHON")
    if not python:
        pytest.skip(
            "FER_MEDIAPIPE_PYTHON is not set: the real-mediapipe tests need the venv "
            "that .ci/mediapipe-env builds (export FER_MEDIAPIPE_PYTHON=$(.ci/mediapipe-env))"
        )
    if not Path(python).is_file():
        pytest.fail(f"FER_MEDIAPIPE_PYTHON={python} is not a file")
    # From another folder, so the child imports the installed fer-export, not this checkout.
    proc = subprocess.run(
        [python, "-c", _CHILD],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(python).parent,
    )
    if proc.returncode != 0:
        pytest.fail(f"{python} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_real_venv_runs_this_checkouts_detector(real_mediapipe: dict[str, Any]) -> None:
    for installed, ours in (
        (real_mediapipe["module"], SRC / "detectors.py"),
        (real_mediapipe["faces"], SRC / "faces.py"),
    ):
        assert Path(installed).read_bytes() == ours.read_bytes(), (
            f"{installed} is not this checkout's {ours.name}: rebuild with .ci/mediapipe-env"
        )


@pytest.mark.parametrize("model", ["short", "full"])
@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper", "camera"])
def test_real_mediapipe_finds_the_face(
    real_mediapipe: dict[str, Any], model: str, photo: str
) -> None:
    # camera: the operator's turned face, which the Haar cascade misses.
    found = real_mediapipe[model][photo]
    assert len(found) == 1, found
    (box, score) = found[0]
    assert score >= 0.5
    assert _iou(box, REFERENCE_FACES[photo]) >= 0.5, (box, REFERENCE_FACES[photo])


@pytest.mark.parametrize("model", ["short", "full"])
def test_real_mediapipe_finds_nothing_in_a_blank_image(
    real_mediapipe: dict[str, Any], model: str
) -> None:
    assert real_mediapipe[model]["blank"] == []


def test_real_auto_is_mediapipe_and_thread_safe(real_mediapipe: dict[str, Any]) -> None:
    described = real_mediapipe["auto"]
    assert described["name"] == "mediapipe" and described["mediapipe"] == MEDIAPIPE_VERSION
    assert "fallback" not in described
    expected = [box for box, _ in real_mediapipe["short"]["astronaut"]]
    assert real_mediapipe["threads"] == [expected] * 9
