"""The trainer's configuration: one dataclass tree, loadable from YAML, overridable from the CLI.

``load_config("run.yaml", ["optim.lr=1e-6", "algorithm.rule=band"])`` builds a
``TrainerConfig`` from its defaults, then the file, then the overrides; an unknown key anywhere is
an error that names it and suggests the closest valid one. Checks that need the model, the data
or the number of processes run when the trainer starts (``GRPOTrainer.__init__``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import band_ops
import config_layers
from config_layers import ConfigError
from rl_trainer.rewards import RewardSpec
from rl_trainer.tracking import KNOWN_TRACKERS


def _positive(where: str, value: float | int) -> None:
    if not value > 0:
        raise ValueError(f"{where} must be > 0, got {value!r}")


def _non_negative(where: str, value: float | int) -> None:
    if not value >= 0:
        raise ValueError(f"{where} must be >= 0, got {value!r}")


@dataclass
class LoraConfig:
    """PEFT LoRA adapters. With LoRA on, the reference policy is the base model with the
    adapters disabled, so a KL term costs no second copy of the weights."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # Module names, or ["all-linear"] for every linear layer except the output head.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )

    def __post_init__(self) -> None:
        _positive("model.lora.r", self.r)
        _positive("model.lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("model.lora.target_modules must name at least one module")


@dataclass
class ModelConfig:
    """Which causal LM to train: a local directory, or a hub id when the hub is reachable."""

    path: str = ""
    # "auto": bfloat16 on a CUDA device that supports it, float32 otherwise.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    """Prompts from a jsonl/json/parquet file (or a ``datasets`` directory / hub id)."""

    path: str = ""
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    # Held-out prompts for evaluation (same columns); None disables evaluation.
    eval_path: str | None = None
    # Format prompts with the tokenizer's chat template when it has one.
    chat_template: bool = True
    system_prompt: str | None = None
    max_prompt_length: int = 512
    # What to do with a prompt longer than max_prompt_length: fail naming it, or skip it (counted).
    overlong_prompts: Literal["error", "skip"] = "error"
    shuffle: bool = True

    def __post_init__(self) -> None:
        _positive("data.max_prompt_length", self.max_prompt_length)


@dataclass
class VllmConfig:
    """The ``vllm`` rollout backend: a vLLM OpenAI-compatible server (``rl-trainer vllm-serve``)."""

    url: str = "http://127.0.0.1:8000"
    # The served model's name; None: the server's first model (GET /v1/models).
    model: str | None = None
    # Seconds to wait for the server to answer at start (0: it must be up already).
    wait_s: float = 0.0
    # Per request: seconds before giving up, and retries of a failed request (with backoff).
    timeout_s: float = 300.0
    max_retries: int = 3
    # Requests in flight at once (one request per prompt, n = group size).
    concurrency: int = 8
    # How the server gets the new weights before each rollout: "lora" (save the adapter and
    # hot-load it under lora_name), "reload" (save the weights, the server reloads them through
    # its dev-mode /collective_rpc), "none" (never: off-policy), "auto" (lora for LoRA runs).
    sync: Literal["auto", "lora", "reload", "none"] = "auto"
    # A folder the server can read, where adapters or weights are written; None: under
    # logging.output_dir ("vllm_sync").
    sync_dir: str | None = None
    lora_name: str = "rl-trainer-policy"

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"rollout.vllm.url must start with http:// or https://, got {self.url!r}"
            )
        _non_negative("rollout.vllm.wait_s", self.wait_s)
        _positive("rollout.vllm.timeout_s", self.timeout_s)
        _non_negative("rollout.vllm.max_retries", self.max_retries)
        _positive("rollout.vllm.concurrency", self.concurrency)
        if not self.lora_name:
            raise ValueError("rollout.vllm.lora_name must not be empty")


@dataclass
class RolloutConfig:
    """How completions are sampled: G per prompt, ``prompts_per_step`` prompts per step."""

    # "hf": the training model samples (transformers); "vllm": a vLLM server (rollout.vllm).
    backend: str = "hf"
    # hf backend: "loop" (a lean KV-cache sampler that also returns token log-probs) or
    # "generate" (transformers' generate, for architectures that need its special handling).
    sampler: Literal["loop", "generate"] = "loop"
    group_size: int = 8
    # Prompts per step across all processes; must divide evenly among them.
    prompts_per_step: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    # Sequences per generate() call on one process; None generates the whole batch at once.
    generation_batch_size: int | None = None
    # The vllm backend's server and weight sync (rollout.backend=vllm).
    vllm: VllmConfig = field(default_factory=VllmConfig)

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(
                f"rollout.group_size must be >= 2 (group advantages compare completions of one "
                f"prompt), got {self.group_size!r}"
            )
        _positive("rollout.prompts_per_step", self.prompts_per_step)
        _positive("rollout.temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {self.top_p!r}")
        _non_negative("rollout.top_k", self.top_k)
        _positive("rollout.max_new_tokens", self.max_new_tokens)
        if self.generation_batch_size is not None:
            _positive("rollout.generation_batch_size", self.generation_batch_size)


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec(name="exact_match")]


