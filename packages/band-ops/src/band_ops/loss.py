"""``policy_loss``: the clipped surrogate with any clipping rule, aggregation and metrics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from band_ops.aggregation import aggregate
from band_ops.rules import ClippingRule, resolve_rule

# Old-probability buckets of the clip-fraction metrics: (label, low, high], p = exp(old_logprob).
PROBABILITY_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("p<0.01", 0.0, 0.01),
    ("p0.01-0.1", 0.01, 0.1),
    ("p0.1-0.5", 0.1, 0.5),
    ("p>0.5", 0.5, 1.0),
)

# exp(20) ~ 4.9e8: far beyond any bound, small enough that -A * r cannot overflow in float32.
MAX_LOG_RATIO = 20.0


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    rule: str | ClippingRule,
    aggregation: str = "token-mean",
    dual_clip: float | None = None,
    bounds: tuple[Tensor, Tensor] | None = None,
    normalizer: float | Tensor | None = None,
    horizon: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Returns (loss, metrics): the clipped policy-gradient surrogate and detached diagnostics.

    Per token, with r = exp(logprobs - old_logprobs) and bounds [lower, upper] from the rule:
        loss = max(-A r, -A clip(r, lower, upper))
    and with ``dual_clip=c`` (Ye et al., 2020), for A < 0 only: loss = min(loss, -A c).
    The log-ratio is clamped to +-20 before exp so that huge differences cannot overflow.

    Args:
        logprobs: (B, T) log-probabilities of the sampled tokens under the current policy
            (with gradient).
        old_logprobs: (B, T) the same under the policy that sampled them (no gradient used).
        advantages: (B,) per sequence or (B, T) per token.
        mask: (B, T) 1 for response tokens that count, 0 for prompt and padding.
        rule: a registered rule name (``available_rules()``, with default parameters) or a rule
            object such as ``band_ops.rules.Band(divergence="kl", delta=0.05, max_ratio=10)``.
        aggregation: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum`` or
            ``seq-mean-token-sum-norm`` (see ``band_ops.aggregation``).
        dual_clip: c > 1, caps the loss of negative-advantage tokens at -A c; None disables it.
        bounds: (lower, upper), each (B, T), computed once per rollout batch by the trainer
            (``rule.bounds(old_logprobs)``); None computes them here.
        normalizer: global count for the aggregation (tokens or sequences across micro-batches
            and processes); None uses this call's count.
        horizon: constant divisor of ``seq-mean-token-sum-norm``.

    Returns:
        loss: scalar tensor with gradient w.r.t. ``logprobs``.
        metrics: detached scalars over the masked tokens of this call: ``clip_frac``,
            ``clip_frac_low`` (A < 0, r < lower), ``clip_frac_high`` (A > 0, r > upper),
            ``dual_clip_frac``, ``clip_frac/<bucket>`` by old probability, ``token_frac/<bucket>``,
            ``approx_kl`` (k3 estimator of KL(old || new)), ``ratio_mean``, ``ratio_max``,
            ``ratio_min``, ``bound_low_mean``, ``bound_high_mean``.
    """
    rule_obj = resolve_rule(rule)
    _check_shapes(logprobs, old_logprobs, advantages, mask)
    if dual_clip is not None and not (isinstance(dual_clip, int | float) and dual_clip > 1):
        raise ValueError(f"dual_clip must be a number > 1 or None, got {dual_clip!r}")
    if bounds is None:
        bounds = rule_obj.bounds(old_logprobs)
    lower, upper = (b.detach().to(logprobs.dtype) for b in bounds)
    if lower.shape != logprobs.shape or upper.shape != logprobs.shape:
        raise ValueError(
            f"bounds must be (B, T) like logprobs {tuple(logprobs.shape)}; got "
            f"{tuple(lower.shape)} and {tuple(upper.shape)}"
        )
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)  # (B, 1), broadcast over T

    log_ratio = (logprobs - old_logprobs.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, lower, upper)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    loss = aggregate(per_token, mask, aggregation, normalizer=normalizer, horizon=horizon)

    metrics = _metrics(ratio, log_ratio, old_logprobs, adv, mask, lower, upper, dual_clip)
    return loss, metrics


def _check_shapes(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(
                f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, "
                f"got {tuple(t.shape)}"
            )
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(
            f"advantages must be (B,) or (B, T) = {tuple(logprobs.shape)}, "
            f"got {tuple(advantages.shape)}"
        )


@torch.no_grad()
def _metrics(
    ratio: Tensor,
    log_ratio: Tensor,
    old_logprobs: Tensor,
    adv: Tensor,
    mask: Tensor,
    lower: Tensor,
    upper: Tensor,
    dual_clip: float | None,
) -> dict[str, Tensor]:
    valid = mask.bool()
    m = valid.to(torch.float32)
    n = m.sum().clamp(min=1)

    def mean(x: Tensor) -> Tensor:
        return (x.to(torch.float32) * m).sum() / n

    adv = adv.expand_as(ratio)
    ratio = ratio.detach()
    clip_low = (adv < 0) & (ratio < lower)
    clip_high = (adv > 0) & (ratio > upper)
    clipped = clip_low | clip_high
    out: dict[str, Tensor] = {
        "clip_frac": mean(clipped),
        "clip_frac_low": mean(clip_low),
        "clip_frac_high": mean(clip_high),
    }
    if dual_clip is not None:
        out["dual_clip_frac"] = mean((adv < 0) & (ratio > dual_clip))
    else:
        out["dual_clip_frac"] = torch.zeros((), device=ratio.device)
    old_p = old_logprobs.detach().float().exp()
    for label, lo, hi in PROBABILITY_BUCKETS:
        in_bucket = valid & (old_p > lo) & (old_p <= hi) if lo > 0 else valid & (old_p <= hi)
        count = in_bucket.sum()
        out[f"clip_frac/{label}"] = (clipped & in_bucket).sum() / count.clamp(min=1)
        out[f"token_frac/{label}"] = count / n
    lr = log_ratio.detach().float()
    out["approx_kl"] = mean(torch.expm1(lr) - lr)  # k3: r - 1 - log r >= 0
    out["ratio_mean"] = mean(ratio)
    big = torch.finfo(torch.float32).max
    out["ratio_max"] = torch.where(valid, ratio.float(), -big).max() if valid.any() else _nan(ratio)
    out["ratio_min"] = torch.where(valid, ratio.float(), big).min() if valid.any() else _nan(ratio)
    out["bound_low_mean"] = mean(lower)
    out["bound_high_mean"] = mean(upper.float().clamp(max=big))
    return {k: v.detach().float() for k, v in out.items()}


def _nan(like: Tensor) -> Tensor:
    return torch.full((), math.nan, device=like.device)
