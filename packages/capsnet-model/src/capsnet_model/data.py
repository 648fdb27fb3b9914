"""Model inputs: RGB faces -> normalised image tensors + AU attention maps (+ augmentation).

:class:`Preprocess` is the one definition of how an ``uint8`` RGB face becomes the network's
input (resize, scale to [0, 1], normalise per channel); it is stored with every checkpoint so
that inference and export apply exactly the same steps.

:class:`FaceTensors` wraps any data set of ``(image, label)`` pairs -- the loaders in
:mod:`capsnet_model.datasets` or :class:`capsnet_model.synthetic.SyntheticFaces` -- into
``(image (3, S, S) float32, attention (1, S, S) float32 in [0, 1], label)`` items, painting
the AU attention map from the mean-face template (aligned faces, the default) or from 68
landmarks, and applying :class:`~capsnet_model.augment.JointAugment` in training.
Augmentation draws are seeded by ``(seed, epoch, index)``: an item does not depend on the
order it is read in, on the number of data-loader workers, or on whether a run was resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

import config_layers
from capsnet_model.attention import landmark_attention_map, template_attention_map
from capsnet_model.augment import AugmentConfig, JointAugment

#: ImageNet channel statistics, the usual normalisation for VGG-style trunks.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

AttentionSource = Literal["template", "landmarks", "none"]
ATTENTION_SOURCES: tuple[str, ...] = ("template", "landmarks", "none")

#: Per-sample 68-point landmarks (x, y) in the base data set's image coordinates: a sequence
#: indexed like the data set, or a callable ``(index, image) -> landmarks``, e.g. a detector.
#: ``None`` for a sample means "no face found": that sample falls back to the template map.
Landmarks = Sequence[np.ndarray | None] | Callable[[int, np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class Preprocess:
    """RGB ``uint8`` (H, W, 3) face -> float32 (3, S, S) input.

    Steps: resize to ``image_size`` (area interpolation when shrinking, bilinear otherwise),
    divide by 255, subtract ``mean`` and divide by ``std`` per channel (RGB order).
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean}, {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize an (H, W, C) or (H, W) array to (S, S, ...)."""
        s = self.image_size
        if image.shape[:2] == (s, s):
            return image
        interp = cv2.INTER_AREA if image.shape[0] * image.shape[1] > s * s else cv2.INTER_LINEAR
        return np.asarray(cv2.resize(image, (s, s), interpolation=interp))

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 -> (3, S, S) float32, normalised (no resize)."""
        x = image.astype(np.float32) / np.float32(255.0)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, S, S) float32 tensor."""
        _check_image(image)
        return torch.from_numpy(self.normalise(self.resize(image)))

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of the normalisation: (..., 3, S, S) -> values in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x * std + mean).clamp(0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        unknown = set(data) - {"image_size", "mean", "std"}
        if unknown:
            raise ValueError(
                f"unknown preprocess keys {sorted(unknown)}; valid: image_size, mean, std"
            )
        kw: dict[str, Any] = {}
        if "image_size" in data:
            kw["image_size"] = int(data["image_size"])
        for key in ("mean", "std"):
            if key in data:
                kw[key] = tuple(float(v) for v in data[key])
        return cls(**kw)


def _check_image(image: Any, where: str = "") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"{where}expected an (H, W, 3) uint8 RGB array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}expected an uint8 image, got {image.dtype}")
    return image


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class FaceTensors(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Model-ready items ``(image (3, S, S), attention (1, S, S), label)`` from a face data set.

    ``base[i]`` must return ``(image, label)`` with ``image`` an (H, W, 3) uint8 RGB array.
    ``attention``: ``"template"`` paints the built-in mean-face map (for aligned crops),
    ``"landmarks"`` paints it from ``landmarks`` -- or, when that is None, from the data set's
    own (:meth:`~capsnet_model.datasets.FERDataset.item_with_landmarks`, e.g. AffectNet's) or
    else from an installed detector (:func:`capsnet_model.landmarks.find_detector`, which
    raises saying what to install when there is none) -- falling back to the template for
    samples without any (:attr:`fallbacks` counts them), ``"none"`` returns zeros (for models
    without attention). ``augment`` (training only) moves the map with the image
    (``joint_attention=True``, the corrected behaviour) or leaves the map in place
    (``False``: the official code, which flipped the image alone).
    """

    def __init__(
        self,
        base: Dataset[Any],
        preprocess: Preprocess,
        *,
        augment: AugmentConfig | None = None,
        attention: AttentionSource = "template",
        landmarks: Landmarks | None = None,
        joint_attention: bool = True,
        seed: int = 0,
    ) -> None:
        if attention not in ATTENTION_SOURCES:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTION_SOURCES)}; got {attention!r}"
            )
        if (
            attention == "landmarks"
            and landmarks is None
            and not hasattr(base, "item_with_landmarks")
        ):
            # No landmarks given and none in the data set: an installed detector, if any.
            from capsnet_model.landmarks import find_detector

            landmarks = find_detector()
        self.base = base
        self.preprocess = preprocess
        self.attention = attention
        self.landmarks = landmarks
        self.joint_attention = joint_attention
        self.seed = seed
        self.epoch = 0
        self.fallbacks = 0
        size = preprocess.image_size
        self._augment = JointAugment(size, augment) if augment is not None else None
        self._template = template_attention_map(size)
        self._zeros = np.zeros((size, size), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before each training epoch)."""
        self.epoch = epoch

    def _landmarks(self, index: int, image: np.ndarray) -> np.ndarray | None:
        if self.landmarks is None:  # the base data set carries them (e.g. AffectNet)
            return self.base.item_with_landmarks(index)[2]  # type: ignore[attr-defined]
        if callable(self.landmarks):
            return self.landmarks(index, image)
        return self.landmarks[index]

    def attention_map(
        self, index: int, image: np.ndarray, points: np.ndarray | None = None
    ) -> np.ndarray:
        """The (S, S) map for item ``index`` whose base image is ``image`` (before resizing);
        ``points``: its landmarks when already known."""
        if self.attention == "none":
            return self._zeros
        if self.attention == "landmarks":
            if points is None:
                points = self._landmarks(index, image)
            if points is not None:
                return landmark_attention_map(points, image.shape[:2])
            self.fallbacks += 1
        return self._template

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        points = None
        if self.attention == "landmarks" and self.landmarks is None:
            image, label, points = self.base.item_with_landmarks(index)  # type: ignore[attr-defined]
        else:
            image, label = self.base[index]
        image = _check_image(image, f"item {index}: ")
        att = self.preprocess.resize(self.attention_map(index, image, points))
        image = self.preprocess.resize(image)
        if self._augment is not None:
            self._augment.pipeline.set_random_seed(_item_seed(self.seed, self.epoch, index))
            if self.joint_attention and self.attention != "none":
                image, moved = self._augment(image, att)
                assert moved is not None
                att = moved
            else:
                image, _ = self._augment(image)
        x = torch.from_numpy(self.preprocess.normalise(image))
        m = torch.from_numpy(np.array(att, dtype=np.float32, copy=True))[None]  # own memory
        return x, m, int(label)


def dataset_labels(data: Dataset[Any]) -> list[int]:
    """Labels of a data set without decoding its images when it exposes them (``.labels``)."""
    base = data.base if isinstance(data, FaceTensors) else data
    labels = getattr(base, "labels", None)
    if labels is not None:
        return [int(v) for v in labels]
    if isinstance(base, torch.utils.data.Subset):
        parent = dataset_labels(base.dataset)
        return [parent[i] for i in base.indices]
    return [int(base[i][1]) for i in range(len(base))]  # type: ignore[arg-type]


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split indices into (train, validation) with ``fraction`` of every class held out.

    Each class with at least two samples keeps at least one on each side. Deterministic in
    ``seed``; both lists are sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        idx = np.asarray(by_class[label])
        rng.shuffle(idx)
        n_val = round(len(idx) * fraction)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    if not val:
        raise ValueError(
            f"validation fraction {fraction} of {len(labels)} samples leaves no validation set"
        )
    return sorted(train), sorted(val)


def augment_config_from_dict(data: Mapping[str, Any] | None) -> AugmentConfig | None:
    """Returns None for None (no augmentation), else the :class:`AugmentConfig` of ``data``.

    Checked strictly like every config (:func:`config_layers.from_dict`): ints are accepted
    for floats and lists for tuples, nothing else is converted; an unknown key or a bad value
    raises :class:`config_layers.ConfigError` (a ``ValueError``) naming the key.
    """
    if data is None:
        return None
    return config_layers.from_dict(AugmentConfig, data)
