"""The app's configuration: rl-trainer's tree plus the toy task, the warm start and two
top-level shortcuts (``output_dir``, ``max_steps``), with the embedded default as its defaults.

Precedence: these defaults <- a preset (``preset=NAME``) <- ``--config FILE`` <- ``key=value``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from rl_trainer import config_io
from rl_trainer.config import (
    AlgorithmConfig,
    DataConfig,
    LoggingConfig,
    OptimConfig,
    RolloutConfig,
    TrainerConfig,
)
from rl_trainer.rewards import RewardSpec


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


@dataclass
class WarmStartConfig:
    """Supervised steps on the task before RL (embedded default only)."""

    steps: int = 250
    lr: float = 3e-3
    batch_size: int = 64


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
                raise ValueError(f"max_steps must be > 0, got {self.max_steps!r}")
            self.optim.steps = math.ceil(self.max_steps / self.updates_per_rollout)

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


PRESETS_PACKAGE = "bandpo_train.presets"


def available_presets() -> list[str]:
    """Returns the names of the shipped presets (YAML files in bandpo_train/presets)."""
    root = resources.files(PRESETS_PACKAGE)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """Returns the file of preset ``name``."""
    if name not in available_presets():
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(available_presets())}")
    return Path(str(resources.files(PRESETS_PACKAGE) / f"{name}.yaml"))


def load_app_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> AppConfig:
    """Returns the AppConfig from defaults <- preset <- file <- overrides."""
    bases = [preset_path(preset)] if preset is not None else []
    return config_io.load_config(AppConfig, path, overrides, base_files=bases)
