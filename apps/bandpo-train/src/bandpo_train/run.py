"""One training run: setup checks, the embedded default, rl-trainer's ``train()`` with a
callback that writes a metrics line per optimiser step and stops at ``max_steps``, then
``run.json``, ``eval.json`` and plots."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from bandpo_train.config import AppConfig, check_config
from bandpo_train.embedded import DONE, check_embedded, prepare_embedded
from bandpo_train.versions import versions
from rl_trainer import atomic_write_text
from rl_trainer.callbacks import (
    MetricsFileCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from rl_trainer.checkpoint import check_output_layout, resolve_resume_everywhere
from rl_trainer.collectives import reduce_scalars
from rl_trainer.components import check_batch_geometry
from rl_trainer.tracking import METRICS_FILE, MetricsWriter, jsonable
from rl_trainer.trainer import GRPOTrainer

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


def preflight(config: AppConfig, state: PartialState) -> None:
    """Raises ValueError (ConfigError) or FileNotFoundError for what the run would reject later.

    Runs on every process before anything is written or trained, so that with a bad
    configuration all of them stop: the whole configuration (again: it may have been changed
    since it was loaded), the batch split over the processes, for the embedded default its tiny
    model and prompts, and the checkpoint to resume from. Files can differ between nodes, so a
    check that fails on one process stops every process with that message, and every process
    must find the same checkpoint.
    """
    error: ValueError | FileNotFoundError | None = None
    try:
        check_config(config)
        check_batch_geometry(config, state.num_processes)
        if config.embedded:
            check_embedded(config)
    except (ValueError, FileNotFoundError) as exc:
        error = exc
    _stop_together(error, state)
    resolve_resume_everywhere(state, config.checkpoint.resume, config.logging.output_dir)


def _stop_together(error: ValueError | FileNotFoundError | None, state: PartialState) -> None:
    """Raises ``error`` here, or the first other process's error, when any process has one."""
    if state.num_processes == 1:
        if error is not None:
            raise error
        return
    from accelerate.utils import gather_object

    mine = None
    if error is not None:
        mine = (state.process_index, isinstance(error, FileNotFoundError), str(error))
    failed = [f for f in gather_object([mine]) if f is not None]
    if error is not None:
        raise error
    if failed:
        process, missing_file, message = failed[0]
        kind = FileNotFoundError if missing_file else ValueError
        raise kind(f"process {process}: {message}")


def _copy_embedded_to_every_node(state: PartialState, root: Path) -> None:
    """Gives each node's local main process the main process's ``root`` (collective).

    For node-local output folders: the other nodes train from byte-identical files instead of
    building their own (a warm start on other hardware may round differently). Small: a tiny
    model and toy data.
    """
    from accelerate.utils import broadcast_object_list

    files: list[dict[str, bytes]] = [{}]
    if state.is_main_process:
        files[0] = {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
    broadcast_object_list(files, from_process=0)
    if state.is_local_main_process and not state.is_main_process:
        # The completion marker last, so an interrupted copy is rebuilt, never half-used.
        for name in sorted(files[0], key=lambda n: n == DONE):
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(files[0][name])
            tmp.replace(target)
    state.wait_for_everyone()


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
    return jsonable(value)


class UpdateLines(TrainerCallback):
    """bandpo-train's metrics: one ``metrics.jsonl`` line per optimiser step (``step`` counts
    them across the run, ``rl_step`` is the RL step), a progress bar over optimiser steps, and
    the ``max_steps`` budget (training stops once ``total`` lines are written).

    A resumed run keeps the lines up to the checkpoint's RL step and numbers on from there.
    """

    def __init__(self, path: Path, total: int, *, progress_bar: bool) -> None:
        self.path = path
        self.total = total
        self.progress_bar = progress_bar
        self.done = 0
        self.pending = 0
        self.last: dict[str, Any] = {}
        self.evaluation: dict[str, float] = {}
        self._writer: MetricsWriter | None = None
        self._bar: Any = None

    def on_train_begin(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl
    ) -> None:
        done = 0
        if state.is_world_process_zero:
            self._writer = MetricsWriter(self.path, keep_through=state.step, step_key="rl_step")
            done = int(self._writer.kept[-1]["step"]) if self._writer.kept else 0
        # Only the main process read the file: share its count.
        shared = reduce_scalars({"done": float(done)}, trainer.accelerator, op="max")
        self.done = int(shared["done"])
        if state.is_world_process_zero and self.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.done, desc="bandpo-train", unit="update"
            )
        if self.done >= self.total:
            control.should_training_stop = True

    def on_step_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
    ) -> None:
        self.pending = state.update
        if self.done + self.pending >= self.total:
            control.should_training_stop = True

    def on_rl_step_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
        updates: list[dict[str, float]],
    ) -> None:
        lines = update_lines(state.step, self.done + 1, dict(metrics), updates)
        self.done += len(updates) or 1
        self.pending = 0
        self.last = lines[-1]
        if self._writer is not None:
            self._writer.write(lines)
        if self._bar is not None:
            self._bar.update(len(lines))
            self._bar.set_postfix(
                reward=f"{self.last['reward_mean']:.3f}",
                ent=f"{self.last['entropy']:.3f}",
                refresh=False,
            )
        if self.done >= self.total:
            control.should_training_stop = True

    def on_evaluate(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
    ) -> None:
        self.evaluation = dict(metrics)

    def on_train_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def train(config: AppConfig, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Runs the configured training; returns the summary written to ``run.json``.

    ``callbacks`` are added to the trainer after the app's own (the study's answer probe).
    """
    check_launch_environment()
    state = PartialState(cpu=not torch.cuda.is_available())
    preflight(config, state)
    out = Path(config.logging.output_dir)
    started = time.time()
    shared_output = check_output_layout(
        state, out, save_on_each_node=config.checkpoint.save_on_each_node
    )
    embedded = config.embedded  # prepare_embedded fills model.path in
    if embedded:
        if state.is_main_process:
            prepare_embedded(config, build=True)
        state.wait_for_everyone()
        if not shared_output:
            _copy_embedded_to_every_node(state, out / "embedded")
        if not state.is_main_process:
            prepare_embedded(config, build=False)
    config.check_required()
    metrics_path = out / METRICS_FILE
    lines = UpdateLines(
        metrics_path, config.total_updates, progress_bar=config.logging.progress_bar
    )
    trainer = GRPOTrainer(config, callbacks=[lines, *callbacks])
    # Its lines replace the trainer's one line per RL step and its progress over RL steps.
    trainer.remove_callback(MetricsFileCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    acc = trainer.accelerator
    evaluation = lines.evaluation
    summary = {
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "distributed_type": str(acc.distributed_type),
        "dtype": str(next(trainer.model.parameters()).dtype),
        "embedded": embedded,
        "task": config.task.name if embedded else None,
        "rule": config.algorithm.rule,
        "rule_params": config.algorithm.rule_params,
        "optimizer_steps": lines.done,
        "rl_steps": trainer.step,
        "wall_s": time.time() - started,
        "final": {k: _plain(v) for k, v in lines.last.items() if isinstance(v, int | float)},
        "eval": evaluation,
        "versions": versions(),
    }
    if acc.is_main_process:
        atomic_write_text(out / "eval.json", json.dumps(evaluation, indent=2))
        atomic_write_text(out / "run.json", json.dumps(summary, indent=2, default=str))
        if config.plots:
            from bandpo_train.plots import plot_run

            plot_run(metrics_path, out / "plots")
    acc.wait_for_everyone()
    return summary
