"""One run: data -> training -> test evaluation -> calibration and abstention (fitted on the
validation split) -> ONNX export with the calibration, abstention and provenance in its
metadata -> verification -> variants -> plots, ``metrics.json`` and ``report.md``.

Under ``torchrun`` / ``accelerate launch`` every rank loads the data and trains (capsnet-model's
``train`` sets up the process group from the environment); only rank 0 evaluates, exports,
verifies and writes the report while the others wait at a barrier; the process group is
destroyed at the end.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from capsnet_model import atomic_write_text
from capsnet_model.calibration import (
    TEMPERATURE_BOUNDS,
    Transform,
    choose_threshold,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
    reliability_bins,
)
from capsnet_model.checkpoint import ModelInfo, read_info
from capsnet_model.data import AttentionSource, FaceTensors, dataset_labels, stratified_split
from capsnet_model.evaluation import Evaluation, confusion_matrix, predict
from capsnet_model.training import TrainConfig, TrainResult, train
from fer_train import __version__
from fer_train.config import CALIB_SOURCES, AppConfig, ConfigError
from fer_train.data import Skipped, Splits, load_splits
from fer_train.model_card import MODEL_CARD_FILE, render_model_card
from fer_train.plots import plot_learning_curves, plot_reliability
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

#: Equal-width confidence bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15

#: What a model trained on the synthetic set says about itself (``fer.provenance`` note).
SYNTHETIC_NOTE = "trained on procedurally generated faces: a pipeline check, not a real-face model"

#: The label an abstaining model gives (fer-export's ``UNKNOWN_LABEL``); a data set with a
#: class of that name cannot have abstention.
UNKNOWN_LABEL = "unknown"

#: The probability transform of each ``fer.score_kind`` (fer-export's contract).
SCORE_TRANSFORMS: dict[str, Transform] = {"capsule_length": "log", "logit": "identity"}


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
    if cfg.export.int8 and calib not in CALIB_SOURCES and not Path(calib).is_dir():
        raise ConfigError(
            f"export.calib: folder {calib} does not exist (or use {' or '.join(CALIB_SOURCES)})"
        )


def environment(cfg: AppConfig) -> dict[str, Any]:
    """Returns what the run's numbers depend on besides its configuration: torch's thread
    counts (training results depend on the intra-op count, see the README), the CPU features
    torch uses, the platform, the deterministic-algorithms flag and the versions."""
    # torch's own string names the build (2.15.0+cu132), the distribution's does not
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("numpy", "capsnet-model", "fer-export", "fer-train"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    # One module, several distributions (onnxruntime, onnxruntime-gpu, JetPack's): the first
    # installed one names the build.
    versions["onnxruntime"] = "not installed"
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            versions["onnxruntime"] = f"{metadata.version(name)} ({name})"
            break
        except metadata.PackageNotFoundError:
            continue
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "threads_setting": cfg.threads,
        "cpu_count": os.cpu_count(),
        "cpu_capability": str(capability),
        "platform": platform.platform(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "seed": cfg.train.seed,
        "versions": versions,
    }


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
        # CPU results depend on the thread count (kernels split their sums by thread), so the
        # count is part of what reproduces a run.
        log(
            f"training {train_cfg.model} for up to {train_cfg.epochs} epochs in {out} "
            f"({torch.get_num_threads()} torch threads)"
        )

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
            # DDP keeps gloo's worker threads alive past the destroy; one still releasing its
            # last collective's tensors needs the GIL, and if the interpreter is shutting down
            # by then the process aborts after a good run. Hand them the GIL while Python lives.
            time.sleep(0.2)
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


def _batches(
    data: Dataset[Any], batch_size: int, num_workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for image, attention, label in loader:
        yield image.numpy(), attention.numpy(), np.asarray(label)


class _TestSet:
    """A preprocessed evaluation set (``(image, attention, label)`` items) as numpy
    batches; cached in memory when small."""

    def __init__(
        self, data: Dataset[Any], image_size: int, batch_size: int, num_workers: int
    ) -> None:
        self.data = data
        self.size = len(cast(Any, data))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        if self.size * 4 * image_size * image_size * 4 <= _CACHE_BYTES:
            self.cache = list(_batches(data, batch_size, num_workers))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self.cache is not None:
            return iter(self.cache)
        return _batches(self.data, self.batch_size, self.num_workers)


def _torch_scores(model: torch.nn.Module, data: _TestSet) -> tuple[np.ndarray, np.ndarray]:
    """Returns the model's float64 scores (N, C) and the targets (N,) on ``data``."""
    scores, targets = predict(
        model, ((torch.from_numpy(i), torch.from_numpy(a), torch.from_numpy(y)) for i, a, y in data)
    )
    return scores.double().numpy(), targets.numpy()


