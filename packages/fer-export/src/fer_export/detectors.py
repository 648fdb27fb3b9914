"""Face detectors chosen by name: OpenCV's Haar cascade or MediaPipe's BlazeFace.

* :func:`make_detector` turns a name from :data:`DETECTOR_CHOICES` into a thread-safe
  :class:`NamedDetector` (an ``rgb -> [(x, y, w, h), ...]`` callable, largest box first, like
  :class:`~fer_export.faces.FaceDetector`) that records which detector it runs
  (:attr:`NamedDetector.name`) and with which settings (:meth:`NamedDetector.describe`), so an
  output can say who found its boxes:

  - ``"haar"``: :class:`~fer_export.faces.FaceDetector`, OpenCV's frontal-face cascade; needs
    nothing beyond fer-export's own requirements;
  - ``"mediapipe"``: :class:`MediaPipeFaceDetector`, BlazeFace through
    ``mediapipe.solutions.face_detection`` (short- or full-range model, both shipped inside
    the mediapipe 0.10.x wheel). mediapipe is imported by name only when it is chosen, so
    fer-export never requires it; without it :class:`MediaPipeUnavailableError` says what to
    install;
  - ``"auto"``: mediapipe when it can be used here, else Haar
    (:attr:`NamedDetector.fallback_reason` says why it fell back).

* :func:`detector_name` names any detector a session may hold (``"custom"`` for a plain
  callable).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Final

import cv2
import numpy as np

from fer_export.faces import (
    CASCADE_FILE,
    DETECT_MAX_SIDE,
    Box,
    Detector,
    DetectorUnavailableError,
    FaceDetector,
    ThreadLocalDetector,
    as_rgb,
    clip_box,
    shrunk,
)

__all__ = [
    "DEFAULT_MEDIAPIPE_MODEL",
    "DEFAULT_MIN_CONFIDENCE",
    "DETECTOR_CHOICES",
    "DETECTOR_NAMES",
    "MEDIAPIPE_INSTALL_HINT",
    "MEDIAPIPE_MODELS",
    "MEDIAPIPE_VERSION",
    "DetectorUnavailableError",
    "MediaPipeFaceDetector",
    "MediaPipeUnavailableError",
    "NamedDetector",
    "UnknownDetectorError",
    "detector_name",
    "make_detector",
]

#: The detectors :func:`make_detector` builds.
DETECTOR_NAMES: Final = ("haar", "mediapipe")
#: What :func:`make_detector` accepts: ``"auto"`` and :data:`DETECTOR_NAMES`.
DETECTOR_CHOICES: Final = ("auto", *DETECTOR_NAMES)
#: BlazeFace models: ``short`` range (faces filling a good part of the frame, the selfie
#: model, 128 px input) and ``full`` range (smaller, farther faces, 192 px input).
MEDIAPIPE_MODELS: Final = ("short", "full")
DEFAULT_MEDIAPIPE_MODEL: Final = "short"
DEFAULT_MIN_CONFIDENCE: Final = 0.5
#: The mediapipe release this module was tested with: the last line whose wheel ships
#: ``mp.solutions.face_detection`` and the BlazeFace weights (1.x dropped both).
MEDIAPIPE_VERSION: Final = "0.10.18"
MEDIAPIPE_INSTALL_HINT: Final = (
    f'pip install "mediapipe=={MEDIAPIPE_VERSION}" (Python 3.9-3.12; it pins numpy<2 and '
    "protobuf<5, so it needs an environment of its own if yours has numpy 2). It brings "
    "opencv-contrib-python, which installs the same cv2 folder as fer-export's "
    "opencv-python-headless: keep the two at the same version, reinstall contrib last "
    "(pip install --force-reinstall --no-deps opencv-contrib-python==<the headless version>) "
    "and never uninstall one of them alone (that deletes cv2 for both)"
)
_MODEL_SELECTION: Final = {"short": 0, "full": 1}


class UnknownDetectorError(ValueError):
    """A detector name that is not one of :data:`DETECTOR_CHOICES`."""


class MediaPipeUnavailableError(DetectorUnavailableError, ImportError):
    """mediapipe is missing, broken, or a release without ``solutions.face_detection``.

    The message is ``reason`` (what is wrong here) followed by :data:`MEDIAPIPE_INSTALL_HINT`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: {MEDIAPIPE_INSTALL_HINT}")
        self.reason = reason


