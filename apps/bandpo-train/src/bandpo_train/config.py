"""The app's configuration: rl-trainer's tree plus the toy task, the warm start and two
top-level shortcuts (``output_dir``, ``max_steps``), with the embedded default as its defaults.

Precedence: these defaults <- a preset (``preset=NAME``) <- ``--config FILE`` <- ``key=value``.

The whole configuration is checked when it is built (:func:`check_config`): rule names and
parameters, divergence, aggregation, dual clip, advantage estimator, rewards, the toy task and
the warm start, so that a bad value stops the run before the warm start or anything on disk.
Errors are ``ConfigError`` (a ``ValueError``) naming the key, and the override or file line
that set it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import band_ops
import config_layers
from bandpo_train.tasks import TASKS, get_task
from config_layers import ConfigError, did_you_mean
from rl_trainer import config as rl_config
from rl_trainer.advantages import available_advantages, compute_advantages
from rl_trainer.config import (
    AlgorithmConfig,
    DataConfig,
    LoggingConfig,
    OptimConfig,
    RolloutConfig,
    TrainerConfig,
)
from rl_trainer.rewards import RewardSpec, available_rewards, get_reward
from rl_trainer.rollout import available_rollout_backends


def _positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    ok = value >= 0 if zero_ok else value > 0
    if not (ok and math.isfinite(value)):
        what = "a finite number " if isinstance(value, float) else ""
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"must be {what}{bound}, got {value!r}", (key,))


@dataclass
class TaskConfig:
    """The embedded toy task (used when ``model.path`` is empty)."""

    name: str = "addition"
    train_size: int = 2000
    eval_size: int = 200
    seed: int = 0
    # Tiny model built for the task (character tokenizer over the task's characters).
    hidden_size: int = 64
    num_layers: int = 2

    def __post_init__(self) -> None:
        try:
            get_task(self.name)
        except ValueError as exc:
            raise ConfigError(f"{exc}{did_you_mean(self.name, sorted(TASKS))}", ("name",)) from None
        for key in ("train_size", "eval_size", "hidden_size", "num_layers"):
            _positive(key, getattr(self, key))


@dataclass
class WarmStartConfig:
    """Supervised steps on the task before RL (embedded default only)."""

    steps: int = 250
    lr: float = 3e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        _positive("steps", self.steps, zero_ok=True)
        _positive("lr", self.lr)
        _positive("batch_size", self.batch_size)


def _rollout() -> RolloutConfig:
    return RolloutConfig(group_size=8, prompts_per_step=32, max_new_tokens=4, temperature=1.0)


def _algorithm() -> AlgorithmConfig:
    return AlgorithmConfig(
        # Band's own defaults are the paper's: KL trust region, delta 0.05, ratio cap 10. Left
        # empty here so that `algorithm.rule=ppo` needs no other change.
        rule="band",
        dual_clip=10.0,
        aggregation="seq-mean-token-mean",
        mini_batches=4,
        rewards=[RewardSpec(name="exact_match")],
    )


def _optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, steps=600, micro_batch_size=64)


def _data() -> DataConfig:
    return DataConfig(chat_template=False, max_prompt_length=32)


def _logging() -> LoggingConfig:
    return LoggingConfig(output_dir="runs/bandpo-train")


@dataclass
class AppConfig(TrainerConfig):
    """Everything ``bandpo-train`` needs. The defaults are the embedded default run."""

    data: DataConfig = field(default_factory=_data)
    rollout: RolloutConfig = field(default_factory=_rollout)
    algorithm: AlgorithmConfig = field(default_factory=_algorithm)
    optim: OptimConfig = field(default_factory=_optim)
    logging: LoggingConfig = field(default_factory=_logging)
    task: TaskConfig = field(default_factory=TaskConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    # Shortcuts: output_dir sets logging.output_dir; max_steps is the number of optimiser steps
    # (each RL step makes ppo_epochs x mini_batches of them), as in TRL.
    output_dir: str | None = None
    max_steps: int | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        if self.output_dir is not None:
            self.logging.output_dir = self.output_dir
        if self.max_steps is not None:
            if self.max_steps <= 0:
                raise ConfigError(
                    f"must be > 0 (optimiser steps), got {self.max_steps!r}", ("max_steps",)
                )
            self.optim.steps = math.ceil(self.max_steps / self.updates_per_rollout)
        check_config(self)

    @property
    def updates_per_rollout(self) -> int:
        return self.algorithm.ppo_epochs * self.algorithm.mini_batches

    @property
    def total_updates(self) -> int:
        """Optimiser steps of the whole run."""
        return self.max_steps or self.optim.steps * self.updates_per_rollout

    @property
    def embedded(self) -> bool:
        """True when the run builds its own tiny model and data (no model.path given)."""
        return not self.model.path


def run_rewards(config: AppConfig) -> list[RewardSpec]:
    """Returns the rewards the run scores with: the embedded task's own in place of the default
    ``exact_match``, else ``algorithm.rewards``."""
    if config.embedded and [r.name for r in config.algorithm.rewards] == ["exact_match"]:
        return list(get_task(config.task.name).rewards)
    return list(config.algorithm.rewards)


def check_config(config: AppConfig) -> None:
    """Raises ConfigError (a ValueError) for the first value that the run would reject later.

    Registries and parameters are checked by the code that uses them: band-ops builds the
    clipping rule and computes the loss of a two-sequence dummy batch (rule parameters,
    divergence, aggregation, dual clip), rl-trainer computes dummy advantages and binds the
    rewards. The error's path names the key; unknown names list the valid ones, with the
    closest as a did-you-mean.
    """
    algorithm = config.algorithm
    rule = _check_rule(algorithm)
    _check_loss(algorithm, rule)
    _check_advantage(algorithm)
    for i, spec in enumerate(algorithm.rewards):
        try:
            get_reward(spec.name, **spec.params)
        except (ValueError, TypeError) as exc:
            if spec.name not in available_rewards():
                hint = did_you_mean(spec.name, available_rewards())
                raise ConfigError(f"{exc}{hint}", ("algorithm", "rewards", i, "name")) from None
            raise ConfigError(str(exc), ("algorithm", "rewards", i, "params")) from None
    correct = config.eval.correct_reward
    names = [spec.name for spec in run_rewards(config)]
    # Repeated rewards are keyed name, name_2, ... in the scores.
    repeated = [n for n in names if names.count(n) > 1]
    if correct and correct not in names and not any(correct.startswith(f"{n}_") for n in repeated):
        raise ConfigError(
            f"{correct!r} is not one of the run's rewards ({', '.join(names)})"
            f"{did_you_mean(correct, names)}",
            ("eval", "correct_reward"),
        )
    backend = config.rollout.backend
    if backend not in available_rollout_backends():
        raise ConfigError(
            f"unknown rollout backend {backend!r}; valid names: "
            f"{', '.join(available_rollout_backends())}"
            f"{did_you_mean(backend, available_rollout_backends())}",
            ("rollout", "backend"),
        )
    if not config.embedded:
        if not config.data.path:
            raise ConfigError(
                f"required when model.path is set ({config.model.path!r}): a jsonl/json/parquet "
                "file of prompts (leave model.path empty for the embedded default)",
                ("data", "path"),
            )
        return
    task = get_task(config.task.name)
    columns = sorted(task.rows(1, config.task.seed)[0])
    for key in ("prompt_column", "answer_column"):
        value = getattr(config.data, key)
        if value not in columns:
            raise ConfigError(
                f"{value!r} is not a column of the embedded {task.name!r} data (columns: "
                f"{', '.join(columns)}); set model.path and data.path to train on your own data",
                ("data", key),
            )
    if config.data.system_prompt:
        raise ConfigError(
            "the embedded default's character tokenizer has no chat template, so it takes no "
            f"system prompt; got {config.data.system_prompt!r}",
            ("data", "system_prompt"),
        )


def _check_rule(algorithm: AlgorithmConfig) -> band_ops.ClippingRule:
    """Returns the clipping rule band-ops builds from ``algorithm.rule`` and its parameters,
    checked against the rule's typed fields first (again here, for parameters assigned after
    loading, as the study does)."""
    try:
        rl_config.check_rule_params(algorithm.rule, algorithm.rule_params)
    except ConfigError as exc:
        raise ConfigError(exc.problem, ("algorithm", *exc.path)) from None
    return band_ops.get_rule(algorithm.rule, **algorithm.rule_params)


def _check_loss(algorithm: AlgorithmConfig, rule: band_ops.ClippingRule) -> None:
    """Raises ConfigError unless band-ops computes the policy loss of a dummy batch with the
    configured aggregation, loss horizon and dual clip (what the trainer's updates call)."""
    old = torch.log(torch.tensor([[0.5, 0.01], [0.9, 0.2]]))
    mask = torch.ones_like(old)
    aggregation, horizon = algorithm.aggregation, algorithm.loss_horizon
    try:
        band_ops.aggregate(torch.zeros_like(old), mask, aggregation, horizon=horizon)
    except ValueError as exc:
        hint = did_you_mean(aggregation, band_ops.available_aggregations())
        raise ConfigError(f"{exc}{hint}", ("algorithm", "aggregation")) from None
    try:
        band_ops.policy_loss(
            old,
            old,
            torch.tensor([1.0, -1.0]),
            mask,
            rule=rule,
            aggregation=aggregation,
            dual_clip=algorithm.dual_clip,
            horizon=horizon,
        )
    except ValueError as exc:
        key = "dual_clip" if algorithm.dual_clip is not None else "rule_params"
        raise ConfigError(str(exc), ("algorithm", key)) from None


def _check_advantage(algorithm: AlgorithmConfig) -> None:
    """Raises ConfigError unless rl-trainer computes dummy advantages with the configured
    estimator and its parameters."""
    name = algorithm.advantage
    try:
        compute_advantages(
            name, torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), **algorithm.advantage_params
        )
    # TypeError: a parameter that clashes with compute_advantages' own arguments.
    except (ValueError, TypeError) as exc:
        if name not in available_advantages():
            hint = did_you_mean(name, available_advantages())
            raise ConfigError(f"{exc}{hint}", ("algorithm", "advantage")) from None
        raise ConfigError(str(exc), ("algorithm", "advantage_params")) from None


PRESETS = config_layers.Presets("bandpo_train.presets")


def available_presets() -> list[str]:
    """Returns the names of the shipped presets (YAML files in bandpo_train/presets)."""
    return PRESETS.names()


def preset_path(name: str) -> Path:
    """Returns the file of preset ``name`` (ConfigError with did-you-mean for another name)."""
    return PRESETS.path(name)


def load_app_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> AppConfig:
    """Returns the AppConfig from defaults <- preset <- file <- overrides, checked as a whole.

    Raises ConfigError (a ValueError) naming the bad key and the override or file line that set
    it (also for an unknown preset), FileNotFoundError for a missing file.
    """
    return config_layers.load_config(AppConfig, path, overrides, base_files=PRESETS.files(preset))
