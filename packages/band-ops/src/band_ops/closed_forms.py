"""Exact band end points for the divergences that have a closed form.

Every function takes ``p`` (old probability of the sampled token), ``p1 = 1 - p`` (computed as
``-expm1(log p)`` by the caller) and ``delta``, and returns ``(lower, upper)`` ratios including
saturation at 0 and ``1/p``, guaranteeing 0 <= lower <= 1 <= upper <= 1/p with ``1/p`` computed as
``p.reciprocal()``. Shapes: all tensors (N,) or any common shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def tv_bounds(p: Tensor, p1: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of |q - p| <= delta: r = 1 -+ delta / p, saturated at 0 and 1/p."""
    step = delta / p
    lower = (1 - step).clamp_(min=0)
    upper = torch.minimum(step.add_(1), p.reciprocal())
    return lower, upper


def chi2_bounds(p: Tensor, p1: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of Pearson chi2 (q-p)^2 / (p(1-p)) <= delta: r = 1 -+ sqrt(delta p1 / p)."""
    half_width = (p1 / p).mul_(delta).sqrt_()
    lower = (1 - half_width).clamp_(min=0)
    upper = torch.minimum(half_width.add_(1), p.reciprocal())
    return lower, upper


def neyman_chi2_bounds(p: Tensor, p1: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of Neyman chi2 (p-q)^2 / (q(1-q)) <= delta; it never saturates.

    The roots of (1 + delta) q^2 - (2p + delta) q + p^2 = 0. The smaller one is taken from the
    product of the roots, p^2 / (1 + delta), so that no cancellation occurs for small p.
    """
    # big = 2p + delta + sqrt(delta (delta + 4 p (1 - p)))
    big = (p * p1).mul_(4).add_(delta).mul_(delta).sqrt_().add_(p, alpha=2).add_(delta)
    upper = torch.minimum(big / (p * (2 * (1 + delta))), p.reciprocal()).clamp_(min=1)
    lower = torch.div(p, big).mul_(2).clamp_(max=1)
    return lower, upper


def hellinger_bounds(p: Tensor, p1: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of squared Hellinger sum (sqrt(new) - sqrt(old))^2 <= delta.

    With p = sin^2(a), q = sin^2(b) the divergence is 2 - 2 cos(b - a), so b = a -+ c with
    cos(c) = w = 1 - delta/2 and sin(c) = sc = sqrt(1 - w^2). The upper end saturates at 1/p when
    p >= w^2, the lower end at 0 when p <= sc^2. The lower end is written as
    ((p - sc^2) / (sqrt(p) w + sqrt(1-p) sc))^2 / p to avoid cancelling sqrt(p) w - sqrt(1-p) sc.
    """
    d = min(delta, 2.0)  # the divergence is at most 2: beyond that every ratio is allowed
    w = 1.0 - d / 2.0
    sc2 = d * (1.0 - d / 4.0)
    sc = math.sqrt(sc2)
    inv_p = p.reciprocal()
    upper = (p1 / p).sqrt_().mul_(sc).add_(w).square_().clamp_(min=1)
    upper = torch.where(p >= w * w, inv_p, torch.minimum(upper, inv_p))
    sum_ab = p.sqrt().mul_(w).add_(p1.sqrt(), alpha=sc)
    lower = ((p - sc2) / sum_ab).square_().div_(p)
    lower = torch.where(p <= sc2, torch.zeros_like(lower), lower.clamp_(max=1))
    return lower, upper
