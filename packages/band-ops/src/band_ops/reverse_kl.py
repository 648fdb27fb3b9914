"""Band end points for reverse KL, KL(new || old), by one Halley step from a tabulated start.

One-sided form (see ``onesided``): with the generator f(u) = u log u - u + 1, whose linear part
cancels between the two outcomes,

    D(w) = a w log w + b w' log w',   D' = a (log w - log w'),   D'' = a (1/w + kappa / w'),

with log w = -log1p((1 - w) / w) and log w' = log1p(kappa (1 - w)), both precise also where w or
w' is close to 1 (log(1 + x) of a rounded 1 + x would lose the digits of a small x).

D(0) = -log b = log1p(kappa), so a side saturates when kappa <= expm1(delta): the upper bound
is exactly 1/p for p >= exp(-delta), the lower bound exactly 0 for 1 - p >= exp(-delta). The
start table holds logit(w) at the root against log(y - y_sat), where y = logit(a): next to the
saturation threshold the root vanishes like d / log(1/d) in the distance d, smooth in log d.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from band_ops import onesided

Z_LOW = -18.5  # the table starts 1e-8 above the saturation threshold in y
Y_TOP = 708.0  # y = logit(a) <= -log(smallest normal float64)


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
    """Returns (D, D', D'') at w; see ``onesided.Residual``. b w' = b + a m."""
    log_w, log_wp, excess, d1, d2 = work[0], work[1], work[2], work[3], work[4]
    torch.log1p(e, out=log_w).neg_()
    torch.log1p(d, out=log_wp)
    torch.sub(log_w, log_wp, out=d1).mul_(a)
    torch.mul(w, log_w, out=excess).mul_(a)
    torch.addcmul(b, a, m, out=d2)
    excess.addcmul_(d2, log_wp)
    if not second:
        return excess, d1, None
    torch.add(d, 1.0, out=d2)
    torch.div(kappa, d2, out=d2).add_(torch.reciprocal(w, out=log_w)).mul_(a)
    return excess, d1, d2


def saturation(delta: float) -> float:
    """Returns kappa_sat = expm1(delta): D(0) = log1p(kappa)."""
    return math.expm1(delta)


def _threshold(delta: float) -> float:
    """Returns y_sat = log kappa_sat."""
    return math.log(math.expm1(delta))


@functools.lru_cache(maxsize=32)
def table(delta: float) -> onesided.StartTable | None:
    """Returns the start table for ``delta``: logit(w) at the root against log(y - y_sat)."""
    return onesided.logit_table(residual, delta, _threshold(delta), Z_LOW, Y_TOP)


def coordinate(y: Tensor, kappa: Tensor, delta: float, out: Tensor) -> Tensor:
    """Writes log(y - y_sat) (the table clamps it) into ``out``."""
    return onesided.log_distance(y, kappa, saturation(delta), Z_LOW, out)


SOLVER = onesided.SideSolver(
    name="reverse_kl",
    saturation=saturation,
    table=table,
    coordinate=coordinate,
    step=onesided.w_step(residual),
    robust=functools.partial(onesided.logit_sides, residual=residual),
)


def reverse_kl_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for KL(new || old) <= delta; logp: (N,) float32 or float64."""
    return onesided.solve(SOLVER, logp, delta)
