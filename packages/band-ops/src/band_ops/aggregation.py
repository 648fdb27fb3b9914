"""Loss aggregation: (B, T) per-token losses + mask -> scalar, kept apart from clipping rules.

Masked positions are selected away (``torch.where``) before any arithmetic, so whatever they
hold (NaN, inf from padding) does not reach the value, and the gradient with respect to the loss
is exactly 0 there; a product with the mask would not do (NaN * 0 is NaN).

The count-based modes divide by a count. In data-parallel or gradient-accumulation training,
pass the *global* count as ``normalizer`` (tokens for ``token-mean``, non-empty sequences for
``seq-mean-token-mean`` and ``seq-mean-token-sum``) so that the sum of the micro-batch losses
equals the full-batch loss; the default is the local count of this call.
``seq-mean-token-sum-norm`` (verl's definition) divides by a constant, the horizon, and ignores
``normalizer``: its micro-batch losses add up to the full-batch loss as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Aggregation = Callable[..., Tensor]
_AGGREGATIONS: dict[str, Aggregation] = {}


def register_aggregation(name: str) -> Callable[[Aggregation], Aggregation]:
    """Decorator: registers an aggregation ``fn(loss, mask, *, normalizer, horizon) -> scalar``."""

    def _register(fn: Aggregation) -> Aggregation:
        if name in _AGGREGATIONS:
            raise ValueError(f"aggregation {name!r} is already registered")
        _AGGREGATIONS[name] = fn
        return fn

    return _register


def available_aggregations() -> list[str]:
    """Returns the registered aggregation names, sorted."""
    return sorted(_AGGREGATIONS)


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    normalizer: float | Tensor | None = None,
    horizon: int | None = None,
) -> Tensor:
    """Returns the scalar aggregate of ``loss`` over ``mask`` by ``mode``.

    Args:
        loss: (B, T) per-token losses.
        mask: (B, T) 1 for response tokens that count, 0 for padding (bool or float).
        mode: a registered aggregation (``available_aggregations()``).
        normalizer: the global count to divide by (see module docstring); None for the local one.
            Not used by ``seq-mean-token-sum-norm``.
        horizon: constant divisor of ``seq-mean-token-sum-norm`` (default T = ``mask.shape[-1]``).

    A registered ``fn`` receives ``loss`` with masked positions already set to 0 and ``mask`` in
    the loss dtype.
    """
    try:
        fn = _AGGREGATIONS[mode]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown aggregation {mode!r}; valid names: {', '.join(available_aggregations())}"
        ) from None
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(
            f"loss and mask must both be (B, T); got {tuple(loss.shape)} and {tuple(mask.shape)}"
        )
    # Select, not multiply: NaN or inf at a masked position must not reach the sum (NaN * 0 is
    # NaN); where() also sends exactly 0 back to the positions it did not take.
    kept = torch.where(mask != 0, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return fn(kept, mask.to(loss.dtype), normalizer=normalizer, horizon=horizon)


def _count(local: Tensor, normalizer: float | Tensor | None) -> Tensor | float:
    if normalizer is None:
        return local.clamp(min=1)
    if isinstance(normalizer, Tensor):
        return normalizer.to(local.dtype)
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer!r}")
    return float(normalizer)


@register_aggregation("token-mean")
def token_mean(loss: Tensor, mask: Tensor, *, normalizer=None, horizon=None) -> Tensor:
    """Returns sum(loss * mask) / number of tokens: every token weighs the same (DAPO)."""
    return (loss * mask).sum() / _count(mask.sum(), normalizer)


def _non_empty(mask: Tensor) -> Tensor:
    return (mask.sum(dim=-1) > 0).to(mask.dtype)  # (B,)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(loss: Tensor, mask: Tensor, *, normalizer=None, horizon=None) -> Tensor:
    """Returns the mean over non-empty sequences of each sequence's token mean (GRPO)."""
    per_seq = (loss * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # (B,)
    return per_seq.sum() / _count(_non_empty(mask).sum(), normalizer)


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(loss: Tensor, mask: Tensor, *, normalizer=None, horizon=None) -> Tensor:
    """Returns the mean over non-empty sequences of each sequence's token sum."""
    per_seq = (loss * mask).sum(dim=-1)  # (B,)
    return per_seq.sum() / _count(_non_empty(mask).sum(), normalizer)


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, *, normalizer=None, horizon=None) -> Tensor:
    """Returns sum(loss * mask) over the whole batch / horizon: verl's constant divisor (Dr. GRPO).

    ``horizon`` defaults to T (``mask.shape[-1]``, the padded length, as verl); it should be fixed
    for a run, e.g. the maximum response length, so that no sequence's length changes another
    token's weight. ``normalizer`` is not used: nothing here depends on the batch, so the losses of
    micro-batches add up to the loss of the whole batch.
    """
    tokens = loss.shape[-1] if horizon is None else horizon
    if isinstance(tokens, bool) or not isinstance(tokens, int | float) or not 0 < tokens < math.inf:
        raise ValueError(f"horizon must be a positive finite number, got {horizon!r}")
    return (loss * mask).sum() / tokens
