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

# Advantage signs of the signed clip metrics: pos is A > 0, neg is A < 0 (A = 0 is in neither).
ADVANTAGE_SIGNS: tuple[str, ...] = ("pos", "neg")
# Sides of the band: upper counts r > upper bound, lower counts r < lower bound.
CLIP_SIDES: tuple[str, ...] = ("upper", "lower")


def _signed_keys(prefix: str) -> tuple[str, ...]:
    labels = [label for label, _, _ in PROBABILITY_BUCKETS]
    return tuple(f"{prefix}/{sign}/{label}" for sign in ADVANTAGE_SIGNS for label in labels)


# Metrics that are token counts of one call, not means: pool them by summing (over micro-batches
# and processes), and divide pooled counts, never average fractions of unequal cells.
COUNT_METRICS: frozenset[str] = frozenset(
    _signed_keys("count") + tuple(k for side in CLIP_SIDES for k in _signed_keys(f"clipped_{side}"))
)


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
            and processes); None uses this call's count. Not used by
            ``seq-mean-token-sum-norm``, whose divisor is the constant horizon.
        horizon: constant divisor of ``seq-mean-token-sum-norm`` (default ``mask.shape[-1]``).

    Positions where ``mask`` is 0 may hold anything (NaN, -inf): they are replaced (old and new
    log-prob 0, advantage 0, bounds 1) before the rule, the loss and the metrics see them, so the
    loss is that of the masked tokens alone and the gradient there is exactly 0.

    Returns:
        loss: scalar tensor with gradient w.r.t. ``logprobs``.
        metrics: detached float32 scalars over the masked tokens of this call. A token's cell is
            its advantage sign (``pos``: A > 0, ``neg``: A < 0) and its old-probability bucket
            (``PROBABILITY_BUCKETS``: ``p<0.01``, ``p0.01-0.1``, ``p0.1-0.5``, ``p>0.5``).

            - ``clip_frac``: share of tokens whose clip is active (``clip_frac_low`` +
              ``clip_frac_high``); ``clip_frac_low``: A < 0 and r < lower; ``clip_frac_high``:
              A > 0 and r > upper; ``dual_clip_frac``: A < 0 and r > ``dual_clip``.
            - ``clip_frac/<bucket>``: active clips among the bucket's tokens;
              ``token_frac/<bucket>``: the bucket's share of the tokens (A = 0 included).
            - ``count/<sign>/<bucket>``: number of tokens in the cell.
            - ``clipped_upper/<sign>/<bucket>``: number of them with r > upper;
              ``clipped_lower/<sign>/<bucket>``: number with r < lower.
            - ``clip_frac_upper/<sign>/<bucket>`` = ``clipped_upper/...`` / ``count/...`` and
              ``clip_frac_lower/<sign>/<bucket>`` likewise (0 for an empty cell). Only
              ``upper/pos`` and ``lower/neg`` are active clips (gradient 0); ``upper/neg`` and
              ``lower/pos`` measure the ratio leaving the band on the side where the pessimistic
              max keeps the gradient.
            - ``approx_kl`` (k3 estimator of KL(old || new)), ``ratio_mean``, ``ratio_max``,
              ``ratio_min``, ``bound_low_mean``, ``bound_high_mean``.

            ``count/*`` and ``clipped_*`` (``COUNT_METRICS``) are counts: sum them to pool calls.
    """
    rule_obj = resolve_rule(rule)
    _check_shapes(logprobs, old_logprobs, advantages, mask)
    if dual_clip is not None and not (isinstance(dual_clip, int | float) and dual_clip > 1):
        raise ValueError(f"dual_clip must be a number > 1 or None, got {dual_clip!r}")
    valid = mask != 0  # (B, T)
    # Masked positions may hold garbage (NaN, -inf from padding). Replacing them before any
    # arithmetic keeps it out of the rule, the loss and the backward pass: multiplying by the
    # mask afterwards would not (NaN * 0 is NaN, also in the gradient). Log-prob 0 (p = 1) is a
    # valid input of every rule; new = old there gives ratio 1 and advantage 0 gives loss 0.
    old = old_logprobs.detach()
    safe_old = torch.where(valid, old, torch.zeros((), dtype=old.dtype, device=old.device))
    if bounds is None:
        bounds = rule_obj.bounds(safe_old)
    lower, upper = (b.detach().to(logprobs.dtype) for b in bounds)
    if lower.shape != logprobs.shape or upper.shape != logprobs.shape:
        raise ValueError(
            f"bounds must be (B, T) like logprobs {tuple(logprobs.shape)}; got "
            f"{tuple(lower.shape)} and {tuple(upper.shape)}"
        )
    one = torch.ones((), dtype=lower.dtype, device=lower.device)
    lower, upper = torch.where(valid, lower, one), torch.where(valid, upper, one)
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)  # (B, 1), broadcast over T
    adv = torch.where(valid, adv, torch.zeros((), dtype=adv.dtype, device=adv.device))  # (B, T)
    new = torch.where(valid, logprobs, safe_old.to(logprobs.dtype))

    log_ratio = (new - safe_old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, lower, upper)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    loss = aggregate(per_token, mask, aggregation, normalizer=normalizer, horizon=horizon)

    metrics = _metrics(ratio, log_ratio, safe_old, adv, valid, lower, upper, dual_clip)
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
    valid: Tensor,
    lower: Tensor,
    upper: Tensor,
    dual_clip: float | None,
) -> dict[str, Tensor]:
    """Returns the metrics of ``policy_loss`` (all inputs (B, T), masked positions sanitised)."""
    n = valid.sum().clamp(min=1)

    def mean(x: Tensor) -> Tensor:
        return torch.where(valid, x.to(torch.float32), 0.0).sum() / n

    ratio = ratio.detach()
    cells = _cell_counts(ratio, old_logprobs, adv, valid, lower, upper).to(torch.float32)
    # cells: (sign, bucket, state), sign 0 pos / 1 neg / 2 zero, state 0 inside the band,
    # 1 above it, 2 below it, 3 both (only for a rule whose lower bound exceeds its upper).
    count = cells.sum(-1)  # (3, buckets)
    above = cells[..., 1] + cells[..., 3]
    below = cells[..., 2] + cells[..., 3]
    high = above[0]  # active clips: A > 0 above the band, A < 0 below it (per bucket)
    low = below[1]
    out: dict[str, Tensor] = {
        "clip_frac": (high.sum() + low.sum()) / n,
        "clip_frac_low": low.sum() / n,
        "clip_frac_high": high.sum() / n,
    }
    if dual_clip is not None:
        out["dual_clip_frac"] = mean((adv < 0) & (ratio > dual_clip))
    else:
        out["dual_clip_frac"] = torch.zeros((), device=ratio.device)
    for b, (label, _, _) in enumerate(PROBABILITY_BUCKETS):
        in_bucket = count[:, b].sum()
        out[f"clip_frac/{label}"] = (high[b] + low[b]) / in_bucket.clamp(min=1)
        out[f"token_frac/{label}"] = in_bucket / n
    for s, sign in enumerate(ADVANTAGE_SIGNS):
        for b, (label, _, _) in enumerate(PROBABILITY_BUCKETS):
            cell = f"{sign}/{label}"
            out[f"count/{cell}"] = count[s, b]
            for side, hits in (("upper", above), ("lower", below)):
                out[f"clipped_{side}/{cell}"] = hits[s, b]
                out[f"clip_frac_{side}/{cell}"] = hits[s, b] / count[s, b].clamp(min=1)
    lr = log_ratio.detach().float()
    out["approx_kl"] = mean(torch.expm1(lr) - lr)  # k3: r - 1 - log r >= 0
    out["ratio_mean"] = mean(ratio)
    big = torch.finfo(torch.float32).max
    out["ratio_max"] = torch.where(valid, ratio.float(), -big).max() if valid.any() else _nan(ratio)
    out["ratio_min"] = torch.where(valid, ratio.float(), big).min() if valid.any() else _nan(ratio)
    out["bound_low_mean"] = mean(lower)
    out["bound_high_mean"] = mean(upper.float().clamp(max=big))
    return {k: v.detach().float() for k, v in out.items()}


def _cell_counts(
    ratio: Tensor, old_logprobs: Tensor, adv: Tensor, valid: Tensor, lower: Tensor, upper: Tensor
) -> Tensor:
    """Returns (3, buckets, 4) token counts by advantage sign, old-probability bucket and
    position of r relative to the band, in one ``bincount`` over the valid tokens."""
    buckets = len(PROBABILITY_BUCKETS)
    states = 4
    # One uint8 cell index per token, state + 4 (bucket + buckets sign): int64 arithmetic on
    # (B, T) costs several times more than the comparisons themselves on CPU.
    u8 = torch.uint8
    index = (ratio > upper).to(u8)
    index.add_((ratio < lower).to(u8), alpha=2)
    # Buckets are (lo, hi] in p = exp(old log-prob), compared in log space (no exp): p == hi
    # falls in the lower bucket, p above the last edge (p = 1 from a log-prob read as 0
    # included) in the last one.
    logp = (
        old_logprobs
        if old_logprobs.dtype in (torch.float32, torch.float64)
        else old_logprobs.float()
    )
    for _, _, hi in PROBABILITY_BUCKETS[:-1]:
        index.add_((logp > math.log(hi)).to(u8), alpha=states)
    # Sign 0 (A > 0), 1 (A < 0), 2 (A = 0 or NaN): 2 - 2 [A > 0] - [A < 0].
    index.add_((adv > 0).logical_not_().to(u8), alpha=2 * states * buckets)
    index.sub_((adv < 0).to(u8), alpha=states * buckets)
    dump = 3 * buckets * states  # one extra bin for masked positions
    index.masked_fill_(~valid, dump)
    counts = torch.bincount(index.reshape(-1), minlength=dump + 1)
    return counts[:dump].view(3, buckets, states)


def _nan(like: Tensor) -> Tensor:
    return torch.full((), math.nan, device=like.device)
