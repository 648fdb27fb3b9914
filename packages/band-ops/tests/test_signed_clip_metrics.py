"""Signed clip diagnostics of policy_loss: by side of the band, advantage sign and old-probability
bucket, as fractions and as counts that pool by summing."""

from __future__ import annotations

import math

import pytest
import torch

import band_ops

BUCKETS = ("p<0.01", "p0.01-0.1", "p0.1-0.5", "p>0.5")
UP, IN, DOWN = 0.5, 0.0, -0.5  # log-ratios: r = 1.65 (above PPO's 1.2), 1, 0.61 (below 0.8)
NAN = math.nan

# (old p, advantage, log-ratio, mask) per token; PPO eps 0.2, so the band is [0.8, 1.2].
TOKENS = [
    [
        (0.005, 1.0, UP, 1),  # pos / p<0.01 / upper: an active clip
        (0.005, 1.0, IN, 1),  # pos / p<0.01 / inside
        (0.005, -1.0, DOWN, 1),  # neg / p<0.01 / lower: an active clip
        (0.05, 1.0, DOWN, 1),  # pos / p0.01-0.1 / lower: out of the band, gradient kept
        (0.05, -1.0, UP, 1),  # neg / p0.01-0.1 / upper: out of the band, gradient kept
        (0.3, -1.0, DOWN, 1),  # neg / p0.1-0.5 / lower: an active clip
    ],
    [
        (0.8, 1.0, UP, 1),  # pos / p>0.5 / upper: an active clip
        (0.8, 0.0, UP, 1),  # A = 0: counts in token_frac only
        (0.005, 2.0, UP, 1),  # pos / p<0.01 / upper: an active clip
        (0.3, 1.0, IN, 1),  # pos / p0.1-0.5 / inside
        (0.5, NAN, NAN, 0),  # padding holding garbage
        (0.005, 1.0, UP, 0),  # padding that would be clipped
    ],
]
# Non-zero counts of the table above; every other cell is 0.
COUNTS = {
    "count/pos/p<0.01": 3,
    "clipped_upper/pos/p<0.01": 2,
    "count/neg/p<0.01": 1,
    "clipped_lower/neg/p<0.01": 1,
    "count/pos/p0.01-0.1": 1,
    "clipped_lower/pos/p0.01-0.1": 1,
    "count/neg/p0.01-0.1": 1,
    "clipped_upper/neg/p0.01-0.1": 1,
    "count/neg/p0.1-0.5": 1,
    "clipped_lower/neg/p0.1-0.5": 1,
    "count/pos/p0.1-0.5": 1,
    "count/pos/p>0.5": 1,
    "clipped_upper/pos/p>0.5": 1,
}
FRACTIONS = {
    "clip_frac_upper/pos/p<0.01": 2 / 3,
    "clip_frac_lower/neg/p<0.01": 1.0,
    "clip_frac_lower/pos/p0.01-0.1": 1.0,
    "clip_frac_upper/neg/p0.01-0.1": 1.0,
    "clip_frac_lower/neg/p0.1-0.5": 1.0,
    "clip_frac_upper/pos/p>0.5": 1.0,
}
EXISTING_KEYS = {
    "clip_frac",
    "clip_frac_low",
    "clip_frac_high",
    "dual_clip_frac",
    "approx_kl",
    "ratio_mean",
    "ratio_max",
    "ratio_min",
    "bound_low_mean",
    "bound_high_mean",
    *(f"clip_frac/{b}" for b in BUCKETS),
    *(f"token_frac/{b}" for b in BUCKETS),
}


def _cells(prefix: str) -> set[str]:
    return {f"{prefix}/{sign}/{b}" for sign in ("pos", "neg") for b in BUCKETS}


SIGNED_KEYS = (
    _cells("count")
    | _cells("clipped_upper")
    | _cells("clipped_lower")
    | _cells("clip_frac_upper")
    | _cells("clip_frac_lower")
)


def _table(dtype=torch.float64):
    p, adv, shift, mask = (
        torch.tensor([[tok[i] for tok in row] for row in TOKENS], dtype=dtype) for i in range(4)
    )
    old = p.log()
    return (old + shift).requires_grad_(True), old, adv, mask


def test_key_set_is_exact():
    new, old, adv, mask = _table()
    _, metrics = band_ops.policy_loss(new, old, adv, mask, rule="ppo")
    assert len(SIGNED_KEYS) == 40 and "clip_frac_upper/pos/p<0.01" in SIGNED_KEYS
    assert set(metrics) == EXISTING_KEYS | SIGNED_KEYS
    assert band_ops.COUNT_METRICS == _cells("count") | _cells("clipped_upper") | _cells(
        "clipped_lower"
    )


