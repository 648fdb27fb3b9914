"""Generic band solver for any registered generator: bracketed Newton with bisection fallback.

For a convex generator f with f(1) = 0, g(r) = p f(r) + (1-p) f(s), s = (1 - r p) / (1 - p), is
convex in r with its minimum 0 at r = 1. Each side of the band is a root of g(r) = delta in a
bracket ([1, 1/p] above, [0, 1] below) unless g at the bracket's far end is already <= delta,
in which case the band saturates there. Newton steps use autograd derivatives of f; a step that
leaves the current bracket is replaced by bisection, so the iteration always converges.
"""

from __future__ import annotations

import functools

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


def _g_and_slope(
    f: Generator, df: Generator | None, p: Tensor, p1: Tensor, r: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns g(r), dg/dr (f' from ``df`` or autograd) and the magnitude of g's two terms.

    A NaN from f at a domain edge counts as +inf.
    """
    s = ((1 - r) * p).div_(p1).add_(1).clamp_(min=0)
    rs = torch.stack((r, s))  # (2, N)
    if df is not None:
        fr, dfr = f(rs), df(rs)
    else:
        with torch.enable_grad():
            rs.requires_grad_(True)
            fr = f(rs)
            (dfr,) = torch.autograd.grad(fr.sum(), rs)
        fr = fr.detach()
    g = p * fr[0] + p1 * fr[1]
    scale = p * fr[0].abs() + p1 * fr[1].abs()
    slope = p * (dfr[0] - dfr[1])
    return torch.nan_to_num(g, nan=float("inf")), slope, scale


def newton_bounds(
    f: Generator,
    p: Tensor,
    p1: Tensor,
    delta: float,
    *,
    derivative: Generator | None = None,
    inv_p: Tensor | None = None,
    rtol: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) ratio bounds of g_f(p, r) <= delta for a generic generator f.

    Args:
        f: convex generator with f(1) = 0, written with torch operations.
        derivative: f', if known in closed form (else autograd differentiates f).
        inv_p: (N,) 1/p as the caller defines it (default ``p.reciprocal()``); the upper end
            saturates at exactly this value.
        p: (N,) old probabilities; p1: (N,) 1 - p; both float32 or float64.
        delta: trust-region radius, > 0.
        rtol: relative tolerance on the root (default: 4 machine epsilons).
    """
    eps = torch.finfo(p.dtype).eps
    rtol = 4 * eps if rtol is None else rtol
    curvature = generator_curvature(f)
    inv_p = p.reciprocal() if inv_p is None else inv_p
    ones = torch.ones_like(p)
    zeros = torch.zeros_like(p)
    if curvature > 0:
        half_width = (p1 / p).mul_(2 * delta / curvature).sqrt_()
    else:
        half_width = torch.full_like(p, float("inf"))
    solve = functools.partial(_solve_side, f=f, df=derivative, p=p, p1=p1, delta=delta, rtol=rtol)
    upper = solve(lo=ones, hi=inv_p, start=1 + half_width, rising=True)
    lower = solve(lo=zeros, hi=ones, start=1 - half_width, rising=False)
    return lower, upper


def _solve_side(
    *,
    f: Generator,
    df: Generator | None,
    p: Tensor,
    p1: Tensor,
    delta: float,
    lo: Tensor,
    hi: Tensor,
    start: Tensor,
    rising: bool,
    rtol: float,
) -> Tensor:
    """Returns the root of g = delta in [lo, hi] (g rising or falling there), or the far end."""
    noise = 32 * torch.finfo(p.dtype).eps
    far = hi if rising else lo
    g_far, _, _ = _g_and_slope(f, df, p, p1, far)
    saturated = g_far <= delta
    lo, hi = lo.clone(), hi.clone()
    inside = (start > lo) & (start < hi)
    r = torch.where(inside, start, (lo + hi) / 2)
    for _ in range(MAX_ITERATIONS):
        g, slope, scale = _g_and_slope(f, df, p, p1, r)
        over = g > delta  # beyond the root: on the far side of it
        if rising:
            hi = torch.where(over, r, hi)
            lo = torch.where(over, lo, r)
        else:
            lo = torch.where(over, r, lo)
            hi = torch.where(over, hi, r)
        step = (g - delta) / slope
        # Converged once the Newton step is below the tolerance (judged before the bracket
        # test: at the root the candidate equals an end of the bracket), the residual is at the
        # rounding level of g's terms, or the bracket is tiny.
        done = (
            (step.abs() <= rtol * r)
            | ((g - delta).abs() <= noise * (scale + delta))
            | ((hi - lo) <= rtol * hi)
            | saturated
        )
        candidate = r - step
        ok = (candidate >= lo) & (candidate <= hi) & torch.isfinite(candidate)
        r = torch.where(done, r, torch.where(ok, candidate, (lo + hi) / 2))
        if bool(done.all()):
            break
    return torch.where(saturated, far, r)
