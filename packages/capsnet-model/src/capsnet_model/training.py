"""Training entry point: :func:`train` (used by the fer-train app).

Adam with a warm-up + cosine / step / constant schedule, margin loss for capsule models (plus
the optional reconstruction term) and cross-entropy for the others, model selection and early
stopping on a validation split carved from the training set (stratified; never the test set),
safetensors checkpoints (``best.safetensors`` and ``checkpoints/last``), exact resume, a
progress bar, one ``metrics.jsonl`` line per epoch and a final test evaluation (metrics JSON,
confusion matrix CSV + PNG).

Runs on one device, or data-parallel under ``torchrun`` / ``accelerate launch`` (one process
per GPU, or gloo ranks on CPU): when ``WORLD_SIZE > 1`` the process group is created from the
environment, the model is wrapped in DistributedDataParallel, every rank trains on its shard
of each epoch's permutation, validation and test counts are summed over ranks, and only rank
0 writes files.

Output directory::

    config.json            the TrainConfig used
    metrics.jsonl          one JSON object per epoch (losses, accuracies, lr, images/s)
    best.safetensors       the selected model (capsnet_model.checkpoint format)
    checkpoints/last/      model + optimiser/scheduler/RNG state for resume
    val_metrics.json       validation metrics of the selected model (+ confusion CSV/PNG)
    test_metrics.json      test metrics of the selected model (+ confusion CSV/PNG)
    result.json            summary (best epoch, stop reason, test metrics)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from capsnet_model._io import atomic_write_text
from capsnet_model.augment import AugmentConfig
from capsnet_model.capsules import margin_loss
from capsnet_model.checkpoint import ModelInfo, load_weights, save_model, unwrap
from capsnet_model.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AttentionSource,
    FaceTensors,
    Landmarks,
    Preprocess,
    augment_config_from_dict,
    dataset_labels,
    stratified_split,
)
from capsnet_model.datasets import EXPRESSIONS
from capsnet_model.evaluation import Evaluation, confusion_matrix
from capsnet_model.registry import create_model

Schedule = Literal["cosine", "step", "none"]
LossName = Literal["auto", "margin", "cross_entropy"]
SelectMetric = Literal["accuracy", "mean_class_accuracy", "loss"]
_CHOICES: dict[str, tuple[str, ...]] = {
    "schedule": ("cosine", "step", "none"),
    "loss": ("auto", "margin", "cross_entropy"),
    "select_metric": ("accuracy", "mean_class_accuracy", "loss"),
    "attention": ("template", "landmarks", "none"),
}


@dataclass
class TrainConfig:
    """Every training setting; the defaults are the paper's (Adam 1e-4, batch 16, margin loss,
    3 routing iterations in the model) on the small E2-Capsnet."""

    model: str = "e2capsnet_small"
    #: Extra keyword arguments for ``create_model`` (e.g. ``{"routing_iterations": 3}``).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Input side in pixels; ``None`` keeps the model's default (224 full, 64 small).
    image_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    attention: AttentionSource = "template"
    #: Move the AU map with the image in augmentation (False: the official code's defect).
    joint_attention: bool = True
    #: ``None`` disables augmentation.
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    #: Final learning rate of the cosine schedule, as a fraction of ``lr``.
    min_lr_ratio: float = 0.01
    step_epochs: int = 10
    gamma: float = 0.1
    #: ``auto``: margin loss for capsule models, cross-entropy for the others.
    loss: LossName = "auto"
    m_plus: float = 0.9
    m_minus: float = 0.1
    margin_lambda: float = 0.5
    #: Weight of the summed squared reconstruction error (models built with ``decoder=True``).
    reconstruction_weight: float = 0.0005
    grad_clip: float | None = None
    #: Fraction of the training set held out (stratified) for model selection; 0 disables.
    val_fraction: float = 0.1
    select_metric: SelectMetric = "accuracy"
    #: Stop after this many epochs without a validation improvement; 0 disables.
    patience: int = 10
    eval_batch_size: int = 64
    num_workers: int = 0
    #: ``auto``: the local CUDA device when there is one, else the CPU.
    device: str = "auto"
    seed: int = 0
    #: Cap on optimiser steps per epoch (quick runs and tests); ``None`` = the whole epoch.
    max_batches_per_epoch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for key, valid in _CHOICES.items():
            if getattr(self, key) not in valid:
                raise ValueError(
                    f"{key} must be one of {', '.join(valid)}; got {getattr(self, key)!r}"
                )
        positive = ("epochs", "batch_size", "eval_batch_size", "step_epochs")
        for key in positive:
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.patience < 0 or self.num_workers < 0:
            raise ValueError("patience and num_workers must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["augment"] = None if self.augment is None else asdict(self.augment)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from plain values (JSON/YAML); unknown keys are an error naming the valid."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown training keys {unknown}; valid: {', '.join(sorted(valid))}")
        kw = dict(data)
        if "augment" in kw and not isinstance(kw["augment"], AugmentConfig):
            kw["augment"] = augment_config_from_dict(kw["augment"])
        for key in ("mean", "std", "betas"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


@dataclass
class TrainResult:
    """What :func:`train` did; also written to ``result.json``."""

    output_dir: Path
    best_checkpoint: Path
    best_epoch: int
    epochs_run: int
    stop_reason: str
    history: list[dict[str, Any]]
    val: Evaluation | None = None
    test: Evaluation | None = None
    #: The selected model (best validation epoch), unwrapped, in eval mode.
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "best_checkpoint": str(self.best_checkpoint),
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stop_reason": self.stop_reason,
        }
        for name, ev in (("val", self.val), ("test", self.test)):
            if ev is not None:
                out[f"{name}_accuracy"] = ev.accuracy
                out[f"{name}_mean_class_accuracy"] = ev.mean_class_accuracy
                out[f"{name}_samples"] = ev.num_samples
        return out


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float] | np.ndarray, device: torch.device) -> np.ndarray:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.cpu().numpy()


def _setup_distributed() -> _Dist:
    if not dist.is_available():
        return _Dist()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    return _Dist()


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# --------------------------------------------------------------------------- model pieces


def is_capsule_model(model: nn.Module) -> bool:
    return hasattr(unwrap(model), "forward_capsules")


class _TrainForward(nn.Module):
    """One forward for training (so DistributedDataParallel sees every parameter use):
    returns (scores, reconstruction or None)."""

    def __init__(self, model: nn.Module, reconstruct: bool) -> None:
        super().__init__()
        self.model = model
        self.reconstruct = reconstruct

    def forward(
        self, image: torch.Tensor, attention: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        m: Any = self.model
        if not hasattr(m, "forward_capsules"):
            return m(image, attention), None
        scores, capsules = m.forward_capsules(image, attention)
        recon = m.reconstruct(capsules, target) if self.reconstruct else None
        return scores, recon


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "none":
            return 1.0
        if cfg.schedule == "step":
            return float(cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch)))
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _score_loss(cfg: TrainConfig, capsule: bool, scores: torch.Tensor, y: torch.Tensor) -> Any:
    kind = cfg.loss if cfg.loss != "auto" else ("margin" if capsule else "cross_entropy")
    if kind == "margin":
        return margin_loss(scores, y, cfg.m_plus, cfg.m_minus, cfg.margin_lambda)
    return F.cross_entropy(scores, y)


# --------------------------------------------------------------------------- state on disk


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _save_last(
    out: Path,
    model: nn.Module,
    info: ModelInfo,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> None:
    ckpt = out / "checkpoints"
    tmp, last, old = ckpt / "last.tmp", ckpt / "last", ckpt / "last.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp / "model.safetensors", info)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "training_state.pt",
    )
    _write_json(tmp / "state.json", state)
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    shutil.rmtree(old, ignore_errors=True)


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("epoch", 0) <= upto_epoch]


_RESUME_KEYS = ("model", "model_kwargs", "image_size", "mean", "std", "seed", "batch_size")


# --------------------------------------------------------------------------- evaluation


def _evaluate(
    model: nn.Module,
    data: Dataset[Any],
    indices: list[int],
    cfg: TrainConfig,
    ddp: _Dist,
    device: torch.device,
    labels: tuple[str, ...],
) -> Evaluation:
    """Evaluate on ``indices`` of ``data``, sharded over ranks; counts summed over ranks."""
    shard = indices[ddp.rank :: ddp.world]
    capsule = is_capsule_model(model)
    conf = np.zeros((len(labels), len(labels)), dtype=np.int64)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    loader = DataLoader(
        Subset(data, shard), batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers
    )
    with torch.no_grad():
        for image, attention, target in loader:
            target = target.to(device)
            scores = model(image.to(device), attention.to(device)).float()
            loss_sum += float(_score_loss(cfg, capsule, scores, target)) * len(target)
            conf += confusion_matrix(target.cpu(), scores.argmax(dim=1).cpu(), len(labels))
    model.train(was_training)
    total = ddp.sum([loss_sum, *conf.reshape(-1).tolist()], device)
    conf = np.rint(total[1:]).astype(np.int64).reshape(conf.shape)
    n = max(1, int(conf.sum()))
    return Evaluation(conf, labels, loss=float(total[0]) / n)


def _metric(ev: Evaluation, name: str) -> float:
    if name == "loss":
        return -float(ev.loss if ev.loss is not None else math.inf)
    return float(getattr(ev, name))


# --------------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    train_set: Dataset[Any],
    *,
    output_dir: str | Path,
    val_set: Dataset[Any] | None = None,
    test_set: Dataset[Any] | None = None,
    resume: bool = False,
    landmarks: Mapping[str, Landmarks] | None = None,
    labels: tuple[str, ...] = EXPRESSIONS,
) -> TrainResult:
    """Train ``config.model`` on ``train_set`` and evaluate the selected model on ``test_set``.

    Data sets yield ``(image, label)`` with ``image`` an (H, W, 3) uint8 RGB array: any loader
    of :mod:`capsnet_model.datasets` or :class:`~capsnet_model.synthetic.SyntheticFaces`.
    Without ``val_set``, ``config.val_fraction`` of ``train_set`` is held out (stratified,
    seeded); with ``val_fraction=0`` and no ``val_set`` the last epoch is kept. ``landmarks``
    maps ``"train"`` / ``"val"`` / ``"test"`` to per-sample 68-point landmarks (needed for
    ``attention="landmarks"``). ``resume=True`` continues from ``checkpoints/last`` when it
    exists (and starts fresh otherwise); without it a directory holding a previous run is an
    error.
    """
    cfg = config
    out = Path(output_dir)
    ddp = _setup_distributed()
    device = _device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    last_dir = out / "checkpoints" / "last"
    resuming = resume and (last_dir / "state.json").is_file()
    if not resume and ((out / "metrics.jsonl").exists() or (out / "checkpoints").exists()):
        raise FileExistsError(
            f"{out} already holds a training run; pass resume=True to continue it or choose "
            "another output directory"
        )
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, got {labels!r}")

    # ---- model
    kwargs = dict(cfg.model_kwargs)
    if cfg.image_size is not None:
        kwargs["image_size"] = cfg.image_size
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, num_classes=len(labels), **kwargs)
    image_size = int(getattr(model, "image_size", cfg.image_size or 224))
    kwargs["image_size"] = image_size
    preprocess = Preprocess(image_size, cfg.mean, cfg.std)
    uses_attention = bool(getattr(model, "use_attention", True))
    attention: AttentionSource = cfg.attention if uses_attention else "none"
    info = ModelInfo(cfg.model, kwargs, labels, preprocess, attention)
    capsule = is_capsule_model(model)
    reconstruct = bool(capsule and getattr(model, "decoder", None) is not None)
    reconstruct = reconstruct and cfg.reconstruction_weight > 0
    model.to(device)

    # ---- data
    marks = dict(landmarks or {})

    def tensors(base: Dataset[Any], split: str, augment: AugmentConfig | None) -> FaceTensors:
        return FaceTensors(
            base,
            preprocess,
            augment=augment,
            attention=attention,
            landmarks=marks.get(split),
            joint_attention=cfg.joint_attention,
            seed=cfg.seed,
        )

    train_labels = dataset_labels(train_set)
    if not train_labels:
        raise ValueError("the training set is empty")
    bad = [v for v in train_labels if not 0 <= v < len(labels)]
    if bad:
        raise ValueError(f"training label {bad[0]} outside 0..{len(labels) - 1}")
    train_data = tensors(train_set, "train", cfg.augment)
    if val_set is not None:
        train_idx = list(range(len(train_labels)))
        val_data: FaceTensors | None = tensors(val_set, "val", None)
        val_idx = list(range(len(dataset_labels(val_set))))
    elif cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(train_labels, cfg.val_fraction, cfg.seed)
        val_data = tensors(train_set, "train", None)
    else:
        train_idx, val_idx, val_data = list(range(len(train_labels))), [], None
    per_rank = math.ceil(len(train_idx) / ddp.world)
    steps_per_epoch = max(1, per_rank // cfg.batch_size + int(per_rank % cfg.batch_size > 1))
    if cfg.max_batches_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches_per_epoch)

    # ---- optimisation
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    runner: nn.Module = _TrainForward(model, reconstruct)
    if ddp.world > 1:
        runner = nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None
        )

    # ---- resume
    state: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_metric": None,
        "bad_epochs": 0,
        "stop_reason": "",
        "config": cfg.to_dict(),
    }
    if resuming:
        state = json.loads((last_dir / "state.json").read_text())
        saved = state.get("config", {})
        now = cfg.to_dict()
        changed = [k for k in _RESUME_KEYS if json.dumps(saved.get(k)) != json.dumps(now.get(k))]
        if changed:
            raise ValueError(
                f"cannot resume {out}: {', '.join(changed)} differ from the saved run "
                f"(saved {[saved.get(k) for k in changed]}, now {[now.get(k) for k in changed]})"
            )
        load_weights(model, last_dir / "model.safetensors")
        extra = torch.load(last_dir / "training_state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        state["config"] = now
    history = _read_metrics(out / "metrics.jsonl", state["epoch"]) if resuming else []
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", cfg.to_dict())
        lines = "".join(json.dumps(r) + "\n" for r in history)
        atomic_write_text(out / "metrics.jsonl", lines)
        if not resuming and val_data is not None:
            _write_json(
                out / "split.json",
                {
                    "val_from": "val_set" if val_set is not None else "train",
                    "train": len(train_idx),
                    "val": len(val_idx),
                },
            )
    ddp.barrier()

    show = cfg.progress and ddp.main

    def log(message: str) -> None:
        if show:
            tqdm.write(message, file=sys.stderr)

    # ---- epochs
    epoch = int(state["epoch"])
    if epoch == 0 and not state["stop_reason"] and ddp.main:
        log(
            f"training {cfg.model} ({sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{image_size} px) on {len(train_idx)} images, validating on {len(val_idx)}, "
            f"device {device}, {ddp.world} process(es)"
        )
    while not state["stop_reason"] and epoch < cfg.epochs:
        epoch += 1
        train_data.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=gen).tolist()]
        order += order[: per_rank * ddp.world - len(order)]  # equal shards
        shard = order[ddp.rank :: ddp.world][: steps_per_epoch * cfg.batch_size]
        loader = DataLoader(
            Subset(train_data, shard),
            batch_size=cfg.batch_size,
            shuffle=False,
            drop_last=len(shard) % cfg.batch_size == 1,
            num_workers=cfg.num_workers,
        )
        model.train()
        sums = np.zeros(3)  # loss * n, correct, n
        started = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=None if show else True,
            leave=False,
            dynamic_ncols=True,
        )
        for image, att, target in bar:
            image, att, target = image.to(device), att.to(device), target.to(device)
            scores, recon = runner(image, att, target)
            loss = _score_loss(cfg, capsule, scores, target)
            if recon is not None:
                clean = preprocess.denormalise(image)
                loss = (
                    loss
                    + cfg.reconstruction_weight * (recon - clean).pow(2).sum(dim=(1, 2, 3)).mean()
                )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss {loss.item()} at epoch {epoch}; lower lr "
                    f"(now {scheduler.get_last_lr()[0]:.2e}) or set grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            n = len(target)
            sums += (float(loss.detach()) * n, float((scores.argmax(1) == target).sum()), n)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{sums[1] / sums[2]:.3f}")
        seconds = time.perf_counter() - started
        total = ddp.sum(sums, device)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": total[0] / max(1, total[2]),
            "train_accuracy": total[1] / max(1, total[2]),
            "train_images": int(total[2]),
            "epoch_seconds": seconds,
            "train_images_per_s": total[2] / max(seconds, 1e-9),
        }
        improved = True
        if val_data is not None:
            ev = _evaluate(model, val_data, val_idx, cfg, ddp, device, labels)
            record.update(
                val_loss=ev.loss,
                val_accuracy=ev.accuracy,
                val_mean_class_accuracy=ev.mean_class_accuracy,
            )
            value = _metric(ev, cfg.select_metric)
            improved = state["best_metric"] is None or value > state["best_metric"]
        if improved:
            state["best_epoch"] = epoch
            state["bad_epochs"] = 0
            if val_data is not None:
                state["best_metric"] = value
        else:
            state["bad_epochs"] += 1
        record["best"] = improved
        state["epoch"] = epoch
        if cfg.patience and val_data is not None and state["bad_epochs"] >= cfg.patience:
            state["stop_reason"] = f"early stop: no improvement for {cfg.patience} epochs"
        elif epoch >= cfg.epochs:
            state["stop_reason"] = f"reached {cfg.epochs} epochs"
        history.append(record)
        if ddp.main:
            if improved:
                save_model(model, out / "best.safetensors", info)
            _save_last(out, model, info, optimizer, scheduler, state)
            with (out / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        ddp.barrier()
        val_text = ""
        if val_data is not None:
            val_text = (
                f", val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} "
                f"mean-class {record['val_mean_class_accuracy']:.4f}"
            )
        log(
            f"epoch {epoch}: train loss {record['train_loss']:.4f} acc "
            f"{record['train_accuracy']:.4f}{val_text}, {record['train_images_per_s']:.0f} "
            f"img/s{' *' if improved else ''}"
        )
    if not state["stop_reason"]:
        state["stop_reason"] = f"reached {cfg.epochs} epochs"

    # ---- final evaluation of the selected model
    best = out / "best.safetensors"
    load_weights(model, best)
    result = TrainResult(
        output_dir=out,
        best_checkpoint=best,
        best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]),
        stop_reason=str(state["stop_reason"]),
        history=history,
        model=model.eval(),
    )
    if val_data is not None:
        result.val = _evaluate(model, val_data, val_idx, cfg, ddp, device, labels)
    if test_set is not None:
        test_data = tensors(test_set, "test", None)
        result.test = _evaluate(
            model, test_data, list(range(len(test_data))), cfg, ddp, device, labels
        )
    if ddp.main:
        for name, done in (("val", result.val), ("test", result.test)):
            if done is not None:
                done.save(out, name)
        _write_json(out / "result.json", result.to_dict())
        log(f"{result.stop_reason}; best epoch {result.best_epoch}")
        if result.test is not None:
            log(f"test: {result.test.summary()}")
    ddp.barrier()
    return result
