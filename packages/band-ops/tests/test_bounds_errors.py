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
