"""Generic band solver for any registered generator: bracketed Newton with bisection fallback.

For a convex generator f with f(1) = 0, g(r) = p f(r) + (1-p) f(s), s = (1 - r p) / (1 - p), is
convex in r with its minimum 0 at r = 1. Each side of the band is a root of g(r) = delta in a
bracket ([1, 1/p] above, [0, 1] below) unless g at the bracket's far end is already <= delta,
in which case the band saturates there. Newton steps use autograd derivatives of f; a step that
leaves the current bracket is replaced by bisection, so the iteration always converges.
"""

from __future__ import annotations

import torch
from torch import Tensor

from band_ops.divergences import Generator

MAX_ITERATIONS = 200


def generator_curvature(f: Generator) -> float:
    """Returns f''(1), used by the quadratic model that starts the iteration (0 if undefined)."""
    u = torch.ones((), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (df,) = torch.autograd.grad(f(u), u, create_graph=True)
        if not df.requires_grad:
            return 0.0
        (d2f,) = torch.autograd.grad(df, u)
    value = float(d2f)
    return value if value > 0 and value < float("inf") else 0.0


def _g_and_slope(f: Generator, p: Tensor, p1: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Returns g(r) and dg/dr; a NaN from f at a domain edge counts as +inf."""
    s = ((1 - r) * p).div_(p1).add_(1).clamp_(min=0)
    with torch.enable_grad():
        rs = torch.stack((r, s)).requires_grad_(True)  # (2, N)
        fr = f(rs)
        (df,) = torch.autograd.grad(fr.sum(), rs)
    fr = fr.detach()
    g = p * fr[0] + p1 * fr[1]
    slope = p * (df[0] - df[1])
    return torch.nan_to_num(g, nan=float("inf")), slope


def newton_bounds(
    f: Generator, p: Tensor, p1: Tensor, delta: float, *, rtol: float | None = None
) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) ratio bounds of g_f(p, r) <= delta for a generic generator f.

    Args:
        f: convex generator with f(1) = 0, written with torch operations.
        p: (N,) old probabilities; p1: (N,) 1 - p; both float32 or float64.
        delta: trust-region radius, > 0.
        rtol: relative tolerance on the root (default: 4 machine epsilons).
    """
    eps = torch.finfo(p.dtype).eps
    rtol = 4 * eps if rtol is None else rtol
    curvature = generator_curvature(f)
    inv_p = p.reciprocal()
    ones = torch.ones_like(p)
    zeros = torch.zeros_like(p)
    if curvature > 0:
        half_width = (p1 / p).mul_(2 * delta / curvature).sqrt_()
    else:
        half_width = torch.full_like(p, float("inf"))
    upper = _solve_side(f, p, p1, delta, ones, inv_p, 1 + half_width, rising=True, rtol=rtol)
    lower = _solve_side(f, p, p1, delta, zeros, ones, 1 - half_width, rising=False, rtol=rtol)
    return lower, upper


def _solve_side(
    f: Generator,
    p: Tensor,
    p1: Tensor,
    delta: float,
    lo: Tensor,
    hi: Tensor,
    start: Tensor,
    *,
    rising: bool,
    rtol: float,
) -> Tensor:
    """Returns the root of g = delta in [lo, hi] (g rising or falling there), or the far end."""
    far = hi if rising else lo
    g_far, _ = _g_and_slope(f, p, p1, far)
    saturated = g_far <= delta
    lo, hi = lo.clone(), hi.clone()
    inside = (start > lo) & (start < hi)
    r = torch.where(inside, start, (lo + hi) / 2)
    for _ in range(MAX_ITERATIONS):
        g, slope = _g_and_slope(f, p, p1, r)
        over = g > delta  # beyond the root: on the far side of it
        if rising:
            hi = torch.where(over, r, hi)
            lo = torch.where(over, lo, r)
        else:
            lo = torch.where(over, r, lo)
            hi = torch.where(over, hi, r)
        step = (g - delta) / slope
        candidate = r - step
        ok = (candidate > lo) & (candidate < hi) & torch.isfinite(candidate)
        r_next = torch.where(ok, candidate, (lo + hi) / 2)
        done = ((r_next - r).abs() <= rtol * r_next.abs()) | ((hi - lo) <= rtol * hi)
        r = r_next
        if bool((done | saturated).all()):
            break
    return torch.where(saturated, far, r)
