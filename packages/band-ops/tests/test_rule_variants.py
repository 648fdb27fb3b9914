"""The ablation rules band_upper and band_lower, and Band's ppo_floor_eps, against hand-computed
bounds.

Total variation has a closed form, r = 1 -+ delta / p saturated at 0 and 1/p, so every bound
below is written out by hand: delta = 0.05, eps = 0.2, max_ratio = 10 unless a test says else.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import band_ops

P = (0.001, 0.5, 0.9)
OLD = torch.log(torch.tensor(P, dtype=torch.float64))
TV = {"divergence": "tv", "delta": 0.05, "max_ratio": 10.0}

# Band's own TV band at each p: lower 1 - 0.05/p (0 below p = 0.05), upper 1 + 0.05/p capped at 10.
BAND_TV = ([0.0, 0.9, 1 - 0.05 / 0.9], [10.0, 1.1, 1 + 0.05 / 0.9])


def _bounds(rule: band_ops.ClippingRule) -> tuple[list[float], list[float]]:
    lower, upper = rule.bounds(OLD)
    return lower.tolist(), upper.tolist()


def test_band_tv_is_the_hand_formula():
    lower, upper = _bounds(band_ops.Band(**TV))
    assert lower == pytest.approx(BAND_TV[0], rel=1e-12, abs=1e-15)
    assert upper == pytest.approx(BAND_TV[1], rel=1e-12)


def test_band_upper_keeps_bands_upper_bound_and_ppos_lower_bound():
    lower, upper = _bounds(band_ops.get_rule("band_upper", **TV, eps=0.2))
    assert lower == [0.8, 0.8, 0.8]
    assert upper == pytest.approx([10.0, 1.1, 1 + 0.05 / 0.9], rel=1e-12)


def test_band_lower_keeps_bands_lower_bound_and_ppos_upper_bound():
    lower, upper = _bounds(band_ops.get_rule("band_lower", **TV, eps=0.2))
    assert lower == pytest.approx([0.0, 0.9, 1 - 0.05 / 0.9], rel=1e-12, abs=1e-15)
    assert upper == [1.2, 1.2, 1.2]


def test_band_upper_and_lower_split_band_and_ppo_exactly_for_kl():
    old = torch.log(torch.tensor([[0.001, 0.01], [0.5, 0.95]], dtype=torch.float64))
    band_lo, band_hi = band_ops.ratio_bounds(old, divergence="kl", delta=0.05, max_ratio=10.0)
    ppo_lo, ppo_hi = band_ops.PPO(eps=0.2).bounds(old)
    up_lo, up_hi = band_ops.get_rule("band_upper").bounds(old)  # defaults: kl, 0.05, 10, 0.2
    lo_lo, lo_hi = band_ops.get_rule("band_lower").bounds(old)
    assert torch.equal(up_lo, ppo_lo) and torch.equal(up_hi, band_hi)
    assert torch.equal(lo_lo, band_lo) and torch.equal(lo_hi, ppo_hi)
    assert up_hi.dtype == lo_lo.dtype == torch.float64


def test_ppo_floor_never_tighter_than_ppo():
    # eps 0.2: PPO's [0.8, 1.2] is wider than TV's band at p = 0.5 and 0.9, narrower at 0.001.
    lower, upper = _bounds(band_ops.Band(**TV, ppo_floor_eps=0.2))
    assert lower == [0.0, 0.8, 0.8]
    assert upper == [10.0, 1.2, 1.2]


def test_ppo_floor_changes_only_the_tokens_where_band_is_tighter():
    # eps 0.08: [0.92, 1.08] is inside the band at p = 0.001 and 0.5, wider than it at p = 0.9.
    lower, upper = _bounds(band_ops.Band(**TV, ppo_floor_eps=0.08))
    assert lower == pytest.approx([0.0, 0.9, 0.92], rel=1e-12, abs=1e-15)
    assert upper == pytest.approx([10.0, 1.1, 1.08], rel=1e-12)


def test_ppo_floor_applies_after_max_ratio():
    lower, upper = _bounds(
        band_ops.Band(divergence="tv", delta=0.05, max_ratio=1.1, ppo_floor_eps=0.2)
    )
    assert upper == [1.2, 1.2, 1.2]  # the cap 1.1 is below PPO's 1 + eps: PPO's bound wins
    assert lower == [0.0, 0.8, 0.8]


def test_ppo_floor_none_is_plain_band():
    old = torch.log(torch.tensor([0.001, 0.3, 0.99]))
    plain = band_ops.Band().bounds(old)
    unset = band_ops.Band(ppo_floor_eps=None).bounds(old)
    assert all(torch.equal(a, b) for a, b in zip(plain, unset, strict=True))


@pytest.mark.parametrize("name", ["band_upper", "band_lower"])
def test_variants_are_frozen_dataclasses_named_by_the_registry(name):
    rule = band_ops.get_rule(name, delta=0.1, eps=0.1)
    assert rule.name == name
    assert band_ops.rule_class(name) is type(rule)
    assert dataclasses.asdict(rule) == {
        "divergence": "kl",
        "delta": 0.1,
        "max_ratio": 10.0,
        "eps": 0.1,
        "name": name,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.eps = 0.3  # type: ignore[misc]
    with pytest.raises(ValueError, match=f"bad parameters for clipping rule '{name}'"):
        band_ops.get_rule(name, epsilon=0.1)


def test_variant_parameters_have_types_for_configurations():
    # Configurations validate rule parameters against the dataclass fields' annotations.
    for cls in (band_ops.rules.BandUpper, band_ops.rules.BandLower):
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.init}
        assert types == {
            "divergence": "str",
            "delta": "float",
            "max_ratio": "float | None",
            "eps": "float",
        }
    band = {f.name: f.type for f in dataclasses.fields(band_ops.Band) if f.init}
    assert band["ppo_floor_eps"] == "float | None"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: band_ops.get_rule("band_upper", eps=1.5), r"^eps must be in \[0, 1.0\), got 1.5$"),
        (
            lambda: band_ops.get_rule("band_lower", eps=-0.1),
            r"^eps must be in \[0, 1.0\), got -0.1",
        ),
        (lambda: band_ops.get_rule("band_lower", eps=math.nan), r"^eps must be in .*got nan"),
        (lambda: band_ops.get_rule("band_upper", eps="0.2"), r"^eps must be a number, got '0.2'"),
        (lambda: band_ops.get_rule("band_upper", delta=0), r"^delta must be a positive finite"),
        (lambda: band_ops.get_rule("band_lower", divergence="kll"), r"^unknown divergence 'kll'"),
        (lambda: band_ops.get_rule("band_upper", max_ratio=0.5), r"^max_ratio must be >= 1"),
        (
            lambda: band_ops.Band(ppo_floor_eps=1.0),
            r"^ppo_floor_eps must be in \[0, 1.0\), got 1.0",
        ),
        (lambda: band_ops.Band(ppo_floor_eps=-0.2), r"^ppo_floor_eps must be in \[0, 1.0\)"),
        (lambda: band_ops.Band(ppo_floor_eps=True), r"^ppo_floor_eps must be a number, got True"),
    ],
)
def test_bad_variant_parameters_start_with_the_parameter_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name", ["band_upper", "band_lower"])
def test_variants_check_log_probs_like_band(name):
    with pytest.raises(ValueError, match=r"found nan at index \(1,\)"):
        band_ops.get_rule(name).bounds(torch.tensor([-0.1, math.nan]))


@pytest.mark.parametrize("name", ["band_upper", "band_lower"])
def test_variants_work_in_policy_loss(name):
    old = torch.log(torch.tensor([[0.005, 0.5]], dtype=torch.float64))
    new = (old + torch.tensor([[1.0, 0.5]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0], dtype=torch.float64)
    loss, metrics = band_ops.policy_loss(new, old, adv, torch.ones(1, 2), rule=name)
    loss.backward()
    # r = e (p = 0.005, A > 0): band_upper lets it through (upper 10), band_lower clips at 1.2.
    want_clip = 0.0 if name == "band_upper" else 1.0
    assert metrics["clip_frac_upper/pos/p<0.01"].item() == want_clip
    assert (new.grad[0, 0].item() == 0.0) == (name == "band_lower")
