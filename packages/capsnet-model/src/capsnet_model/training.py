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

:func:`train` is composed of small steps: :func:`_setup` (model, data split, optimiser),
:func:`_restore_or_start` (resume state or a fresh directory), then per epoch
:func:`_train_epoch`, :func:`_validate`, :func:`_select` (best model), :func:`_stop_reason`
(early stopping) and :func:`_save_epoch`, and finally :func:`_finish` (evaluation of the
selected model). The output directory and its files are owned by
:class:`~capsnet_model.run_dir.RunDirectory` (layout in :mod:`capsnet_model.run_dir`); the
resume state is a :class:`~capsnet_model.run_dir.TrainState`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import config_layers
from capsnet_model._distributed import Dist, pick_device, setup_distributed
from capsnet_model.augment import AugmentConfig
from capsnet_model.capsules import margin_loss
from capsnet_model.checkpoint import ModelInfo, load_weights, unwrap
from capsnet_model.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AttentionSource,
    FaceTensors,
    Landmarks,
    Preprocess,
    dataset_labels,
    stratified_split,
)
from capsnet_model.datasets import EXPRESSIONS
from capsnet_model.evaluation import Evaluation, confusion_matrix
from capsnet_model.registry import create_model
from capsnet_model.run_dir import RunDirectory, TrainState
from config_layers import ConfigError, did_you_mean

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
    """Every training setting. The defaults are capsnet-model's improved recipe on the small
    E2-Capsnet (Adam 1e-4 and batch 16 as the paper, but a cosine schedule, the full
    augmentation, 30 epochs and no decoder), not the paper's recipe: that is Adam 1e-4
    constant (``schedule="none"``), horizontal flip only, the margin loss plus 0.0005 x the
    reconstruction MSE of a decoder (``model_kwargs={"decoder": True}``), as fer-train's
    ``rafdb-paper`` preset sets it."""

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
        # from_dict has checked the types and choices already; these checks also guard direct
        # construction. Each error names its field, so a file's line or an override is blamed.
        for key, valid in _CHOICES.items():
            value = getattr(self, key)
            if value not in valid:
                choices = ", ".join(repr(choice) for choice in valid)
                hint = did_you_mean(value, valid)
                raise ConfigError(f"expected one of {choices}, got {value!r}{hint}", (key,))
        for key in ("epochs", "batch_size", "eval_batch_size", "step_epochs"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"must be positive, got {getattr(self, key)!r}", (key,))
        if self.lr <= 0:
            raise ConfigError(f"must be positive, got {self.lr!r}", ("lr",))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.val_fraction!r}", ("val_fraction",))
        for key in ("patience", "num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, key)!r}", (key,))

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain JSON/YAML data (tuples as lists, ``augment`` a dict or
        None) that :meth:`from_dict` reads back equal; ``config.json`` of a run holds it."""
        return config_layers.to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Returns the config built from plain values (JSON/YAML), checked strictly.

        Ints are accepted for floats and lists for tuples; nothing else is converted (``'3'``
        is not an int). Raises :class:`config_layers.ConfigError` (a ``ValueError``) naming
        the dotted key, e.g. ``augment.flipp: unknown key for AugmentConfig (did you mean
        'flip'?)`` or ``epochs: must be positive, got 0``.
        """
        return config_layers.from_dict(cls, data)


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


# --------------------------------------------------------------------------- evaluation


def _metric(ev: Evaluation, name: str) -> float:
    """Returns the selection metric of ``ev`` (higher is better: the loss is negated)."""
    if name == "loss":
        return -float(ev.loss if ev.loss is not None else math.inf)
    return float(getattr(ev, name))


# --------------------------------------------------------------------------- setup


@dataclass
class _Model:
    """The model of a run with what its checkpoints and inputs need."""

    model: nn.Module
    info: ModelInfo
    preprocess: Preprocess
    attention: AttentionSource
    capsule: bool
    reconstruct: bool


