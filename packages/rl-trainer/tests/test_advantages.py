from __future__ import annotations

import math
import statistics

import pytest
import torch

from rl_trainer import advantages as adv
from rl_trainer.advantages import (
    available_advantages,
    compute_advantages,
    get_advantage,
    group_statistics,
    zero_variance_mask,
)

# --- loop-based references: one group at a time, in plain Python ------------------------------


def _members(group_ids, valid):
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        groups.setdefault(g, [])
        if valid[i]:
            groups[g].append(i)
    return groups


def ref_grpo(rewards, group_ids, valid, eps=1e-6, scale=True):
    r = rewards.tolist()
    out = [0.0] * len(r)
    for idx in _members(group_ids, valid).values():
        if len(idx) < 2:
            continue
        values = [r[i] for i in idx]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        for i in idx:
            out[i] = (r[i] - mean) / (std + eps) if scale else r[i] - mean
    return torch.tensor(out, dtype=torch.float64)


def ref_dr_grpo(rewards, group_ids, valid):
    return ref_grpo(rewards, group_ids, valid, scale=False)


def ref_rloo(rewards, group_ids, valid):
    r = rewards.tolist()
    out = [0.0] * len(r)
    for idx in _members(group_ids, valid).values():
        if len(idx) < 2:
            continue
        for i in idx:
            others = [r[j] for j in idx if j != i]
            out[i] = r[i] - sum(others) / len(others)
    return torch.tensor(out, dtype=torch.float64)


def assert_close(got, want, tol=1e-6):
    """Asserts equal shapes and values within ``tol`` (torch.testing's first call costs 1.5 s)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = (got.double() - want.double()).abs()
    assert torch.isfinite(got).all() and bool((diff <= tol).all()), f"max |diff| {diff.max()}"


REFERENCES = {"grpo": ref_grpo, "dr_grpo": ref_dr_grpo, "rloo": ref_rloo}


def random_batch(seed, n=97, n_groups=11, binary=False):
    """Returns rewards, scattered non-contiguous group ids and a valid mask (NaN where invalid)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10**9, (n_groups,), generator=gen)  # arbitrary ids, not 0..G-1
    group_ids = ids[torch.randint(0, n_groups, (n,), generator=gen)]
    group_ids = group_ids[torch.randperm(n, generator=gen)]
    if binary:
        rewards = torch.randint(0, 2, (n,), generator=gen).double()
    else:
        rewards = torch.randn(n, generator=gen, dtype=torch.float64) * 3 + 1
    valid = torch.rand(n, generator=gen) > 0.2
    rewards = torch.where(valid, rewards, math.nan)  # invalid rewards must not leak in
    return rewards, group_ids, valid


def test_registry_holds_the_builtins():
    assert {"grpo", "dr_grpo", "rloo"} <= set(available_advantages())
    assert set(REFERENCES) == set(available_advantages())


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*grpo"):
        get_advantage("ppo")


def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        adv.register_advantage("grpo")(adv.grpo)


@pytest.mark.parametrize("name", available_advantages())
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("binary", [False, True])
def test_vectorised_matches_loop_reference(name, seed, binary):
    rewards, group_ids, valid = random_batch(seed, binary=binary)
    got = compute_advantages(name, rewards, group_ids, valid)
    want = REFERENCES[name](rewards, group_ids, valid)
    assert_close(got, want, tol=1e-9)


@pytest.mark.parametrize("name", available_advantages())
def test_every_estimator_runs_and_masks_invalid(name):
    rewards, group_ids, valid = random_batch(7)
    out = compute_advantages(name, rewards.float(), group_ids, valid)
    assert out.shape == rewards.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out[~valid] == 0).all()
    assert (out[valid] != 0).any()


@pytest.mark.parametrize("name", available_advantages())
def test_groups_are_formed_by_id_not_position(name):
    rewards, group_ids, valid = random_batch(3)
    perm = torch.randperm(rewards.numel(), generator=torch.Generator().manual_seed(5))
    full = compute_advantages(name, rewards, group_ids, valid)
    permuted = compute_advantages(name, rewards[perm], group_ids[perm], valid[perm])
    assert_close(permuted, full[perm])


def test_grpo_known_values():
    rewards = torch.tensor([1.0, 0.0, 5.0, 1.0, 0.0, 5.0])
    group_ids = torch.tensor([7, 7, 2, 7, 7, 2])
    out = compute_advantages("grpo", rewards, group_ids, eps=0.0)
    a = 0.5 / math.sqrt(1 / 3)  # mean 0.5, unbiased std sqrt(1/3)
    assert_close(out, torch.tensor([a, -a, 0.0, a, -a, 0.0]))


def test_grpo_gives_zero_for_equal_rewards_even_without_eps():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7], dtype=torch.float64)  # 3 * 0.1 != 0.3
    out = compute_advantages("grpo", rewards, torch.tensor([1, 1, 1, 2, 2]), eps=0.0)
    assert out.tolist() == [0.0] * 5