@dataclass
class AlgorithmConfig:
    """The RL algorithm: clipping rule, aggregation, advantages, update schedule, extra terms."""

    # A band_ops rule name (band, ppo, clip_higher, dcpo, ...) and its parameters, checked
    # against the rule's own typed fields when the configuration loads.
    rule: str = "band"
    rule_params: dict[str, Any] = field(default_factory=dict)
    aggregation: str = "token-mean"
    # Horizon of seq-mean-token-sum-norm; None uses rollout.max_new_tokens.
    loss_horizon: int | None = None
    dual_clip: float | None = None
    advantage: str = "grpo"
    advantage_params: dict[str, Any] = field(default_factory=dict)
    # Drop groups whose rewards are all equal (DAPO's dynamic sampling); they are always counted.
    filter_zero_std: bool = False
    # Passes over each rollout batch, and optimiser steps per pass. Clipping only acts once the
    # policy has moved away from the one that sampled: ppo_epochs * mini_batches > 1.
    ppo_epochs: int = 1
    mini_batches: int = 2
    # Old log-probs: "rollout" takes the sampler's (no extra forward pass), "recompute" runs a
    # forward pass over the batch, "auto" takes the sampler's when they are the same numbers:
    # float32 weights and no top-k/top-p truncation; otherwise it recomputes.
    old_logprobs: Literal["auto", "rollout", "recompute"] = "auto"
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    rewards: list[RewardSpec] = field(default_factory=_default_rewards)

    def __post_init__(self) -> None:
        _positive("algorithm.ppo_epochs", self.ppo_epochs)
        _positive("algorithm.mini_batches", self.mini_batches)
        _non_negative("algorithm.kl_coef", self.kl_coef)
        if not math.isfinite(self.entropy_coef):
            raise ValueError(f"algorithm.entropy_coef must be finite, got {self.entropy_coef!r}")
        if self.loss_horizon is not None:
            _positive("algorithm.loss_horizon", self.loss_horizon)
        if not self.rewards:
            raise ValueError("algorithm.rewards must list at least one reward function")
        check_rule_params(self.rule, self.rule_params)


def check_rule_params(rule: str, params: dict[str, Any]) -> None:
    """Raises ConfigError (path ``rule`` or ``rule_params.<key>``) unless band-ops' rule ``rule``
    takes ``params``: the built-in rules are dataclasses, so each parameter is checked against
    its annotated type and the rule's own checks (a misspelt key or a negative ``delta`` fails
    here, when the configuration loads). Rules registered as other classes are built once.
    """
    try:
        cls = band_ops.rule_class(rule)
    except ValueError as exc:
        hint = config_layers.did_you_mean(rule, band_ops.available_rules())
        raise ConfigError(f"{exc}{hint}", ("rule",)) from None
    if "name" in params:
        raise ConfigError(
            f"the rule is chosen by algorithm.rule ({rule!r}), not by a parameter",
            ("rule_params", "name"),
        )
    try:
        if dataclasses.is_dataclass(cls):
            config_layers.from_dict(cls, params)
        else:
            band_ops.get_rule(rule, **params)
    except ConfigError as exc:
        path, problem = exc.path, exc.problem
        if not path:
            path = _parameter_named_in(problem, params)
        divergence = params.get("divergence")
        if isinstance(divergence, str) and repr(divergence) in problem:
            problem += config_layers.did_you_mean(divergence, band_ops.available_divergences())
        raise ConfigError(f"clipping rule {rule!r}: {problem}", ("rule_params", *path)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"clipping rule {rule!r}: {exc}", ("rule_params",)) from None


