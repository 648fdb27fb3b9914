"""Callbacks: how users and apps extend ``GRPOTrainer.train()`` without copying its loop.

As in transformers, a callback subclasses :class:`TrainerCallback` and overrides the hooks it
needs; every hook gets the trainer, its :class:`TrainerState` and :class:`TrainerControl`, plus
the metrics of the event. A hook asks the loop for something by setting a ``control`` flag:
``control.should_training_stop = True`` ends training after the current optimiser update (the
RL step's metrics are still logged, the final checkpoint and model still written),
``should_save``/``should_evaluate``/``should_log`` add a checkpoint, an evaluation or a log
record at the end of the current RL step.

Hooks run on every process. Metrics handed to them are already reduced over processes (the same
everywhere), so a decision taken from them is the same on every process -- a stop request must
be, since the processes run collectives together. Writing files is for
``state.is_world_process_zero``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_trainer.tracking import METRICS_FILE, MetricsWriter

if TYPE_CHECKING:
    from rl_trainer.trainer import GRPOTrainer

Metrics = Mapping[str, float]


@dataclass
class TrainerState:
    """Where training stands: ``step`` RL steps done (restored on resume) of ``max_steps``;
    ``update`` counts the optimiser updates of the current RL step."""

    step: int = 0
    max_steps: int = 0
    update: int = 0
    num_processes: int = 1
    is_world_process_zero: bool = True


@dataclass
class TrainerControl:
    """Requests from callbacks to the loop; the three per-step flags are cleared after each RL
    step, ``should_training_stop`` stays set."""

    should_training_stop: bool = False
    should_evaluate: bool = False
    should_log: bool = False
    should_save: bool = False


class TrainerCallback:
    """Base class: every hook does nothing. Override the ones you need.

    Order of events in ``train()``: ``on_train_begin``; then per RL step ``on_rollout_end``
    (rollout metrics: rewards, lengths, groups), ``on_step_end`` after each optimiser update
    (that update's metrics), ``on_rl_step_end`` (the step's metrics and the list of its updates'
    metrics), then ``on_evaluate``, ``on_log`` and ``on_save`` when they happen; finally
    ``on_train_end`` (also when training stops with an error, so callbacks can close files).
    """

    def on_train_begin(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl
    ) -> None:
        """Called once before the first RL step (after a resume has restored the state)."""

    def on_rollout_end(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        """Called after the rollout, rewards and advantages of an RL step, before its updates."""

    def on_step_end(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        """Called after each optimiser update with that update's metrics (``state.update`` is
        its 1-based index in the RL step)."""

    def on_rl_step_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Metrics,
        updates: list[dict[str, float]],
    ) -> None:
        """Called after each RL step (``state.step`` already counts it) with its metrics and
        each optimiser update's own metrics, before evaluation, logging and saving."""

    def on_evaluate(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        """Called after each evaluation with its ``eval/...`` metrics."""

    def on_log(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        """Called when the trainer logs a record (the final evaluation's carries ``final``)."""

    def on_save(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, checkpoint: Path
    ) -> None:
        """Called after a checkpoint was written (on every process)."""

    def on_train_end(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        """Called once when training ends, with the last step's metrics."""


CallbackLike = TrainerCallback | type[TrainerCallback]


class CallbackHandler:
    """The trainer's ordered list of callbacks; calls a hook on each in turn."""

    def __init__(self, callbacks: Iterable[CallbackLike] = ()) -> None:
        self.callbacks: list[TrainerCallback] = []
        for callback in callbacks:
            self.add(callback)

    def add(self, callback: CallbackLike) -> None:
        """Appends ``callback`` (an instance, or a class to instantiate without arguments)."""
        instance = callback() if isinstance(callback, type) else callback
        if not isinstance(instance, TrainerCallback):
            raise TypeError(
                f"a callback must be a TrainerCallback (instance or subclass), got {callback!r}"
            )
        self.callbacks.append(instance)

    def pop(self, callback: CallbackLike) -> TrainerCallback | None:
        """Removes and returns the first callback that is ``callback`` or an instance of it."""
        for i, existing in enumerate(self.callbacks):
            if existing is callback or (
                isinstance(callback, type) and isinstance(existing, callback)
            ):
                return self.callbacks.pop(i)
        return None

    def call(self, event: str, trainer: GRPOTrainer, **kwargs: Any) -> None:
        """Runs hook ``event`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, event)(trainer, trainer.state, trainer.control, **kwargs)


# Shown in the progress bar's postfix, in this order, when present.
POSTFIX_KEYS = (
    ("reward/total", "reward"),
    ("entropy", "ent"),
    ("clip_frac", "clip"),
    ("kl_ref", "kl"),
    ("tokens_per_s", "tok/s"),
)


class ProgressCallback(TrainerCallback):
    """A console progress bar over RL steps (``logging.progress_bar``) with the latest reward,
    entropy, clip fraction, KL and throughput, and ``logging.print_samples`` completions at
    each log step. Main process only."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._samples = 0

    def on_train_begin(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl
    ) -> None:
        self._samples = trainer.config.logging.print_samples
        if state.is_world_process_zero and trainer.config.logging.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=state.max_steps,
                initial=state.step,
                desc="rl-trainer",
                unit="step",
                dynamic_ncols=True,
            )

    def on_rl_step_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Metrics,
        updates: list[dict[str, float]],
    ) -> None:
        if self._bar is not None:
            postfix = {
                short: f"{metrics[key]:.3g}" for key, short in POSTFIX_KEYS if key in metrics
            }
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def on_log(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        if not state.is_world_process_zero or "final" in metrics:
            return
        for prompt, completion in trainer.last_examples[: self._samples]:
            self.write(f"[step {state.step}] {prompt!r} -> {completion!r}")

    def write(self, message: str) -> None:
        """Prints a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def on_train_end(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class MetricsFileCallback(TrainerCallback):
    """Writes each logged record to ``output_dir/metrics.jsonl`` as ``{"step": N, ...}``
    (main process; a resumed run's later lines are dropped first)."""

    def __init__(self) -> None:
        self._writer: MetricsWriter | None = None

    def on_train_begin(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl
    ) -> None:
        if state.is_world_process_zero:
            self._writer = MetricsWriter(trainer.output_dir / METRICS_FILE, keep_through=state.step)

    def on_log(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        if self._writer is not None:
            self._writer.write([{"step": state.step, **metrics}])

    def on_train_end(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl, metrics: Metrics
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


DEFAULT_CALLBACKS: tuple[type[TrainerCallback], ...] = (MetricsFileCallback, ProgressCallback)

__all__ = [
    "DEFAULT_CALLBACKS",
    "CallbackHandler",
    "MetricsFileCallback",
    "ProgressCallback",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
]
