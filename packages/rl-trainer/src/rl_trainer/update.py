"""The update step: ``ppo_epochs`` x ``mini_batches`` optimiser steps on one rollout batch.

``optimizer_step`` is one clipped-loss step on a mini-batch (micro-batch accumulation, gradient
clipping, the non-finite check); ``run_updates`` shuffles the batch into mini-batches and runs
them. Both take what they use explicitly; ``GRPOTrainer.update`` binds them to its state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator

import band_ops
from rl_trainer.batch import RolloutBatch, micro_batches
from rl_trainer.collectives import reduce_scalars
from rl_trainer.config import TrainerConfig
from rl_trainer.loss import micro_batch_loss
from rl_trainer.rollout import RolloutBackend

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float], float]]


def _normalizer(batch: RolloutBatch, aggregation: str, accelerator: Accelerator) -> float:
    mask = batch.completion_mask  # (N, T)
    sums = reduce_scalars(
        {"tokens": float(mask.sum()), "sequences": float((mask.sum(-1) > 0).sum())}, accelerator
    )
    return sums["tokens" if aggregation == "token-mean" else "sequences"]


def optimizer_step(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    backend: RolloutBackend,
    rule: band_ops.ClippingRule,
    config: TrainerConfig,
    accumulation_steps: int,
    loss_fn: LossFn = micro_batch_loss,
) -> dict[str, float] | None:
    """Returns one optimiser step's token-weighted metrics on the mini-batch ``batch`` ({} when
    no process has a completion token in it), or None when a non-finite loss or gradient on any
    process skipped the step (gradients cleared, nothing stepped).

    band-ops' count metrics (``band_ops.COUNT_METRICS``, e.g. ``count/pos/p<0.01``) are summed
    over micro-batches and processes instead: the step's token counts.

    After a step the rollout backend gets the new weights (``sync_weights``).
    """
    acc = accelerator
    cfg = config
    normalizer = _normalizer(batch, cfg.algorithm.aggregation, acc)
    if normalizer == 0:
        return {}
    # The loss of each micro-batch is its share of the global aggregate; accelerate divides
    # by the accumulation steps and data parallelism averages over processes, so scale back.
    scale = acc.num_processes * accumulation_steps
    sums: dict[str, float] = {}
    total_tokens = 0.0
    loss_sum = 0.0
    nonfinite = 0.0
    for micro in micro_batches(batch, cfg.optim.micro_batch_size, accumulation_steps):
        with acc.accumulate(model):
            loss, metrics, tokens = loss_fn(
                model,
                micro,
                rule=rule,
                algorithm=cfg.algorithm,
                normalizer=normalizer,
                temperature=cfg.rollout.temperature,
                horizon=cfg.algorithm.loss_horizon or cfg.rollout.max_new_tokens,
            )  # loss: () scalar
            if not torch.isfinite(loss.detach()):
                nonfinite = 1.0
            acc.backward(loss * scale)
            loss_sum += float(loss.detach())
            if tokens:
                total_tokens += tokens
                for key, value in metrics.items():
                    weight = 1.0 if key in band_ops.COUNT_METRICS else tokens
                    sums[key] = sums.get(key, 0.0) + value * weight
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.optim.max_grad_norm
    grad_norm = acc.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    grad_norm_value = float(grad_norm) if grad_norm is not None else math.nan
    bad_grad = 0.0 if math.isfinite(grad_norm_value) or grad_norm is None else 1.0
    flags = reduce_scalars({"nonfinite_loss": nonfinite, "nonfinite_grad": bad_grad}, acc)
    if flags["nonfinite_loss"] or flags["nonfinite_grad"]:
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    backend.sync_weights()
    # "tokens" cannot clash with a metric name: those come from the loss function.
    totals = reduce_scalars({**sums, "tokens": total_tokens}, acc)
    out = {
        k: totals[k] if k in band_ops.COUNT_METRICS else totals[k] / max(totals["tokens"], 1.0)
        for k in sums
    }
    out["loss"] = reduce_scalars({"loss": loss_sum}, acc)["loss"]
    out["grad_norm"] = grad_norm_value
    return out


def run_updates(
    batch: RolloutBatch,
    *,
    ppo_epochs: int,
    mini_batches: int,
    generator: torch.Generator,
    step: Callable[[RolloutBatch], dict[str, float]],
    after_step: Callable[[dict[str, float]], bool],
    max_updates: int | None = None,
) -> dict[str, float]:
    """Returns the means of the metrics of ``ppo_epochs`` x ``mini_batches`` calls of ``step``
    (at most ``max_updates``), plus ``nonfinite_updates``, the number of skipped ones.

    Each epoch shuffles ``batch`` with ``generator`` and splits it into ``mini_batches``
    mini-batches (an empty one is a masked one-sample copy: every process must step).
    ``after_step`` gets each step's metrics and returns True to stop.
    """
    collected: dict[str, list[float]] = {}
    budget = ppo_epochs * mini_batches if max_updates is None else max_updates
    done = 0
    stop = False
    for _ in range(ppo_epochs):
        if stop:
            break
        order = torch.randperm(len(batch), generator=generator).to(batch.input_ids.device)  # (N,)
        for chunk in torch.tensor_split(order, mini_batches):
            mini = batch.select(chunk) if len(chunk) else batch.select(order[:1])
            if not len(chunk):
                mini.completion_mask = torch.zeros_like(mini.completion_mask)  # (1, T)
            if done >= budget:
                break
            result = step(mini)
            done += 1
            for key, value in result.items():
                collected.setdefault(key, []).append(value)
            if after_step(result):
                stop = True
                break
    out = {k: sum(v) / len(v) for k, v in collected.items() if k != "nonfinite"}
    out["nonfinite_updates"] = float(sum(collected.get("nonfinite", [])))
    return out


__all__ = ["LossFn", "optimizer_step", "run_updates"]