def test_counts_and_fractions_by_hand():
    new, old, adv, mask = _table()
    _, m = band_ops.policy_loss(new, old, adv, mask, rule=band_ops.PPO(eps=0.2))
    for key in sorted(SIGNED_KEYS):
        if key.startswith("clip_frac_"):
            assert m[key].item() == pytest.approx(FRACTIONS.get(key, 0.0), rel=1e-6), key
        else:
            assert m[key].item() == COUNTS.get(key, 0), key
    # The unsigned metrics agree: 10 valid tokens, active clips 3 above (A > 0), 2 below (A < 0).
    assert m["clip_frac_high"].item() == pytest.approx(3 / 10)
    assert m["clip_frac_low"].item() == pytest.approx(2 / 10)
    assert m["clip_frac"].item() == pytest.approx(5 / 10)
    assert m["clip_frac/p<0.01"].item() == pytest.approx(3 / 4)
    assert m["token_frac/p>0.5"].item() == pytest.approx(2 / 10)  # A = 0 counts here
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in m.values())


def test_active_cells_are_where_the_gradient_is_zero():
    new, old, adv, mask = _table()
    loss, _ = band_ops.policy_loss(new, old, adv, mask, rule=band_ops.PPO(eps=0.2))
    loss.backward()
    grad = new.grad
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 5] == 0 and grad[1, 0] == 0
    assert grad[1, 2] == 0  # upper/pos and lower/neg: clipped
    assert grad[0, 3] != 0 and grad[0, 4] != 0  # lower/pos and upper/neg: the ratio moves on
    assert grad[1, 4] == 0 and grad[1, 5] == 0  # padding


def test_bucket_edges_are_upper_inclusive():
    # p exactly 0.01 is in p<0.01 ((0, 0.01]); p just above 0.5 is in p>0.5.
    old = torch.log(torch.tensor([[0.01, 0.5000001, 0.1, 0.0999]], dtype=torch.float64))
    adv = torch.tensor([1.0], dtype=torch.float64)
    _, m = band_ops.policy_loss(old.clone(), old, adv, torch.ones(1, 4), rule="ppo")
    assert m["count/pos/p<0.01"].item() == 1
    assert m["count/pos/p>0.5"].item() == 1
    assert m["count/pos/p0.01-0.1"].item() == 2
    assert m["count/pos/p0.1-0.5"].item() == 0


def test_signed_counts_add_up_to_the_unsigned_metrics_on_random_data():
    g = torch.Generator().manual_seed(5)
    old = -8 * torch.rand(16, 32, generator=g, dtype=torch.float64)
    new = old + torch.randn(16, 32, generator=g, dtype=torch.float64)
    adv = torch.randn(16, 32, generator=g, dtype=torch.float64).round()  # some A = 0
    mask = (torch.rand(16, 32, generator=g) < 0.8).double()
    _, m = band_ops.policy_loss(new, old, adv, mask, rule="band")
    n = mask.sum().item()
    sums = {
        side: sum(m[f"clipped_{side}/{sign}/{b}"].item() for b in BUCKETS)
        for side, sign in (("upper", "pos"), ("lower", "neg"))
    }
    assert m["clip_frac_high"].item() == pytest.approx(sums["upper"] / n, rel=1e-6)
    assert m["clip_frac_low"].item() == pytest.approx(sums["lower"] / n, rel=1e-6)
    signed_tokens = sum(m[k].item() for k in _cells("count"))
    assert signed_tokens == ((adv != 0) & (mask != 0)).sum().item()
    _, upper = band_ops.Band().bounds(old)
    r = (new - old).exp()
    want = ((adv < 0) & (r > upper) & (mask != 0) & (old.exp() <= 0.01)).sum().item()
    assert m["clipped_upper/neg/p<0.01"].item() == want


def test_counts_pool_over_micro_batches_by_summing():
    g = torch.Generator().manual_seed(6)
    old = -6 * torch.rand(8, 16, generator=g, dtype=torch.float64)
    new = old + 0.7 * torch.randn(8, 16, generator=g, dtype=torch.float64)
    adv = torch.randn(8, generator=g, dtype=torch.float64)
    mask = torch.ones(8, 16, dtype=torch.float64)
    _, full = band_ops.policy_loss(new, old, adv, mask, rule="band")
    parts = [
        band_ops.policy_loss(new[s], old[s], adv[s], mask[s], rule="band")[1]
        for s in (slice(0, 3), slice(3, 8))
    ]
    for key in band_ops.COUNT_METRICS:
        assert sum(p[key].item() for p in parts) == full[key].item(), key
    pooled = sum(p["clipped_upper/pos/p<0.01"].item() for p in parts) / max(
        sum(p["count/pos/p<0.01"].item() for p in parts), 1
    )
    assert pooled == pytest.approx(full["clip_frac_upper/pos/p<0.01"].item(), rel=1e-6)


def test_empty_cells_and_an_empty_mask_give_zero_not_nan():
    new, old, adv, _ = _table()
    _, m = band_ops.policy_loss(new, old, adv, torch.zeros(2, 6), rule="ppo")
    for key in SIGNED_KEYS:
        assert m[key].item() == 0.0, key
