"""68-point landmark detectors, used for landmark-based AU maps when one is installed.

capsnet-model depends on none of them. :func:`find_detector` looks for, in order:

* ``face_alignment`` (``pip install face-alignment``; downloads its networks on first use):
  ``FaceAlignment(LandmarksType.TWO_D, device=...)``;
* ``dlib`` with a 68-point shape predictor file (``shape_predictor_68_face_landmarks.dat``)
  given as ``dlib_model=`` or in the ``CAPSNET_DLIB_LANDMARKS`` environment variable.

The detector found is a callable ``(index, image) -> (68, 2) float32 or None`` (the largest
face's iBUG landmarks as (x, y) pixels of ``image``, an RGB uint8 array), the signature
:class:`capsnet_model.data.FaceTensors` takes as ``landmarks=``. The libraries are imported by
name at run time (``importlib``): they are plug-ins the user installs, not dependencies.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

DLIB_ENV = "CAPSNET_DLIB_LANDMARKS"
BACKENDS = ("face_alignment", "dlib")

Detector = Callable[[int, np.ndarray], "np.ndarray | None"]


class NoLandmarkDetector(ValueError):
    """No usable landmark detector is installed."""


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _largest(faces: list[np.ndarray]) -> np.ndarray | None:
    """The face whose landmarks span the largest box, as (68, 2) float32."""
    shaped = [np.asarray(f, dtype=np.float32)[:, :2] for f in faces if f is not None]
    shaped = [f for f in shaped if f.shape == (68, 2)]
    if not shaped:
        return None
    return max(shaped, key=lambda f: float(np.prod(f.max(axis=0) - f.min(axis=0))))


class FaceAlignmentDetector:
    """Landmarks from the ``face_alignment`` package (largest face)."""

    name = "face_alignment"

    def __init__(self, module: Any, device: str = "cpu") -> None:
        kinds = module.LandmarksType
        kind = getattr(kinds, "TWO_D", None) or kinds._2D  # renamed in 1.4
        self._model = module.FaceAlignment(kind, device=device)

    def __call__(self, index: int, image: np.ndarray) -> np.ndarray | None:
        faces = self._model.get_landmarks_from_image(image)
        return _largest(list(faces or []))


class DlibDetector:
    """Landmarks from dlib's frontal face detector + a 68-point shape predictor (largest)."""

    name = "dlib"

    def __init__(self, module: Any, model_path: str) -> None:
        if not os.path.isfile(model_path):
            raise NoLandmarkDetector(f"dlib shape predictor file not found: {model_path}")
        self._faces = module.get_frontal_face_detector()
        self._shape = module.shape_predictor(model_path)

    def __call__(self, index: int, image: np.ndarray) -> np.ndarray | None:
        faces = []
        for rect in self._faces(image, 0):
            shape = self._shape(image, rect)
            faces.append(np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)]))
        return _largest(faces)


def find_detector(
    prefer: str | None = None, *, device: str = "cpu", dlib_model: str | None = None
) -> FaceAlignmentDetector | DlibDetector:
    """The first installed detector (``prefer`` first, if given); raises
    :class:`NoLandmarkDetector` saying what to install when there is none."""
    if prefer is not None and prefer not in BACKENDS:
        raise ValueError(f"unknown landmark detector {prefer!r}; valid: {', '.join(BACKENDS)}")
    order = [prefer] if prefer else list(BACKENDS)
    reasons = []
    for backend in order:
        module = _optional(backend)
        if module is None:
            reasons.append(f"{backend} is not installed")
            continue
        if backend == "face_alignment":
            return FaceAlignmentDetector(module, device=device)
        path = dlib_model or os.environ.get(DLIB_ENV)
        if not path:
            reasons.append(f"dlib needs a 68-point shape predictor: dlib_model= or ${DLIB_ENV}")
            continue
        return DlibDetector(module, path)
    raise NoLandmarkDetector(
        "no 68-point landmark detector available ("
        + "; ".join(reasons)
        + "): pip install face-alignment, or install dlib and point "
        + f"${DLIB_ENV} at shape_predictor_68_face_landmarks.dat; or pass landmarks= "
        "yourself, or use attention='template' for aligned faces"
    )