def _onnx_scores(
    path: Path, test: _TestSet, providers: str, with_attention: bool, landmarks: bool = False
) -> np.ndarray:
    """Returns ONNX Runtime's raw scores (N, C) of ``path`` on ``test``."""
    from fer_export import FERSession

    # fer-train feeds each batch's AU map itself, so a model trained with landmark maps needs
    # no landmark detector here.
    extra: dict[str, Any] = {"au_source": "template"} if landmarks else {}
    session = FERSession(path, providers=providers, warmup=False, **extra)
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


# --------------------------------------------------------------------------- calibration


@dataclass
class _Validation:
    """The split training selected the model on: the data set and its indices."""

    data: Dataset[Any]
    indices: list[int]
    #: How the report names it ("10 % of train, stratified (seed 0)", "PublicTest"...).
    source: str


def _validation(train_cfg: TrainConfig, splits: Splits) -> _Validation | None:
    """Returns the validation split exactly as :func:`capsnet_model.training.train` chose it
    (the data source's own split, else the same seeded stratified carve of the training
    split), or None when the run had none."""
    if splits.val is not None:
        return _Validation(
            splits.val, list(range(len(dataset_labels(splits.val)))), splits.val_source
        )
    if train_cfg.val_fraction > 0:
        labels = dataset_labels(splits.train)
        _, indices = stratified_split(labels, train_cfg.val_fraction, train_cfg.seed)
        source = f"{train_cfg.val_fraction * 100:g} % of train, stratified (seed {train_cfg.seed})"
        return _Validation(splits.train, indices, source)
    return None


@dataclass
class _Calibration:
    """Temperature scaling and abstention fitted on the validation split, measured on the
    test split; ``skipped`` says why there are none."""

    transform: Transform
    skipped: str = ""
    temperature: float = 1.0
    val_samples: int = 0
    #: metrics.json's ``calibration`` and ``abstention`` entries.
    metrics: dict[str, Any] = field(default_factory=dict)
    abstention: dict[str, Any] = field(default_factory=dict)
    #: The ``fer.calibration`` / ``fer.abstention`` metadata (None: not written).
    calibration_meta: dict[str, Any] | None = None
    abstention_meta: dict[str, Any] | None = None
    reliability: dict[str, Any] = field(default_factory=dict)


def _split_figures(
    scores: np.ndarray, targets: np.ndarray, temperature: float, transform: Transform
) -> dict[str, float]:
    before = probabilities(scores, 1.0, transform)
    after = probabilities(scores, temperature, transform)
    return {
        "ece_before": reliability_bins(before, targets, ECE_BINS).ece,
        "ece_after": reliability_bins(after, targets, ECE_BINS).ece,
        "nll_before": negative_log_likelihood(scores, targets, 1.0, transform),
        "nll_after": negative_log_likelihood(scores, targets, temperature, transform),
    }


