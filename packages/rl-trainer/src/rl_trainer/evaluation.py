"""Held-out evaluation: greedy accuracy, mean@k and the unbiased pass@k of sampled answers."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rl_trainer.data import PromptSet
from rl_trainer.estimators import mean_pass_at_k
from rl_trainer.rewards import RewardSpec, compute_rewards
from rl_trainer.rollout import RolloutOutput, SamplingParams

if TYPE_CHECKING:
    from rl_trainer.trainer import GRPOTrainer


def correct_reward_name(trainer: GRPOTrainer) -> str:
    """Returns the reward whose value decides correctness (``eval.correct_reward`` or the
    first reward)."""
    if trainer.config.eval.correct_reward:
        return trainer.config.eval.correct_reward
    first = trainer.reward_specs[0]
    return first.name if isinstance(first, RewardSpec) else str(first[0])


@torch.no_grad()
def evaluate(trainer: GRPOTrainer, prompts: PromptSet) -> dict[str, float]:
    """Returns ``eval/greedy_accuracy``, ``eval/greedy_reward``, ``eval/mean@k``, ``eval/pass@1``
    and ``eval/pass@k`` over the first ``eval.max_prompts`` prompts.

    A sample is correct when the correctness reward reaches ``eval.correct_threshold``;
    pass@k is the unbiased estimator of Chen et al. (2021) from k samples per prompt. Prompts
    are dealt round-robin to the processes; every process runs the same number of generate
    calls (a process short of prompts repeats one and ignores it), since sharded models
    generate collectively.
    """
    cfg = trainer.config
    acc = trainer.accelerator
    total = min(len(prompts), cfg.eval.max_prompts or len(prompts))
    share = math.ceil(total / acc.num_processes)
    positions = list(range(total))[acc.process_index :: acc.num_processes]
    real = len(positions)
    positions += [positions[-1] if positions else 0] * (share - real)
    reward_key = correct_reward_name(trainer)
    k = cfg.eval.k
    ids, texts, cols = prompts.select(positions)

    def score(output: RolloutOutput) -> tuple[Tensor, Tensor, Tensor]:
        completions = trainer.tokenizer.batch_decode(
            output.completion_ids, skip_special_tokens=True
        )
        result = compute_rewards(
            trainer.reward_specs,
            [texts[p] for p in output.prompt_index],
            completions,
            {name: [values[p] for p in output.prompt_index] for name, values in cols.items()},
        )
        if reward_key not in result.per_function:
            raise ValueError(
                f"eval.correct_reward={reward_key!r} is not one of the rewards "
                f"{sorted(result.per_function)}"
            )
        correct = result.per_function[reward_key].nan_to_num(0.0) >= cfg.eval.correct_threshold
        counted = torch.tensor([p < real for p in output.prompt_index])  # (N,)
        return result.total * counted, correct & counted, counted

    sums: dict[str, float] = {"greedy_correct": 0.0, "greedy_reward": 0.0}
    if cfg.eval.greedy and share:
        greedy = trainer.backend.generate(
            ids, 1, SamplingParams(cfg.rollout.max_new_tokens, temperature=0.0)
        )
        reward, correct, _ = score(greedy)
        sums = {"greedy_correct": float(correct.sum()), "greedy_reward": float(reward.sum())}
    sampled_reward, pass1, passk = 0.0, 0.0, 0.0
    if share:
        params = replace(trainer._sampling(), temperature=cfg.eval.temperature)
        sampled = trainer.backend.generate(ids, k, params)
        reward, correct, _ = score(sampled)
        sampled_reward = float(reward.sum())
        per_prompt = torch.zeros(len(ids))
        per_prompt.index_add_(0, torch.tensor(sampled.prompt_index), correct.float())
        counts = [int(c) for c in per_prompt[:real].tolist()]
        if counts:
            pass1 = mean_pass_at_k(counts, k, 1) * len(counts)
            passk = mean_pass_at_k(counts, k, k) * len(counts)
    reduced: list[Any] = trainer._sum(
        [sums["greedy_correct"], sums["greedy_reward"], sampled_reward, pass1, passk, float(real)]
    )
    n = max(reduced[5], 1.0)
    out = {
        f"eval/mean@{k}": reduced[2] / (n * k),
        "eval/pass@1": reduced[3] / n,
        f"eval/pass@{k}": reduced[4] / n,
        "eval/prompts": reduced[5],
    }
    if cfg.eval.greedy:
        out["eval/greedy_accuracy"] = reduced[0] / n
        out["eval/greedy_reward"] = reduced[1] / n
    return out
