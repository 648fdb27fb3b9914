"""Held-out evaluation: greedy accuracy, mean@k and the unbiased pass@k of sampled answers.

Everything comes in as arguments (the rollout backend that generates, the tokenizer, rewards,
sampling parameters, the accelerator for the process split and the reductions), so this module
does not depend on the trainer: ``GRPOTrainer.evaluate`` and the ``evaluate`` command call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rl_trainer.collectives import reduce_scalars
from rl_trainer.config import EvalConfig
from rl_trainer.data import PromptSet
from rl_trainer.estimators import mean_pass_at_k
from rl_trainer.rewards import RewardSpec, compute_rewards
from rl_trainer.rollout import RolloutBackend, RolloutOutput, SamplingParams

if TYPE_CHECKING:
    from accelerate import Accelerator, PartialState
    from transformers import PreTrainedTokenizerBase


def correct_reward_name(config: EvalConfig, reward_specs: Sequence[Any]) -> str:
    """Returns the reward whose value decides correctness (``eval.correct_reward`` or the
    first reward: a ``RewardSpec`` or a ``(name, fn, weight)`` tuple)."""
    if config.correct_reward:
        return config.correct_reward
    first = reward_specs[0]
    return first.name if isinstance(first, RewardSpec) else str(first[0])


@torch.no_grad()
def evaluate(
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptSet,
    *,
    reward_specs: Sequence[Any],
    config: EvalConfig,
    sampling: SamplingParams,
    accelerator: Accelerator | PartialState | None = None,
) -> dict[str, float]:
    """Returns ``eval/greedy_accuracy``, ``eval/greedy_reward``, ``eval/mean@k``, ``eval/pass@1``
    and ``eval/pass@k`` over the first ``config.max_prompts`` prompts.

    ``sampling`` is the training rollout's (its ``max_new_tokens`` bounds the greedy answers;
    the k samples use it with ``config.temperature``). A sample is correct when the correctness
    reward reaches ``config.correct_threshold``; pass@k is the unbiased estimator of Chen et al.
    (2021) from k samples per prompt. Prompts are dealt round-robin to the processes; every
    process runs the same number of generate calls (a process short of prompts repeats one and
    ignores it), since sharded models generate collectively.
    """
    if accelerator is None:
        from accelerate import PartialState

        accelerator = PartialState()
    world, rank = accelerator.num_processes, accelerator.process_index
    total = min(len(prompts), config.max_prompts or len(prompts))
    share = math.ceil(total / world)
    positions = list(range(total))[rank::world]
    real = len(positions)
    positions += [positions[-1] if positions else 0] * (share - real)
    reward_key = correct_reward_name(config, reward_specs)
    k = config.k
    ids, texts, cols = prompts.select(positions)

    def score(output: RolloutOutput) -> tuple[Tensor, Tensor]:
        completions = tokenizer.batch_decode(output.completion_ids, skip_special_tokens=True)
        result = compute_rewards(
            reward_specs,
            [texts[p] for p in output.prompt_index],
            completions,
            {name: [values[p] for p in output.prompt_index] for name, values in cols.items()},
        )
        if reward_key not in result.per_function:
            raise ValueError(
                f"eval.correct_reward={reward_key!r} is not one of the rewards "
                f"{sorted(result.per_function)}"
            )
        correct = result.per_function[reward_key].nan_to_num(0.0) >= config.correct_threshold
        counted = torch.tensor([p < real for p in output.prompt_index])  # (N,)
        return result.total * counted, correct & counted  # (N,), (N,)

    local = {
        "greedy_correct": 0.0,
        "greedy_reward": 0.0,
        "sampled_reward": 0.0,
        "pass1": 0.0,
        "passk": 0.0,
        "prompts": float(real),
    }
    if config.greedy and share:
        greedy = backend.generate(ids, 1, SamplingParams(sampling.max_new_tokens, temperature=0.0))
        reward, correct = score(greedy)
        local["greedy_correct"] = float(correct.sum())
        local["greedy_reward"] = float(reward.sum())
    if share:
        sampled = backend.generate(ids, k, replace(sampling, temperature=config.temperature))
        reward, correct = score(sampled)
        local["sampled_reward"] = float(reward.sum())
        per_prompt = torch.zeros(len(ids))  # (share,)
        per_prompt.index_add_(0, torch.tensor(sampled.prompt_index), correct.float())
        counts = [int(c) for c in per_prompt[:real].tolist()]
        if counts:
            local["pass1"] = mean_pass_at_k(counts, k, 1) * len(counts)
            local["passk"] = mean_pass_at_k(counts, k, k) * len(counts)
    sums = reduce_scalars(local, accelerator)
    n = max(sums["prompts"], 1.0)
    out = {
        f"eval/mean@{k}": sums["sampled_reward"] / (n * k),
        "eval/pass@1": sums["pass1"] / n,
        f"eval/pass@{k}": sums["passk"] / n,
        "eval/prompts": sums["prompts"],
    }
    if config.greedy:
        out["eval/greedy_accuracy"] = sums["greedy_correct"] / n
        out["eval/greedy_reward"] = sums["greedy_reward"] / n
    return out


__all__ = ["correct_reward_name", "evaluate"]
