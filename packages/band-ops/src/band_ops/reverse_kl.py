"""Band end points for reverse KL, KL(new || old), by one step from a tabulated start.

One-sided form (see ``onesided``): with the generator f(u) = u log u - u + 1, whose linear part
cancels between the two outcomes,

    D(w) = a w log w + b w' log w',   D' = a (log w - log w'),   D'' = a (1/w + kappa / w'),

with log w = -log1p((1 - w) / w) and log w' = log1p(kappa (1 - w)), both precise also where w or
w' is close to 1 (log(1 + x) of a rounded 1 + x would lose the digits of a small x).

D(0) = -log b = log1p(kappa), so a side saturates when kappa <= expm1(delta): the upper bound
is exactly 1/p for p >= exp(-delta), the lower bound exactly 0 for 1 - p >= exp(-delta). The
start table holds log((1 - w) / w) at the root against log(y - y_sat), y = logit(a): next to the
saturation threshold the root vanishes like d / log(1/d) in the distance d, smooth in log d.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from band_ops import onesided

X_LOW = -18.5  # the table starts 1e-8 above the saturation threshold in y
Y_TOP = 708.0  # y = logit(a) <= -log(smallest normal float64)


def residual(
    w: Tensor, m: Tensor, e: Tensor, d: Tensor, a: Tensor, b: Tensor, kappa: Tensor, second: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns (D, D', D'' if ``second``) at w; see ``onesided.Residual``. b w' = b + a m."""
    log_w, log_wp = -torch.log1p(e), torch.log1p(d)
    value = a * w * log_w + (b + a * m) * log_wp
    slope = a * (log_w - log_wp)
    return value, slope, a * (1 / w + kappa / (1 + d)) if second else None


def fast_residual(
    delta: float, s: onesided.Scratch, e: Tensor, w: Tensor, m: Tensor, d: Tensor, rows: list
) -> tuple[Tensor, Tensor, Tensor | None]:
    """In-place (D - delta, -D', D''); see ``onesided.FastResidual`` (k = 1)."""
    minus_log_w, log_wp, slope, bwp, r = rows[:5]
    torch.log1p(e, out=minus_log_w)
    torch.log1p(d, out=log_wp)
    torch.add(minus_log_w, log_wp, out=slope).mul_(s.a)
    torch.addcmul(s.b, s.a, m, out=bwp)  # b w'
    torch.mul(w, minus_log_w, out=r).mul_(s.a).neg_()  # a w log w
    r.addcmul_(bwp, log_wp).sub_(delta)
    if s.q.dtype != torch.float64:
        return r, slope, None
    curvature = torch.add(d, 1.0, out=bwp)
    torch.div(s.kappa, curvature, out=curvature).add_(torch.reciprocal(w, out=log_wp))
    return r, slope, curvature.mul_(s.a)


def saturation(delta: float) -> float:
    """Returns kappa_sat = expm1(delta): D(0) = log1p(kappa); inf beyond float64's range."""
    return math.expm1(delta) if delta < 709.0 else math.inf


def _threshold(delta: float) -> float:
    """Returns y_sat = log kappa_sat (log expm1(delta) ~ delta where expm1 would overflow)."""
    return math.log(math.expm1(delta)) if delta < 709.0 else delta


SOLVER = onesided.w_solver(
    "reverse_kl",
    residual=residual,
    fast_residual=fast_residual,
    saturation=saturation,
    threshold=_threshold,
    x_low=X_LOW,
    y_top=Y_TOP,
)


def reverse_kl_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for KL(new || old) <= delta; logp: (N,) float32 or float64."""
    return onesided.solve(SOLVER, logp, delta)
