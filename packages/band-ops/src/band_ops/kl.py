"""Band end points for KL(old || new), the paper's main variant, by one step from a table.

One-sided form (see ``onesided``) in t = -log w, where the constraint
    D(t) = a t - b log1p(kappa m),   m = 1 - w = -expm1(-t),
is convex, increasing and asymptotically linear (D -> a t + b log b), with
    D' = a m / (b + a m),   D'' = a b (1 - m) / (b + a m)^2.
Written with m = -expm1(-t), D keeps its relative precision for small t (a narrow band), where
the two terms nearly cancel. KL never saturates.

The start table holds log t at the root against y = logit(a) on [-90, 40]. Beyond it the root
is known: below -40 already (a < 4e-18) t = (delta - b log b) / a to double precision, so log t
falls with slope -1 in y; above 40 (b < 4e-18) it no longer changes. From the table one Halley step
(float64) or Newton step (float32) reaches rounding level, where the paper's bisection needs
about 50 steps per side.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from band_ops import onesided

# The table spans y in [Y_LOW, Y_TOP]: float32's whole range of y (|y| <= 87.4), so that only
# float64 tokens (y down to -708) need the tail formula below it.
Y_LOW, Y_TOP = -90.0, 40.0


@functools.lru_cache(maxsize=8)
def table(delta: float) -> onesided.StartTable:
    """Returns the start table for ``delta``: log t at the root against y = logit(a)."""
    cells = round((Y_TOP - Y_LOW) / onesided.CELL)
    y = Y_LOW + onesided.CELL * torch.arange(cells + 1, dtype=torch.float64)
    a, b, kappa = torch.sigmoid(y), torch.sigmoid(-y), torch.exp(y)
    t = onesided.robust_kl(a, b, kappa, delta)
    return onesided.linear_table(torch.log(t), Y_LOW, onesided.CELL)


def coordinate(
    y: Tensor, kappa: Tensor, delta: float, table: onesided.StartTable, s: onesided.Scratch
) -> Tensor:
    """Returns y in the table's cell units, in ``s.u`` (unclamped: ``step`` needs the tail)."""
    return torch.mul(y, table.inv_h, out=s.u).sub_(table.x0 * table.inv_h)


def step(g: Tensor, delta: float, s: onesided.Scratch, lower: Tensor, upper: Tensor) -> Tensor:
    """The final step from log t = g; see ``onesided.SideSolver``."""
    finfo = torch.finfo(s.q.dtype)
    # Beyond t_cap, exp(-t) < eps / 50: m rounds to 1 and D is linear in t. The cap keeps
    # expm1 off its slow path for large arguments.
    t_cap = -math.log(finfo.eps) + 4.0
    # Lower bounds below twice the smallest normal number come out as that number: exp is slow
    # near subnormal results.
    u_cap = -math.log(2 * finfo.tiny)
    t, nm, den, a_nm, log_term, newton, factor = s.rows[:7]
    a, b = s.a, s.b
    if s.q.dtype == torch.float64:
        # Below the table (cell coordinate u < 0) log t = G(Y_LOW) - (y - Y_LOW). t is taken
        # in the compute dtype: where 1 - p is below float32's range, t exceeds float32's.
        tail = torch.clamp(s.u, max=0.0, out=s.frac.view(2, -1))
        torch.add(g, tail, alpha=-onesided.CELL, out=t).exp_()
    else:
        torch.exp(g, out=t)
    torch.clamp(t, max=t_cap, out=nm).neg_().expm1_()  # nm = -m
    # a m itself, not (b + a m) - b: that difference loses a m's digits when a m << b.
    torch.mul(a, nm, out=a_nm)
    torch.sub(b, a_nm, out=den)  # b + a m = 1 - a exp(-t), no cancellation
    torch.mul(s.kappa, nm, out=log_term).neg_().log1p_()  # log1p(kappa m)
    # delta - D = delta + b log1p(kappa m) - a t; divided by D' = a m / (b + a m) it is the
    # Newton step: t_new = t - newton.
    torch.addcmul(s.constant(delta), b, log_term, out=newton).addcmul_(a, t, value=-1.0)
    newton.mul_(den).div_(a_nm)
    if s.q.dtype == torch.float64:
        # Halley: divide by 1 - newton D'' / (2 D') = 1 + newton b (1 - m) / (2 nm (b + a m)).
        torch.add(nm, 1.0, out=factor).mul_(b).div_(nm).div_(den).mul_(newton)
        newton.div_(factor.mul_(0.5).add_(1.0))
    badness = torch.div(newton, t, out=log_term).abs_()
    # The sides at t_new: upper 1 - w = -expm1(-t_new), lower w = exp(-t_new), both keeping
    # their relative precision.
    shifted = torch.sub(newton, t, out=a_nm).clamp_(-u_cap, 0.0)
    torch.expm1(shifted[0], out=upper).neg_()
    torch.exp(shifted[1], out=lower)
    return badness


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
