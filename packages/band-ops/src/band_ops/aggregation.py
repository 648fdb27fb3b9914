"""Loss aggregation: (B, T) per-token losses + mask -> scalar, kept apart from clipping rules.

Every mode divides by a count. In data-parallel or gradient-accumulation training, pass the
*global* count as ``normalizer`` (tokens for ``token-mean``, non-empty sequences for the
``seq-mean-*`` modes) so that the sum of the micro-batch losses equals the full-batch loss; the
default is the local count of this call.
"""

from __future__ import annotations

from collections.abc import Callable

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
        horizon: constant token divisor of ``seq-mean-token-sum-norm`` (default T).
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
    return fn(loss, mask.to(loss.dtype), normalizer=normalizer, horizon=horizon)


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
    """Returns sum(loss * mask) / (sequences * horizon): a constant divisor (Dr. GRPO).

    ``horizon`` (default: T, the padded length) should be fixed for a run, e.g. the maximum
    response length, so that no sequence's length changes another token's weight.
    """
    per_seq = (loss * mask).sum(dim=-1)  # (B,)
    tokens = loss.shape[-1] if horizon is None else horizon
    if not tokens > 0:
        raise ValueError(f"horizon must be > 0, got {horizon!r}")
    return per_seq.sum() / (_count(_non_empty(mask).sum(), normalizer) * tokens)
