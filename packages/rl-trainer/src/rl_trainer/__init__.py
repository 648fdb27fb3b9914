"""rl_trainer: GRPO-family RL for LLMs on Accelerate + PEFT, with band-ops clipping rules.

Main entry points:

- ``load_config(path, overrides)`` -> ``TrainerConfig`` (YAML + ``key=value`` overrides).
- ``GRPOTrainer(config).train()``: rollout, rewards, group advantages, clipped updates,
  metrics, checkpoints; runs unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed).
- Registries: rewards (``register_reward``), advantage estimators (``register_advantage``),
  rollout backends (``register_rollout_backend``); clipping rules come from ``band_ops``.
"""

from importlib import metadata as _metadata

from rl_trainer.advantages import (
    available_advantages,
    compute_advantages,
    register_advantage,
)
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
from rl_trainer.trainer import GRPOTrainer, NonFiniteLossError, RolloutBatch

__version__ = _metadata.version("rl-trainer")

__all__ = [
    "GRPOTrainer",
    "NonFiniteLossError",
    "RewardSpec",
    "RolloutBackend",
    "RolloutBatch",
    "RolloutOutput",
    "SamplingParams",
    "TrainerConfig",
    "available_advantages",
    "available_rewards",
    "available_rollout_backends",
    "compute_advantages",
    "compute_rewards",
    "get_reward",
    "load_config",
    "mean_at_k",
    "pass_at_k",
    "register_advantage",
    "register_reward",
    "register_rollout_backend",
]
