"""rl_trainer: GRPO-family RL for LLMs on Accelerate + PEFT, with band-ops clipping rules.

Main entry points:

- ``load_config(path, overrides)`` -> ``TrainerConfig`` (YAML + ``key=value`` overrides).
- ``GRPOTrainer(config).train()``: rollout, rewards, group advantages, clipped updates,
  metrics, checkpoints; runs unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed).
- ``atomic_write_text`` / ``atomic_write_bytes``: whole-file writes that readers never see
  half done (temporary file, fsync, rename; the mode a plain ``open()`` gives).
- Registries: rewards (``register_reward``), advantage estimators (``register_advantage``),
  rollout backends (``register_rollout_backend``); clipping rules come from ``band_ops``.
"""

from __future__ import annotations

from importlib import import_module as _import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# ``import rl_trainer.config_io`` -- what an app needs to validate its configuration and exit
# on a bad one -- does not load transformers, accelerate and the trainer first.
_EXPORTS = {
    "atomic_write_bytes": "_io",
    "atomic_write_text": "_io",
    "available_advantages": "advantages",
    "compute_advantages": "advantages",
    "register_advantage": "advantages",
    "TrainerConfig": "config",
    "load_config": "config",
    "mean_at_k": "estimators",
    "pass_at_k": "estimators",
    "RewardSpec": "rewards",
    "available_rewards": "rewards",
    "compute_rewards": "rewards",
    "get_reward": "rewards",
    "register_reward": "rewards",
    "RolloutBackend": "rollout",
    "RolloutOutput": "rollout",
    "SamplingParams": "rollout",
    "available_rollout_backends": "rollout",
    "register_rollout_backend": "rollout",
    "GRPOTrainer": "trainer",
    "NonFiniteLossError": "trainer",
    "RolloutBatch": "batch",
    "TrainerCallback": "callbacks",
    "TrainerControl": "callbacks",
    "TrainerState": "callbacks",
    "end_process_group": "collectives",
    "reduce_scalars": "collectives",
}

if TYPE_CHECKING:
    from rl_trainer._io import atomic_write_bytes, atomic_write_text
    from rl_trainer.advantages import (
        available_advantages,
        compute_advantages,
        register_advantage,
    )
    from rl_trainer.batch import RolloutBatch
    from rl_trainer.callbacks import TrainerCallback, TrainerControl, TrainerState
    from rl_trainer.collectives import end_process_group, reduce_scalars
    from rl_trainer.config import TrainerConfig, load_config
    from rl_trainer.estimators import mean_at_k, pass_at_k
    from rl_trainer.rewards import (
        RewardSpec,
        available_rewards,
        compute_rewards,
        get_reward,
        register_reward,
    )
    from rl_trainer.rollout import (
        RolloutBackend,
        RolloutOutput,
        SamplingParams,
        available_rollout_backends,
        register_rollout_backend,
    )
    from rl_trainer.trainer import GRPOTrainer, NonFiniteLossError

__version__ = _metadata.version("rl-trainer")

__all__ = [
    "GRPOTrainer",
    "NonFiniteLossError",
    "RewardSpec",
    "RolloutBackend",
    "RolloutBatch",
    "RolloutOutput",
    "SamplingParams",
    "TrainerCallback",
    "TrainerConfig",
    "TrainerControl",
    "TrainerState",
    "atomic_write_bytes",
    "atomic_write_text",
    "available_advantages",
    "available_rewards",
    "available_rollout_backends",
    "compute_advantages",
    "compute_rewards",
    "end_process_group",
    "get_reward",
    "load_config",
    "mean_at_k",
    "pass_at_k",
    "reduce_scalars",
    "register_advantage",
    "register_reward",
    "register_rollout_backend",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rl_trainer' has no attribute {name!r}")
    value = getattr(_import_module(f"rl_trainer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
