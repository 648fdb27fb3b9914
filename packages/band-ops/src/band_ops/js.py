"""Band end points for Jensen-Shannon (natural log), by one step from a tabulated start.

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

X_LOW = -18.5  # the table starts 1e-8 above the saturation threshold in y
Y_TOP = 708.0  # y = logit(a) <= -log(smallest normal float64)
LN2 = math.log(2.0)


def residual(
    w: Tensor, m: Tensor, e: Tensor, d: Tensor, a: Tensor, b: Tensor, kappa: Tensor, second: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns (D, D', D'' if ``second``) at w; see ``onesided.Residual``.

    h(w) = log1p(-m / 2), g(w) = log w - h(w) = -log1p(e) - h(w); h(w') = log1p(d / 2),
    g(w') = log1p(d / (2 + d)); every one precise near 1 and at the extremes.
    """
    h_w, h_wp = torch.log1p(-m / 2), torch.log1p(d / 2)
    g_w, g_wp = -torch.log1p(e) - h_w, torch.log1p(d / (2 + d))
    value = (a * (w * g_w - h_w) + (b + a * m) * g_wp - b * h_wp) / 2
    slope = a * (g_w - g_wp) / 2
    if not second:
        return value, slope, None
    wp = 1 + d
    return value, slope, a * (1 / (w * (1 + w)) + kappa / (wp * (1 + wp))) / 2


def fast_residual(
    delta: float, s: onesided.Scratch, e: Tensor, w: Tensor, m: Tensor, d: Tensor, rows: list
) -> tuple[Tensor, Tensor, Tensor | None]:
    """In-place (2 (D - delta), -2 D', 2 D''); see ``onesided.FastResidual`` (k = 2)."""
    h_w, minus_g_w, h_wp, g_wp, slope, bwp, r = rows[:7]
    torch.mul(m, -0.5, out=h_w).log1p_()
    torch.log1p(e, out=minus_g_w).add_(h_w)
    torch.mul(d, 0.5, out=h_wp).log1p_()
    torch.add(d, 2.0, out=g_wp)
    torch.div(d, g_wp, out=g_wp).log1p_()
    torch.add(minus_g_w, g_wp, out=slope).mul_(s.a)
    # 2 D = a (w g(w) - h(w)) + b w' g(w') - b h(w'), b w' = b + a m
    torch.addcmul(h_w, w, minus_g_w, out=r).mul_(s.a).neg_()
    torch.addcmul(s.b, s.a, m, out=bwp)
    r.addcmul_(bwp, g_wp).addcmul_(s.b, h_wp, value=-1.0).sub_(2.0 * delta)
    if s.q.dtype != torch.float64:
        return r, slope, None
    # 2 D'' = a (1 / (w (1 + w)) + kappa / (w' (1 + w'))), w' = 1 + d
    curvature = torch.addcmul(w, w, w, out=minus_g_w).reciprocal_()
    torch.add(d, 1.0, out=h_w)
    torch.addcmul(h_w, h_w, h_w, out=h_wp)
    curvature.add_(torch.div(s.kappa, h_wp, out=h_wp))
    return r, slope, curvature.mul_(s.a)


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


SOLVER = onesided.w_solver(
    "js",
    residual=residual,
    fast_residual=fast_residual,
    saturation=saturation,
    threshold=_threshold,
    x_low=X_LOW,
    y_top=Y_TOP,
)


def js_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for Jensen-Shannon <= delta; logp: (N,) float32 or float64."""
    return onesided.solve(SOLVER, logp, delta)
