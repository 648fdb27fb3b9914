"""Band end points for KL(old || new), the paper's main variant, by one Halley step from a table.

One-sided form (see ``onesided``) in t = -log w, where the constraint
    D(t) = a t - b log1p(kappa m),   m = 1 - w = -expm1(-t),
is convex, increasing and asymptotically linear (D -> a t + b log b), with
    D' = a m / (b + a m),   D'' = a b (1 - m) / (b + a m)^2.
Written with m = -expm1(-t), D keeps its relative precision for small t (a narrow band), where
the two terms nearly cancel. KL never saturates.

The start table holds log t at the root against y = logit(a) on [-40, 40]. Beyond it the root
is known: below -40 (a < 4e-18) t = (delta - b log b) / a to double precision, so log t falls
with slope -1 in y; above 40 (b < 4e-18) it no longer changes. From the table one Halley step
(float64) or Newton step (float32) reaches rounding level where the paper's bisection needs
about 50 steps per side.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from band_ops import onesided

Y_EDGE = 40.0


@functools.lru_cache(maxsize=32)
def table(delta: float) -> onesided.StartTable:
    """Returns the start table for ``delta``: log t at the root against y = logit(a)."""
    h = onesided.CELL
    cells = round(2 * Y_EDGE / h)
    y = -Y_EDGE + h * (torch.arange(cells + 3, dtype=torch.float64) - 1)
    a, b, kappa = torch.sigmoid(y), torch.sigmoid(-y), torch.exp(y)
    t = onesided.robust_kl(a, b, kappa, delta)
    return onesided.cubic_table(torch.log(t), -Y_EDGE, h)


def coordinate(y: Tensor, kappa: Tensor, delta: float, out: Tensor) -> Tensor:
    """Writes y (the table clamps it) into ``out``."""
    return out.copy_(y)


def step(
    g: Tensor,
    a: Tensor,
    b: Tensor,
    kappa: Tensor,
    delta: float,
    work: Tensor,
    result: Tensor,
    y: Tensor,
) -> Tensor:
    """The final step from log t = g; see ``onesided.SideSolver``."""
    finfo = torch.finfo(a.dtype)
    halley = a.dtype == torch.float64
    # Beyond t_cap, exp(-t) < eps / 50: m rounds to 1 and D is linear in t. The cap keeps
    # expm1 off its slow path for large arguments.
    t_cap = -math.log(finfo.eps) + 4.0
    # Lower bounds below twice the smallest normal number come out as that number: exp is slow
    # near subnormal results.
    u_cap = -math.log(2 * finfo.tiny)
    t, m, am, den, newton, factor = work[0], work[1], work[2], work[3], work[4], work[5]
    # Below the table log t grows like -y: add -(y + Y_EDGE) where positive. t itself is taken
    # in the compute dtype: where 1 - p is below float32's range t exceeds float32's.
    t.copy_(g).sub_(torch.add(y, Y_EDGE, out=m).clamp_(max=0.0)).exp_()
    torch.clamp(t, max=t_cap, out=m).neg_().expm1_().neg_()
    torch.mul(a, m, out=am)
    torch.add(b, am, out=den)  # b + a m = 1 - a exp(-t), no cancellation
    torch.mul(kappa, m, out=newton).log1p_().mul_(b).neg_().addcmul_(a, t).sub_(delta)
    newton.mul_(den).div_(am)  # (D - delta) / D'
    if halley:
        # Halley: divide by 1 - newton D'' / (2 D') = 1 - newton b (1 - m) / (2 m (b + a m)).
        torch.neg(m, out=factor).add_(1.0).mul_(b).div_(m).div_(den).mul_(newton)
        newton.div_(factor.mul_(-0.5).add_(1.0).clamp_(min=0.5))  # t_new = t - newton
    # Upper side: 1 - w at t_new = m + (1 - m)(1 - exp(newton)), with the series of
    # 1 - exp(x) to third order: a trusted step (|newton| <= tolerance t) leaves the rest below
    # rounding; the clamp keeps a flagged one finite.
    x = torch.clamp(newton[0], -1.0, 1.0, out=factor[1])
    series = torch.mul(x, 1.0 / 6.0, out=factor[0]).add_(0.5).mul_(x).add_(1.0).mul_(x)
    torch.neg(m[0], out=den[0]).add_(1.0).mul_(series)
    torch.sub(m[0], den[0], out=result[0])
    # Lower side: w = exp(-t_new), relative precision kept for tiny w.
    torch.sub(t[1], newton[1], out=result[1]).clamp_(max=u_cap).neg_().exp_()
    return torch.abs(newton, out=am).div_(t)


SOLVER = onesided.SideSolver(
    name="kl",
    saturation=lambda delta: None,
    table=table,
    coordinate=coordinate,
    step=step,
    robust=onesided.kl_sides,
)


def kl_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for KL(old || new) <= delta; logp: (N,) float32 or float64."""
    return onesided.solve(SOLVER, logp, delta)