def _calibrate(
    cfg: AppConfig,
    transform: Transform,
    labels: tuple[str, ...],
    val: tuple[np.ndarray, np.ndarray] | None,
    test: tuple[np.ndarray, np.ndarray],
    skipped: str,
) -> _Calibration:
    """Returns the temperature fitted on ``val`` (scores, targets), the abstention threshold
    chosen there for ``export.coverage``, and both measured on ``test``."""
    test_scores, test_targets = test
    before_bins = reliability_bins(
        probabilities(test_scores, 1.0, transform), test_targets, ECE_BINS
    )
    if val is None:
        result = _Calibration(transform, skipped=skipped)
        result.metrics = {
            "skipped": skipped,
            "test": {
                "ece_before": before_bins.ece,
                "nll_before": negative_log_likelihood(test_scores, test_targets, 1.0, transform),
            },
            "bins": ECE_BINS,
        }
        result.abstention = {"skipped": skipped}
        result.reliability = {"before": before_bins.to_dict()}
        return result
    val_scores, val_targets = val
    t = fit_temperature(val_scores, val_targets, transform)
    test_figures = _split_figures(test_scores, test_targets, t, transform)
    val_figures = _split_figures(val_scores, val_targets, t, transform)
    after_bins = reliability_bins(probabilities(test_scores, t, transform), test_targets, ECE_BINS)
    result = _Calibration(transform, temperature=t, val_samples=len(val_targets))
    low, high = TEMPERATURE_BOUNDS
    result.metrics = {
        "method": "temperature",
        "transform": transform,
        "temperature": t,
        # a fit on a bound: the validation faces are (almost) all right with a wide margin
        # (lower) or the model barely tells the classes apart there (upper)
        "at_bound": "lower" if t == low else "upper" if t == high else None,
        "fitted_on": "val",
        "val_samples": len(val_targets),
        # equal to training's validation accuracy when these are the faces it selected on
        "val_accuracy": float((val_scores.argmax(axis=1) == val_targets).mean()),
        "bins": ECE_BINS,
        "test": test_figures,
        "val": val_figures,
    }
    result.reliability = {"before": before_bins.to_dict(), "after": after_bins.to_dict()}
    # The file states the held-out (test) figures: what a user can expect on new faces.
    result.calibration_meta = {
        "method": "temperature",
        "temperature": t,
        "transform": transform,
        "fitted_on": "val",
        "samples": len(val_targets),
        **test_figures,
    }
    if UNKNOWN_LABEL in labels:
        reason = f"the labels include {UNKNOWN_LABEL!r}, the label an abstaining model gives"
        result.abstention = {"skipped": reason}
        return result
    coverage = cfg.export.coverage
    choice = choose_threshold(probabilities(val_scores, t, transform), val_targets, coverage)
    test_probs = probabilities(test_scores, t, transform)
    answered = test_probs.max(axis=1) >= choice.threshold
    correct = test_probs.argmax(axis=1) == test_targets
    result.abstention_meta = {
        "threshold": choice.threshold,
        "coverage_target": coverage,
        "fitted_on": "val",
        "val_coverage": choice.coverage,
        "val_accuracy_covered": choice.accuracy,
    }
    result.abstention = {
        **result.abstention_meta,
        "test_coverage": float(answered.mean()),
        "test_accuracy_covered": float(correct[answered].mean()) if answered.any() else None,
        "test_abstained": int((~answered).sum()),
    }
    return result


def _calibration_line(c: _Calibration, test_samples: int) -> str:
    """Returns the log line of the calibration phase."""
    if c.skipped:
        return (
            f"calibrating: skipped ({c.skipped}): model.onnx is exported uncalibrated (T = 1) "
            "and without abstention"
        )
    t = c.metrics["test"]
    bound = {"lower": " (the search's lower bound)", "upper": " (the search's upper bound)"}
    bound_text = bound.get(c.metrics.get("at_bound") or "", "")
    line = (
        f"calibrating: T = {c.temperature:.3f}{bound_text} fitted on {c.val_samples} validation "
        f"faces; test ECE {t['ece_before']:.4f} -> {t['ece_after']:.4f}"
    )
    a = c.abstention
    if "skipped" in a:
        return f"{line}; no abstention ({a['skipped']})"
    covered = a["test_accuracy_covered"]
    return (
        f"{line}; abstaining below {a['threshold']:.3f} (chosen for {a['coverage_target']:.0%} "
        f"validation coverage) answers {a['test_coverage']:.1%} of the {test_samples} test "
        f"faces, accuracy {'n/a' if covered is None else f'{covered:.4f}'} on those"
    )


def _split_text(splits: Splits, val: _Validation | None, cfg: AppConfig) -> str:
    """Returns one line saying where the train, validation and test images come from."""
    val_text = val.source if val is not None else "none"
    text = f"{splits.name}; validation: {val_text}; test: the data set's test split"
    if cfg.data.kind == "synthetic":
        d = cfg.data
        text = (
            f"train SyntheticFaces({d.synthetic_train}, seed {d.synthetic_seed}), validation "
            f"{val_text}, test SyntheticFaces({d.synthetic_test}, seed {d.synthetic_test_seed}), "
            f"{d.synthetic_size} px"
        )
    return text