def _check_model(model: str) -> str:
    """``model`` if it is one of :data:`MEDIAPIPE_MODELS`, else ValueError."""
    if model not in MEDIAPIPE_MODELS:
        raise ValueError(
            f"mediapipe model must be one of {', '.join(MEDIAPIPE_MODELS)}, got {model!r}"
        )
    return model


def _check_confidence(min_confidence: float) -> float:
    """``min_confidence`` as a float in (0, 1], else ValueError."""
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, int | float):
        raise ValueError(f"min_confidence must be a number in (0, 1], got {min_confidence!r}")
    value = float(min_confidence)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"min_confidence must be in (0, 1], got {min_confidence!r}")
    return value


def _check_max_side(max_side: int | None) -> int | None:
    """``max_side`` if it is None or an int >= 32, else ValueError."""
    if max_side is not None and (isinstance(max_side, bool) or max_side < 32):
        raise ValueError(f"max_side must be >= 32 or None, got {max_side!r}")
    return max_side


def _load_face_detection() -> tuple[ModuleType, str]:
    """``mediapipe.solutions.face_detection`` and mediapipe's version, imported by name.

    Raises :class:`MediaPipeUnavailableError` (with :data:`MEDIAPIPE_INSTALL_HINT`) when
    mediapipe is not installed, fails to import (a numpy 2 or protobuf 5 environment breaks
    0.10.x's native parts) or lacks ``solutions.face_detection`` (1.x).
    """
    try:
        mp = importlib.import_module("mediapipe")
    except ModuleNotFoundError as exc:
        if exc.name not in (None, "mediapipe"):
            raise MediaPipeUnavailableError(
                f"mediapipe is installed but cannot be imported (its dependency {exc.name} "
                f"is missing: {exc})"
            ) from exc
        raise MediaPipeUnavailableError(
            "the mediapipe face detector needs mediapipe, which is not installed"
        ) from exc
    except Exception as exc:  # a broken native package can raise anything while importing
        raise MediaPipeUnavailableError(
            f"mediapipe is installed but cannot be imported ({type(exc).__name__}: {exc})"
        ) from exc
    version = str(getattr(mp, "__version__", "unknown"))
    face_detection = getattr(getattr(mp, "solutions", None), "face_detection", None)
    if face_detection is None:
        try:
            # Some releases load their solutions lazily.
            face_detection = importlib.import_module("mediapipe.solutions.face_detection")
        except Exception as exc:
            raise MediaPipeUnavailableError(
                f"mediapipe {version} has no mediapipe.solutions.face_detection (1.x dropped "
                "the solutions API and the BlazeFace weights it shipped)"
            ) from exc
    return face_detection, version


