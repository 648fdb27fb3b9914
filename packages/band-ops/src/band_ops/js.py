"""Band end points for Jensen-Shannon (natural log), by one Halley step from a tabulated start.

One-sided form (see ``onesided``) with f(u) = (u log u - (1 + u) log((1 + u) / 2)) / 2, written
as f(u) = (u g(u) - h(u)) / 2 with g(u) = log(2u / (1 + u)) = 2 f'(u) and h(u) = log((1 + u) / 2):

    D = a f(w) + b f(w'),   D' = a (g(w) - g(w')) / 2,
    D'' = a (1 / (w (1 + w)) + kappa / (w' (1 + w'))) / 2.

All four logarithms are log1p of precise arguments (see ``residual``). D has a vertical
tangent at w = 0 (g(w) -> -inf), so the variable is w, with the step checked relative to w
itself. D(0) = log 2 + (b log b - (1 + b) log(1 + b)) / 2 falls with b, so it rises with the
odds kappa = (1 - b) / b: a side saturates when kappa <= kappa_sat, the odds at which
D(0) = delta (every side saturates for delta >= log 2, where JS is at most log 2).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from band_ops import onesided

Z_LOW = -18.5
Y_TOP = 708.0
LN2 = math.log(2.0)


def residual(
    w: Tensor,
    m: Tensor,
    e: Tensor,
    d: Tensor,
    a: Tensor,
    b: Tensor,
    kappa: Tensor,
    work: Tensor,
    second: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns (D, D', D'') at w; see ``onesided.Residual``.

    h(w) = log1p(-m / 2), g(w) = log w - h(w) = -log1p(e) - h(w); h(w') = log1p(d / 2),
    g(w') = log1p(d / (2 + d)); every one precise near 1 and at the extremes.
    """
    h_w, g_w, h_wp, g_wp, excess, d1 = work[0], work[1], work[2], work[3], work[4], work[5]
    torch.mul(m, -0.5, out=h_w).log1p_()
    torch.log1p(e, out=g_w).neg_().sub_(h_w)
    torch.mul(d, 0.5, out=h_wp).log1p_()
    torch.add(d, 2.0, out=g_wp)
    torch.div(d, g_wp, out=g_wp).log1p_()
    torch.sub(g_w, g_wp, out=d1).mul_(a).mul_(0.5)
    # D = (a (w g(w) - h(w)) + b w' g(w') - b h(w')) / 2, with b w' = b + a m
    torch.mul(w, g_w, out=excess).sub_(h_w).mul_(a)
    excess.addcmul_(torch.addcmul(b, a, m, out=h_w), g_wp)
    excess.addcmul_(b, h_wp, value=-1.0).mul_(0.5)
    if not second:
        return excess, d1, None
    # D'' = a (1 / (w (1 + w)) + kappa / (w' (1 + w'))) / 2, w' = 1 + d
    d2 = torch.addcmul(w, w, w, out=g_w).reciprocal_()
    torch.add(d, 1.0, out=h_w)
    torch.addcmul(h_w, h_w, h_w, out=h_wp)
    d2.add_(torch.div(kappa, h_wp, out=h_w)).mul_(a).mul_(0.5)
    return excess, d1, d2


def _zero_excess(b: float) -> float:
    """Returns D(0) for b: log 2 + (b log b - (1 + b) log(1 + b)) / 2."""
    return LN2 + 0.5 * (b * math.log(b) - (1 + b) * math.log1p(b))


@functools.lru_cache(maxsize=64)
def _log_b_sat(delta: float) -> float:
    """Returns log b at D(0) = delta, by bisection on log b (b can be far below 1e-300)."""
    lo, hi = -800.0, 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _zero_excess(math.exp(mid)) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def saturation(delta: float) -> float:
    """Returns kappa_sat = (1 - b_sat) / b_sat (inf for delta >= log 2: everything saturates)."""
    log_b = _log_b_sat(delta) if delta < LN2 else -math.inf
    # Odds beyond float64's range: every side saturates (b_sat below 1e-308).
    return math.expm1(-log_b) if log_b > -700.0 else math.inf


def _threshold(delta: float) -> float:
    """Returns y_sat = log kappa_sat."""
    kappa_sat = saturation(delta)
    return math.inf if math.isinf(kappa_sat) else math.log(kappa_sat)


@functools.lru_cache(maxsize=32)
def table(delta: float) -> onesided.StartTable | None:
    """Returns the start table for ``delta``: logit(w) at the root against log(y - y_sat)."""
    return onesided.logit_table(residual, delta, _threshold(delta), Z_LOW, Y_TOP)


def coordinate(y: Tensor, kappa: Tensor, delta: float, out: Tensor) -> Tensor:
    """Writes log(y - y_sat) (the table clamps it) into ``out``."""
    return onesided.log_distance(y, kappa, saturation(delta), Z_LOW, out)


SOLVER = onesided.SideSolver(
    name="js",
    saturation=saturation,
    table=table,
    coordinate=coordinate,
    step=onesided.w_step(residual),
    robust=functools.partial(onesided.logit_sides, residual=residual),
)


def js_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for Jensen-Shannon <= delta; logp: (N,) float32 or float64."""
    return onesided.solve(SOLVER, logp, delta)