def _provenance(
    cfg: AppConfig,
    splits: Splits,
    val: _Validation | None,
    sizes: dict[str, int],
    evaluation: Evaluation,
    info: ModelInfo,
) -> dict[str, Any]:
    """Returns the ``fer.provenance`` metadata: what the model was trained and tested on."""
    synthetic = cfg.data.kind == "synthetic"
    note = SYNTHETIC_NOTE if synthetic else f"trained on {splits.name}"
    return {
        "dataset": cfg.data.kind,
        "synthetic": synthetic,
        "sizes": dict(sizes),
        "split": _split_text(splits, val, cfg),
        "test_accuracy": evaluation.accuracy,
        "mean_class_accuracy": evaluation.mean_class_accuracy,
        "au_source": str(info.attention),
        "trained_with": f"fer-train {__version__}",
        "note": note,
    }


# --------------------------------------------------------------------------- finishing


def _finish(
    cfg: AppConfig,
    train_cfg: TrainConfig,
    splits: Splits,
    result: TrainResult,
    timings: dict[str, float],
    started: float,
) -> dict[str, Any]:
    from fer_export.export import (
        VerificationError,
        annotate_model,
        export_onnx,
        read_contract,
        verify_onnx,
    )

    out = Path(cfg.output_dir)
    model = result.model
    if model is None:  # train() always returns it; keeps the type checker honest
        raise RuntimeError("training returned no model")
    info: ModelInfo = read_info(result.best_checkpoint)
    labels = tuple(info.labels)
    image_size = info.preprocess.image_size
    batch, workers = train_cfg.eval_batch_size, train_cfg.num_workers

    # ---- evaluating (PyTorch, selected model, test set)
    t = time.perf_counter()
    # The checkpoint stores a plain string; FaceTensors rejects one it does not know.
    attention = cast(AttentionSource, info.attention)
    tensors = FaceTensors(splits.test, info.preprocess, attention=attention)
    test = _TestSet(tensors, image_size, batch, workers)
    torch_scores, targets = _torch_scores(model, test)
    evaluation = Evaluation(confusion_matrix(targets, torch_scores.argmax(1), len(labels)), labels)
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

    # ---- calibrating (validation split) and annotating model.onnx before any variant copies it
    t = time.perf_counter()
    contract = read_contract(onnx_path)
    transform = SCORE_TRANSFORMS[contract.score_kind]
    val = _validation(train_cfg, splits)
    val_scores: tuple[np.ndarray, np.ndarray] | None = None
    skipped = ""
    if val is None:
        skipped = "no validation split: the data source has none and train.val_fraction is 0"
    else:
        val_tensors = FaceTensors(val.data, info.preprocess, attention=attention)
        val_set = _TestSet(Subset(val_tensors, val.indices), image_size, batch, workers)
        val_scores = _torch_scores(model, val_set)
    calib = _calibrate(cfg, transform, labels, val_scores, (torch_scores, targets), skipped)
    split_file = out / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    n_train = len(dataset_labels(splits.train))
    sizes = {
        "train": int(split.get("train", n_train)),
        "val": int(split.get("val", 0)),
        "test": evaluation.num_samples,
    }
    provenance = _provenance(cfg, splits, val, sizes, evaluation, info)
    annotate_model(
        onnx_path,
        dataset=cfg.data.kind,
        calibration=calib.calibration_meta,
        abstention=calib.abstention_meta,
        provenance=provenance,
    )
    timings["calibrating"] = time.perf_counter() - t
    log(f"{_calibration_line(calib, evaluation.num_samples)} ({timings['calibrating']:.1f} s)")

    # ---- verifying (random-input parity, then ONNX Runtime on the test set)
    t = time.perf_counter()
    try:
        report = verify_onnx(onnx_path, result.best_checkpoint, atol=cfg.export.atol)
    except VerificationError as err:
        if err.report is None:
            raise
        report = err.report
    with_attention = attention_mode == "input"
    landmarks = info.attention == "landmarks"
    onnx_scores = _onnx_scores(onnx_path, test, cfg.export.providers, with_attention, landmarks)
    parity = _compare(onnx_scores, torch_scores, targets)
    # The runtime's formula (fer-export, from model.onnx's metadata) against fer-train's on
    # the same scores, then end to end: ONNX Runtime's scores against PyTorch's.
    runtime_probs = read_contract(onnx_path).probabilities(onnx_scores)
    ours = probabilities(onnx_scores, calib.temperature, transform)
    torch_probs = probabilities(torch_scores, calib.temperature, transform)
    calib.metrics["runtime_formula_max_abs_diff"] = float(np.abs(runtime_probs - ours).max())
    calib.metrics["onnx_probability_max_abs_diff"] = float(
        np.abs(runtime_probs - torch_probs).max()
    )
    timings["verifying"] = time.perf_counter() - t
    log(
        f"verifying: parity {'passed' if report.passed else 'FAILED'} (max abs diff "
        f"{report.max_abs_diff:.2g}); ONNX Runtime test accuracy {parity['test_accuracy']:.4f}, "
        f"agreement with PyTorch {parity['agreement']:.4f}, probabilities within "
        f"{calib.metrics['onnx_probability_max_abs_diff']:.2g} of PyTorch's "
        f"({timings['verifying']:.1f} s)"
    )

    # ---- variants (they copy model.onnx's metadata, calibration included)
    train_idx = _training_indices(splits, val)
    variants = _variants(
        cfg,
        onnx_path,
        test,
        onnx_scores,
        targets,
        with_attention,
        landmarks,
        timings,
        _TrainImages(FaceTensors(splits.train, info.preprocess, attention=attention), train_idx),
    )

    # ---- plots, metrics.json, report.md
    t = time.perf_counter()
    curves = reliability = None
    if cfg.plots:
        curves = plot_learning_curves(
            result.history, out / "learning_curves.png", result.best_epoch
        ).name
        if not calib.skipped:
            reliability = plot_reliability(
                reliability_bins(probabilities(torch_scores, 1.0, transform), targets, ECE_BINS),
                reliability_bins(
                    probabilities(torch_scores, calib.temperature, transform), targets, ECE_BINS
                ),
                out / "reliability.png",
                calib.temperature,
            ).name
    counts = np.bincount(targets, minlength=len(labels))
    test_cal = calib.metrics["test"]
    metrics: dict[str, Any] = {
        "test_accuracy": evaluation.accuracy,
        "mean_class_accuracy": evaluation.mean_class_accuracy,
        "val_accuracy": result.val.accuracy if result.val is not None else None,
        "val_mean_class_accuracy": (
            result.val.mean_class_accuracy if result.val is not None else None
        ),
        "temperature": None if calib.skipped else calib.temperature,
        "ece_before": test_cal["ece_before"],
        "ece_after": test_cal.get("ece_after"),
        "abstain_threshold": calib.abstention.get("threshold"),
        "test_coverage": calib.abstention.get("test_coverage"),
        "test_accuracy_covered": calib.abstention.get("test_accuracy_covered"),
        "calibration": calib.metrics,
        "abstention": calib.abstention,
        "reliability": calib.reliability,
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
        "onnx_score_kind": contract.score_kind,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "test_samples": evaluation.num_samples,
        "per_class_accuracy": dict(zip(labels, evaluation.per_class_accuracy, strict=True)),
        "class_counts": dict(zip(labels, (int(c) for c in counts), strict=True)),
        "dataset": splits.name,
        "data_kind": cfg.data.kind,
        "val_source": val.source if val is not None else "none",
        "skipped": skipped_summary(splits.skipped, cfg.data.on_error),
        "sizes": sizes,
        "provenance": provenance,
        "model": info.name,
        "model_kwargs": info.kwargs,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "image_size": image_size,
        "attention": info.attention,
        "num_processes": int(os.environ.get("WORLD_SIZE", "1")),
        "device": str(next(model.parameters()).device),
        "environment": environment(cfg),
        "variants": variants,
        "learning_curves": curves,
        "reliability_diagram": reliability,
        "timings": timings,
        "wall_s": 0.0,
    }
    timings["report"] = time.perf_counter() - t
    metrics["wall_s"] = time.perf_counter() - started
    atomic_write_text(out / "report.md", render_report(metrics))
    atomic_write_text(out / MODEL_CARD_FILE, render_model_card(metrics))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    log(
        f"report: {out / 'report.md'}\n  test accuracy {fmt(metrics['test_accuracy'])}, mean "
        f"class accuracy {fmt(metrics['mean_class_accuracy'])}, ECE "
        f"{fmt(metrics['ece_before'])} -> {fmt(metrics['ece_after'])}, ONNX agreement "
        f"{fmt(metrics['onnx_agreement'])}, {metrics['wall_s']:.1f} s in all"
    )
    if not report.passed:
        raise VerificationFailed(
            f"{onnx_path} failed the PyTorch/ONNX parity check: {'; '.join(report.problems)}"
        )
    return metrics


