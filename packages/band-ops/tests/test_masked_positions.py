"""Masked positions never reach the loss or its gradient, whatever they hold; and
seq-mean-token-sum-norm is verl's: the batch's masked token-loss sum over the horizon only."""

from __future__ import annotations

import math

import pytest
import torch

import band_ops

AGGREGATIONS = band_ops.available_aggregations()
B, T = 4, 5


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -4 * torch.rand(B, T, generator=g, dtype=torch.float64)
    new = (old + 0.8 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 3:] = 0
    mask[1, 0] = 0  # a masked position before valid ones
    mask[3, :] = 0  # an empty sequence
    return new, old, adv, mask


def _with_garbage(new, old, adv, mask):
    """Returns copies holding NaN / -inf at masked positions (valid positions untouched)."""
    masked = mask == 0
    new, old, adv = new.clone(), old.clone(), adv.clone()
    new[0, 3], old[0, 3] = -math.inf, -math.inf  # both -inf: the log-ratio is NaN
    new[0, 4], old[0, 4], adv[0, 4] = math.nan, math.nan, math.nan
    old[1, 0], adv[1, 0] = math.nan, math.inf
    new[3], old[3], adv[3] = math.nan, 0.7, math.nan  # 0.7: an impossible log-prob
    assert torch.equal(masked, ~torch.isfinite(new + old + adv) | (old > 0) | masked)
    return new, old, adv


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("rule", ["ppo", "band", "band_upper", "dcpo"])
def test_garbage_at_masked_positions_changes_nothing(rule, aggregation):
    new, old, adv, mask = _batch()
    clean = new.clone().requires_grad_(True)
    want, want_metrics = band_ops.policy_loss(
        clean, old, adv, mask, rule=rule, aggregation=aggregation, dual_clip=3.0
    )
    want.backward()
    g_new, g_old, g_adv = _with_garbage(new, old, adv, mask)
    dirty = g_new.requires_grad_(True)
    got, got_metrics = band_ops.policy_loss(
        dirty, g_old, g_adv, mask, rule=rule, aggregation=aggregation, dual_clip=3.0
    )
    got.backward()
    assert torch.isfinite(got) and got.item() == want.item()
    assert torch.isfinite(dirty.grad).all()
    assert torch.equal(dirty.grad, clean.grad)
    assert (dirty.grad[mask == 0] == 0).all()
    for key, value in want_metrics.items():
        assert torch.equal(got_metrics[key], value), key


def test_per_sequence_nan_advantage_of_an_empty_sequence_is_ignored():
    new, old, adv, mask = _batch()
    per_seq = adv[:, 0].clone()
    want, _ = band_ops.policy_loss(new, old, per_seq, mask, rule="band")
    per_seq[3] = math.nan  # row 3 is all padding
    got, _ = band_ops.policy_loss(new, old, per_seq, mask, rule="band")
    assert got.item() == want.item()


def test_loss_equals_the_loss_without_the_masked_positions():
    # The valid tokens alone, as one unpadded row, give the same token-mean.
    new, old, adv, mask = _batch()
    g_new, g_old, g_adv = _with_garbage(new, old, adv, mask)
    full, _ = band_ops.policy_loss(g_new, g_old, g_adv, mask, rule="band")
    valid = mask.bool()
    kept, _ = band_ops.policy_loss(
        g_new[valid][None], g_old[valid][None], g_adv[valid][None], mask[valid][None], rule="band"
    )
    assert int(valid.sum()) == 12
    assert full.item() == pytest.approx(kept.item(), rel=1e-14)


