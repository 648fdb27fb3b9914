"""What a trainer is built from, as plain functions: the Accelerator (with its trackers), the
batch geometry check, DeepSpeed's ``auto`` values, prompt sets, the context-length check,
dropout off, AdamW and the learning-rate schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from rl_trainer.config import DataConfig, TrainerConfig
from rl_trainer.data import PromptSet, load_prompt_dataset, tokenize_prompts
from rl_trainer.tracking import resolve_trackers

logger = logging.getLogger(__name__)


def check_batch_geometry(config: TrainerConfig, world: int) -> None:
    """Raises ValueError when the rollout batch cannot be split over ``world`` processes."""
    if config.rollout.prompts_per_step % world:
        raise ValueError(
            f"rollout.prompts_per_step={config.rollout.prompts_per_step} must be divisible by "
            f"the number of processes ({world})"
        )
    samples = config.rollout.prompts_per_step // world * config.rollout.group_size
    if samples < config.algorithm.mini_batches:
        raise ValueError(
            f"each process has {samples} samples per step (prompts_per_step / processes * "
            f"group_size), fewer than algorithm.mini_batches={config.algorithm.mini_batches}"
        )


def make_accelerator(config: TrainerConfig, accumulation_steps: int) -> Accelerator:
    """Returns the run's Accelerator: CPU without CUDA, the configured trackers in ``log_with``
    (those whose package is missing are skipped, with a warning for explicitly asked ones)."""
    wanted = resolve_trackers(config.logging.log_with, config.logging.tensorboard)
    acc = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=accumulation_steps,
        log_with=wanted or None,
        project_dir=config.logging.output_dir,
    )
    have = {str(t) for t in acc.log_with}
    missing = [t for t in wanted if t != "all" and t not in have]
    if missing:
        # The default (tensorboard switch, log_with unset) stays quiet, as before.
        level = logging.WARNING if config.logging.log_with is not None else logging.INFO
        logger.log(
            level,
            "tracker(s) %s not installed (pip install %s): metrics go to metrics.jsonl only",
            ", ".join(missing),
            " ".join(missing),
        )
    return acc


def configure_deepspeed(accelerator: Accelerator, config: TrainerConfig) -> None:
    """Fills DeepSpeed's ``auto`` micro-batch size and gradient clipping from ``optim``."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = config.optim.micro_batch_size
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = config.optim.max_grad_norm or 0.0


def reuse_rollout_logprobs(config: TrainerConfig, policy: nn.Module) -> bool:
    """Returns True when the sampler's token log-probs serve as the old log-probs
    (``algorithm.old_logprobs``); raises ValueError when "rollout" is asked of a sampler
    that returns none."""
    mode = config.algorithm.old_logprobs
    if mode == "recompute":
        return False
    rollout = config.rollout
    loop = rollout.backend == "hf" and rollout.sampler == "loop"
    if mode == "rollout":
        if rollout.backend == "hf" and not loop:
            raise ValueError(
                "algorithm.old_logprobs=rollout needs log-probs from the sampler: use "
                "rollout.sampler=loop (transformers' generate returns none)"
            )
        return True
    # auto: the sampler's numbers equal a fresh forward pass only in float32 and without
    # truncation (bf16 kernels differ between cached decoding and a full pass).
    dtypes = {p.dtype for p in policy.parameters()}
    return loop and dtypes == {torch.float32} and rollout.top_k == 0 and rollout.top_p == 1.0


def load_prompts(
    dataset: Dataset | None,
    path: str | None,
    key: str,
    data: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> PromptSet:
    """Returns the tokenized prompts of ``dataset`` (or of the file at ``path``); ``key`` names
    the setting in errors."""
    if dataset is None:
        assert path is not None
        dataset = load_prompt_dataset(path, data.prompt_column, data.answer_column)
        where = path
    else:
        missing = [
            c for c in (data.prompt_column, data.answer_column) if c not in dataset.column_names
        ]
        if missing:
            raise ValueError(
                f"{key}: dataset lacks column(s) {missing}; it has {dataset.column_names}"
            )
        if len(dataset) == 0:
            raise ValueError(f"{key}: the dataset is empty")
        where = f"{key} dataset"
    prompts = tokenize_prompts(
        dataset,
        tokenizer,
        prompt_column=data.prompt_column,
        chat_template=data.chat_template,
        system_prompt=data.system_prompt,
        max_prompt_length=data.max_prompt_length,
        overlong=data.overlong_prompts,
        where=where,
    )
    if data.answer_column != "answer" and "answer" not in prompts.columns:
        # Built-in rewards read the "answer" column; alias the configured one.
        prompts.columns["answer"] = prompts.columns[data.answer_column]
    return prompts


def check_context(model: nn.Module, prompts: PromptSet, max_new_tokens: int) -> None:
    """Raises ValueError when the longest prompt plus ``max_new_tokens`` exceeds the model's
    context (``max_position_embeddings``)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    need = max(len(p) for p in prompts.prompt_ids) + max_new_tokens
    if isinstance(limit, int) and need > limit:
        raise ValueError(
            f"the longest prompt plus rollout.max_new_tokens is {need} tokens, more than the "
            f"model's context of {limit} (max_position_embeddings): lower "
            f"data.max_prompt_length or rollout.max_new_tokens"
        )


def disable_dropout(model: nn.Module) -> None:
    """Sets every dropout probability of ``model`` to 0 (LoRA dropout excepted)."""
    # RL compares log-probs of the same tokens under two passes; dropout would make the ratio of
    # an unchanged policy differ from 1. LoRA dropout is set by its own config.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", 0.0)  # noqa: B010


def adamw(params: list[nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    """Returns AdamW with the fused kernel where torch has one for these parameters (CPU and
    CUDA: one kernel for all tensors instead of a Python loop over them), else the default."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def lr_schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Returns the learning-rate factor of an optimiser step: linear warm-up over ``warmup``
    steps, then constant, linear decay or cosine decay to ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


__all__ = [
    "adamw",
    "check_batch_geometry",
    "check_context",
    "configure_deepspeed",
    "disable_dropout",
    "load_prompts",
    "lr_schedule",
    "make_accelerator",
    "reuse_rollout_logprobs",
]
