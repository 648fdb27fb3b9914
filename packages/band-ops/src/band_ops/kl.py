"""Band end points for KL(old || new), the paper's main variant, by Halley's method.

KL has no closed form. Each side is solved in a variable in which the constraint is convex,
increasing and asymptotically linear, so that Halley's iteration from a closed-form start reaches
float64 precision in three steps (two for float32); the paper's bisection needs 50 per side.

Upper side (q > p): v = log((1-p)/(1-q)) >= 0 and
    phi(v) = (1-p) v - p log(q/p),       q/p = 1 + x,  x = -(1-p) expm1(-v) / p.
Lower side (q < p): u = log(p/q) >= 0 and
    psi(u) = p u - (1-p) log((1-q)/(1-p)), (1-q)/(1-p) = 1 + y, y = -p expm1(-u) / (1-p).
Both have the form h(t) = b t - a log1p(z), z = -b expm1(-t) / a with (a, b) = (p, 1-p) for the
upper side and (1-p, p) for the lower, h' = z / (1 + z) and h'' = b (1 + expm1(-t)) / (a (1+z)^2).
The root lies between the quadratic-model root sqrt(2 delta a / b) and the linear bound
delta / b; their hypotenuse starts the iteration within about 5% of it everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl_bounds(p: Tensor, p1: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for KL(old || new) <= delta. p, p1 = 1 - p: (N,) float32/64."""
    steps = 3 if p.dtype == torch.float64 else 2
    a = torch.stack((p, p1))  # (2, N): row 0 is the upper side, row 1 the lower side
    b = torch.stack((p1, p))
    tiny = torch.finfo(p.dtype).tiny
    t = torch.hypot((a / b).mul_(2 * delta).sqrt_(), delta / b)
    for _ in range(steps):
        em1 = torch.expm1(-t)  # (2, N), in (-1, 0]
        z = (b * em1).div_(a).neg_()
        one_z = 1 + z
        h = (b * t).sub_(a * torch.log1p(z)).sub_(delta)  # h(t) - delta
        d1 = (z / one_z).clamp_(min=tiny)
        d2 = (b * (1 + em1)).div_(a * one_z.square())
        newton = h / d1
        # Halley's correction; the clamp keeps the step from reversing or exploding.
        denom = (newton * d2).div_(d1).mul_(-0.5).add_(1).clamp_(min=0.5)
        t = (t - newton.div_(denom)).clamp_(min=0)
    upper = 1 - p1 * torch.expm1(-t[0]) / p  # 1 + x
    lower = torch.exp(-t[1])  # not 1 + expm1(-u): that rounds values below eps to 0
    return lower, upper
