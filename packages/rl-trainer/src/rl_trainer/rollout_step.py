"""The rollout step: sample completions for this process's prompts, score them, compute group
advantages over all processes and prepare the batch the update step trains on.

``rollout_step`` and ``prepare_batch`` take what they use explicitly; ``GRPOTrainer.rollout`` and
``GRPOTrainer.prepare_batch`` bind them to the trainer's state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

import band_ops
from rl_trainer.advantages import compute_advantages, zero_variance_mask
from rl_trainer.batch import (
    RolloutBatch,
    build_batch,
    padded_logprobs,
    rollout_metrics,
    score_logprobs,
)
from rl_trainer.collectives import gather_tensor, reduce_scalars
from rl_trainer.config import TrainerConfig
from rl_trainer.data import PromptSampler, PromptSet
from rl_trainer.models import adapters_disabled
from rl_trainer.rewards import compute_rewards
from rl_trainer.rollout import RolloutBackend, SamplingParams


def _local_prompts(
    sampler: PromptSampler, prompts_per_step: int, accelerator: Accelerator
) -> list[int]:
    batch = sampler.next_batch(prompts_per_step)
    per = len(batch) // accelerator.num_processes
    return batch[accelerator.process_index * per : (accelerator.process_index + 1) * per]


def prepare_batch(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    advantages: torch.Tensor,
    *,
    model: nn.Module,
    reference: nn.Module | None,
    rule: band_ops.ClippingRule,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    config: TrainerConfig,
    masked: bool = False,
    old_logprobs: Sequence[Sequence[float]] | None = None,
) -> RolloutBatch:
    """Returns a RolloutBatch with old (and reference) log-probs and the rule's bounds.

    Both are computed here once, without gradient, from ``model``'s current weights, which are
    the weights that sampled the completions; every mini-batch update then reuses them.
    ``masked`` zeroes the completion mask (a placeholder that contributes nothing).
    ``old_logprobs`` (one value per completion token, from the sampler) replaces the forward
    pass that would otherwise compute them. With ``algorithm.kl_coef > 0`` the reference
    log-probs come from ``reference``, or, when it is None (LoRA), from ``model`` with its
    adapters disabled.
    """
    batch = build_batch(
        prompt_ids,
        completion_ids,
        advantages,
        pad_token_id=int(tokenizer.pad_token_id),
        device=accelerator.device,
    )

    def score(scorer: nn.Module) -> torch.Tensor:
        return score_logprobs(
            scorer,
            batch,
            micro_batch_size=config.optim.micro_batch_size,
            temperature=config.rollout.temperature,
        )  # (N, T)

    if masked:
        batch.completion_mask.zero_()
    if old_logprobs is None:
        batch.old_logprobs = score(model)  # (N, T)
    else:
        old = padded_logprobs(old_logprobs, batch.completion_ids.shape)  # (N, T)
        batch.old_logprobs = old.to(batch.completion_ids.device)
    if config.algorithm.kl_coef > 0:
        if reference is not None:
            batch.ref_logprobs = score(reference)  # (N, T)
        else:
            with adapters_disabled(accelerator.unwrap_model(model)):
                batch.ref_logprobs = score(model)  # (N, T)
    # Padded positions get log-prob 0 (p = 1): a valid input for every rule, never used.
    safe_old = batch.old_logprobs.masked_fill(batch.completion_mask == 0, 0.0)  # (N, T)
    batch.lower, batch.upper = (b.detach() for b in rule.bounds(safe_old))  # (N, T)
    return batch


def rollout_step(
    *,
    model: nn.Module,
    reference: nn.Module | None,
    rule: band_ops.ClippingRule,
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    config: TrainerConfig,
    prompts: PromptSet,
    sampler: PromptSampler,
    reward_specs: Sequence[Any],
    sampling: SamplingParams,
    reuse_rollout_logprobs: bool,
) -> tuple[RolloutBatch | None, dict[str, float], list[tuple[str, str]]]:
    """Returns this process's prepared batch (None when every group was filtered out), the
    rollout metrics (the same on every process) and a few (prompt, completion) examples.

    Draws the next ``rollout.prompts_per_step`` prompts from ``sampler`` (every process must
    call it: rewards and advantages are gathered over all of them).
    """
    cfg = config
    acc = accelerator
    positions = _local_prompts(sampler, cfg.rollout.prompts_per_step, acc)
    prompt_ids, prompt_texts, columns = prompts.select(positions)
    start = time.perf_counter()
    out = backend.generate(prompt_ids, cfg.rollout.group_size, sampling)
    generate_s = time.perf_counter() - start
    index = out.prompt_index
    completions = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    sample_prompts = [prompt_texts[p] for p in index]
    sample_columns = {name: [values[p] for p in index] for name, values in columns.items()}
    rewards = compute_rewards(reward_specs, sample_prompts, completions, sample_columns)

    # Group statistics over all processes, by prompt identity (the dataset row).
    rows = torch.tensor([prompts.rows[positions[p]] for p in index])  # (n,)
    all_rewards = gather_tensor(rewards.total.float(), acc)  # (N,)
    all_rows = gather_tensor(rows.long(), acc)  # (N,)
    all_valid = gather_tensor(rewards.valid.to(torch.long), acc).bool()  # (N,)
    advantages = compute_advantages(
        cfg.algorithm.advantage,
        all_rewards,
        all_rows,
        all_valid,
        **cfg.algorithm.advantage_params,
    )  # (N,)
    zero_std = zero_variance_mask(all_rewards, all_rows, all_valid)  # (N,)
    mine = slice(acc.process_index * len(index), (acc.process_index + 1) * len(index))
    keep = all_valid[mine].clone()  # (n,)
    if cfg.algorithm.filter_zero_std:
        keep &= ~zero_std[mine]
    kept = keep.nonzero().flatten().tolist()

    metrics = rollout_metrics(
        rewards,
        all_rewards,
        all_rows,
        all_valid,
        out.completion_ids,
        eos_token_id=tokenizer.eos_token_id,
        reduce=lambda values: reduce_scalars(values, acc),
    )
    metrics["time/generate_s"] = generate_s
    used = reduce_scalars({"kept": float(len(kept))}, acc)["kept"]
    metrics["samples_used_frac"] = used / all_rewards.numel()
    examples = list(zip(sample_prompts[:2], completions[:2], strict=True))
    if used == 0:
        return None, metrics, examples

    rollout_logprobs = out.logprobs if reuse_rollout_logprobs else None
    if reuse_rollout_logprobs and rollout_logprobs is None:
        raise ValueError(
            f"rollout backend {cfg.rollout.backend!r} returned no log-probs; set "
            f"algorithm.old_logprobs=recompute"
        )
    chosen = kept or [0]  # collectives need every process: one masked sample if none left
    batch = prepare_batch(
        [prompt_ids[index[i]] for i in chosen],
        [out.completion_ids[i] for i in chosen],
        advantages[mine][chosen] if kept else torch.zeros(1),  # (n_kept,)
        model=model,
        reference=reference,
        rule=rule,
        tokenizer=tokenizer,
        accelerator=acc,
        config=cfg,
        masked=not kept,
        old_logprobs=None if rollout_logprobs is None else [rollout_logprobs[i] for i in chosen],
    )
    if rollout_logprobs is None and out.logprobs is not None and batch.old_logprobs is not None:
        # The sampler's log-probs next to the trainer's own for the same tokens: drift between
        # the two engines (or stale weights on a server) shows here, every step.
        sampled = padded_logprobs([out.logprobs[i] for i in chosen], batch.completion_ids.shape)
        metrics.update(
            logprob_mismatch(sampled.to(batch.old_logprobs.device), batch, accelerator=acc)
        )
    backend_metrics = getattr(backend, "metrics", None)
    if callable(backend_metrics):
        metrics.update(backend_metrics())
    return batch, metrics, examples


def logprob_mismatch(
    sampled: torch.Tensor, batch: RolloutBatch, *, accelerator: Accelerator
) -> dict[str, float]:
    """Returns the mean and max |sampler log-prob - trainer log-prob| over the completion
    tokens of all processes (``rollout/logprob_diff_mean``, ``rollout/logprob_diff_max``)."""
    assert batch.old_logprobs is not None  # set by prepare_batch
    mask = batch.completion_mask.bool()  # (N, T)
    diff = (sampled - batch.old_logprobs).abs()[mask]  # (tokens,)
    sums = reduce_scalars({"diff": float(diff.sum()), "tokens": float(diff.numel())}, accelerator)
    peak = reduce_scalars(
        {"max": float(diff.max()) if diff.numel() else 0.0}, accelerator, op="max"
    )
    return {
        "rollout/logprob_diff_mean": sums["diff"] / max(sums["tokens"], 1.0),
        "rollout/logprob_diff_max": peak["max"],
    }


__all__ = ["logprob_mismatch", "prepare_batch", "rollout_step"]
