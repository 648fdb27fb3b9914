"""Faces to predictions: boxes -> crops -> the contract's preprocessing -> scores ->
calibrated probabilities -> labels (or ``"unknown"``).

:func:`predict_images` takes decoded RGB images, the face boxes to use (or a detector to find
them), the model's :class:`~fer_export.contract.ModelContract` and a ``run`` callable (batch in,
scores out: :meth:`fer_export.runtime.FERSession.run`), and runs every face of every image in
one batch. The scores become probabilities with the contract's calibration
(:meth:`~fer_export.contract.ModelContract.probabilities`); a face whose top probability is below
the abstention threshold it is given gets the label :data:`~fer_export.contract.UNKNOWN_LABEL`.
Given a landmark finder, each face of an ``attention == "input"`` model gets the AU map of its
own landmarks (:meth:`~fer_export.contract.ModelContract.landmark_attention`), the template map
when none are found. It decodes nothing and owns no detector or landmark finder: they come from
the caller (:class:`~fer_export.runtime.FERSession` decodes with
:func:`fer_export.faces.decode_image` and passes its own detector and finder unless given
others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import cv2
import numpy as np

from fer_export.contract import UNKNOWN_LABEL, ModelContract
from fer_export.faces import (
    DEFAULT_MAX_PIXELS,
    Box,
    Detector,
    ImageInput,
    clip_box,
    crop_with_margin,
    decode_image,
)
from fer_export.landmarks import INSTALL_HINT, LandmarksUnavailableError, find_landmarks

__all__ = [
    "FacePredictor",
    "FacesArg",
    "LandmarkFinder",
    "Prediction",
    "check_abstain",
    "check_rgb",
    "check_threshold",
    "face_input",
    "per_image",
    "predict_images",
    "resolve_abstain",
    "resolve_au_source",
]

#: ``"detect"``, ``"whole"`` or a list of ``(x, y, w, h)`` boxes.
FacesArg: TypeAlias = str | Sequence[Sequence[int]]
#: ``batch (N, 3, S, S)`` [, ``attention (N, 1, S, S)``] -> ``scores (N, C)``.
Runner: TypeAlias = Callable[..., np.ndarray]
#: ``rgb face crop (H, W, 3) uint8 -> (68, 2) landmarks (x, y pixels of the crop) or None``.
LandmarkFinder: TypeAlias = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class Prediction:
    """One face's result.

    ``box``: the face ``(x, y, w, h)`` in the original image (clipped to it); ``crop_box``: the
    region actually fed to the model (``box`` plus the contract's ``face_margin``, clipped).
    ``probabilities``: every label's calibrated probability (they sum to 1); ``raw_scores``:
    the model's own output per label (capsule lengths or logits). ``top_label`` /
    ``label_index``: the most probable class, ``score`` its probability; ``label`` is
    ``top_label``, or ``"unknown"`` when ``abstained`` (``score`` below the threshold).
    ``au_map``: the AU map the face was run with -- ``"landmarks"`` (its own), ``"template"``
    (the mean face's: template models, or no landmarks found) or ``"none"``.
    """

    box: Box
    label: str
    label_index: int
    score: float
    probabilities: dict[str, float]
    raw_scores: dict[str, float]
    crop_box: Box = field(default=(0, 0, 0, 0))
    abstained: bool = False
    top_label: str = ""
    au_map: str = "none"

    def __post_init__(self) -> None:
        if not self.top_label and not self.abstained:
            object.__setattr__(self, "top_label", self.label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (boxes as lists)."""
        return {
            "box": list(self.box),
            "crop_box": list(self.crop_box),
            "label": self.label,
            "label_index": self.label_index,
            "top_label": self.top_label,
            "score": self.score,
            "abstained": self.abstained,
            "probabilities": dict(self.probabilities),
            "raw_scores": dict(self.raw_scores),
            "au_map": self.au_map,
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


def _crop(
    rgb: np.ndarray, box: Box, contract: ModelContract, *, whole: bool = False
) -> tuple[np.ndarray, Box]:
    """``(crop, crop box)``: ``box`` grown by the contract's ``face_margin`` (none for the
    whole image) and cut out, at the image's resolution."""
    return crop_with_margin(rgb, box, 0.0 if whole else contract.face_margin)


def _model_face(crop: np.ndarray, contract: ModelContract) -> np.ndarray:
    """``crop`` resized to ``(S, S, 3)`` uint8 in the contract's channel order."""
    s = contract.input_size
    h, w = crop.shape[:2]
    interpolation = cv2.INTER_AREA if (h > s or w > s) else cv2.INTER_LINEAR
    face = cv2.resize(crop, (s, s), interpolation=interpolation)
    if contract.channel_order == "BGR":
        face = face[:, :, ::-1]
    return np.ascontiguousarray(face)


def face_input(
    rgb: np.ndarray, box: Box, contract: ModelContract, *, whole: bool = False
) -> tuple[np.ndarray, Box]:
    """``(face, crop box)``: ``box`` grown by the contract's ``face_margin`` (none for the
    whole image), cut out and resized to ``(S, S, 3)`` uint8 in the contract's channel order."""
    crop, crop_box = _crop(rgb, box, contract, whole=whole)
    return _model_face(crop, contract), crop_box


def check_threshold(abstain: Any) -> float | None:
    """``abstain`` as a threshold in [0, 1] (None: no abstention); ValueError otherwise."""
    if abstain is None:
        return None
    if isinstance(abstain, bool) or not isinstance(abstain, (int, float, np.floating)):
        raise ValueError(f"abstain threshold must be a number in [0, 1] or None, got {abstain!r}")
    value = float(abstain)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"abstain threshold must be in [0, 1], got {abstain!r}")
    return value


def check_abstain(abstain: Any) -> str | float | None:
    """``abstain`` as given to ``FERSession``/``TritonFERClient``: ``"model"``, a threshold
    in [0, 1] (as a float) or None; ValueError naming the value otherwise."""
    if isinstance(abstain, str):
        if abstain != "model":
            raise ValueError(
                f"abstain must be 'model', a number in [0, 1] or None, got {abstain!r}"
            )
        return abstain
    return check_threshold(abstain)


def resolve_abstain(contract: ModelContract, abstain: Any) -> float | None:
    """The abstention threshold in effect for ``abstain``: ``"model"`` -> the contract's
    (``fer.abstention``; None when it has none), a number in [0, 1] -> itself, None -> None
    (never abstain); ValueError naming the value otherwise."""
    value = check_abstain(abstain)
    return contract.abstain_threshold if isinstance(value, str) else value


def resolve_au_source(
    contract: ModelContract, au_source: Any, landmarks: Any, model: str
) -> tuple[str, LandmarkFinder | None]:
    """``(AU-map source the faces get, landmark finder for it)``: the finder is None unless
    the source is ``"landmarks"``.

    ``au_source``: None (the model's, ``contract.au_map_source``) or ``"template"`` (knowingly
    give a landmarks model the mean-face map); ``landmarks``: a finder callable, or None to
    look for an installed one (:func:`fer_export.landmarks.find_landmarks`) when the model
    needs it -- ignored by other models. ``model`` names the model in messages. Raises
    ValueError for a bad ``au_source``/``landmarks``, and
    :class:`~fer_export.landmarks.LandmarksUnavailableError` when a landmarks model gets no
    finder and none is installed (the message says what to install, or ``landmarks=``, or
    ``au_source='template'``).
    """
    trained = contract.au_map_source
    if landmarks is not None and not callable(landmarks):
        raise ValueError(
            f"landmarks must be a callable face crop -> (68, 2) points, got "
            f"{type(landmarks).__name__}"
        )
    if au_source not in (None, "template", trained):
        raise ValueError(
            f"au_source must be None (the model's: {trained!r}) or 'template', got "
            f"{au_source!r}: {model} was trained with {trained!r} AU maps"
        )
    if trained != "landmarks":
        return trained, None
    if au_source == "template":
        return "template", None
    if landmarks is not None:
        return "landmarks", landmarks
    try:
        return "landmarks", find_landmarks()
    except LandmarksUnavailableError as exc:
        why = "; ".join(exc.reasons) or str(exc)
        raise LandmarksUnavailableError(
            f"{model} was trained with landmark AU maps (fer.au_source 'landmarks'): every "
            f"face needs the map of its own 68 landmarks, and no landmark finder is installed "
            f"({why}). To run it, {INSTALL_HINT}; or pass landmarks= (a callable face crop -> "
            "(68, 2) points); or pass au_source='template' to knowingly use the mean-face "
            "template map instead (predictions may be less accurate)",
            exc.reasons,
        ) from exc


def _face_landmarks(landmarks: LandmarkFinder, crop: np.ndarray, where: str) -> np.ndarray | None:
    """The finder's (68, 2) landmarks for ``crop``, None when it found none (or gave
    non-finite points); ValueError naming ``where`` for anything else."""
    found = landmarks(crop)
    if found is None:
        return None
    try:
        points = np.asarray(found, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"the landmarks callable returned {type(found).__name__} for {where}, expected a "
            "(68, 2) array or None"
        ) from None
    if points.shape != (68, 2):
        raise ValueError(
            f"the landmarks callable returned shape {points.shape} for {where}, expected "
            "(68, 2) or None"
        )
    return points if np.isfinite(points).all() else None


def _predictions(
    scores: np.ndarray,
    contract: ModelContract,
    boxes: Sequence[tuple[Box, Box]],
    au_maps: Sequence[str],
    abstain: float | None,
) -> list[Prediction]:
    labels = contract.labels
    probabilities = contract.probabilities(scores)
    out = []
    for row, probs, (box, crop_box), au_map in zip(
        scores, probabilities, boxes, au_maps, strict=True
    ):
        k = int(np.argmax(probs))
        top = float(probs[k])
        abstained = abstain is not None and top < abstain
        out.append(
            Prediction(
                box=box,
                label=UNKNOWN_LABEL if abstained else labels[k],
                label_index=k,
                score=top,
                probabilities={label: float(p) for label, p in zip(labels, probs, strict=True)},
                raw_scores={label: float(v) for label, v in zip(labels, row, strict=True)},
                crop_box=crop_box,
                abstained=abstained,
                top_label=labels[k],
                au_map=au_map,
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
    abstain: float | None = None,
    landmarks: LandmarkFinder | None = None,
) -> list[list[Prediction]]:
    """One (possibly empty) list of predictions per image, every face run in one ``run`` call.

    ``images``: decoded RGB ``uint8`` ``(H, W, 3)`` arrays (:func:`check_rgb`), taken one at a
    time (a generator that decodes them keeps one full image in memory at once, plus the
    crops); ``faces``: one entry per image (:func:`per_image`) -- ``"detect"`` (``detector``'s
    boxes), ``"whole"`` or boxes; ``run``: preprocessed ``(N, 3, S, S)`` float32 -> ``(N, C)``
    scores, called with a second argument, the AU maps ``(N, 1, S, S)``, when ``landmarks`` is
    given. ``abstain``: the threshold in [0, 1] below which a face's label is ``"unknown"``
    (None: never). ``landmarks``: a finder for ``attention == "input"`` models trained with
    landmark maps (:mod:`fer_export.landmarks`), called with each face's crop (box plus margin,
    RGB, at the image's resolution); a face without landmarks gets the template map.
    """
    threshold = check_threshold(abstain)
    if landmarks is not None and contract.attention != "input":
        raise ValueError(
            f"landmarks= needs a model with an attention input; this one's attention is "
            f"{contract.attention!r}"
        )
    default_map = "none" if contract.au_map_source == "none" else "template"
    crops: list[np.ndarray] = []
    maps: list[np.ndarray | None] = []
    owners: list[tuple[int, Box, Box]] = []
    count = 0
    for index, (image, face_arg) in enumerate(zip(images, faces, strict=True)):
        rgb = check_rgb(image, index)
        whole = isinstance(face_arg, str) and face_arg == "whole"
        for number, (raw, box) in enumerate(_face_boxes(rgb, face_arg, detector)):
            crop, crop_box = _crop(rgb, raw, contract, whole=whole)
            crops.append(_model_face(crop, contract))
            owners.append((index, box, crop_box))
            if landmarks is not None:
                where = f"face {number} of image {index}"
                points = _face_landmarks(landmarks, crop, where)
                maps.append(
                    None if points is None else contract.landmark_attention(points, crop.shape[:2])
                )
        count += 1
    results: list[list[Prediction]] = [[] for _ in range(count)]
    if not crops:
        return results
    batch = contract.preprocess(np.stack(crops))
    au_maps = [default_map] * len(crops)
    if landmarks is None:
        scores = run(batch)
    else:
        template = contract.default_attention(1)[0, 0]
        attention = np.stack([template if m is None else m for m in maps])[:, None]
        au_maps = ["template" if m is None else "landmarks" for m in maps]
        scores = run(batch, np.ascontiguousarray(attention, dtype=np.float32))
    preds = _predictions(scores, contract, [(b, c) for _, b, c in owners], au_maps, threshold)
    for (index, _, _), pred in zip(owners, preds, strict=True):
        results[index].append(pred)
    return results


class FacePredictor:
    """What :class:`~fer_export.session.FERSession` and
    :class:`~fer_export.triton.TritonFERClient` share: the contract, detector, abstention
    threshold and AU-map source they were built with, and the ``predict*`` methods on top of
    their ``run`` (a preprocessed batch in, raw scores out). Subclasses set ``_contract``,
    ``_detector``, ``_abstain``, ``_au_source``, ``_landmarks`` and ``_attention_map`` (None)
    in their constructor and implement :meth:`run`."""

    _contract: ModelContract
    _detector: Detector
    _abstain: float | None
    _au_source: str
    _landmarks: LandmarkFinder | None
    _attention_map: np.ndarray | None

    # -- properties ---------------------------------------------------------------------------

    @property
    def contract(self) -> ModelContract:
        """The preprocessing contract from the model's metadata."""
        return self._contract

    @property
    def input_size(self) -> int:
        """``S``: the model takes ``(N, 3, S, S)`` images."""
        return self._contract.input_size

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in score order."""
        return self._contract.labels

    @property
    def abstain_threshold(self) -> float | None:
        """The top probability below which ``predict*`` answer ``"unknown"`` (None: never)."""
        return self._abstain

    @property
    def au_source(self) -> str:
        """The AU map ``predict*`` feed the faces: ``"landmarks"`` (each face's own, the
        template where none are found), ``"template"`` or ``"none"``."""
        return self._au_source

    @property
    def landmarks(self) -> LandmarkFinder | None:
        """The landmark finder (None unless :attr:`au_source` is ``"landmarks"``)."""
        return self._landmarks

    @property
    def detector(self) -> Detector:
        """The face detector used by ``faces="detect"`` (thread-safe unless one was given)."""
        return self._detector

    # -- inference ----------------------------------------------------------------------------

    def run(self, batch: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        """Raw scores ``(N, C)`` float32 for a preprocessed batch (subclasses)."""
        raise NotImplementedError

    def _default_attention(self, n: int) -> np.ndarray:
        """The contract's template AU map for ``n`` faces (painted once, then broadcast)."""
        if self._attention_map is None:
            self._attention_map = self._contract.default_attention(1)
        return np.ascontiguousarray(
            np.broadcast_to(self._attention_map, (n, *self._attention_map.shape[1:]))
        )

    def _predict(
        self, images: Iterable[np.ndarray], entries: Sequence[FacesArg], detector: Detector | None
    ) -> list[list[Prediction]]:
        return predict_images(
            images,
            entries,
            contract=self._contract,
            run=self.run,
            detector=self._detector if detector is None else detector,
            abstain=self._abstain,
            landmarks=self._landmarks,
        )

    def predict_decoded(
        self,
        images: Sequence[np.ndarray],
        faces: FacesArg | Sequence[FacesArg] = "detect",
        *,
        detector: Detector | None = None,
    ) -> list[list[Prediction]]:
        """Predictions for every face of already decoded images, all faces run together.

        ``images``: RGB ``uint8`` ``(H, W, 3)`` arrays as :func:`fer_export.faces.decode_image`
        returns them -- used as they are (no second decode, no pixel limit: the decoder applied
        it); anything else is a :class:`ValueError`. ``faces``: as for :meth:`predict_batch`.
        ``detector``: for ``"detect"`` (default: :attr:`detector`). Returns one (possibly
        empty) list per image.
        """
        images = list(images)
        return self._predict(images, per_image(faces, len(images)), detector)

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        faces: FacesArg | Sequence[FacesArg] = "detect",
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        detector: Detector | None = None,
    ) -> list[list[Prediction]]:
        """Predictions for every face of every image, with all faces run together.

        ``faces`` is ``"detect"`` or ``"whole"`` for all images, or a sequence with one entry
        per image (``"detect"``, ``"whole"`` or a list of ``(x, y, w, h)`` boxes).
        ``max_pixels`` (default 40 MP, ``None``: no limit): a larger image raises
        :class:`~fer_export.faces.ImageTooLargeError` -- for bytes and paths before it is
        decoded. ``detector``: for ``"detect"`` (default: :attr:`detector`).
        Returns one (possibly empty) list per image.
        """
        images = list(images)
        entries = per_image(faces, len(images))
        # Decoded one at a time as the pipeline takes them: one full image in memory at once.
        decoded = (decode_image(image, max_pixels=max_pixels) for image in images)
        return self._predict(decoded, entries, detector)

    def predict(
        self,
        image: ImageInput,
        faces: FacesArg = "detect",
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        detector: Detector | None = None,
    ) -> list[Prediction]:
        """Predictions for the faces in one image.

        ``image``: RGB ``uint8`` ``(H, W, 3)`` (grayscale ``(H, W)`` and RGBA accepted), a path
        or encoded bytes. ``faces``: ``"detect"`` (the detector's boxes, largest first; no face
        -> ``[]``), ``"whole"`` (the whole image is the face) or a list of ``(x, y, w, h)``
        boxes. Detected and given boxes are cropped with the contract's ``face_margin``.
        ``max_pixels``, ``detector``: see :meth:`predict_batch`.
        """
        return self.predict_batch([image], [faces], max_pixels=max_pixels, detector=detector)[0]