# --------------------------------------------------------------------------- variants


def _training_indices(splits: Splits, val: _Validation | None) -> list[int]:
    """Returns the indices of ``splits.train`` that trained the model (not validation)."""
    n = len(dataset_labels(splits.train))
    if val is None or val.data is not splits.train:
        return list(range(n))
    held = set(val.indices)
    return [i for i in range(n) if i not in held]


@dataclass
class _TrainImages:
    """The run's preprocessed training images (no augmentation) and which may calibrate."""

    tensors: FaceTensors
    indices: list[int]

    def batches(self, count: int, batch_size: int) -> tuple[Iterator[np.ndarray], int]:
        """Returns float32 image batches of up to ``count`` training images spread evenly
        over the training indices (deterministic), and how many there are."""
        n = len(self.indices)
        picks = sorted({self.indices[int(i)] for i in np.linspace(0, n - 1, min(count, n))})

        def gen() -> Iterator[np.ndarray]:
            for start in range(0, len(picks), batch_size):
                chunk = picks[start : start + batch_size]
                yield np.stack([self.tensors[i][0].numpy() for i in chunk]).astype(np.float32)

        return gen(), len(picks)


def _calib_source(cfg: AppConfig, contract: Any, train_images: _TrainImages) -> tuple[Any, str]:
    """Returns the int8 calibration batches of ``export.calib`` and a sentence naming them."""
    from fer_export.quantize import CALIBRATION_SEED, calibration_batches

    calib, count = cfg.export.calib, cfg.export.calib_count
    if calib == "train":
        batches, n = train_images.batches(count, 32)
        return batches, f"{n} training images (none of them validation or test images)"
    batches = calibration_batches(calib, contract, count)
    if calib == "synthetic":
        what = f"fer-export's synthetic faces ({count}, seed {CALIBRATION_SEED})"
    else:
        what = f"face crops from {calib} ({count} at most)"
    return batches, f"{what}, not checked for overlap with the test split"