def _parameter_named_in(problem: str, params: dict[str, Any]) -> tuple[str, ...]:
    """Returns ``(key,)`` for the one parameter a rule's own check names ("delta must be ...",
    "unknown divergence 'kll'"), so the error points at that key's line; else ``()``."""
    named = [key for key in params if problem.startswith(f"{key} ")]
    if not named:
        named = [k for k, v in params.items() if isinstance(v, str) and repr(v) in problem]
    return (named[0],) if len(named) == 1 else ()


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule, batch splitting and the step budget."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    # None disables clipping of the gradient norm.
    max_grad_norm: float | None = 1.0
    # Sequences per forward/backward on one process; mini-batches are split into these.
    micro_batch_size: int = 8
    # RL steps (one rollout batch each).
    steps: int = 100
    seed: int = 0
    # Stop after this many consecutive optimiser steps with a non-finite loss or gradient.
    max_nonfinite_steps: int = 3

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _non_negative("optim.weight_decay", self.weight_decay)
        _non_negative("optim.warmup_steps", self.warmup_steps)
        if self.max_grad_norm is not None:
            _positive("optim.max_grad_norm", self.max_grad_norm)
        _positive("optim.micro_batch_size", self.micro_batch_size)
        _positive("optim.steps", self.steps)
        _positive("optim.max_nonfinite_steps", self.max_nonfinite_steps)


@dataclass
class LoggingConfig:
    """Where results go: output_dir holds config.yaml, metrics.jsonl, checkpoints, tracker logs."""

    output_dir: str = "runs/rl-trainer"
    log_every: int = 1
    progress_bar: bool = True
    # Experiment trackers run by accelerate (tensorboard, wandb, mlflow, ...; "all": every one
    # installed). None: the tensorboard switch below decides. A tracker whose package is not
    # installed is skipped with a warning.
    log_with: list[str] | None = None
    # The trackers' project (W&B/MLflow project; TensorBoard writes to output_dir/<project>).
    project: str = "rl-trainer"
    # With log_with unset: TensorBoard event files when the tensorboard package is installed.
    tensorboard: bool = True
    # Completions printed to the console every log step (0: none).
    print_samples: int = 0

    def __post_init__(self) -> None:
        _positive("logging.log_every", self.log_every)
        _non_negative("logging.print_samples", self.print_samples)
        for name in self.log_with or ():
            if name not in KNOWN_TRACKERS:
                raise ValueError(
                    f"logging.log_with: unknown tracker {name!r}; valid: "
                    f"{', '.join(KNOWN_TRACKERS)}"
                )
        if not self.project:
            raise ValueError("logging.project must not be empty")


@dataclass
class CheckpointConfig:
    """Full-state checkpoints (model, optimiser, scheduler, RNG, step, sampler position)."""

    # Save every N steps (0: only at the end).
    save_every: int = 0
    save_final: bool = True
    # Checkpoints kept on disk (older ones are deleted); 0 keeps all.
    keep_last: int = 2
    # "latest" (the newest checkpoint in output_dir, if any), a checkpoint directory, or None.
    resume: str | None = None
    # Multi-node runs: false (default) when output_dir is one folder every node mounts (the main
    # process writes the checkpoint); true when each node has its own output_dir (each node's
    # local main process writes a full checkpoint there). Checked against the folders at start.
    save_on_each_node: bool = False

    def __post_init__(self) -> None:
        _non_negative("checkpoint.save_every", self.save_every)
        _non_negative("checkpoint.keep_last", self.keep_last)


@dataclass
class EvalConfig:
    """Held-out evaluation: greedy accuracy, mean@k and unbiased pass@k of sampled answers."""

    # Evaluate every N steps (0: only at the end, when data.eval_path is set).
    every: int = 0
    max_prompts: int | None = None
    k: int = 4
    temperature: float = 1.0
    greedy: bool = True
    # The reward function whose value >= correct_threshold counts as correct for pass@k
    # (None: the first one in algorithm.rewards).
    correct_reward: str | None = None
    correct_threshold: float = 1.0

    def __post_init__(self) -> None:
        _non_negative("eval.every", self.every)
        _positive("eval.k", self.k)
        _positive("eval.temperature", self.temperature)
        if self.max_prompts is not None:
            _positive("eval.max_prompts", self.max_prompts)


@dataclass
class TrainerConfig:
    """Everything a run needs; ``output_dir/config.yaml`` holds the resolved copy."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check_required(self) -> None:
        """Raises ValueError when a value a run cannot start without is missing."""
        if not self.model.path:
            raise ValueError("model.path is required: a local model directory or a hub id")
        if not self.data.path:
            raise ValueError("data.path is required: a jsonl/json/parquet file of prompts")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainerConfig:
    """Returns the TrainerConfig from defaults <- YAML file ``path`` <- ``key=value`` overrides
    (``config_layers.load_config``: errors name the file line or override at fault)."""
    return config_layers.load_config(TrainerConfig, path, overrides)
