"""Model checkpoints as safetensors files that know how to rebuild their model.

A checkpoint is one ``.safetensors`` file: the model's state dict plus string metadata --
the registry name and keyword arguments, the label names, the :class:`~capsnet_model.data.
Preprocess` spec and the attention source -- so :func:`load_model` needs nothing else and
never unpickles anything. Exporters (fer-export) read the same metadata with
:func:`read_info`.

Keyword arguments whose default changed since a model was first released (registered with
``changed_defaults``, e.g. E2-Capsnet's ``attention_placement``) are always written, and a
checkpoint that lacks one was written before the change, so it is read with the old default:
old checkpoints keep loading the model they were trained as.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from capsnet_model._io import atomic_write_bytes
from capsnet_model.data import Preprocess
from capsnet_model.datasets import EXPRESSIONS
from capsnet_model.registry import create_model, with_changed_defaults

FORMAT = "capsnet-model/1"


@dataclass
class ModelInfo:
    """Everything needed to rebuild a model and feed it: stored in the checkpoint metadata."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = EXPRESSIONS
    preprocess: Preprocess = field(default_factory=Preprocess)
    attention: str = "template"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Record the current value of every changed default, so that a later default change
        # cannot alter what this checkpoint rebuilds.
        self.kwargs = with_changed_defaults(self.name, self.kwargs, old=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "model": self.name,
            "model_kwargs": json.dumps(self.kwargs, sort_keys=True),
            "labels": json.dumps(list(self.labels)),
            "preprocess": json.dumps(self.preprocess.to_dict()),
            "attention": self.attention,
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, where: str) -> ModelInfo:
        if not meta or meta.get("format") != FORMAT:
            found = (meta or {}).get("format")
            raise ValueError(
                f"{where} is not a capsnet-model checkpoint (format {found!r}, expected {FORMAT!r})"
            )
        try:
            name = meta["model"]
            # Missing changed defaults: the checkpoint predates the change (see module doc).
            kwargs = with_changed_defaults(name, json.loads(meta["model_kwargs"]), old=True)
            return cls(
                name=name,
                kwargs=kwargs,
                labels=tuple(json.loads(meta["labels"])),
                preprocess=Preprocess.from_dict(json.loads(meta["preprocess"])),
                attention=meta.get("attention", "template"),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{where}: corrupt checkpoint metadata ({exc})") from exc

    def build(self) -> nn.Module:
        """A fresh (untrained) model of this architecture."""
        return create_model(self.name, num_classes=self.num_classes, **self.kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def save_model(model: nn.Module, path: str | Path, info: ModelInfo) -> Path:
    """Write ``model``'s weights and ``info`` to ``path`` (atomically)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    return atomic_write_bytes(path, st_save(state, metadata=info.to_metadata()))


def read_info(path: str | Path) -> ModelInfo:
    """The checkpoint's :class:`ModelInfo`, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    return ModelInfo.from_metadata(meta, str(path))


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load the checkpoint's weights into an existing ``model``."""
    path = Path(path)
    state = st_load(path.read_bytes())
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if shapes or (strict and (missing or unexpected)):  # checked before anything is copied
        raise ValueError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches (checkpoint vs model) {shapes[:5]}"
        )
    target.load_state_dict(state, strict=False)


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", eval_mode: bool = True
) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model stored in ``path`` and load its weights; returns (model, info)."""
    info = read_info(path)
    model = info.build()
    load_weights(model, path)
    model.to(device)
    if eval_mode:
        model.eval()
    return model, info