@dataclass
class _Session:
    """What the epochs of one :func:`train` call share, built once by :func:`_setup`."""

    cfg: TrainConfig
    ddp: Dist
    device: torch.device
    labels: tuple[str, ...]
    built: _Model
    #: The model's training forward, wrapped in DistributedDataParallel when distributed.
    runner: nn.Module
    landmarks: dict[str, Landmarks]
    train_data: FaceTensors
    train_idx: list[int]
    #: None: no validation (``val_fraction=0`` and no ``val_set``), the last epoch is kept.
    val_data: FaceTensors | None
    val_idx: list[int]
    #: Where the validation set comes from: ``"val_set"`` or ``"train"`` (carved).
    val_from: str
    #: Training samples per rank and epoch (the permutation is padded to equal shards).
    per_rank: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @property
    def show(self) -> bool:
        """Returns whether this process shows progress (rank 0 with ``progress``)."""
        return self.cfg.progress and self.ddp.main

    def log(self, message: str) -> None:
        if self.show:
            tqdm.write(message, file=sys.stderr)

    @property
    def model(self) -> nn.Module:
        return self.built.model

    def tensors(self, base: Dataset[Any], split: str, augment: AugmentConfig | None) -> FaceTensors:
        """Returns ``base`` as model inputs for ``split`` (with its landmarks, if given)."""
        return _face_tensors(self.cfg, self.built, self.landmarks, base, split, augment)

    def evaluate(self, data: Dataset[Any], indices: list[int]) -> Evaluation:
        """Returns the evaluation on ``indices`` of ``data``, sharded over the ranks and
        summed."""
        cfg, ddp, device, labels = self.cfg, self.ddp, self.device, self.labels
        shard = indices[ddp.rank :: ddp.world]
        conf = np.zeros((len(labels), len(labels)), dtype=np.int64)
        loss_sum = 0.0
        model = self.model
        was_training = model.training
        model.eval()
        loader = DataLoader(
            Subset(data, shard), batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers
        )
        with torch.no_grad():
            for image, attention, target in loader:
                target = target.to(device)
                scores = model(image.to(device), attention.to(device)).float()
                loss = _score_loss(cfg, self.built.capsule, scores, target)
                loss_sum += float(loss) * len(target)
                conf += confusion_matrix(target.cpu(), scores.argmax(dim=1).cpu(), len(labels))
        model.train(was_training)
        total = ddp.sum([loss_sum, *conf.reshape(-1).tolist()], device)
        conf = np.rint(total[1:]).astype(np.int64).reshape(conf.shape)
        n = max(1, int(conf.sum()))
        return Evaluation(conf, labels, loss=float(total[0]) / n)


def _build_model(cfg: TrainConfig, labels: tuple[str, ...], device: torch.device) -> _Model:
    """Returns the seeded model of ``cfg`` on ``device`` with its checkpoint info."""
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
    return _Model(model, info, preprocess, attention, capsule, reconstruct)


def _check_labels(train_labels: list[int], num_labels: int) -> None:
    if not train_labels:
        raise ValueError("the training set is empty")
    bad = [v for v in train_labels if not 0 <= v < num_labels]
    if bad:
        raise ValueError(f"training label {bad[0]} outside 0..{num_labels - 1}")


