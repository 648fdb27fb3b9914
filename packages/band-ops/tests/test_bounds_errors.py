from __future__ import annotations

import math

import pytest
import torch

import band_ops

OLD = torch.log(torch.tensor([0.1, 0.5]))


@pytest.mark.parametrize("delta", [0, -0.1, math.inf, math.nan, "0.1", True])
def test_bad_delta_is_named(delta):
    with pytest.raises(ValueError, match=rf"delta must be a positive finite number, got {delta!r}"):
        band_ops.ratio_bounds(OLD, delta=delta)


@pytest.mark.parametrize("max_ratio", [0.5, -1, math.nan])
def test_max_ratio_below_one_is_rejected(max_ratio):
    with pytest.raises(ValueError, match="max_ratio must be >= 1"):
        band_ops.ratio_bounds(OLD, max_ratio=max_ratio)


def test_unknown_divergence_lists_valid_names():
    with pytest.raises(ValueError, match="unknown divergence 'kll'.*chi2, hellinger, js, kl"):
        band_ops.ratio_bounds(OLD, divergence="kll")


def test_positive_log_prob_is_named_with_its_index():
    old = torch.tensor([[-0.1, -0.2], [0.3, -1.0]])
    with pytest.raises(ValueError, match=r"found 0.3\d* at index \(1, 0\)"):
        band_ops.ratio_bounds(old)


def test_nan_log_prob_is_rejected():
    with pytest.raises(ValueError, match=r"found nan at index \(1,\)"):
        band_ops.ratio_bounds(torch.tensor([-0.1, math.nan]))


def test_integer_and_non_tensor_inputs_are_rejected():
    with pytest.raises(ValueError, match="floating-point"):
        band_ops.ratio_bounds(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="must be a torch.Tensor, got list"):
        band_ops.ratio_bounds([-0.1])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounding_noise_above_zero_is_read_as_zero(dtype):
    noisy = torch.tensor([-0.5, 1e-30, 5e-7, 0.0], dtype=dtype)
    clean = torch.tensor([-0.5, 0.0, 0.0, 0.0], dtype=dtype)
    for divergence in ("kl", "tv", "js"):
        got = band_ops.ratio_bounds(noisy, divergence=divergence, max_ratio=10)
        want = band_ops.ratio_bounds(clean, divergence=divergence, max_ratio=10)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), divergence


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_beyond_the_tolerance_is_named(dtype):
    assert band_ops.bounds.logprob_tolerance(dtype) == 1e-6
    with pytest.raises(
        ValueError, match=r"up to 1e-06 above 0 is read as 0\); found 1.52587890625e-05 at"
    ):
        band_ops.ratio_bounds(torch.tensor([-0.1, 2.0**-16], dtype=dtype))


def test_half_precision_tolerance_is_its_machine_epsilon():
    # bfloat16 cannot tell log-probs apart closer than its epsilon (2^-7) near 1.
    assert band_ops.bounds.logprob_tolerance(torch.bfloat16) == 2.0**-7
    assert band_ops.bounds.logprob_tolerance(torch.float16) == 2.0**-10
    got = band_ops.ratio_bounds(torch.tensor([-1.0, 0.004], dtype=torch.bfloat16))
    want = band_ops.ratio_bounds(torch.tensor([-1.0, 0.0], dtype=torch.bfloat16))
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match=r"found 0.0\d+ at index \(1,\)"):
        band_ops.ratio_bounds(torch.tensor([-1.0, 0.02], dtype=torch.bfloat16))


def test_dcpo_checks_log_probs_like_band():
    dcpo, band = band_ops.DCPO(), band_ops.Band()
    for rule in (dcpo, band):
        with pytest.raises(ValueError, match=r"found nan at index \(1,\)"):
            rule.bounds(torch.tensor([-0.1, math.nan]))
        with pytest.raises(ValueError, match=r"found 0.3\d* at index \(1, 0\)"):
            rule.bounds(torch.tensor([[-0.1, -0.2], [0.3, -1.0]]))
    got = dcpo.bounds(torch.tensor([-2.0, 1e-30, 0.0]))
    want = dcpo.bounds(torch.tensor([-2.0, 0.0, 0.0]))
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert all(torch.isfinite(b).all() for b in got)


def test_dcpo_keeps_empty_and_minus_infinity_inputs():
    lower, upper = band_ops.DCPO().bounds(torch.empty(0, 3))
    assert lower.shape == upper.shape == (0, 3)
    lower, upper = band_ops.DCPO(max_ratio=None).bounds(torch.tensor([-math.inf]))
    assert lower.item() == 0.5 and math.isfinite(upper.item()) and upper.item() > 1e18