class MediaPipeFaceDetector:
    """Face detection with MediaPipe's BlazeFace (``mediapipe.solutions.face_detection``).

    ``model`` is ``"short"`` (default; faces that fill a good part of the image: portraits,
    webcams, face crops) or ``"full"`` (smaller faces farther away); ``min_confidence`` is
    BlazeFace's score threshold in (0, 1]. The model sees the whole image scaled to 128 px
    (short) or 192 px (full) on its longer side, so faces much smaller than about a tenth of
    the image are missed (Haar, which scans every scale, finds those more often).

    An image whose longer side exceeds ``max_side`` (default
    :data:`~fer_export.faces.DETECT_MAX_SIDE`, ``None``: never) is scaled down before it is
    handed to mediapipe: the model sees at most 192 px anyway, and mediapipe copies the whole
    image into its own frame first. Boxes are in the input image's pixels, clipped to it.

    One instance must not serve two threads at once (mediapipe's graph keeps per-call state);
    :func:`make_detector` gives each thread its own. Raises
    :class:`MediaPipeUnavailableError` without a usable mediapipe and :class:`ValueError` for
    bad settings.
    """

    name: Final = "mediapipe"

    def __init__(
        self,
        model: str = DEFAULT_MEDIAPIPE_MODEL,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        max_side: int | None = DETECT_MAX_SIDE,
    ) -> None:
        self.model = _check_model(model)
        self.min_confidence = _check_confidence(min_confidence)
        self.max_side = _check_max_side(max_side)
        face_detection, self.mediapipe_version = _load_face_detection()
        self._graph: Any = face_detection.FaceDetection(
            model_selection=_MODEL_SELECTION[self.model],
            min_detection_confidence=self.min_confidence,
        )

    def detect_scored(self, rgb: np.ndarray) -> list[tuple[Box, float]]:
        """``((x, y, w, h), score)`` for each face in ``rgb``, largest box first.

        ``rgb`` is ``uint8`` ``(H, W, 3)`` RGB (``(H, W)`` grayscale and RGBA are converted);
        anything else raises :class:`ValueError`. Boxes lying wholly outside the image are
        dropped; the others are clipped to it.
        """
        if self._graph is None:
            raise ValueError("this MediaPipeFaceDetector is closed")
        full = as_rgb(rgb)
        height, width = full.shape[:2]
        image, _ = shrunk(full, self.max_side)
        result = self._graph.process(image)
        found: list[tuple[Box, float]] = []
        for detection in getattr(result, "detections", None) or ():
            rel = detection.location_data.relative_bounding_box
            # Relative to the image mediapipe saw, which has the input's aspect ratio.
            box = (
                round(rel.xmin * width),
                round(rel.ymin * height),
                round(rel.width * width),
                round(rel.height * height),
            )
            try:
                clipped = clip_box(box, width, height)
            except ValueError:
                continue  # wholly outside the image, or empty
            score = float(detection.score[0]) if len(detection.score) else float("nan")
            found.append((clipped, score))
        found.sort(key=lambda item: (-item[0][2] * item[0][3], item[0][1], item[0][0]))
        return found

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Faces in ``rgb`` as ``(x, y, w, h)`` boxes, largest first (see :meth:`detect_scored`)."""
        return [box for box, _ in self.detect_scored(rgb)]

    __call__ = detect

    def settings(self) -> dict[str, Any]:
        """The settings to record next to the boxes: model, threshold, mediapipe's version."""
        return {
            "model": self.model,
            "min_confidence": self.min_confidence,
            "mediapipe": self.mediapipe_version,
        }

    def close(self) -> None:
        """Releases mediapipe's graph (later calls raise ValueError); closing twice is fine."""
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.close()

    def __enter__(self) -> MediaPipeFaceDetector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MediaPipeFaceDetector(model={self.model!r}, "
            f"min_confidence={self.min_confidence}, max_side={self.max_side})"
        )


