"""68-point face landmarks at deployment, for models trained with landmark AU maps (no torch).

A model whose metadata says ``fer.au_source = "landmarks"`` was trained with an AU map painted
from each face's own landmarks; :class:`~fer_export.session.FERSession` gives it the same at
inference (:meth:`fer_export.contract.ModelContract.landmark_attention`) and needs a landmark
finder for that: a callable ``rgb face crop (H, W, 3) uint8 -> (68, 2) float array (x, y
pixels of the crop) or None`` (no face found). Pass your own as ``FERSession(landmarks=...)``,
or let :func:`find_landmarks` pick an installed one, in this order:

* ``dlib`` with a 68-point shape predictor file (``shape_predictor_68_face_landmarks.dat``)
  named by ``$CAPSNET_DLIB_LANDMARKS`` (or ``dlib_model=``) -- no torch needed;
* ``face_alignment`` (``pip install face-alignment``; brings torch and downloads its networks
  on first use).

Neither is a dependency of fer-export: they are imported by name (``importlib``) when looked
for, the same plug-ins and environment variable capsnet-model uses in training. Without one,
:func:`find_landmarks` raises :class:`LandmarksUnavailableError` saying what to install.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

__all__ = [
    "DLIB_ENV",
    "LandmarkFinder",
    "LandmarksUnavailableError",
    "find_landmarks",
]

#: The environment variable naming dlib's 68-point shape predictor file (capsnet-model's too).
DLIB_ENV = "CAPSNET_DLIB_LANDMARKS"
BACKENDS = ("dlib", "face_alignment")

#: ``rgb face crop (H, W, 3) uint8 -> (68, 2) float array or None``.
LandmarkFinder: TypeAlias = Callable[[np.ndarray], "np.ndarray | None"]

INSTALL_HINT = (
    f"install dlib and point ${DLIB_ENV} at a 68-point shape predictor "
    "(shape_predictor_68_face_landmarks.dat), or pip install face-alignment"
)


class LandmarksUnavailableError(ValueError):
    """A model needs per-face landmarks and no landmark finder is installed or given;
    ``reasons`` says why each finder was not usable."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _largest(faces: list[Any]) -> np.ndarray | None:
    """The face whose landmarks span the largest box, as (68, 2) float32 (None if none)."""
    shaped = [np.asarray(f, dtype=np.float32)[:, :2] for f in faces if f is not None]
    shaped = [f for f in shaped if f.shape == (68, 2)]
    if not shaped:
        return None
    return max(shaped, key=lambda f: float(np.prod(f.max(axis=0) - f.min(axis=0))))


class DlibLandmarks:
    """Landmarks from dlib: its frontal face detector on the crop (the crop itself as the face
    rectangle when it finds none: the crop already is a detected face) + a 68-point shape
    predictor; the largest face."""

    name = "dlib"

    def __init__(self, module: Any, model_path: str) -> None:
        if not os.path.isfile(model_path):
            raise LandmarksUnavailableError(
                f"dlib shape predictor file not found: {model_path} (${DLIB_ENV})"
            )
        self._module = module
        self._faces = module.get_frontal_face_detector()
        self._shape = module.shape_predictor(model_path)

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        rects = list(self._faces(crop, 0))
        if not rects:
            height, width = crop.shape[:2]
            rects = [self._module.rectangle(0, 0, width - 1, height - 1)]
        faces = []
        for rect in rects:
            shape = self._shape(crop, rect)
            faces.append([[shape.part(i).x, shape.part(i).y] for i in range(68)])
        return _largest(faces)


class FaceAlignmentLandmarks:
    """Landmarks from the ``face_alignment`` package (largest face in the crop)."""

    name = "face_alignment"

    def __init__(self, module: Any, device: str = "cpu") -> None:
        kinds = module.LandmarksType
        kind = getattr(kinds, "TWO_D", None) or kinds._2D  # renamed in face_alignment 1.4
        self._model = module.FaceAlignment(kind, device=device)

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        faces = self._model.get_landmarks_from_image(crop)
        return _largest(list(faces or []))


def find_landmarks(
    prefer: str | None = None, *, dlib_model: str | None = None, device: str = "cpu"
) -> DlibLandmarks | FaceAlignmentLandmarks:
    """The first installed landmark finder (``prefer`` -- ``"dlib"`` or ``"face_alignment"``
    -- only, if given): dlib when ``dlib_model`` or ``$CAPSNET_DLIB_LANDMARKS`` names its
    shape predictor, else face_alignment (on ``device``).

    Raises :class:`LandmarksUnavailableError` naming why each was not usable and what to
    install; ValueError for an unknown ``prefer``.
    """
    if prefer is not None and prefer not in BACKENDS:
        raise ValueError(f"unknown landmark finder {prefer!r}, expected one of {BACKENDS}")
    reasons: list[str] = []
    for backend in [prefer] if prefer else list(BACKENDS):
        module = _optional(backend)
        if module is None:
            reasons.append(f"{backend} is not installed")
            continue
        if backend == "face_alignment":
            return FaceAlignmentLandmarks(module, device=device)
        path = dlib_model or os.environ.get(DLIB_ENV)
        if not path:
            reasons.append(f"dlib is installed but ${DLIB_ENV} names no shape predictor file")
            continue
        if not os.path.isfile(path):
            reasons.append(f"dlib's shape predictor {path} (${DLIB_ENV}) does not exist")
            continue
        return DlibLandmarks(module, path)
    raise LandmarksUnavailableError(
        f"no 68-point landmark finder available ({'; '.join(reasons)}): {INSTALL_HINT}",
        tuple(reasons),
    )
