"""One training run: setup checks, the embedded default, the RL loop with a metrics line per
optimiser step, checkpoints, final evaluation, ``run.json`` and plots."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from bandpo_train.config import AppConfig, check_config
from bandpo_train.embedded import check_embedded, prepare_embedded
from bandpo_train.records import read_metrics
from rl_trainer import config_io
from rl_trainer.checkpoint import resolve_resume
from rl_trainer.trainer import GRPOTrainer, check_batch_geometry

logger = logging.getLogger(__name__)

# Keys every metrics.jsonl line carries (the contract for outside checks), and where they come
# from in rl-trainer's metrics.
CONTRACT_KEYS = {
    "reward_mean": "reward/total",
    "reward_std": "reward/total_std",
    "entropy": "entropy",
    "clip_frac_low": "clip_frac_low",
    "clip_frac_high": "clip_frac_high",
    "tokens_per_s": "tokens_per_s",
}


def check_launch_environment() -> None:
    """Raises ValueError when the accelerate launch asks for what this machine lacks."""
    if torch.cuda.is_available():
        return
    for variable, what in (
        ("ACCELERATE_USE_FSDP", "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
    ):
        if os.environ.get(variable, "").lower() == "true":
            raise ValueError(
                f"the accelerate config asks for {what}, which needs CUDA GPUs, and this machine "
                f"has none; on CPU launch with `accelerate launch --multi_gpu --num_processes N` "
                f"or the cpu_2proc config (`rl-trainer accelerate-configs`)"
            )
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "fp16":
        raise ValueError(
            "the accelerate config asks for fp16 mixed precision, which needs a GPU; this machine "
            "has none (use --mixed_precision no)"
        )


def preflight(config: AppConfig, num_processes: int) -> None:
    """Raises ValueError (ConfigError) or FileNotFoundError for what the run would reject later.

    Runs on every process before anything is written or trained, so that with a bad
    configuration all of them stop: the whole configuration (again: it may have been changed
    since it was loaded), the batch split over ``num_processes``, the checkpoint to resume from,
    and for the embedded default its tiny model and prompts.
    """
    check_config(config)
    check_batch_geometry(config, num_processes)
    resolve_resume(config.checkpoint.resume, config.logging.output_dir)
    if config.embedded:
        check_embedded(config)


def update_lines(
    rl_step: int, first_update: int, step_metrics: dict[str, float], updates: list[dict]
) -> list[dict[str, Any]]:
    """Returns one metrics record per optimiser step of an RL step.

    Rollout metrics (reward, lengths, groups, throughput) are the RL step's; loss, entropy,
    clip fractions, KL and gradient norm are each optimiser step's own.
    """
    shared = {k: v for k, v in step_metrics.items() if not isinstance(v, list)}
    lines = []
    for i, update in enumerate(updates or [{}]):
        record: dict[str, Any] = {"step": first_update + i, "rl_step": rl_step, **shared, **update}
        for key, source in CONTRACT_KEYS.items():
            record[key] = record.get(source, float("nan"))
        lines.append(record)
    return lines


def _plain(value: Any) -> Any:
    return value if not isinstance(value, float) or value == value else None


def train(config: AppConfig) -> dict[str, Any]:
    """Runs the configured training; returns the summary written to ``run.json``."""
    check_launch_environment()
    state = PartialState(cpu=not torch.cuda.is_available())
    preflight(config, state.num_processes)
    out = Path(config.logging.output_dir)
    started = time.time()
    embedded = config.embedded  # prepare_embedded fills model.path in
    if embedded:
        if state.is_main_process:
            prepare_embedded(config, build=True)
        state.wait_for_everyone()
        if not state.is_main_process:
            prepare_embedded(config, build=False)
    config.check_required()
    trainer = GRPOTrainer(config)
    acc = trainer.accelerator
    metrics_path = out / "metrics.jsonl"
    history = (
        [r for r in read_metrics(metrics_path) if r.get("rl_step", 0) <= trainer.step]
        if acc.is_main_process
        else []
    )
    done_updates = history[-1]["step"] if history else 0
    total = config.total_updates
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config_io.dump_yaml(config, out / "config.yaml")
        tmp = metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
        tmp.replace(metrics_path)
    # Only the main process read the file: share its count.
    done_updates = int(trainer._sum([float(done_updates)])[0])
    sink = metrics_path.open("a", encoding="utf-8") if acc.is_main_process else None
    progress = None
    if acc.is_main_process and config.logging.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=done_updates, desc="bandpo-train", unit="update")
    last: dict[str, Any] = {}
    try:
        while done_updates < total:
            metrics = trainer.train_step(max_updates=total - done_updates)
            lines = update_lines(trainer.step, done_updates + 1, metrics, trainer.last_updates)
            done_updates += len(trainer.last_updates) or 1
            last = lines[-1]
            if sink is not None:
                sink.write(
                    "".join(json.dumps({k: _plain(v) for k, v in r.items()}) + "\n" for r in lines)
                )
                sink.flush()
            if progress is not None:
                progress.update(len(lines))
                progress.set_postfix(
                    reward=f"{last['reward_mean']:.3f}", ent=f"{last['entropy']:.3f}", refresh=False
                )
            every = config.checkpoint.save_every
            if every and trainer.step % every == 0:
                trainer.save()
    finally:
        if sink is not None:
            sink.close()
        if progress is not None:
            progress.close()
    evaluation = trainer.evaluate() if trainer.eval_prompts is not None else {}
    if config.checkpoint.save_final:
        trainer.save()
    trainer.save_model(out / "final")
    summary = {
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "distributed_type": str(acc.distributed_type),
        "dtype": str(next(trainer.model.parameters()).dtype),
        "embedded": embedded,
        "task": config.task.name if embedded else None,
        "rule": config.algorithm.rule,
        "rule_params": config.algorithm.rule_params,
        "optimizer_steps": done_updates,
        "rl_steps": trainer.step,
        "wall_s": time.time() - started,
        "final": {k: _plain(v) for k, v in last.items() if isinstance(v, int | float)},
        "eval": evaluation,
        "versions": _versions(),
    }
    if acc.is_main_process:
        (out / "eval.json").write_text(json.dumps(evaluation, indent=2), encoding="utf-8")
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        tmp.replace(out / "run.json")
        if config.plots:
            from bandpo_train.plots import plot_run

            plot_run(metrics_path, out / "plots")
    acc.wait_for_everyone()
    return summary


def _versions() -> dict[str, str]:
    import accelerate
    import transformers

    import band_ops
    import rl_trainer

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "band_ops": band_ops.__version__,
        "rl_trainer": rl_trainer.__version__,
    }
