"""The loss of one micro-batch: the clipped policy loss (band-ops) plus the optional KL and
entropy terms, each normalised by the mini-batch's global token or sequence count."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import band_ops
from rl_trainer.batch import RolloutBatch
from rl_trainer.config import AlgorithmConfig
from rl_trainer.logprobs import completion_logits, kl_penalty, token_logprobs_and_entropy


def micro_batch_loss(
    model: nn.Module,
    micro: RolloutBatch,
    *,
    rule: band_ops.ClippingRule,
    algorithm: AlgorithmConfig,
    normalizer: float,
    temperature: float,
    horizon: int,
) -> tuple[Tensor, dict[str, float], float]:
    """Returns (loss, token-mean metrics, completion tokens) of ``micro`` under ``model``.

    ``micro`` must carry its old log-probs and the rule's bounds (``GRPOTrainer.prepare_batch``)
    and, with ``algorithm.kl_coef > 0``, the reference's log-probs.
    """
    cfg = algorithm
    logits = completion_logits(
        model, micro.input_ids, micro.attention_mask, micro.completion_ids.shape[1]
    )  # (n, T, V)
    need_entropy_grad = cfg.entropy_coef != 0
    logprobs, entropy = token_logprobs_and_entropy(
        logits, micro.completion_ids, temperature=temperature, with_entropy=need_entropy_grad
    )  # (n, T), (n, T) or None
    if entropy is None:
        with torch.no_grad():
            _, entropy = token_logprobs_and_entropy(
                logits.detach(), micro.completion_ids, temperature=temperature
            )  # (n, T)
    assert entropy is not None and micro.old_logprobs is not None
    assert micro.lower is not None and micro.upper is not None
    mask = micro.completion_mask  # (n, T)
    loss, pg_metrics = band_ops.policy_loss(
        logprobs,
        micro.old_logprobs,
        micro.advantages,
        mask,
        rule=rule,
        aggregation=cfg.aggregation,
        dual_clip=cfg.dual_clip,
        bounds=(micro.lower, micro.upper),
        normalizer=normalizer,
        horizon=horizon,
    )
    tokens = float(mask.sum())
    metrics = {f"{k}": float(v) for k, v in pg_metrics.items()}
    metrics["pg_loss"] = float(loss.detach())
    if cfg.kl_coef > 0:
        assert micro.ref_logprobs is not None
        kl = kl_penalty(logprobs, micro.ref_logprobs, cfg.kl_estimator)  # (n, T)
        kl_term = band_ops.aggregate(
            kl, mask, cfg.aggregation, normalizer=normalizer, horizon=horizon
        )
        loss = loss + cfg.kl_coef * kl_term
        metrics["kl_ref"] = float((kl.detach() * mask).sum() / max(tokens, 1.0))
    metrics["entropy"] = float((entropy.detach() * mask).sum() / max(tokens, 1.0))
    if cfg.entropy_coef != 0:
        entropy_term = band_ops.aggregate(
            entropy, mask, cfg.aggregation, normalizer=normalizer, horizon=horizon
        )
        loss = loss - cfg.entropy_coef * entropy_term
    return loss, metrics, tokens


__all__ = ["micro_batch_loss"]