class NamedDetector(ThreadLocalDetector):
    """A thread-safe detector that knows its name: one detector per thread, like its parent.

    Made by :func:`make_detector`, which builds the calling thread's detector at once, so a
    missing dependency fails there rather than on the first image. ``name`` is one of
    :data:`DETECTOR_NAMES`; ``settings`` what was chosen; ``fallback_reason`` why ``"auto"``
    did not give mediapipe (``None`` otherwise).
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], Detector],
        settings: Mapping[str, Any],
        fallback_reason: str | None = None,
        first: Detector | None = None,
    ) -> None:
        super().__init__(factory)
        self.name = name
        self.settings = dict(settings)
        self.fallback_reason = fallback_reason
        # The calling thread's detector: ``first`` when the caller already built it.
        self._local.detector = factory() if first is None else first

    def describe(self) -> dict[str, Any]:
        """What to record with an output: ``{"name": ..., **settings}`` (+ ``fallback``)."""
        out: dict[str, Any] = {"name": self.name, **self.settings}
        if self.fallback_reason is not None:
            out["fallback"] = self.fallback_reason
        return out

    def __repr__(self) -> str:
        return f"NamedDetector({self.describe()!r})"


def _haar(max_side: int | None) -> NamedDetector:
    """The Haar cascade as a :class:`NamedDetector` (default FaceDetector settings)."""

    def factory() -> FaceDetector:
        return FaceDetector(max_side=max_side)

    return NamedDetector(
        "haar",
        factory,
        {"opencv": cv2.__version__, "cascade": CASCADE_FILE, "max_side": max_side},
    )


def _mediapipe(model: str, min_confidence: float, max_side: int | None) -> NamedDetector:
    """BlazeFace as a :class:`NamedDetector`; MediaPipeUnavailableError without mediapipe."""

    def factory() -> MediaPipeFaceDetector:
        return MediaPipeFaceDetector(model, min_confidence, max_side)

    first = factory()
    settings = {**first.settings(), "max_side": max_side}
    return NamedDetector("mediapipe", factory, settings, first=first)


def make_detector(
    name: str = "auto",
    *,
    model: str = DEFAULT_MEDIAPIPE_MODEL,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    max_side: int | None = DETECT_MAX_SIDE,
) -> NamedDetector:
    """A thread-safe face detector chosen by ``name``, recording its name and settings.

    ``name``: ``"haar"``, ``"mediapipe"`` or ``"auto"`` (mediapipe when it imports and has
    ``solutions.face_detection``, else Haar; case and surrounding spaces are ignored).
    ``model`` (``"short"`` or ``"full"``) and ``min_confidence`` (in (0, 1]) configure
    mediapipe and are checked whichever detector is chosen (Haar does not use them);
    ``max_side`` bounds the image size either detector searches (``None``: no bound).

    Raises :class:`UnknownDetectorError` (a ValueError) for another name, ValueError for a
    bad setting, :class:`MediaPipeUnavailableError` (a
    :class:`~fer_export.faces.DetectorUnavailableError` and an ImportError) for
    ``"mediapipe"`` without a usable mediapipe, and DetectorUnavailableError when OpenCV
    cannot run the Haar cascade.
    """
    if not isinstance(name, str) or name.strip().lower() not in DETECTOR_CHOICES:
        raise UnknownDetectorError(
            f"unknown face detector {name!r}: expected one of {', '.join(DETECTOR_CHOICES)}"
        )
    choice = name.strip().lower()
    _check_model(model)
    min_confidence = _check_confidence(min_confidence)
    _check_max_side(max_side)
    if choice == "haar":
        return _haar(max_side)
    if choice == "mediapipe":
        return _mediapipe(model, min_confidence, max_side)
    try:
        return _mediapipe(model, min_confidence, max_side)
    except MediaPipeUnavailableError as exc:
        haar = _haar(max_side)
        haar.fallback_reason = exc.reason
        return haar


def detector_name(detector: object) -> str:
    """The name of ``detector`` to record: its ``name``, ``"haar"`` for Haar, else "custom".

    Knows :class:`NamedDetector` and :class:`MediaPipeFaceDetector` (their ``name``),
    :class:`~fer_export.faces.FaceDetector` and a
    :class:`~fer_export.faces.ThreadLocalDetector` of FaceDetectors (FERSession's default).
    """
    name = getattr(detector, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(detector, FaceDetector):
        return "haar"
    if isinstance(detector, ThreadLocalDetector) and detector.factory is FaceDetector:
        return "haar"
    return "custom"
