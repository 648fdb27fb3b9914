"""``ratio_bounds``: the Band operator, per-token ratio bounds from an f-divergence trust region."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from band_ops.divergences import Divergence, get_divergence
from band_ops.newton import newton_bounds

# Log-probabilities up to this far above 0 are rounding noise, read as 0 (see logprob_tolerance).
LOGPROB_TOLERANCE = 1e-6


def ratio_bounds(
    old_logprobs: Tensor,
    *,
    divergence: str = "kl",
    delta: float = 0.05,
    max_ratio: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper): the band {r in [0, 1/p] : g_f(p, r) <= delta} for each token.

    BandPO (Li et al., ICML 2026, arXiv 2603.04918). For a sampled token with old probability
    p = exp(old_logprob), the ratio r = pi / pi_old is allowed to move as far as a binary
    f-divergence trust region of radius ``delta`` permits; where the region reaches a domain
    edge the bound saturates at exactly 0 or 1/p.

    Args:
        old_logprobs: (...) log-probabilities of the sampled tokens under the old policy, <= 0.
            float64 is solved in float64; float32, bfloat16 and float16 in float32. Values
            above 0 by at most ``logprob_tolerance(dtype)`` (1e-6, or the dtype's machine
            epsilon if larger) are rounding noise and read as 0.
        divergence: a registered divergence name (see ``available_divergences()``).
        delta: trust-region radius, finite and > 0.
        max_ratio: cap on the upper bound (the paper uses 10); ``None`` for no cap.

    Returns:
        (lower, upper), each with the shape, dtype and device of ``old_logprobs``, without
        gradient; 0 <= lower <= 1 <= upper <= 1/p, with 1/p computed as exp(-old_logprobs).
        Log-probabilities below the compute dtype's
        smallest normal number are treated as that number. In float16, where 1/p can exceed the
        largest finite value, the upper bound is capped at that value.
    """
    spec = get_divergence(divergence)
    check_delta(delta)
    check_max_ratio(max_ratio)
    compute = compute_dtype(old_logprobs)
    finfo = torch.finfo(compute)
    with torch.no_grad():
        if old_logprobs.numel() == 0:
            empty = old_logprobs.detach().new_empty(old_logprobs.shape)
            return empty, empty.clone()
        logp = checked_logprobs(old_logprobs, compute)
        if spec.solver is not None:
            # Dedicated solvers guarantee 0 <= lower <= 1 <= upper <= exp(-logp) themselves.
            lower, upper = spec.solver(logp, float(delta))
        else:
            lower, upper = _generic_bounds(spec, logp, float(delta))
        if max_ratio is not None:
            upper = upper.clamp_(max=max_ratio)
        out_dtype = old_logprobs.dtype
        if torch.finfo(out_dtype).max < finfo.max:
            upper = upper.clamp_(max=torch.finfo(out_dtype).max)
        lower = lower.to(out_dtype).reshape(old_logprobs.shape)
        upper = upper.to(out_dtype).reshape(old_logprobs.shape)
    return lower, upper


def _generic_bounds(spec: Divergence, logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band from the generic Newton solver, solved in float64 and ordered.

    A generic generator cancels badly near u = 1 in float32, hence float64 whatever the input.
    """
    logp64 = logp.double()
    p = torch.exp(logp64)
    p1 = torch.expm1(logp64).neg_().clamp_(min=torch.finfo(torch.float64).tiny)
    inv_p64 = torch.exp(-logp64)
    lower, upper = newton_bounds(
        spec.generator, p, p1, delta, derivative=spec.derivative, inv_p=inv_p64
    )
    inv_p = torch.exp(-logp)  # 1/p in the compute dtype: saturated ends must equal it exactly
    saturated = upper >= inv_p64
    lower = lower.to(logp.dtype).clamp_(0.0, 1.0)
    upper = torch.minimum(upper.to(logp.dtype).clamp_(min=1.0), inv_p)
    return lower, torch.where(saturated, inv_p, upper)


def check_delta(delta: float) -> None:
    """Raises ValueError unless ``delta`` is a finite number > 0."""
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")
    if not math.isfinite(delta) or delta <= 0:
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")


def check_max_ratio(max_ratio: float | None) -> None:
    """Raises ValueError unless ``max_ratio`` is None or a number >= 1."""
    if max_ratio is None:
        return
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, int | float):
        raise ValueError(f"max_ratio must be a number >= 1 or None, got {max_ratio!r}")
    if math.isnan(max_ratio) or max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1 (or None for no cap), got {max_ratio!r}")


def compute_dtype(old_logprobs: Tensor) -> torch.dtype:
    """Returns the dtype bounds are computed in: float64 for float64 input, else float32.

    Raises ValueError unless ``old_logprobs`` is a floating-point tensor.
    """
    if not isinstance(old_logprobs, Tensor):
        raise ValueError(f"old_logprobs must be a torch.Tensor, got {type(old_logprobs).__name__}")
    if not old_logprobs.is_floating_point():
        raise ValueError(f"old_logprobs must be a floating-point tensor, got {old_logprobs.dtype}")
    return torch.float64 if old_logprobs.dtype == torch.float64 else torch.float32


def logprob_tolerance(dtype: torch.dtype) -> float:
    """Returns how far above 0 a log-probability of ``dtype`` may be and still be read as 0.

    ``LOGPROB_TOLERANCE`` (1e-6), or the dtype's machine epsilon where that is larger (float16
    9.8e-4, bfloat16 7.8e-3): a log-softmax of a near-certain token can round to a value a few
    ulps above 0, which is noise, not a probability above 1.
    """
    return max(LOGPROB_TOLERANCE, torch.finfo(dtype).eps)


def checked_logprobs(old_logprobs: Tensor, compute: torch.dtype) -> Tensor:
    """Returns ``old_logprobs`` flattened, in ``compute``, clamped to [log(smallest normal), 0].

    Raises ValueError naming the first NaN, or value above ``logprob_tolerance``, and its index.
    One ``aminmax`` pass decides both the validation and whether a clamp is needed.
    """
    finfo = torch.finfo(compute)
    logp = old_logprobs.detach().reshape(-1).to(compute)
    low, high = torch.aminmax(logp)
    if not bool(high <= 0):  # also catches NaN: aminmax propagates it
        tolerance = logprob_tolerance(old_logprobs.dtype)
        if not bool(high <= tolerance):
            _raise_bad_logprob(old_logprobs, tolerance)
        logp = logp.clamp(max=0.0)
    if float(low) < math.log(finfo.tiny):
        logp = logp.clamp(min=math.log(finfo.tiny))
    return logp


def _raise_bad_logprob(old_logprobs: Tensor, tolerance: float) -> None:
    bad = torch.isnan(old_logprobs) | (old_logprobs > tolerance)
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = float(old_logprobs[index]) if index else float(old_logprobs)
    raise ValueError(
        f"old_logprobs must be log-probabilities (<= 0, not NaN; up to {tolerance:g} above 0 is "
        f"read as 0); found {value} at index {index}"
    )