def _steps_per_epoch(cfg: TrainConfig, per_rank: int) -> int:
    """Returns the optimiser steps per epoch (a last batch of one sample is dropped, since
    batch norm cannot train on it)."""
    steps = max(1, per_rank // cfg.batch_size + int(per_rank % cfg.batch_size > 1))
    if cfg.max_batches_per_epoch is not None:
        steps = min(steps, cfg.max_batches_per_epoch)
    return steps


def _face_tensors(
    cfg: TrainConfig,
    built: _Model,
    landmarks: Mapping[str, Landmarks],
    base: Dataset[Any],
    split: str,
    augment: AugmentConfig | None,
) -> FaceTensors:
    """Returns ``base`` as model inputs for ``split`` (with its landmarks, if given)."""
    return FaceTensors(
        base,
        built.preprocess,
        augment=augment,
        attention=built.attention,
        landmarks=landmarks.get(split),
        joint_attention=cfg.joint_attention,
        seed=cfg.seed,
    )


def _setup(
    cfg: TrainConfig,
    train_set: Dataset[Any],
    val_set: Dataset[Any] | None,
    labels: tuple[str, ...],
    landmarks: Mapping[str, Landmarks] | None,
    ddp: Dist,
    device: torch.device,
) -> _Session:
    """Returns the session: model, training / validation split, optimiser and schedule."""
    built = _build_model(cfg, labels, device)
    dataset = getattr(train_set, "name", "")
    if isinstance(dataset, str) and dataset.strip() and dataset.isprintable():
        # Read by fer-export, which writes it into the ONNX file as fer.dataset.
        built.info.extra["dataset"] = dataset.strip()
    marks = dict(landmarks or {})
    train_labels = dataset_labels(train_set)
    _check_labels(train_labels, len(labels))
    train_data = _face_tensors(cfg, built, marks, train_set, "train", cfg.augment)
    val_data: FaceTensors | None = None
    val_idx: list[int] = []
    val_from = "train"
    if val_set is not None:
        train_idx = list(range(len(train_labels)))
        val_data = _face_tensors(cfg, built, marks, val_set, "val", None)
        val_idx = list(range(len(dataset_labels(val_set))))
        val_from = "val_set"
    elif cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(train_labels, cfg.val_fraction, cfg.seed)
        val_data = _face_tensors(cfg, built, marks, train_set, "train", None)
    else:
        train_idx = list(range(len(train_labels)))
    per_rank = math.ceil(len(train_idx) / ddp.world)
    steps_per_epoch = _steps_per_epoch(cfg, per_rank)
    optimizer = torch.optim.Adam(
        built.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    runner: nn.Module = _TrainForward(built.model, built.reconstruct)
    if ddp.world > 1:
        runner = nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Session(
        cfg=cfg,
        ddp=ddp,
        device=device,
        labels=labels,
        built=built,
        runner=runner,
        landmarks=marks,
        train_data=train_data,
        train_idx=train_idx,
        val_data=val_data,
        val_idx=val_idx,
        val_from=val_from,
        per_rank=per_rank,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
    )


def _restore_or_start(
    s: _Session, run_dir: RunDirectory, resuming: bool
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Returns the state and the metrics history to continue from: the saved ones (weights,
    optimiser, scheduler and RNG restored) when ``resuming``, else a fresh start. Rank 0
    (re)writes ``config.json``, ``metrics.jsonl`` and, on a fresh start, ``split.json``."""
    now = s.cfg.to_dict()
    state = TrainState(config=now)
    history: list[dict[str, Any]] = []
    if resuming:
        state = run_dir.read_state()
        run_dir.check_resume_config(state.config, now)
        run_dir.restore(s.model, s.optimizer, s.scheduler)
        state.config = now
        history = run_dir.read_history(state.epoch)
    if s.ddp.main:
        split = None
        if not resuming and s.val_data is not None:
            split = {"val_from": s.val_from, "train": len(s.train_idx), "val": len(s.val_idx)}
        run_dir.start(now, history, split)
    s.ddp.barrier()
    return state, history


# --------------------------------------------------------------------------- one epoch


def _epoch_shard(s: _Session, epoch: int) -> list[int]:
    """Returns this rank's training indices for ``epoch``: a seeded permutation (the same on
    every rank and after a resume), padded to equal shards and capped at the epoch's steps."""
    cfg, ddp = s.cfg, s.ddp
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = [s.train_idx[i] for i in torch.randperm(len(s.train_idx), generator=gen).tolist()]
    order += order[: s.per_rank * ddp.world - len(order)]  # equal shards
    return order[ddp.rank :: ddp.world][: s.steps_per_epoch * cfg.batch_size]


def _batch_loss(
    s: _Session, image: torch.Tensor, att: torch.Tensor, target: torch.Tensor, epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, scores) of one training batch; FloatingPointError on a non-finite
    loss."""
    cfg = s.cfg
    scores, recon = s.runner(image, att, target)
    loss = _score_loss(cfg, s.built.capsule, scores, target)
    if recon is not None:
        clean = s.built.preprocess.denormalise(image)
        loss = loss + cfg.reconstruction_weight * (recon - clean).pow(2).sum(dim=(1, 2, 3)).mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite training loss {loss.item()} at epoch {epoch}; lower lr "
            f"(now {s.scheduler.get_last_lr()[0]:.2e}) or set grad_clip"
        )
    return loss, scores


def _train_epoch(s: _Session, epoch: int) -> dict[str, Any]:
    """Returns the metrics record of training epoch ``epoch`` (counts summed over ranks)."""
    cfg, device = s.cfg, s.device
    s.train_data.set_epoch(epoch)
    shard = _epoch_shard(s, epoch)
    loader = DataLoader(
        Subset(s.train_data, shard),
        batch_size=cfg.batch_size,
        shuffle=False,
        drop_last=len(shard) % cfg.batch_size == 1,
        num_workers=cfg.num_workers,
    )
    s.model.train()
    sums = np.zeros(3)  # loss * n, correct, n
    started = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=None if s.show else True,
        leave=False,
        dynamic_ncols=True,
    )
    for image, att, target in bar:
        image, att, target = image.to(device), att.to(device), target.to(device)
        loss, scores = _batch_loss(s, image, att, target, epoch)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        s.optimizer.step()
        s.scheduler.step()
        n = len(target)
        sums += (float(loss.detach()) * n, float((scores.argmax(1) == target).sum()), n)
        bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{sums[1] / sums[2]:.3f}")
    seconds = time.perf_counter() - started
    total = s.ddp.sum(sums, device)
    return {
        "epoch": epoch,
        "step": epoch * s.steps_per_epoch,
        "lr": s.scheduler.get_last_lr()[0],
        "train_loss": total[0] / max(1, total[2]),
        "train_accuracy": total[1] / max(1, total[2]),
        "train_images": int(total[2]),
        "epoch_seconds": seconds,
        "train_images_per_s": total[2] / max(seconds, 1e-9),
    }


# --------------------------------------------------------------------------- selection


def _validate(s: _Session, record: dict[str, Any]) -> float | None:
    """Returns the selection metric on the validation set (None without one) and adds the
    validation loss and accuracies to ``record``."""
    if s.val_data is None:
        return None
    ev = s.evaluate(s.val_data, s.val_idx)
    record.update(
        val_loss=ev.loss,
        val_accuracy=ev.accuracy,
        val_mean_class_accuracy=ev.mean_class_accuracy,
    )
    return _metric(ev, s.cfg.select_metric)


def _select(state: TrainState, epoch: int, value: float | None) -> bool:
    """Returns whether ``epoch`` is the new best (always, without a validation ``value``) and
    updates the best epoch, best metric and epochs-without-improvement count of ``state``."""
    improved = value is None or state.best_metric is None or value > state.best_metric
    if improved:
        state.best_epoch = epoch
        state.bad_epochs = 0
        if value is not None:
            state.best_metric = value
    else:
        state.bad_epochs += 1
    return improved


def _stop_reason(cfg: TrainConfig, state: TrainState, validated: bool) -> str:
    """Returns why training stops after ``state.epoch`` (early stopping needs validation), or
    an empty string to go on."""
    if cfg.patience and validated and state.bad_epochs >= cfg.patience:
        return f"early stop: no improvement for {cfg.patience} epochs"
    if state.epoch >= cfg.epochs:
        return f"reached {cfg.epochs} epochs"
    return ""


def _save_epoch(
    s: _Session,
    run_dir: RunDirectory,
    state: TrainState,
    history: list[dict[str, Any]],
    improved: bool,
) -> None:
    """Rank 0 writes the best model (when ``improved``), the metrics and the last checkpoint;
    every rank then waits for it."""
    if s.ddp.main:
        if improved:
            run_dir.save_best(s.model, s.built.info)
        # Metrics before the checkpoint: a kill in between resumes from the previous epoch,
        # whose history simply drops the newer row.
        run_dir.write_metrics(history)
        run_dir.save_last(s.model, s.built.info, s.optimizer, s.scheduler, state)
    s.ddp.barrier()


def _epoch_line(record: dict[str, Any], improved: bool) -> str:
    """Returns the one-line summary of an epoch's ``record``."""
    val_text = ""
    if "val_loss" in record:
        val_text = (
            f", val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} "
            f"mean-class {record['val_mean_class_accuracy']:.4f}"
        )
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc "
        f"{record['train_accuracy']:.4f}{val_text}, {record['train_images_per_s']:.0f} "
        f"img/s{' *' if improved else ''}"
    )


# --------------------------------------------------------------------------- finishing


def _finish(
    s: _Session,
    run_dir: RunDirectory,
    state: TrainState,
    history: list[dict[str, Any]],
    test_set: Dataset[Any] | None,
) -> TrainResult:
    """Returns the result with the selected model evaluated on the validation and test sets;
    rank 0 writes their files and ``result.json``."""
    load_weights(s.model, run_dir.best)
    result = TrainResult(
        output_dir=run_dir.root,
        best_checkpoint=run_dir.best,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        stop_reason=state.stop_reason,
        history=history,
        model=s.model.eval(),
    )
    if s.val_data is not None:
        result.val = s.evaluate(s.val_data, s.val_idx)
    if test_set is not None:
        test_data = s.tensors(test_set, "test", None)
        result.test = s.evaluate(test_data, list(range(len(test_data))))
    if s.ddp.main:
        for name, done in (("val", result.val), ("test", result.test)):
            if done is not None:
                run_dir.save_evaluation(done, name)
        run_dir.write_result(result.to_dict())
        s.log(f"{result.stop_reason}; best epoch {result.best_epoch}")
        if result.test is not None:
            s.log(f"test: {result.test.summary()}")
    s.ddp.barrier()
    return result


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
    """Returns the result of training ``config.model`` on ``train_set``, with the selected
    model evaluated on ``test_set``.

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
    run_dir = RunDirectory(output_dir)
    ddp = setup_distributed()
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if resume and ddp.main:
        run_dir.recover()
    ddp.barrier()
    resuming = resume and run_dir.can_resume()
    if not resume and run_dir.holds_run():
        raise FileExistsError(
            f"{run_dir.root} already holds a training run; pass resume=True to continue it or "
            "choose another output directory"
        )
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, got {labels!r}")

    s = _setup(cfg, train_set, val_set, labels, landmarks, ddp, device)
    state, history = _restore_or_start(s, run_dir, resuming)
    if state.epoch == 0 and not state.stop_reason:
        s.log(
            f"training {cfg.model} ({sum(p.numel() for p in s.model.parameters()):,} "
            f"parameters, {s.built.preprocess.image_size} px) on {len(s.train_idx)} images, "
            f"validating on {len(s.val_idx)}, device {device}, {ddp.world} process(es)"
        )
    while not state.stop_reason and state.epoch < cfg.epochs:
        epoch = state.epoch + 1
        record = _train_epoch(s, epoch)
        improved = _select(state, epoch, _validate(s, record))
        record["best"] = improved
        state.epoch = epoch
        state.stop_reason = _stop_reason(cfg, state, s.val_data is not None)
        history.append(record)
        _save_epoch(s, run_dir, state, history, improved)
        s.log(_epoch_line(record, improved))
    if not state.stop_reason:
        state.stop_reason = f"reached {cfg.epochs} epochs"
    return _finish(s, run_dir, state, history, test_set)
