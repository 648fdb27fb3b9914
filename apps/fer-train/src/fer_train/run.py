"""One run: data -> training -> test evaluation -> ONNX export -> verification -> variants ->
plots, ``metrics.json`` and ``report.md``.

Under ``torchrun`` / ``accelerate launch`` every rank loads the data and trains (capsnet-model's
``train`` sets up the process group from the environment); only rank 0 evaluates, exports,
verifies and writes the report while the others wait at a barrier; the process group is
destroyed at the end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from capsnet_model import atomic_write_text
from capsnet_model.checkpoint import ModelInfo, read_info
from capsnet_model.data import AttentionSource, FaceTensors, dataset_labels
from capsnet_model.evaluation import Evaluation, confusion_matrix, predict
from capsnet_model.training import TrainConfig, TrainResult, train
from fer_train.config import AppConfig, ConfigError
from fer_train.data import Skipped, Splits, load_splits
from fer_train.plots import plot_learning_curves
from fer_train.report import (
    SKIPPED_FILE,
    fmt,
    plain,
    render_report,
    skipped_csv,
    skipped_summary,
)

#: Skipped rows printed on the console (all of them are in skipped.csv).
_SKIPPED_PRINTED = 20

#: Preprocessed test sets up to this many bytes are kept in memory between the ONNX checks.
_CACHE_BYTES = 512 * 2**20


class RunExistsError(FileExistsError):
    """``output_dir`` already holds a run and ``resume`` is not set."""


class VerificationFailed(RuntimeError):
    """The exported model failed the parity check (the run's files are still written)."""


def log(message: str) -> None:
    """One progress line on stdout."""
    print(f"fer-train: {message}", flush=True)


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def check_output_dir(cfg: AppConfig) -> Path:
    """Raises RunExistsError when ``output_dir`` holds a run and ``resume`` is false."""
    out = Path(cfg.output_dir)
    if cfg.resume:
        return out
    if (out / "metrics.json").exists():
        raise RunExistsError(
            f"{out} already holds a finished run (metrics.json); pass resume=true to "
            "re-evaluate and re-export it, or choose another output_dir"
        )
    if (out / "metrics.jsonl").exists() or (out / "checkpoints").exists():
        raise RunExistsError(
            f"{out} already holds an unfinished run; pass resume=true to continue it, or "
            "choose another output_dir"
        )
    return out


def _configure_threads(cfg: AppConfig) -> None:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if local > 1 and not torch.cuda.is_available():
        # Ranks on one CPU would each take every core; share them out instead.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _check_calibration(cfg: AppConfig) -> None:
    calib = cfg.export.calib
    if cfg.export.int8 and calib != "synthetic" and not Path(calib).is_dir():
        raise ConfigError(f"export.calib: folder {calib} does not exist (or use synthetic)")


def run(cfg: AppConfig) -> dict[str, Any] | None:
    """Runs every phase; returns the metrics on rank 0 (None on the other ranks)."""
    started = time.perf_counter()
    out = check_output_dir(cfg)
    _check_calibration(cfg)
    train_cfg = cfg.train_config()
    _configure_threads(cfg)
    main = _rank() == 0
    timings: dict[str, float] = {}

    t = time.perf_counter()
    # Every rank checks every image (same files, same verdicts, so the ranks agree on the
    # sample counts); only rank 0 shows the progress.
    splits = load_splits(cfg.data, progress=main and train_cfg.progress)
    timings["data"] = time.perf_counter() - t
    if main:
        out.mkdir(parents=True, exist_ok=True)
        # config_layers' YAML form: quotes what its loader would misread, so --config reads it
        # back equal.
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        atomic_write_text(out / SKIPPED_FILE, skipped_csv(splits.skipped))
        log(
            f"data: {splits.name}, {len(dataset_labels(splits.train))} training and "
            f"{len(dataset_labels(splits.test))} test images ({timings['data']:.1f} s)"
        )
        _log_skipped(splits.skipped, out / SKIPPED_FILE)
        log(f"training {train_cfg.model} for up to {train_cfg.epochs} epochs in {out}")

    t = time.perf_counter()
    result = train(train_cfg, splits.train, output_dir=out, val_set=splits.val, resume=cfg.resume)
    timings["training"] = time.perf_counter() - t
    metrics: dict[str, Any] | None = None
    try:
        if _rank() == 0:
            log(
                f"training: {result.epochs_run} epochs, best epoch {result.best_epoch} "
                f"({result.stop_reason}) in {timings['training']:.1f} s"
            )
            metrics = _finish(cfg, train_cfg, splits, result, timings, started)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return metrics


def _log_skipped(rows: list[Skipped], path: Path) -> None:
    """The skipped rows on the console: a count, then one line each (the first few)."""
    if not rows:
        return
    log(f"skipped {len(rows)} bad rows or images (data.on_error=skip), all listed in {path}:")
    for row in rows[:_SKIPPED_PRINTED]:
        log(f"  skipped ({row.splits}) {plain(row.where)}: {plain(row.reason)}")
    if len(rows) > _SKIPPED_PRINTED:
        log(f"  ... and {len(rows) - _SKIPPED_PRINTED} more")


# --------------------------------------------------------------------------- rank-0 phases


def _test_batches(
    tensors: FaceTensors, batch_size: int, num_workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    loader = DataLoader(tensors, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for image, attention, label in loader:
        yield image.numpy(), attention.numpy(), np.asarray(label)


class _TestSet:
    """The preprocessed test set as numpy batches; cached in memory when small."""

    def __init__(self, tensors: FaceTensors, batch_size: int, num_workers: int) -> None:
        self.tensors = tensors
        self.batch_size = batch_size
        self.num_workers = num_workers
        size = tensors.preprocess.image_size
        self.cache: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        if len(tensors) * 4 * size * size * 4 <= _CACHE_BYTES:
            self.cache = list(_test_batches(tensors, batch_size, num_workers))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self.cache is not None:
            return iter(self.cache)
        return _test_batches(self.tensors, self.batch_size, self.num_workers)


def _onnx_scores(path: Path, test: _TestSet, providers: str, with_attention: bool) -> np.ndarray:
    from fer_export import FERSession

    session = FERSession(path, providers=providers, warmup=False)
    parts = [
        session.run(image, attention if with_attention else None) for image, attention, _ in test
    ]
    return np.concatenate(parts).astype(np.float64)


def _compare(candidate: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {
        "agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(candidate - reference).max()),
        "test_accuracy": float((candidate.argmax(1) == targets).mean()),
    }


def _finish(
    cfg: AppConfig,
    train_cfg: TrainConfig,
    splits: Splits,
    result: TrainResult,
    timings: dict[str, float],
    started: float,
) -> dict[str, Any]:
    from fer_export.export import VerificationError, export_onnx, verify_onnx

    out = Path(cfg.output_dir)
    model = result.model
    if model is None:  # train() always returns it; keeps the type checker honest
        raise RuntimeError("training returned no model")
    info: ModelInfo = read_info(result.best_checkpoint)
    labels = tuple(info.labels)

    # ---- evaluating (PyTorch, selected model, test set)
    t = time.perf_counter()
    # The checkpoint stores a plain string; FaceTensors rejects one it does not know.
    attention = cast(AttentionSource, info.attention)
    tensors = FaceTensors(splits.test, info.preprocess, attention=attention)
    test = _TestSet(tensors, train_cfg.eval_batch_size, train_cfg.num_workers)
    scores_t, targets_t = predict(
        model, ((torch.from_numpy(i), torch.from_numpy(a), torch.from_numpy(y)) for i, a, y in test)
    )
    torch_scores = scores_t.double().numpy()
    targets = targets_t.numpy()
    evaluation = Evaluation(
        confusion_matrix(targets_t, scores_t.argmax(dim=1), len(labels)), labels
    )
    evaluation.save(out, "test")
    timings["evaluating"] = time.perf_counter() - t
    log(f"evaluating: test {evaluation.summary()} ({timings['evaluating']:.1f} s)")

    # ---- exporting
    t = time.perf_counter()
    attention_mode = cfg.export.attention
    if attention_mode == "auto":
        attention_mode = "input" if info.attention == "landmarks" else "baked"
    onnx_path = out / "model.onnx"
    export_onnx(result.best_checkpoint, onnx_path, attention=attention_mode, verify=False)
    timings["exporting"] = time.perf_counter() - t
    log(f"exporting: {onnx_path} ({timings['exporting']:.1f} s)")

    # ---- verifying (random-input parity, then ONNX Runtime on the test set)
    t = time.perf_counter()
    try:
        report = verify_onnx(onnx_path, result.best_checkpoint, atol=cfg.export.atol)
    except VerificationError as err:
        if err.report is None:
            raise
        report = err.report
    with_attention = attention_mode == "input"
    onnx_scores = _onnx_scores(onnx_path, test, cfg.export.providers, with_attention)
    parity = _compare(onnx_scores, torch_scores, targets)
    timings["verifying"] = time.perf_counter() - t
    log(
        f"verifying: parity {'passed' if report.passed else 'FAILED'} (max abs diff "
        f"{report.max_abs_diff:.2g}); ONNX Runtime test accuracy {parity['test_accuracy']:.4f}, "
        f"agreement with PyTorch {parity['agreement']:.4f} ({timings['verifying']:.1f} s)"
    )

    # ---- variants
    variants = _variants(cfg, onnx_path, test, onnx_scores, targets, with_attention, timings)

    # ---- plots, metrics.json, report.md
    t = time.perf_counter()
    curves = None
    if cfg.plots:
        curves = plot_learning_curves(
            result.history, out / "learning_curves.png", result.best_epoch
        ).name
    split_file = out / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    n_train = len(dataset_labels(splits.train))
    counts = np.bincount(targets, minlength=len(labels))
    metrics: dict[str, Any] = {
        "test_accuracy": evaluation.accuracy,
        "mean_class_accuracy": evaluation.mean_class_accuracy,
        "val_accuracy": result.val.accuracy if result.val is not None else None,
        "val_mean_class_accuracy": (
            result.val.mean_class_accuracy if result.val is not None else None
        ),
        "onnx_agreement": parity["agreement"],
        "onnx_test_accuracy": parity["test_accuracy"],
        "onnx_max_abs_diff": parity["max_abs_diff"],
        "onnx_verify_max_abs_diff": report.max_abs_diff,
        "onnx_verify_passed": report.passed,
        "onnx_verify_problems": report.problems,
        "onnx_atol": cfg.export.atol,
        "onnx_attention": attention_mode,
        "onnx_provider": cfg.export.providers,
        "onnx_size_bytes": onnx_path.stat().st_size,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "test_samples": evaluation.num_samples,
        "per_class_accuracy": dict(zip(labels, evaluation.per_class_accuracy, strict=True)),
        "class_counts": dict(zip(labels, (int(c) for c in counts), strict=True)),
        "dataset": splits.name,
        "val_source": splits.val_source if split.get("val", 0) or splits.val else "none",
        "skipped": skipped_summary(splits.skipped, cfg.data.on_error),
        "sizes": {
            "train": int(split.get("train", n_train)),
            "val": int(split.get("val", 0)),
            "test": evaluation.num_samples,
        },
        "model": info.name,
        "model_kwargs": info.kwargs,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "image_size": info.preprocess.image_size,
        "attention": info.attention,
        "num_processes": int(os.environ.get("WORLD_SIZE", "1")),
        "device": str(next(model.parameters()).device),
        "variants": variants,
        "learning_curves": curves,
        "timings": timings,
        "wall_s": 0.0,
    }
    timings["report"] = time.perf_counter() - t
    metrics["wall_s"] = time.perf_counter() - started
    atomic_write_text(out / "report.md", render_report(metrics))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    log(
        f"report: {out / 'report.md'}\n  test accuracy {fmt(metrics['test_accuracy'])}, mean "
        f"class accuracy {fmt(metrics['mean_class_accuracy'])}, ONNX agreement "
        f"{fmt(metrics['onnx_agreement'])}, {metrics['wall_s']:.1f} s in all"
    )
    if not report.passed:
        raise VerificationFailed(
            f"{onnx_path} failed the PyTorch/ONNX parity check: {'; '.join(report.problems)}"
        )
    return metrics


def _variants(
    cfg: AppConfig,
    onnx_path: Path,
    test: _TestSet,
    reference: np.ndarray,
    targets: np.ndarray,
    with_attention: bool,
    timings: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Writes the requested fp16 / int8 files; returns their sizes and agreements."""
    if not (cfg.export.fp16 or cfg.export.int8):
        return {}
    from fer_export.export import read_contract
    from fer_export.quantize import calibration_batches, to_fp16, to_int8

    t = time.perf_counter()
    out: dict[str, dict[str, Any]] = {}
    wanted = [name for name, on in (("fp16", cfg.export.fp16), ("int8", cfg.export.int8)) if on]
    for name in wanted:
        path = onnx_path.with_name(f"model.{name}.onnx")
        extra: dict[str, Any] = {}
        if name == "fp16":
            to_fp16(onnx_path, path)
        else:
            contract = read_contract(onnx_path)
            batches = calibration_batches(cfg.export.calib, contract, cfg.export.calib_count)
            to_int8(onnx_path, path, batches)
            extra["calib"] = f"{cfg.export.calib} ({cfg.export.calib_count} faces at most)"
        scores = _onnx_scores(path, test, cfg.export.providers, with_attention)
        size = path.stat().st_size
        out[name] = {
            "file": path.name,
            "size_bytes": size,
            "size_ratio": size / onnx_path.stat().st_size,
            **_compare(scores, reference, targets),
            **extra,
        }
    timings["variants"] = time.perf_counter() - t
    summary = ", ".join(
        f"{n} {v['size_ratio']:.2f}x size, agreement {v['agreement']:.4f}" for n, v in out.items()
    )
    log(f"variants: {summary} ({timings['variants']:.1f} s)")
    return out
