"""Band end points against an independent mpmath reference (see mp_reference.py).

Grid: 15 probabilities from 1e-8 to 1 - 1e-8 (both tails dense) x 7 radii from 1e-4 to 1, for
every built-in divergence. Pass criterion per end point:
    |got - ref| <= rtol * ref + atol,  rtol = 1e-10 (float64) or 1e-5 (float32),
    atol = 16 machine epsilons of the dtype.
The atol only matters for lower bounds close to 0 near the saturation boundary, where the answer
is a difference of two numbers of order 1 and no float algorithm can give it a small relative
error. A reference below the dtype's smallest normal number (e.g. exp(-delta/p) for KL at tiny p)
must come out within 4 x that number of it (KL returns about 2 x tiny there: exp is slow near
subnormal results).
"""

from __future__ import annotations

import functools
import math

import mp_reference
import pytest
import torch

import band_ops

PROBS = (
    1e-8,
    1e-6,
    1e-4,
    1e-3,
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.7,
    0.9,
    0.99,
    0.999,
    1 - 1e-5,
    1 - 1e-8,
)
DELTAS = (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 1.0)
BUILTINS = ("kl", "reverse_kl", "tv", "chi2", "neyman_chi2", "hellinger", "js")
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@functools.cache
def _reference(name: str, logp: float, delta: float) -> tuple[float, float]:
    lower, upper = mp_reference.bounds(name, logp, delta)
    return float(lower), float(upper)


def _errors(name: str, dtype: torch.dtype) -> list[str]:
    finfo = torch.finfo(dtype)
    logp = torch.log(torch.tensor(PROBS, dtype=torch.float64)).to(dtype)
    failures = []
    for delta in DELTAS:
        lower, upper = band_ops.ratio_bounds(logp, divergence=name, delta=delta)
        for i, lp in enumerate(logp.tolist()):
            ref = _reference(name, lp, delta)
            for side, got, want in (
                ("lower", lower[i].item(), ref[0]),
                ("upper", upper[i].item(), ref[1]),
            ):
                if want < 2 * finfo.tiny:
                    ok = abs(got - want) <= 4 * finfo.tiny
                else:
                    ok = abs(got - want) <= RTOL[dtype] * want + 16 * finfo.eps
                if not ok:
                    rel = abs(got - want) / want if want else math.inf
                    failures.append(
                        f"p={math.exp(lp):.3g} delta={delta:g} {side}: got {got!r}, "
                        f"reference {want!r} (rel err {rel:.2e})"
                    )
    return failures


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", BUILTINS)
def test_bounds_match_mpmath_reference(name: str, dtype: torch.dtype) -> None:
    failures = _errors(name, dtype)
    assert not failures, "\n".join(failures[:10])


def test_reference_itself_matches_closed_forms() -> None:
    # Guards the reference: its bisection must reproduce two textbook closed forms.
    p, delta = 0.3, 0.05
    lower, upper = _reference("chi2", math.log(p), delta)
    half = math.sqrt(delta * (1 - p) / p)
    assert lower == pytest.approx(1 - half, rel=1e-14)
    assert upper == pytest.approx(1 + half, rel=1e-14)
    lower, upper = _reference("tv", math.log(p), delta)
    assert lower == pytest.approx(1 - delta / p, rel=1e-14)
    assert upper == pytest.approx(1 + delta / p, rel=1e-14)


def test_kl_lower_bound_far_below_one_is_not_rounded_to_zero() -> None:
    # exp(-u) ~ 1e-44 must survive in float64 (1 + expm1(-u) would round it to 0).
    lp = torch.tensor([math.log(1e-6)], dtype=torch.float64)
    lower, _ = band_ops.ratio_bounds(lp, divergence="kl", delta=1e-4)
    want = _reference("kl", lp.item(), 1e-4)[0]
    assert want > 1e-50
    assert lower.item() == pytest.approx(want, rel=1e-10)