def test_grpo_without_scale_is_dr_grpo():
    rewards, group_ids, valid = random_batch(11)
    assert_close(
        compute_advantages("grpo", rewards, group_ids, valid, scale=False),
        compute_advantages("dr_grpo", rewards, group_ids, valid),
    )


def test_rloo_known_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0])
    out = compute_advantages("rloo", rewards, torch.tensor([4, 4, 4, 9]))
    # 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5; the lone sample of group 9 gets 0.
    assert_close(out, torch.tensor([1.0, -0.5, -0.5, 0.0]))


@pytest.mark.parametrize("name", available_advantages())
def test_groups_with_fewer_than_two_valid_members_get_zero(name):
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0, 0.0])
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    valid = torch.tensor([True, False, False, False, True, True])
    out = compute_advantages(name, rewards, group_ids, valid)
    assert out[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out[4] > 0 > out[5]


def test_invalid_sample_is_left_out_of_group_statistics():
    rewards = torch.tensor([1.0, 0.0, 100.0])
    group_ids = torch.tensor([0, 0, 0])
    with_invalid = compute_advantages("grpo", rewards, group_ids, torch.tensor([True, True, False]))
    alone = compute_advantages("grpo", rewards[:2], group_ids[:2])
    assert_close(with_invalid, torch.cat([alone, torch.zeros(1)]))


def test_empty_batch():
    out = compute_advantages("grpo", torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    assert group_statistics(torch.zeros(0), torch.zeros(0, dtype=torch.long))["groups"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": torch.zeros(2, 2)}, "rewards must be a 1-D tensor"),
        ({"rewards": torch.zeros(4, dtype=torch.long)}, "floating-point"),
        ({"group_ids": torch.zeros(3, dtype=torch.long)}, "group_ids must be a tensor of shape"),
        ({"group_ids": torch.zeros(4)}, "group_ids must be an integer tensor"),
        ({"valid": torch.ones(4)}, "valid must be a bool tensor"),
        ({"valid": torch.ones(5, dtype=torch.bool)}, "valid must be a tensor of shape"),
        ({"rewards": torch.tensor([0.0, math.inf, 1.0, 2.0])}, "finite where valid.*\\[1\\]"),
    ],
)
def test_compute_advantages_checks_inputs(kwargs, message):
    args = {
        "rewards": torch.zeros(4),
        "group_ids": torch.zeros(4, dtype=torch.long),
        "valid": None,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        compute_advantages("grpo", **args)


def test_compute_advantages_rejects_unknown_params_and_bad_eps():
    rewards, group_ids = torch.zeros(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown parameter.*'beta'.*accepted: eps, scale"):
        compute_advantages("grpo", rewards, group_ids, beta=1.0)
    with pytest.raises(ValueError, match="accepted: \\(none\\)"):
        compute_advantages("rloo", rewards, group_ids, eps=1.0)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        compute_advantages("grpo", rewards, group_ids, eps=-1.0)


def test_non_finite_reward_on_invalid_sample_is_allowed():
    rewards = torch.tensor([1.0, math.nan, 0.0])
    out = compute_advantages(
        "rloo", rewards, torch.zeros(3, dtype=torch.long), torch.tensor([True, False, True])
    )
    assert_close(out, torch.tensor([1.0, 0.0, -1.0]))


def test_zero_variance_mask():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 5.0, 2.0, 2.0 + 1e-8, 3.0], dtype=torch.float64)
    group_ids = torch.tensor([10, 10, 20, 20, 30, 40, 40, 40])
    valid = torch.tensor([True, True, True, True, True, True, True, False])
    mask = zero_variance_mask(rewards, group_ids, valid)
    # 10: all equal; 20: spread; 30: one member; 40: equal within atol once 3.0 is left out.
    assert mask.tolist() == [True, True, False, False, True, True, True, True]
    assert not zero_variance_mask(rewards, group_ids, valid, atol=1e-10)[5]


def test_zero_variance_mask_agrees_with_reference_on_random_data():
    rewards, group_ids, valid = random_batch(4, n=64, n_groups=20, binary=True)
    mask = zero_variance_mask(rewards, group_ids, valid)
    groups = _members(group_ids, valid)
    for i, g in enumerate(group_ids.tolist()):
        values = {rewards[j].item() for j in groups[g]}
        assert bool(mask[i]) == (len(groups[g]) < 2 or len(values) == 1)


def test_group_statistics():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 5.0, 0.0, 2.0, 4.0])
    group_ids = torch.tensor([10, 10, 20, 20, 30, 40, 40, 40])
    stats = group_statistics(rewards, group_ids)
    assert stats["groups"] == 4
    assert stats["zero_std_groups"] == 2  # group 10 (equal) and group 30 (one member)
    assert stats["zero_std_frac"] == 0.5
    want = (0.0 + statistics.stdev([0.0, 1.0]) + statistics.stdev([0.0, 2.0, 4.0])) / 3
    assert stats["reward_std_mean"] == pytest.approx(want)
