"""A rollout batch and what is computed over it without gradient: building the padded tensors,
splitting into micro-batches, scoring completions, and the rollout's metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rl_trainer.advantages import group_statistics
from rl_trainer.logprobs import completion_logits, token_logprobs_and_entropy
from rl_trainer.rollout import left_pad

# Reduces named scalars over processes (``rl_trainer.collectives.reduce_scalars`` bound to an
# accelerator): what the metric functions here need from the distributed setup.
Reduce = Callable[[Mapping[str, float]], dict[str, float]]


@dataclass
class RolloutBatch:
    """One process's share of a rollout, ready for updates. N samples, P prompt + T completion.

    ``input_ids``/``attention_mask`` are (N, P + T): the prompt left-padded, the completion
    right-padded. ``completion_ids``/``completion_mask``/``old_logprobs``/``ref_logprobs`` and
    the two bound tensors are (N, T); ``advantages`` is (N,).
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    advantages: Tensor
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    lower: Tensor | None = None
    upper: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: Tensor) -> RolloutBatch:
        """Returns the samples at ``index`` (a 1-D long tensor)."""
        return RolloutBatch(
            **{
                name: (value[index] if isinstance(value, Tensor) else value)
                for name, value in self.__dict__.items()
            }
        )


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    advantages: Tensor,
    *,
    pad_token_id: int,
    device: torch.device,
) -> RolloutBatch:
    """Returns the padded RolloutBatch of N samples (no log-probs or bounds yet)."""
    prompts, prompt_mask = left_pad(prompt_ids, pad_token_id)  # (N, P)
    length = max(1, max(len(c) for c in completion_ids))
    completions = torch.full(
        (len(completion_ids), length), pad_token_id, dtype=torch.long
    )  # (N, T)
    completion_mask = torch.zeros((len(completion_ids), length), dtype=torch.long)  # (N, T)
    for i, c in enumerate(completion_ids):
        completions[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        completion_mask[i, : len(c)] = 1
    return RolloutBatch(
        input_ids=torch.cat([prompts, completions], dim=1).to(device),  # (N, P + T)
        attention_mask=torch.cat([prompt_mask, completion_mask], dim=1).to(device),  # (N, P + T)
        completion_ids=completions.to(device),
        completion_mask=completion_mask.to(device, torch.float32),
        advantages=advantages.to(device, torch.float32),  # (N,)
    )


def padded_logprobs(values: Sequence[Sequence[float]], shape: torch.Size) -> Tensor:
    """Returns the (N, T) float32 tensor of per-token values, zero past each completion."""
    out = torch.zeros(shape, dtype=torch.float32)  # (N, T)
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out


def micro_batches(batch: RolloutBatch, size: int, count: int) -> list[RolloutBatch]:
    """Returns ``batch`` split into exactly ``count`` micro-batches of at most ``size`` samples;
    missing ones are masked one-sample copies, since every process must run the same number
    of forward/backward passes (collectives)."""
    device = batch.input_ids.device
    parts = [
        batch.select(torch.arange(s, min(s + size, len(batch)), device=device))
        for s in range(0, len(batch), size)
    ]
    if len(parts) > count:
        raise RuntimeError(f"internal: {len(parts)} micro-batches > accumulation steps {count}")
    while len(parts) < count:
        dummy = batch.select(torch.zeros(1, dtype=torch.long, device=device))
        dummy.completion_mask = torch.zeros_like(dummy.completion_mask)  # contributes nothing
        parts.append(dummy)
    return parts


@torch.no_grad()
def score_logprobs(
    model: nn.Module, batch: RolloutBatch, *, micro_batch_size: int, temperature: float
) -> Tensor:
    """Returns (N, T) log-probs of the batch's completions under ``model`` (no gradient)."""
    out = []
    length = batch.completion_ids.shape[1]
    for start in range(0, len(batch), micro_batch_size):
        part = slice(start, start + micro_batch_size)
        logits = completion_logits(
            model, batch.input_ids[part], batch.attention_mask[part], length
        )  # (n, T, V)
        logprobs, _ = token_logprobs_and_entropy(
            logits, batch.completion_ids[part], temperature=temperature, with_entropy=False
        )  # (n, T)
        out.append(logprobs)
    return torch.cat(out, dim=0)  # (N, T)


# Per-function reward means are weighted by valid samples across processes; these two are
# computed from the gathered rewards instead.
_GLOBAL_REWARD_KEYS = ("reward/total_std", "reward/failed_frac")


def rollout_metrics(
    rewards: Any,
    all_rewards: Tensor,
    all_rows: Tensor,
    all_valid: Tensor,
    completion_ids: Sequence[Sequence[int]],
    *,
    eos_token_id: int | None,
    reduce: Reduce,
) -> dict[str, float]:
    """Returns the rollout's metrics over all processes: response lengths, truncation, reward
    failures, each reward function's mean, total reward mean/std and group statistics.

    ``rewards`` is this process's ``RewardResult``; ``all_rewards``/``all_rows``/``all_valid``
    are (M,) tensors gathered from every process.
    """
    lengths = [len(c) for c in completion_ids]
    truncated = [1.0 if not c or c[-1] != eos_token_id else 0.0 for c in completion_ids]
    local = rewards.metrics()
    n_valid = float(rewards.valid.sum())
    reward_keys = sorted(
        k for k in local if k.startswith("reward/") and k not in _GLOBAL_REWARD_KEYS
    )
    sums = reduce(
        {
            "length_sum": float(sum(lengths)),
            "count": float(len(lengths)),
            "truncated": float(sum(truncated)),
            "failures": float(len(rewards.failures)),
            "valid": n_valid,
            **{key: local[key] * n_valid if n_valid else 0.0 for key in reward_keys},
        }
    )
    metrics: dict[str, float] = {
        "response_length/mean": sums["length_sum"] / sums["count"],
        "response_length/truncated_frac": sums["truncated"] / sums["count"],
        "reward/failures": sums["failures"],
    }
    valid_total = max(sums["valid"], 1.0)
    for key in reward_keys:
        metrics[key] = sums[key] / valid_total
    valid_rewards = all_rewards[all_valid]  # (V,)
    metrics["reward/total"] = float(valid_rewards.mean()) if len(valid_rewards) else math.nan
    metrics["reward/total_std"] = float(valid_rewards.std()) if len(valid_rewards) > 1 else 0.0
    metrics["reward/failed_frac"] = 1.0 - float(all_valid.float().mean())
    for key, value in group_statistics(all_rewards, all_rows, all_valid).items():
        metrics[f"groups/{key}"] = float(value)
    return metrics


__all__ = [
    "RolloutBatch",
    "build_batch",
    "micro_batches",
    "padded_logprobs",
    "rollout_metrics",
    "score_logprobs",
]