def test_garbage_in_precomputed_bounds_at_masked_positions_is_ignored():
    new, old, adv, mask = _batch()
    lower, upper = band_ops.Band().bounds(old)
    want, _ = band_ops.policy_loss(new, old, adv, mask, rule="band", bounds=(lower, upper))
    lower, upper = lower.clone(), upper.clone()
    lower[mask == 0], upper[mask == 0] = math.nan, -math.inf
    got, metrics = band_ops.policy_loss(new, old, adv, mask, rule="band", bounds=(lower, upper))
    assert got.item() == want.item()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_nan_at_a_valid_position_still_raises_for_band_and_dcpo():
    new, old, adv, mask = _batch()
    old = old.clone()
    old[2, 1] = math.nan
    for rule in ("band", "dcpo", "band_lower"):
        with pytest.raises(ValueError, match=r"found nan at index \(2, 1\)"):
            band_ops.policy_loss(new, old, adv, mask, rule=rule)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_aggregate_selects_with_the_mask(aggregation):
    loss = torch.tensor([[1.0, 2.0, math.nan], [math.inf, 3.0, -math.inf]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    out = band_ops.aggregate(loss, mask, aggregation)
    out.backward()
    assert torch.isfinite(out)
    assert torch.equal(loss.grad[mask == 0], torch.zeros(3))
    clean = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    assert out.item() == band_ops.aggregate(clean, mask, aggregation).item()


# --- seq-mean-token-sum-norm: verl's definition ----------------------------------------------


def test_seq_mean_token_sum_norm_is_the_batch_sum_over_the_sequence_length():
    # B = 4 sequences of padded length T = 5.
    loss = torch.tensor(
        [
            [1.0, 2.0, 3.0, 9.0, 9.0],
            [-1.0, 0.5, 0.5, 0.5, 0.5],
            [4.0, 9.0, 9.0, 9.0, 9.0],
            [9.0, 9.0, 9.0, 9.0, 9.0],
        ]
    )
    mask = torch.tensor(
        [
            [1.0, 1.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    token_sum = (1 + 2 + 3) + (-1 + 0.5 * 4) + 4  # = 11, the masked losses of the whole batch
    agg = band_ops.aggregate
    assert agg(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(token_sum / 5)
    assert agg(loss, mask, "seq-mean-token-sum-norm", horizon=8).item() == pytest.approx(11 / 8)
    # normalizer (a count) plays no part in this mode.
    assert agg(loss, mask, "seq-mean-token-sum-norm", normalizer=4).item() == pytest.approx(11 / 5)


def test_policy_loss_seq_mean_token_sum_norm_matches_the_hand_formula():
    new, old, adv, mask = _batch(seed=2)
    lower, upper = band_ops.Band().bounds(old)
    r = (new - old).exp()
    per_token = torch.maximum(-adv * r, -adv * torch.minimum(torch.maximum(r, lower), upper))
    want = (per_token * mask).sum() / T
    mode = "seq-mean-token-sum-norm"
    got, _ = band_ops.policy_loss(new, old, adv, mask, rule="band", aggregation=mode)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got_h, _ = band_ops.policy_loss(
        new, old, adv, mask, rule="band", aggregation="seq-mean-token-sum-norm", horizon=16
    )
    assert got_h.item() == pytest.approx((per_token * mask).sum().item() / 16, rel=1e-12)


def test_seq_mean_token_sum_norm_micro_batches_sum_to_the_batch_without_a_normalizer():
    new, old, adv, mask = _batch(seed=4)
    new = new.requires_grad_(True)
    mode = "seq-mean-token-sum-norm"
    full, _ = band_ops.policy_loss(new, old, adv, mask, rule="band", aggregation=mode)
    (full_grad,) = torch.autograd.grad(full, new)
    total = sum(
        band_ops.policy_loss(new[s], old[s], adv[s], mask[s], rule="band", aggregation=mode)[0]
        for s in (slice(0, 1), slice(1, 4))
    )
    (grad,) = torch.autograd.grad(total, new)
    assert total.item() == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("horizon", [0, -3, math.inf, True, "8"])
def test_bad_horizon_is_named(horizon):
    ones = torch.ones(2, 2)
    with pytest.raises(
        ValueError, match=f"horizon must be a positive finite number, got {horizon!r}"
    ):
        band_ops.aggregate(ones, ones, "seq-mean-token-sum-norm", horizon=horizon)
