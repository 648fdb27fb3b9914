"""Faces to predictions: boxes -> crops -> the contract's preprocessing -> scores -> labels.

:func:`predict_images` takes decoded RGB images, the face boxes to use (or a detector to find
them), the model's :class:`~fer_export.contract.ModelContract` and a ``run`` callable (batch in,
scores out: :meth:`fer_export.runtime.FERSession.run`), and runs every face of every image in
one batch. It decodes nothing and owns no detector: both come from the caller
(:class:`~fer_export.runtime.FERSession` decodes with :func:`fer_export.faces.decode_image` and
passes its own detector unless given another).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import cv2
import numpy as np

from fer_export.contract import ModelContract
from fer_export.faces import Box, Detector, clip_box, crop_with_margin

__all__ = ["FacesArg", "Prediction", "check_rgb", "face_input", "per_image", "predict_images"]

#: ``"detect"``, ``"whole"`` or a list of ``(x, y, w, h)`` boxes.
FacesArg: TypeAlias = str | Sequence[Sequence[int]]
Runner: TypeAlias = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One face's result.

    ``box``: the face ``(x, y, w, h)`` in the original image (clipped to it); ``crop_box``: the
    region actually fed to the model (``box`` plus the contract's ``face_margin``, clipped);
    ``label``/``label_index``/``score``: the top class; ``scores``: every label's score.
    """

    box: Box
    label: str
    label_index: int
    score: float
    scores: dict[str, float]
    crop_box: Box = field(default=(0, 0, 0, 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (boxes as lists)."""
        return {
            "box": list(self.box),
            "crop_box": list(self.crop_box),
            "label": self.label,
            "label_index": self.label_index,
            "score": self.score,
            "scores": dict(self.scores),
        }


def check_rgb(image: Any, index: int = 0) -> np.ndarray:
    """``image`` itself if it is a decoded RGB ``uint8`` ``(H, W, 3)`` array; ValueError naming
    ``index`` and what it got otherwise (no copy, no conversion: that is
    :func:`fer_export.faces.decode_image`'s job)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image {index} must be a decoded RGB uint8 (H, W, 3) array, got "
            f"{type(image).__name__} (decode it with fer_export.faces.decode_image)"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.size:
        raise ValueError(
            f"image {index} must be a decoded RGB uint8 (H, W, 3) array, got {image.dtype} "
            f"{image.shape} (decode it with fer_export.faces.decode_image)"
        )
    return image


def per_image(faces: FacesArg | Sequence[FacesArg], count: int) -> list[FacesArg]:
    """``faces`` as one entry per image: ``"detect"``/``"whole"`` repeated, or the sequence
    itself when it has ``count`` entries (ValueError otherwise)."""
    if isinstance(faces, str):
        return [faces] * count
    entries = list(faces)
    if len(entries) != count:
        raise ValueError(
            f"faces must be 'detect', 'whole' or one entry per image: got {len(entries)} "
            f"entries for {count} images"
        )
    return entries  # type: ignore[return-value]


def _face_boxes(rgb: np.ndarray, faces: FacesArg, detector: Detector) -> list[tuple[Box, Box]]:
    """``(box as given, box clipped to the image)`` for each face; the margin is taken from
    the box as given, so a face running off the image keeps its proportions."""
    height, width = rgb.shape[:2]
    if isinstance(faces, str):
        if faces == "whole":
            return [((0, 0, width, height), (0, 0, width, height))]
        if faces != "detect":
            raise ValueError(f"faces must be 'detect', 'whole' or a list of boxes, got {faces!r}")
        faces = detector(rgb)
    out: list[tuple[Box, Box]] = []
    for b in faces:
        if isinstance(b, str) or len(b) != 4:
            raise ValueError(f"each face box must be (x, y, w, h), got {b!r}")
        x, y, w, h = (round(float(v)) for v in b)
        out.append(((x, y, w, h), clip_box((x, y, w, h), width, height)))
    return out


def face_input(
    rgb: np.ndarray, box: Box, contract: ModelContract, *, whole: bool = False
) -> tuple[np.ndarray, Box]:
    """``(face, crop box)``: ``box`` grown by the contract's ``face_margin`` (none for the
    whole image), cut out and resized to ``(S, S, 3)`` uint8 in the contract's channel order."""
    margin = 0.0 if whole else contract.face_margin
    crop, crop_box = crop_with_margin(rgb, box, margin)
    s = contract.input_size
    h, w = crop.shape[:2]
    interpolation = cv2.INTER_AREA if (h > s or w > s) else cv2.INTER_LINEAR
    face = cv2.resize(crop, (s, s), interpolation=interpolation)
    if contract.channel_order == "BGR":
        face = face[:, :, ::-1]
    return np.ascontiguousarray(face), crop_box


def _predictions(
    scores: np.ndarray, labels: Sequence[str], boxes: Sequence[tuple[Box, Box]]
) -> list[Prediction]:
    out = []
    for row, (box, crop_box) in zip(scores, boxes, strict=True):
        k = int(np.argmax(row))
        out.append(
            Prediction(
                box=box,
                label=labels[k],
                label_index=k,
                score=float(row[k]),
                scores={label: float(v) for label, v in zip(labels, row, strict=True)},
                crop_box=crop_box,
            )
        )
    return out


def predict_images(
    images: Iterable[np.ndarray],
    faces: Sequence[FacesArg],
    *,
    contract: ModelContract,
    run: Runner,
    detector: Detector,
) -> list[list[Prediction]]:
    """One (possibly empty) list of predictions per image, every face run in one ``run`` call.

    ``images``: decoded RGB ``uint8`` ``(H, W, 3)`` arrays (:func:`check_rgb`), taken one at a
    time (a generator that decodes them keeps one full image in memory at once, plus the
    crops); ``faces``: one entry per image (:func:`per_image`) -- ``"detect"`` (``detector``'s
    boxes), ``"whole"`` or boxes; ``run``: preprocessed ``(N, 3, S, S)`` float32 -> ``(N, C)``
    scores.
    """
    crops: list[np.ndarray] = []
    owners: list[tuple[int, Box, Box]] = []
    count = 0
    for index, (image, face_arg) in enumerate(zip(images, faces, strict=True)):
        rgb = check_rgb(image, index)
        whole = isinstance(face_arg, str) and face_arg == "whole"
        for raw, box in _face_boxes(rgb, face_arg, detector):
            face, crop_box = face_input(rgb, raw, contract, whole=whole)
            crops.append(face)
            owners.append((index, box, crop_box))
        count += 1
    results: list[list[Prediction]] = [[] for _ in range(count)]
    if not crops:
        return results
    scores = run(contract.preprocess(np.stack(crops)))
    preds = _predictions(scores, contract.labels, [(b, c) for _, b, c in owners])
    for (index, _, _), pred in zip(owners, preds, strict=True):
        results[index].append(pred)
    return results