def _variants(
    cfg: AppConfig,
    onnx_path: Path,
    test: _TestSet,
    reference: np.ndarray,
    targets: np.ndarray,
    with_attention: bool,
    landmarks: bool,
    timings: dict[str, float],
    train_images: _TrainImages,
) -> dict[str, dict[str, Any]]:
    """Writes the requested fp16 / int8 files; returns their sizes and agreements with the
    fp32 file on the (held-out) test split."""
    if not (cfg.export.fp16 or cfg.export.int8):
        return {}
    from fer_export.export import read_contract
    from fer_export.quantize import to_fp16, to_int8

    t = time.perf_counter()
    out: dict[str, dict[str, Any]] = {}
    checked_on = f"the {test.size} test images (held out)"
    calib_text = ""
    wanted = [name for name, on in (("fp16", cfg.export.fp16), ("int8", cfg.export.int8)) if on]
    for name in wanted:
        path = onnx_path.with_name(f"model.{name}.onnx")
        extra: dict[str, Any] = {"checked_on": checked_on}
        if name == "fp16":
            to_fp16(onnx_path, path)
        else:
            batches, calib_text = _calib_source(cfg, read_contract(onnx_path), train_images)
            to_int8(onnx_path, path, batches)
            extra["calib"] = calib_text
        scores = _onnx_scores(path, test, cfg.export.providers, with_attention, landmarks)
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
    log(f"variants: {summary}; agreement with fp32 on {checked_on} ({timings['variants']:.1f} s)")
    if calib_text:
        log(f"variants: int8 calibrated on {calib_text}; checked on {checked_on}")
    return out
