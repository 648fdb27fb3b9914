"""The preprocessing contract stored in an exported model's ONNX metadata.

An exported FER model carries everything a runtime needs to feed it correctly, as string
key/value pairs in ``ModelProto.metadata_props`` (all keys start with ``fer.``). This module
defines them, writes them (:meth:`ModelContract.to_metadata`) and reads them back with clear
errors (:meth:`ModelContract.from_metadata`). It needs neither torch nor onnx.

Graph interface:

* input ``image``: float32 (or float16 for fp16 files with fp16 IO: never, IO stays float32)
  ``(N, 3, S, S)``, RGB, ``(pixel * pixel_scale - mean) / std`` per channel, ``S = input_size``;
* input ``attention`` (only when ``attention == "input"``): float32 ``(N, 1, S, S)`` in [0, 1];
* output ``scores``: float32 ``(N, len(labels))``; capsule lengths in [0, 1) for capsule models
  (``score_kind = "capsule_length"``) or logits (``"logit"``).

The AU attention map: ``"baked"`` -- the mean-face template map is a constant inside the
graph (one input); ``"input"`` -- the graph takes the map; ``"none"`` -- the model has no
attention. For ``"input"`` models the metadata carries the template's AU centres (``au_centres``
on an ``au_grid`` x ``au_grid`` grid, diamond ``falloff``) so a runtime can paint the default
map itself (:func:`paint_attention_map`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "fer-export/1"
PREFIX = "fer."
IMAGE_INPUT = "image"
ATTENTION_INPUT = "attention"
SCORES_OUTPUT = "scores"
ATTENTION_MODES = ("baked", "input", "none")
SCORE_KINDS = ("capsule_length", "logit")
PRECISIONS = ("fp32", "fp16", "int8")


class ContractError(ValueError):
    """An ONNX file whose metadata does not hold a valid FER preprocessing contract."""


@dataclass(frozen=True)
class ModelContract:
    """What a runtime must know to use an exported FER model (see the module docstring)."""

    labels: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    attention: str = "baked"
    score_kind: str = "capsule_length"
    channel_order: str = "RGB"
    pixel_scale: float = 1.0 / 255.0
    model_name: str = ""
    model_version: str = ""
    precision: str = "fp32"
    #: Fraction of the detected face box added on each side before cropping.
    face_margin: float = 0.15
    au_centres: tuple[tuple[float, float], ...] = ()
    au_grid: int = 100
    au_falloff: float = 0.07
    #: Versions of the tools that produced the file (torch, onnx, onnxscript, fer-export...).
    exporter: dict[str, str] = field(default_factory=dict)
    #: Anything else worth keeping (model arguments, training summary...).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ContractError("invalid FER contract: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if len(self.labels) < 2:
            out.append(f"labels must name at least 2 classes, got {list(self.labels)}")
        if self.input_size <= 0:
            out.append(f"input_size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std, default=0) <= 0:
            out.append(f"mean and std need 3 values, std > 0; got {self.mean}, {self.std}")
        if self.attention not in ATTENTION_MODES:
            out.append(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.attention == "input" and not self.au_centres:
            out.append("attention 'input' needs au_centres to paint the default map")
        if self.score_kind not in SCORE_KINDS:
            out.append(f"score_kind must be one of {SCORE_KINDS}, got {self.score_kind!r}")
        if self.channel_order not in ("RGB", "BGR"):
            out.append(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.face_margin < 1.0:
            out.append(f"face_margin must be in [0, 1), got {self.face_margin}")
        return out

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Graph input names, in order."""
        return (IMAGE_INPUT, ATTENTION_INPUT) if self.attention == "input" else (IMAGE_INPUT,)

    def to_metadata(self) -> dict[str, str]:
        """String key/value pairs for ``ModelProto.metadata_props``."""
        values: dict[str, Any] = {
            "format": FORMAT,
            "labels": list(self.labels),
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "attention": self.attention,
            "score_kind": self.score_kind,
            "channel_order": self.channel_order,
            "pixel_scale": self.pixel_scale,
            "layout": "NCHW",
            "model_name": self.model_name,
            "model_version": self.model_version,
            "precision": self.precision,
            "face_margin": self.face_margin,
            "au_centres": [list(c) for c in self.au_centres],
            "au_grid": self.au_grid,
            "au_falloff": self.au_falloff,
            "exporter": self.exporter,
            "extra": self.extra,
        }
        return {
            PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in values.items()
        }

    def with_precision(self, precision: str) -> ModelContract:
        return _replace(self, precision=precision)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], where: str = "model") -> ModelContract:
        """Parse and validate; a :class:`ContractError` names the file and what is missing."""
        fer = {k[len(PREFIX) :]: v for k, v in meta.items() if k.startswith(PREFIX)}
        if not fer:
            raise ContractError(
                f"{where} has no FER metadata (no '{PREFIX}*' keys): export it with "
                "fer_export.export_onnx, or add the contract with fer_export.contract"
            )
        if fer.get("format") != FORMAT:
            raise ContractError(
                f"{where}: metadata format {fer.get('format')!r}, expected {FORMAT!r}"
            )
        required = ("labels", "input_size", "mean", "std", "attention")
        missing = [PREFIX + k for k in required if k not in fer]
        if missing:
            raise ContractError(f"{where}: metadata lacks {', '.join(missing)}")

        def load(key: str, default: Any = None) -> Any:
            if key not in fer:
                return default
            text = fer[key]
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text

        try:
            return cls(
                labels=tuple(str(v) for v in load("labels")),
                input_size=int(load("input_size")),
                mean=_triple(load("mean")),
                std=_triple(load("std")),
                attention=str(fer["attention"]),
                score_kind=str(fer.get("score_kind", "capsule_length")),
                channel_order=str(fer.get("channel_order", "RGB")),
                pixel_scale=float(load("pixel_scale", 1.0 / 255.0)),
                model_name=str(fer.get("model_name", "")),
                model_version=str(fer.get("model_version", "")),
                precision=str(fer.get("precision", "fp32")),
                face_margin=float(load("face_margin", 0.15)),
                au_centres=tuple((float(x), float(y)) for x, y in load("au_centres", []) or []),
                au_grid=int(load("au_grid", 100)),
                au_falloff=float(load("au_falloff", 0.07)),
                exporter=dict(load("exporter", {}) or {}),
                extra=dict(load("extra", {}) or {}),
            )
        except ContractError as exc:
            raise ContractError(f"{where}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ContractError(f"{where}: malformed FER metadata ({exc})") from exc

    def preprocess(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 faces in ``channel_order`` -> (N, 3, S, S) float32 input."""
        if faces.ndim != 4 or faces.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(
                f"faces must be (N, {self.input_size}, {self.input_size}, 3), got {faces.shape}"
            )
        if faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8, got {faces.dtype}")
        x = faces.astype(np.float32) * np.float32(self.pixel_scale)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))

    def default_attention(self, batch: int) -> np.ndarray:
        """The template AU map (batch, 1, S, S) float32 for ``attention == "input"`` models."""
        m = paint_attention_map(self.au_centres, self.au_grid, self.au_falloff, self.input_size)
        return np.ascontiguousarray(np.broadcast_to(m, (batch, 1, *m.shape)), dtype=np.float32)


def _triple(values: Sequence[Any]) -> tuple[float, float, float]:
    v = [float(x) for x in values]
    if len(v) != 3:
        raise ValueError(f"expected 3 values, got {values!r}")
    return v[0], v[1], v[2]


def _replace(contract: ModelContract, **changes: Any) -> ModelContract:
    from dataclasses import replace

    return replace(contract, **changes)


def paint_attention_map(
    centres: Sequence[Sequence[float]], grid: int, falloff: float, size: int
) -> np.ndarray:
    """Diamonds ``max(0, 1 - falloff (|dx| + |dy|))`` around ``centres`` (x, y) on a
    ``grid`` x ``grid`` map, combined by maximum, resized (bilinear) to ``size`` x ``size``."""
    import cv2

    c = np.asarray(centres, np.float32).reshape(-1, 2)
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    m: np.ndarray
    if len(c) == 0:
        m = np.zeros((grid, grid), np.float32)
    else:
        d = np.abs(xs[None] - c[:, 0, None, None]) + np.abs(ys[None] - c[:, 1, None, None])
        m = np.clip(1.0 - falloff * d, 0.0, 1.0).max(axis=0).astype(np.float32)
    if size != grid:
        m = np.asarray(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR))
    return np.clip(m, 0.0, 1.0).astype(np.float32)
