"""A training run's output directory: :class:`RunDirectory` owns its paths and every write to
it (configuration, split sizes, per-epoch metrics, best and last checkpoints, resume state,
evaluations, result), and :class:`TrainState` is the resume state it saves.

Layout::

    config.json            the TrainConfig used
    split.json             where the validation set came from and the split sizes
    metrics.jsonl          one JSON object per epoch
    best.safetensors       the selected model (capsnet_model.checkpoint format)
    checkpoints/last/      model.safetensors, training_state.pt (optimiser, scheduler, RNG),
                           state.json (TrainState)
    val_* / test_*         evaluations of the selected model (metrics JSON, confusion CSV/PNG)
    result.json            summary (best epoch, stop reason, metrics)

Every file is written through :mod:`capsnet_model._io` (temporary file, then rename), so a
killed run never leaves half a file. ``checkpoints/last`` holds three files that must agree, so
it is written whole as ``last.tmp`` and swapped in by renaming directories.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capsnet_model._io import atomic_write_bytes, atomic_write_text
from capsnet_model.checkpoint import ModelInfo, load_weights, save_model
from capsnet_model.evaluation import Evaluation

#: Settings that must match the saved run for a resume (they change the model or the data
#: order); the others (epochs, lr, patience...) may change between runs.
RESUME_KEYS = ("model", "model_kwargs", "image_size", "mean", "std", "seed", "batch_size")


class ResumeStateError(ValueError):
    """``checkpoints/last/state.json`` is not a training state this version can resume."""


@dataclass
class TrainState:
    """Where a run stands after its last finished epoch; ``checkpoints/last/state.json``.

    Saved as a JSON object with these field names (the format of earlier versions, so their
    checkpoints still resume).
    """

    epoch: int = 0
    best_epoch: int = 0
    #: The selection metric of the best epoch (higher is better; -loss for ``loss``); None
    #: before the first validation.
    best_metric: float | None = None
    #: Epochs since the last improvement (early stopping).
    bad_epochs: int = 0
    #: Why training ended; empty while it goes on.
    stop_reason: str = ""
    #: The run's ``TrainConfig.to_dict()``.
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns the state as the plain JSON object written to ``state.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TrainState:
        """Returns the state read from ``data``; ResumeStateError naming ``where`` and the
        field when a field is missing or of the wrong type."""
        if not isinstance(data, Mapping):
            raise ResumeStateError(f"{where}: expected a JSON object, got {type(data).__name__}")
        kinds: dict[str, tuple[type, ...]] = {
            "epoch": (int,),
            "best_epoch": (int,),
            "best_metric": (int, float, type(None)),
            "bad_epochs": (int,),
            "stop_reason": (str,),
            "config": (dict,),
        }
        for key, valid in kinds.items():
            if key not in data:
                raise ResumeStateError(f"{where}: missing {key!r}")
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, valid):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in valid)
                raise ResumeStateError(f"{where}: {key} must be {names}, got {value!r}")
        metric = data["best_metric"]
        return cls(
            epoch=data["epoch"],
            best_epoch=data["best_epoch"],
            best_metric=None if metric is None else float(metric),
            bad_epochs=data["bad_epochs"],
            stop_reason=data["stop_reason"],
            config=dict(data["config"]),
        )


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and +-inf floats as ``None``: strict JSON (``null``), as rl-trainer's
    metrics files write them, instead of the ``NaN`` token most JSON readers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _json_text(data: Any) -> str:
    return json.dumps(_json_safe(data), indent=2, default=str, allow_nan=False) + "\n"


class RunDirectory:
    """The files of one training run under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.split = self.root / "split.json"
        self.metrics = self.root / "metrics.jsonl"
        self.best = self.root / "best.safetensors"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last"
        self.result = self.root / "result.json"

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r})"

    # ------------------------------------------------------------------ reading

    def holds_run(self) -> bool:
        """Returns whether a run (finished or not) was started here."""
        return self.metrics.exists() or self.checkpoints.exists()

    def can_resume(self) -> bool:
        """Returns whether ``checkpoints/last`` holds a state to resume from."""
        return (self.last / "state.json").is_file()

    def read_state(self) -> TrainState:
        """Returns the saved :class:`TrainState` of ``checkpoints/last``."""
        path = self.last / "state.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ResumeStateError(f"{path}: not valid JSON ({exc})") from exc
        return TrainState.from_dict(data, str(path))

    def check_resume_config(self, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        """Raises ValueError naming the :data:`RESUME_KEYS` whose values differ."""
        changed = [k for k in RESUME_KEYS if json.dumps(saved.get(k)) != json.dumps(now.get(k))]
        if changed:
            raise ValueError(
                f"cannot resume {self.root}: {', '.join(changed)} differ from the saved run "
                f"(saved {[saved.get(k) for k in changed]}, now {[now.get(k) for k in changed]})"
            )

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        """Loads the last checkpoint's weights, optimiser, scheduler and torch RNG state."""
        load_weights(model, self.last / "model.safetensors")
        extra = torch.load(self.last / "training_state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])

    def read_history(self, upto_epoch: int) -> list[dict[str, Any]]:
        """Returns the ``metrics.jsonl`` rows of epochs up to ``upto_epoch`` (later rows were
        written by epochs the last checkpoint does not hold)."""
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        return [r for r in rows if r.get("epoch", 0) <= upto_epoch]

    # ------------------------------------------------------------------ writing

    def write_json(self, path: Path, data: Any) -> None:
        """Writes ``data`` as indented JSON to ``path`` (atomically)."""
        atomic_write_text(path, _json_text(data))

    def start(
        self,
        config: Mapping[str, Any],
        history: list[dict[str, Any]],
        split: Mapping[str, Any] | None,
    ) -> None:
        """Creates the directory, writes ``config.json``, the ``history`` kept from a resumed
        run as ``metrics.jsonl`` and, when given, ``split.json``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_json(self.config, dict(config))
        self.write_metrics(history)
        if split is not None:
            self.write_json(self.split, dict(split))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Writes ``metrics.jsonl``, one JSON object per epoch (the whole file each time, so
        a kill leaves the previous version and never a half line that a resume cannot
        read)."""
        lines = (json.dumps(_json_safe(r), allow_nan=False) + "\n" for r in history)
        atomic_write_text(self.metrics, "".join(lines))

    def save_best(self, model: nn.Module, info: ModelInfo) -> None:
        """Writes the selected model to ``best.safetensors``."""
        save_model(model, self.best, info)

    def save_last(
        self,
        model: nn.Module,
        info: ModelInfo,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state: TrainState,
    ) -> None:
        """Replaces ``checkpoints/last`` by the model, optimiser, scheduler, RNG and ``state``.

        The three files must agree, so they are written to ``last.tmp`` and the directories
        swapped by renames; a resume also accepts ``last.old`` when a kill fell between the
        two renames (see :meth:`recover`)."""
        tmp, old = self.checkpoints / "last.tmp", self.checkpoints / "last.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, tmp / "model.safetensors", info)
        buffer = io.BytesIO()
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            buffer,
        )
        atomic_write_bytes(tmp / "training_state.pt", buffer.getvalue())
        self.write_json(tmp / "state.json", state.to_dict())
        shutil.rmtree(old, ignore_errors=True)
        if self.last.exists():
            self.last.rename(old)
        tmp.rename(self.last)
        shutil.rmtree(old, ignore_errors=True)

    def recover(self) -> None:
        """Puts ``last.old`` back as ``checkpoints/last`` when a kill between the two renames
        of :meth:`save_last` left no ``last`` (``last.old`` is then a whole checkpoint)."""
        old = self.checkpoints / "last.old"
        if not self.last.exists() and (old / "state.json").is_file():
            old.rename(self.last)

    def save_evaluation(self, evaluation: Evaluation, name: str) -> None:
        """Writes ``<name>_metrics.json`` and the confusion matrix CSV and PNG."""
        evaluation.save(self.root, name)

    def write_result(self, summary: Mapping[str, Any]) -> None:
        """Writes ``result.json``."""
        self.write_json(self.result, dict(summary))
