from __future__ import annotations

import math

import pytest
import torch

import band_ops

B, T = 4, 6


def _batch(seed=0, dtype=torch.float64, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    old = -3 * torch.rand(B, T, generator=g, dtype=dtype)
    new = (old + spread * torch.randn(B, T, generator=g, dtype=dtype)).clamp(max=0)
    adv = torch.randn(B, generator=g, dtype=dtype)
    mask = torch.ones(B, T, dtype=dtype)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    return new.requires_grad_(True), old, adv, mask


def _loop_reference(new, old, adv, mask, lower, upper, dual_clip=None):
    """Token-by-token twin of the vectorised loss, token-mean aggregation."""
    total, count = 0.0, 0.0
    for b in range(new.shape[0]):
        a = float(adv[b]) if adv.dim() == 1 else None
        for t in range(new.shape[1]):
            if not mask[b, t]:
                continue
            at = a if a is not None else float(adv[b, t])
            r = math.exp(float(new[b, t]) - float(old[b, t]))
            rc = min(max(r, float(lower[b, t])), float(upper[b, t]))
            loss = max(-at * r, -at * rc)
            if dual_clip is not None and at < 0:
                loss = min(loss, -at * dual_clip)
            total += loss
            count += 1
    return total / count


@pytest.mark.parametrize("rule", ["ppo", "clip_higher", "band", "dcpo"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_vectorised_loss_equals_token_loop(rule, dual_clip):
    new, old, adv, mask = _batch(spread=1.0)
    lower, upper = band_ops.get_rule(rule).bounds(old)
    loss, _ = band_ops.policy_loss(new, old, adv, mask, rule=rule, dual_clip=dual_clip)
    want = _loop_reference(new.detach(), old, adv, mask, lower, upper, dual_clip)
    assert loss.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("rule", ["ppo", "clip_higher", "band", "dcpo"])
def test_gradient_at_ratio_one_is_the_plain_policy_gradient(rule):
    _, old, adv, mask = _batch()
    new = old.clone().requires_grad_(True)
    loss, _ = band_ops.policy_loss(new, old, adv, mask, rule=rule)
    loss.backward()
    want = -adv[:, None] * mask / mask.sum()  # d/dlogp of -A * exp(logp - old) at r = 1
    torch.testing.assert_close(new.grad, want, rtol=1e-12, atol=1e-15)


def test_gradient_is_exactly_zero_where_clipping_is_active():
    old = torch.log(torch.full((2, 2), 0.5, dtype=torch.float64))
    # Row 0: A > 0 and r above the upper bound / below the lower bound.
    # Row 1: A < 0 and r below the lower bound / above the upper bound.
    shift = torch.tensor([[0.5, -0.5], [-0.5, 0.5]], dtype=torch.float64)
    new = (old + shift).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, metrics = band_ops.policy_loss(new, old, adv, mask, rule=band_ops.PPO(eps=0.2))
    loss.backward()
    assert new.grad[0, 0].item() == 0.0  # A > 0, r = e^0.5 > 1.2: clipped
    assert new.grad[1, 0].item() == 0.0  # A < 0, r = e^-0.5 < 0.8: clipped
    assert new.grad[0, 1].item() != 0.0  # A > 0, r < 0.8: pessimistic max keeps it
    assert new.grad[1, 1].item() != 0.0  # A < 0, r > 1.2: unclipped side is larger
    assert metrics["clip_frac"].item() == 0.5
    assert metrics["clip_frac_high"].item() == 0.25 and metrics["clip_frac_low"].item() == 0.25


def test_dual_clip_caps_negative_advantage_loss_with_zero_gradient():
    old = torch.zeros(1, 2, dtype=torch.float64) + math.log(0.5)
    new = (old + torch.tensor([[2.0, 0.1]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss, metrics = band_ops.policy_loss(new, old, adv, mask, rule="ppo", dual_clip=3.0)
    loss.backward()
    assert loss.item() == pytest.approx((3.0 + math.exp(0.1)) / 2, rel=1e-12)
    assert new.grad[0, 0].item() == 0.0 and new.grad[0, 1].item() != 0.0
    assert metrics["dual_clip_frac"].item() == 0.5


def test_huge_log_ratio_does_not_overflow():
    old = torch.full((1, 3), -50.0)
    new = torch.tensor([[0.0, -100.0, -50.0]], requires_grad=True)
    adv = torch.tensor([-2.0])
    loss, metrics = band_ops.policy_loss(new, old, adv, torch.ones(1, 3), rule="ppo")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(new.grad).all()
    assert all(torch.isfinite(v) for k, v in metrics.items())


def test_precomputed_bounds_are_used_instead_of_the_rule():
    new, old, adv, mask = _batch(spread=1.0)
    bounds = band_ops.Band(divergence="tv", delta=0.1).bounds(old)
    a, _ = band_ops.policy_loss(new, old, adv, mask, rule="ppo", bounds=bounds)
    b, _ = band_ops.policy_loss(new, old, adv, mask, rule=band_ops.Band(divergence="tv", delta=0.1))
    c, _ = band_ops.policy_loss(new, old, adv, mask, rule="ppo")
    assert a.item() == b.item() and a.item() != c.item()


def test_per_token_advantages_are_accepted():
    new, old, adv, mask = _batch(spread=1.0)
    per_token = adv[:, None].expand(B, T).clone()
    a, _ = band_ops.policy_loss(new, old, adv, mask, rule="band")
    b, _ = band_ops.policy_loss(new, old, per_token, mask, rule="band")
    assert a.item() == pytest.approx(b.item(), rel=1e-14)


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
@pytest.mark.parametrize("split", [[2, 2], [1, 3], [1, 1, 1, 1]])
def test_micro_batches_with_global_normaliser_sum_to_the_full_batch(mode, split):
    new, old, adv, mask = _batch(spread=1.0)
    full, _ = band_ops.policy_loss(new, old, adv, mask, rule="band", aggregation=mode, horizon=T)
    (full_grad,) = torch.autograd.grad(full, new)
    norm = mask.sum() if mode == "token-mean" else (mask.sum(-1) > 0).sum()
    total = torch.zeros((), dtype=torch.float64)
    start = 0
    for size in split:
        sl = slice(start, start + size)
        part, _ = band_ops.policy_loss(
            new[sl],
            old[sl],
            adv[sl],
            mask[sl],
            rule="band",
            aggregation=mode,
            normalizer=norm,
            horizon=T,
        )
        total = total + part
        start += size
    (grad,) = torch.autograd.grad(total, new)
    assert total.item() == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-15)


def test_aggregations_weigh_tokens_and_sequences_as_documented():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert band_ops.aggregate(loss, mask, "token-mean").item() == pytest.approx(8 / 5)
    assert band_ops.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(
        (1 + 4) / 2
    )
    assert band_ops.aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((4 + 4) / 2)
    # verl's seq-mean-token-sum-norm: the batch's token sum over the horizon only (T = 4 here).
    assert band_ops.aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(8 / 4)
    assert band_ops.aggregate(
        loss, mask, "seq-mean-token-sum-norm", horizon=8
    ).item() == pytest.approx(8 / 8)


def test_empty_sequences_do_not_count():
    loss = torch.ones(3, 2)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert band_ops.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(1.0)
    assert band_ops.aggregate(loss, torch.zeros(3, 2), "token-mean").item() == 0.0


def test_metrics_by_hand():
    p = torch.tensor([[0.005, 0.05, 0.3, 0.9]], dtype=torch.float64)
    old = p.log()
    new = (old + torch.tensor([[1.0, 0.0, -1.0, 0.1]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # last token is padding
    _, m = band_ops.policy_loss(new, old, adv, mask, rule="ppo")
    r = torch.exp(torch.tensor([1.0, 0.0, -1.0]))
    assert m["clip_frac"].item() == pytest.approx(
        2 / 3
    )  # token 0 (A>0, r>1.2), token 2 (A<0, r<0.8)
    assert m["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 3)
    assert m["clip_frac/p<0.01"].item() == 1.0
    assert m["clip_frac/p0.01-0.1"].item() == 0.0
    assert m["clip_frac/p0.1-0.5"].item() == 1.0
    assert m["clip_frac/p>0.5"].item() == 0.0  # only a padded token there
    assert m["token_frac/p>0.5"].item() == 0.0
    assert m["token_frac/p<0.01"].item() == pytest.approx(1 / 3)
    assert m["ratio_mean"].item() == pytest.approx(r.mean().item(), rel=1e-6)
    assert m["ratio_max"].item() == pytest.approx(math.e, rel=1e-6)
    assert m["ratio_min"].item() == pytest.approx(math.exp(-1), rel=1e-6)
    k3 = (r - 1 - r.log()).mean().item()
    assert m["approx_kl"].item() == pytest.approx(k3, rel=1e-6)
    assert m["bound_low_mean"].item() == pytest.approx(0.8)
    assert all(not v.requires_grad and v.dim() == 0 for v in m.values())


def test_gradcheck_away_from_kinks():
    _, old, adv, mask = _batch(seed=3)
    new = (old + 0.05).requires_grad_(True)  # r ~ 1.05: inside every bound, no kink nearby

    def f(x):
        return band_ops.policy_loss(
            x, old, adv, mask, rule="band", aggregation="seq-mean-token-mean"
        )[0]

    assert torch.autograd.gradcheck(f, (new,))


def test_float32_and_bfloat16_inputs_work():
    for dtype in (torch.float32, torch.bfloat16):
        new, old, adv, mask = _batch(dtype=dtype)
        loss, _metrics = band_ops.policy_loss(new, old, adv, mask, rule="band")
        loss.backward()
        assert loss.dtype == dtype and torch.isfinite(new.grad.float()).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rule": "nope"}, "unknown clipping rule 'nope'"),
        ({"rule": 3}, "rule must be a registered name"),
        ({"rule": "ppo", "aggregation": "mean"}, "unknown aggregation 'mean'"),
        ({"rule": "ppo", "dual_clip": 0.5}, "dual_clip must be a number > 1"),
        ({"rule": "ppo", "normalizer": 0}, "normalizer must be > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    new, old, adv, mask = _batch()
    with pytest.raises(ValueError, match=message):
        band_ops.policy_loss(new, old, adv, mask, **kwargs)


def test_bad_shapes_are_named():
    new, old, adv, mask = _batch()
    with pytest.raises(
        ValueError, match=r"old_logprobs must have the shape of logprobs \(4, 6\), got \(4, 5\)"
    ):
        band_ops.policy_loss(new, old[:, :5], adv, mask, rule="ppo")
    with pytest.raises(ValueError, match=r"advantages must be \(B,\) or \(B, T\)"):
        band_ops.policy_loss(new, old, adv[:3], mask, rule="ppo")
    with pytest.raises(ValueError, match=r"logprobs must be \(B, T\)"):
        band_ops.policy_loss(new[0], old[0], adv, mask[0], rule="ppo")
    with pytest.raises(ValueError, match="bounds must be"):
        band_ops.policy_loss(new, old, adv, mask, rule="ppo", bounds=(old[:, :2], old[:, :2]))
