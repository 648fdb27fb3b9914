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

# Tokens per chunk on CPU: the ~50 elementwise passes of one chunk then run on buffers that stay
# in cache and are reused, instead of streaming 8 full-size temporaries through memory.
CPU_CHUNK = 1 << 17


def kl_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns (lower, upper) for KL(old || new) <= delta; logp: (N,) float32 or float64."""
    n = logp.shape[0]
    chunk = CPU_CHUNK if logp.device.type == "cpu" else max(n, 1)
    lower, upper = torch.empty_like(logp), torch.empty_like(logp)
    work = logp.new_empty(9, 2 * min(chunk, n))  # per-chunk buffers, reused
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        _kl_chunk(logp[start:stop], delta, work, lower[start:stop], upper[start:stop])
    return lower, upper


def _kl_chunk(logp: Tensor, delta: float, work: Tensor, lower: Tensor, upper: Tensor) -> None:
    """Writes the band of one chunk of ``logp`` (M,) into ``lower`` and ``upper`` (M,)."""
    finfo = torch.finfo(logp.dtype)
    m = logp.shape[0]
    a, nk, s, em1, z, w, log_w, scratch, pp = (row[: 2 * m].view(2, m) for row in work)
    # (2, M) rows: 0 is the upper side (a = p, k = (1-p)/p), 1 the lower (a = 1-p, k = p/(1-p)).
    p, p1 = a[0], a[1]
    torch.exp(logp, out=p)
    # 1 - p from log p keeps its precision near p = 1 (where p itself may round to 1).
    torch.expm1(logp, out=p1).neg_().clamp_(min=finfo.tiny)
    # Halley steps, then a final Newton step: from the start's ~5% error the errors go about
    # 5e-2 -> 7e-4 -> 1e-6 (float32) and 5e-2 -> 7e-4 -> 1e-10 -> 1e-16 (float64).
    halley = (True, True, False) if logp.dtype == torch.float64 else (True, False)
    # Beyond t_cap, exp(-t) is below eps: 1 - exp(-t) rounds to 1 and the Halley correction
    # vanishes, so the cap changes nothing, and it keeps expm1 off its slow path for large
    # arguments (CPU) and away from subnormal results.
    t_cap = -math.log(finfo.eps) + 4.0
    # The iteration runs on s = -t and nk = -k, which saves a negation in every pass.
    torch.div(p1, p, out=nk[0]).neg_()
    torch.div(p, p1, out=nk[1]).neg_()
    # Start: hypot of the quadratic-model root sqrt(2 delta a / b) and delta / b (b = a k),
    # written as (delta / b) sqrt(1 + 2 p (1-p) / delta) so that tiny b cannot overflow a square.
    root = torch.mul(p, p1, out=pp[0]).mul_(2 / delta).add_(1).sqrt_().mul_(-delta)
    torch.div(root, p1, out=s[0])
    torch.div(root, p, out=s[1])
    for use_halley in halley:
        torch.clamp(s, min=-t_cap, out=em1).expm1_()  # expm1(-t), in (-1, 0]
        torch.mul(nk, em1, out=z).clamp_(min=finfo.tiny)  # z = -k expm1(-t) > 0
        torch.add(z, 1, out=w)  # w = 1 + z
        # log1p(z) = log(w) - ((w - 1) - z) / w: log is several times faster than log1p.
        torch.log(w, out=log_w)
        minus_h = (
            _log1p(z, w, log_w, scratch).addcmul_(nk, s, value=-1).mul_(a).add_(delta)
        )  # -(h - delta) = a (log1p(z) - k t) + delta
        # Newton step -(h - delta) / h' with h' = z / w; t <- t + step.
        step = minus_h.mul_(w).div_(z)
        if use_halley:
            # Halley divides the step by 1 - step h'' / (2 h') = 1 + (-(h-delta)) k e^-t / (2 z^2),
            # using h'' = k e^-t / w^2; the clamp keeps a step from reversing or exploding.
            factor = em1.add_(1).mul_(nk).mul_(step).div_(w).div_(z).mul_(-0.5).add_(1)
            step.div_(factor.clamp_(min=0.5))
        s.sub_(step).clamp_(max=0)
    # 1 + x, x = -(1-p) expm1(-v) / p, capped at 1/p = exp(-log p).
    x = torch.clamp(s[0], min=-t_cap, out=em1[0]).expm1_().mul_(p1).div_(p).neg_()
    torch.minimum(x.add_(1), torch.neg(logp, out=em1[1]).exp_(), out=upper)
    # exp(-u), not 1 + expm1(-u), which would round values below eps to 0. Results below twice
    # the smallest normal number come out as that number: exp is slow near subnormal results.
    u_cap = -math.log(2 * finfo.tiny)
    torch.clamp(s[1], min=-u_cap, out=lower).exp_()


def _log1p(z: Tensor, w: Tensor, log_w: Tensor, scratch: Tensor) -> Tensor:
    """Returns log1p(z) in ``log_w`` (which holds log(w), w = fl(1 + z)), to a few ulps.

    log(w) is exact for the rounded w; subtracting ((w - 1) - z) / w removes the rounding of
    1 + z, which is all that log1p adds over log.
    """
    correction = torch.sub(w, 1, out=scratch).sub_(z).div_(w)
    return log_w.sub_(correction)
