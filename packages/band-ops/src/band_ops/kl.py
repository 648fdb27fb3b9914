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

import math

import torch
from torch import Tensor


def kl_bounds(p: Tensor, p1: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for KL(old || new) <= delta. p, p1 = 1 - p: (N,) float32/64."""
    finfo = torch.finfo(p.dtype)
    # Halley steps, then a final Newton step: from the start's ~5% error the errors go about
    # 5e-2 -> 7e-4 -> 1e-6 (float32) and 5e-2 -> 7e-4 -> 1e-10 -> 1e-16 (float64).
    halley = (True, True, False) if p.dtype == torch.float64 else (True, False)
    # Beyond t_cap, exp(-t) is below eps: 1 - exp(-t) rounds to 1 and the Halley correction
    # vanishes, so the cap changes nothing, and it keeps exp/expm1 off their slow paths for large
    # arguments (CPU) and away from subnormal results.
    t_cap = -math.log(finfo.eps) + 4.0
    a = torch.stack((p, p1))  # (2, N): row 0 is the upper side, row 1 the lower side
    b = torch.stack((p1, p))
    k = b / a  # z = -k expm1(-t)
    # Start: the hypotenuse of the quadratic-model root sqrt(2 delta a / b) and delta / b,
    # written as (delta / b) sqrt(1 + 2 a b / delta) so that tiny b cannot overflow a square.
    t = torch.mul(a, b).mul_(2 / delta).add_(1).sqrt_().mul_(delta).div_(b)
    # Work buffers, reused in place: allocating large tensors costs more than the arithmetic.
    em1, z, w1, w2 = (torch.empty_like(t) for _ in range(4))
    for use_halley in halley:
        torch.clamp(t, max=t_cap, out=em1).neg_().expm1_()  # expm1(-t), in (-1, 0]
        torch.mul(k, em1, out=z).neg_()  # z
        torch.add(z, 1, out=w1)  # w1 = 1 + z
        _log1p(z, w1, out=w2).mul_(a)
        w2.neg_().addcmul_(b, t).sub_(delta)  # w2 = h(t) - delta = b t - a log1p(z) - delta
        z.div_(w1).clamp_(min=finfo.tiny)  # z = h' = z / (1 + z)
        w2.div_(z)  # w2 = Newton step
        if use_halley:
            em1.add_(1).mul_(k).div_(w1.square_())  # em1 = h'' = k exp(-t) / (1 + z)^2
            # Halley's correction factor; the clamp keeps a step from reversing or exploding.
            torch.mul(w2, em1, out=w1).div_(z).mul_(-0.5).add_(1).clamp_(min=0.5)
            w2.div_(w1)
        t.sub_(w2).clamp_(min=0)
    torch.clamp(t[0], max=t_cap, out=em1[0]).neg_().expm1_()
    upper = torch.minimum(em1[0].mul_(p1).div_(p).neg_().add_(1), p.reciprocal())  # 1 + x <= 1/p
    # exp(-u), not 1 + expm1(-u), which would round values below eps to 0. Results below twice
    # the smallest normal number come out as that number: exp is slow near subnormal results.
    u_cap = -math.log(2 * finfo.tiny)
    lower = t[1].clamp_(max=u_cap).neg_().exp_()
    return lower, upper


def _log1p(z: Tensor, one_z: Tensor, *, out: Tensor) -> Tensor:
    """Returns log1p(z) to a few ulps from log(1 + z) (torch's log1p is several times slower).

    log(w) with w = fl(1 + z) is exact for the rounded w; the first-order term ((w - 1) - z) / w
    removes the rounding of 1 + z, which is all that log1p adds.
    """
    torch.sub(one_z, 1, out=out).sub_(z).div_(one_z)  # ((w - 1) - z) / w
    return out.neg_().add_(torch.log(one_z))
