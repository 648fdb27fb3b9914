"""Exact band end points for the divergences that have a closed form.

Every function takes ``logp`` (N,), the old log-probabilities in the compute dtype (float32 or
float64, already clamped to [log(smallest normal), 0]), and ``delta``, and returns
``(lower, upper)`` including saturation, guaranteeing 0 <= lower <= 1 <= upper <= 1/p with
1/p computed as ``exp(-logp)``. The odds (1 - p)/p are ``expm1(-logp)``, which keeps their
precision near p = 1, where p itself rounds to 1. The code is written with in-place operations
because on large batches the memory traffic of temporaries costs more than the arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def odds_and_inverse(logp: Tensor) -> tuple[Tensor, Tensor]:
    """Returns ((1 - p) / p, 1 / p) from log p: expm1(-log p) and exp(-log p)."""
    neg = logp.neg()
    return torch.expm1(neg), neg.exp_()


def tv_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of |q - p| <= delta: r = 1 -+ delta / p, saturated at 0 and 1/p."""
    inv_p = logp.neg().exp_()
    step = inv_p * delta
    lower = torch.sub(1, step).clamp_(min=0)
    upper = torch.minimum(step.add_(1), inv_p)
    return lower, upper


def chi2_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of Pearson chi2 (q-p)^2 / (p(1-p)) <= delta: r = 1 -+ sqrt(delta p1 / p)."""
    odds, inv_p = odds_and_inverse(logp)
    half_width = odds.mul_(delta).sqrt_()
    lower = torch.sub(1, half_width).clamp_(min=0)
    upper = torch.minimum(half_width.add_(1), inv_p)
    return lower, upper


def neyman_chi2_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of Neyman chi2 (p-q)^2 / (q(1-q)) <= delta; it never saturates.

    The roots of (1 + delta) q^2 - (2p + delta) q + p^2 = 0, divided by p:
    r = (2 + delta/p -+ sqrt(delta (delta/p^2 + 4 (1-p)/p))) / (2 (1 + delta)). The smaller
    one is taken from the product of the roots, p / (1 + delta) after the division, so that
    no cancellation occurs for small p: r_low = 2 / (2 + delta/p + sqrt(...)).
    """
    odds, inv_p = odds_and_inverse(logp)
    # big = 2 + delta/p + sqrt(delta (delta/p^2 + 4 odds)) = (2p + delta + sqrt(...)) / p
    big = torch.mul(inv_p, inv_p).mul_(delta).add_(odds, alpha=4).mul_(delta).sqrt_()
    big.add_(inv_p, alpha=delta).add_(2)
    upper = torch.minimum(big / (2 * (1 + delta)), inv_p).clamp_(min=1)
    lower = big.reciprocal_().mul_(2).clamp_(max=1)
    return lower, upper


def hellinger_bounds(logp: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Returns the band of squared Hellinger sum (sqrt(new) - sqrt(old))^2 <= delta.

    With p = sin^2(a), q = sin^2(b) the divergence is 2 - 2 cos(b - a), so b = a -+ c with
    cos(c) = w = 1 - delta/2 and sin(c) = sc = sqrt(1 - w^2). Dividing by p, with
    D = w + sc sqrt((1-p)/p):
        upper = D^2 (= sin^2(a + c) / p), saturated at 1/p when p >= w^2 (a + c >= pi/2);
        lower = ((1 - sc^2 / p) / D)^2 (= sin^2(a - c) / p), 0 when p <= sc^2.
    """
    d = min(delta, 2.0)  # the divergence is at most 2: beyond that every ratio is allowed
    w = 1.0 - d / 2.0
    sc2 = d * (1.0 - d / 4.0)
    odds, inv_p = odds_and_inverse(logp)
    big_d = odds.sqrt_().mul_(math.sqrt(sc2)).add_(w)  # D
    lower = torch.mul(inv_p, -sc2).add_(1).clamp_(min=0).div_(big_d).square_().clamp_(max=1)
    # Past a + c = pi/2 (p >= w^2) D^2 turns back down; there D <= 1/w, and D = 1/w exactly at
    # p = w^2, where D^2 = 1/p. So min(max(D, 1/w)^2, 1/p) is D^2 below saturation and 1/p above.
    cap = 1.0 / w if w > 0 else math.inf
    upper = torch.minimum(big_d.clamp_(min=cap).square_(), inv_p).clamp_(min=1)
    return lower, upper
