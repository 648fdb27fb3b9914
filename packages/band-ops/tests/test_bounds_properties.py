"""Properties of ratio_bounds that must hold for every divergence, p and delta."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import band_ops
from band_ops.newton import newton_bounds

BUILTINS = ("kl", "reverse_kl", "tv", "chi2", "neyman_chi2", "hellinger", "js")

logps = st.floats(min_value=math.log(1e-8), max_value=math.log1p(-1e-8))
deltas = st.floats(min_value=1e-4, max_value=1.0)


def _lp(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(BUILTINS), lp=st.lists(logps, min_size=1, max_size=16), delta=deltas)
def test_bounds_are_finite_ordered_and_within_domain(name, lp, delta):
    old = _lp(lp)
    lower, upper = band_ops.ratio_bounds(old, divergence=name, delta=delta)
    inv_p = torch.exp(-old)  # 1/p as the package computes it
    assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
    assert (lower >= 0).all() and (lower <= 1).all()
    assert (upper >= 1).all() and (upper <= inv_p).all()


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(BUILTINS),
    lp=st.lists(logps, min_size=1, max_size=16),
    d1=deltas,
    d2=deltas,
)
def test_bounds_widen_monotonically_with_delta(name, lp, d1, d2):
    small, big = sorted((d1, d2))
    old = _lp(lp)
    lo_s, hi_s = band_ops.ratio_bounds(old, divergence=name, delta=small)
    lo_b, hi_b = band_ops.ratio_bounds(old, divergence=name, delta=big)
    # Allow the last few ulps: both are independently rounded solutions.
    assert (lo_b <= lo_s * (1 + 1e-12) + 1e-15).all()
    assert (hi_b >= hi_s * (1 - 1e-12)).all()


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(BUILTINS), lp=logps, delta=deltas)
def test_interior_bounds_sit_on_the_constraint(name, lp, delta):
    old = _lp([lp])
    p = math.exp(lp)
    lower, upper = band_ops.ratio_bounds(old, divergence=name, delta=delta)
    pt = torch.tensor([p], dtype=torch.float64)
    for r, edge in ((upper, 1 / p), (lower, 0.0)):
        g_edge = band_ops.binary_divergence(name, pt, torch.tensor([edge], dtype=torch.float64))
        g_edge = float(torch.nan_to_num(g_edge, nan=math.inf))
        if g_edge <= delta * (1 - 1e-9):
            assert float(r) == pytest.approx(edge, abs=0, rel=1e-15)  # saturated exactly
        elif edge > 0 and float(r) >= edge * (1 - 4e-16):
            # The root is closer to 1/p than float64 resolves (KL at large delta: q = 1 - 1e-30),
            # so the bound rounds onto it: then the constraint holds 1e-9 inside the edge.
            inside = torch.tensor([edge * (1 - 1e-9)], dtype=torch.float64)
            assert float(band_ops.binary_divergence(name, pt, inside)) <= delta
        elif g_edge > delta * (1 + 1e-9) and 1e-250 < float(r) and abs(float(r) - 1) > 1e-6:
            g = float(band_ops.binary_divergence(name, pt, r))
            assert g == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize("name", ["tv", "chi2", "neyman_chi2", "hellinger", "kl"])
def test_dedicated_solvers_agree_with_generic_newton(name):
    # The generic solver on the same generator is an independent route to the same band.
    old = torch.linspace(math.log(1e-7), -1e-7, 301, dtype=torch.float64)
    p = old.exp()
    p1 = -torch.expm1(old)
    f = band_ops.get_divergence(name).generator
    for delta in (1e-3, 0.05, 0.5):
        lo, hi = band_ops.ratio_bounds(old, divergence=name, delta=delta)
        glo, ghi = newton_bounds(f, p, p1, delta)
        torch.testing.assert_close(hi, torch.minimum(ghi, 1 / p), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(lo, glo, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", BUILTINS)
def test_saturation_is_exactly_zero_or_one_over_p(name):
    old = torch.log(torch.tensor([0.001, 0.3, 0.97], dtype=torch.float64))
    lower, upper = band_ops.ratio_bounds(old, divergence=name, delta=1.0)
    p = old.exp()
    for i in range(3):
        g_top = band_ops.binary_divergence(name, p[i : i + 1], 1 / p[i : i + 1])
        g_top = float(torch.nan_to_num(g_top, nan=math.inf))
        if g_top <= 1.0:
            assert upper[i].item() == torch.exp(-old[i]).item()
        g_bottom = float(
            torch.nan_to_num(
                band_ops.binary_divergence(name, p[i : i + 1], torch.zeros(1, dtype=torch.float64)),
                nan=math.inf,
            )
        )
        if g_bottom <= 1.0:
            assert lower[i].item() == 0.0


def test_tv_saturates_where_the_closed_form_says():
    old = torch.log(torch.tensor([0.01, 0.5, 0.97], dtype=torch.float64))
    lower, upper = band_ops.ratio_bounds(old, divergence="tv", delta=0.05)
    assert lower[0].item() == 0.0  # 1 - 0.05/0.01 < 0
    assert upper[2].item() == torch.exp(-old[2]).item()  # 1 + 0.05/0.97 > 1/0.97
    assert upper[1].item() == pytest.approx(1.1, rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", BUILTINS)
def test_output_keeps_shape_dtype_and_has_no_gradient(name, dtype):
    old = (-12 * torch.rand(3, 5, generator=torch.Generator().manual_seed(0))).to(dtype)
    old.requires_grad_(True)
    lower, upper = band_ops.ratio_bounds(old, divergence=name, delta=0.05)
    for b in (lower, upper):
        assert b.shape == old.shape and b.dtype == dtype and b.device == old.device
        assert not b.requires_grad
        assert torch.isfinite(b).all()
    assert (lower <= 1).all() and (upper >= 1).all()


def test_half_precision_matches_float32_to_its_own_rounding():
    old32 = -8 * torch.rand(1000, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.bfloat16, torch.float16):
        old = old32.to(dtype)
        lo, hi = band_ops.ratio_bounds(old, delta=0.05)
        lo32, hi32 = band_ops.ratio_bounds(old.float(), delta=0.05)
        torch.testing.assert_close(lo, lo32.to(dtype))
        torch.testing.assert_close(hi, hi32.to(dtype))


def test_float16_upper_bound_is_capped_at_the_largest_finite_value():
    old = torch.tensor([-30.0, -1.0], dtype=torch.float16)
    _, upper = band_ops.ratio_bounds(old, divergence="tv", delta=0.5)
    assert torch.isfinite(upper).all()
    assert upper[0].item() == torch.finfo(torch.float16).max


def test_max_ratio_caps_only_the_upper_bound():
    old = torch.log(torch.tensor([1e-4, 0.01, 0.5], dtype=torch.float64))
    lo, hi = band_ops.ratio_bounds(old, delta=0.05)
    clo, chi = band_ops.ratio_bounds(old, delta=0.05, max_ratio=10)
    assert torch.equal(lo, clo)
    assert torch.equal(chi, hi.clamp(max=10))
    assert chi[0].item() == 10.0 and hi[0].item() > 10


def test_extreme_log_probs_give_finite_bounds():
    old = torch.tensor([0.0, -0.0, -1e-30, -200.0, -1e4, float("-inf")], dtype=torch.float32)
    for name in BUILTINS:
        lower, upper = band_ops.ratio_bounds(old, divergence=name, delta=0.05)
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all(), name
        assert (lower <= 1).all() and (upper >= 1).all(), name
        assert upper[0].item() == 1.0  # p = 1: nothing is above 1/p = 1


def test_bounds_work_on_any_shape_including_empty():
    for shape in [(0,), (2, 0), (4,), (2, 3, 4)]:
        old = -torch.rand(shape, dtype=torch.float64)
        lower, upper = band_ops.ratio_bounds(old)
        assert lower.shape == shape and upper.shape == shape


def test_ppo_like_width_for_likely_tokens_and_wide_for_rare_ones():
    # The paper's motivation: Band lets rare tokens rise by far more than eps * p.
    old = torch.log(torch.tensor([0.001, 0.9], dtype=torch.float64))
    _, upper = band_ops.ratio_bounds(old, delta=0.05)
    assert upper[0] > 10 and upper[1] < 1.2
