from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import band_ops
from band_ops import rules

OLD = torch.log(torch.tensor([[0.001, 0.01, 0.2], [0.5, 0.9, 0.999]], dtype=torch.float64))


ALL_RULES = ["band", "band_lower", "band_upper", "clip_higher", "dcpo", "ppo"]


def test_registry_holds_the_six_rules():
    assert band_ops.available_rules() == ALL_RULES


@pytest.mark.parametrize("name", ALL_RULES)
def test_every_rule_gives_ordered_bounds_without_gradient(name):
    old = OLD.clone().requires_grad_(True)
    lower, upper = band_ops.get_rule(name).bounds(old)
    assert lower.shape == old.shape and upper.shape == old.shape
    assert not lower.requires_grad and not upper.requires_grad
    assert (lower <= 1).all() and (upper >= 1).all()
    assert band_ops.get_rule(name).name == name


def test_ppo_and_clip_higher_are_constant():
    lo, hi = band_ops.PPO(eps=0.2).bounds(OLD)
    assert torch.all(lo == 0.8) and torch.all(hi == 1.2)
    lo, hi = band_ops.ClipHigher(eps_low=0.2, eps_high=0.28).bounds(OLD)
    assert torch.all(lo == 0.8) and torch.all(hi == 1.28)


def test_band_rule_is_ratio_bounds():
    rule = band_ops.Band(divergence="tv", delta=0.05, max_ratio=10)
    want = band_ops.ratio_bounds(OLD, divergence="tv", delta=0.05, max_ratio=10)
    assert all(torch.equal(a, b) for a, b in zip(rule.bounds(OLD), want, strict=True))


def test_dcpo_matches_its_formula():
    eps_low, eps_high, cap = 0.16, 0.2, 10.0
    lower, upper = band_ops.DCPO(eps_low=eps_low, eps_high=eps_high, max_ratio=cap).bounds(OLD)
    for lp, lo, hi in zip(
        OLD.flatten().tolist(), lower.flatten().tolist(), upper.flatten().tolist(), strict=True
    ):
        p = math.exp(lp)
        assert lo == pytest.approx(0.5 + 0.5 * math.sqrt(max(1 - 4 * eps_low / p, 0)), rel=1e-12)
        assert hi == pytest.approx(min(0.5 + 0.5 * math.sqrt(1 + 4 * eps_high / p), cap), rel=1e-12)
    # Rare tokens: lower floor 1/2, upper at the cap; likely tokens: close to PPO.
    assert lower[0, 0].item() == 0.5 and upper[0, 0].item() == cap


def test_get_rule_passes_parameters_and_rejects_unknowns():
    rule = band_ops.get_rule("band", divergence="chi2", delta=0.1)
    assert rule == band_ops.Band(divergence="chi2", delta=0.1)
    with pytest.raises(
        ValueError,
        match="unknown clipping rule 'bnad'; valid names: band, band_lower, band_upper, "
        "clip_higher, dcpo, ppo",
    ):
        band_ops.get_rule("bnad")
    with pytest.raises(ValueError, match="bad parameters for clipping rule 'ppo'"):
        band_ops.get_rule("ppo", epsilon=0.1)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: band_ops.PPO(eps=1.5), r"eps must be in \[0, 1.0\)"),
        (lambda: band_ops.ClipHigher(eps_low=-0.1), "eps_low must be in"),
        (lambda: band_ops.Band(divergence="nope"), "unknown divergence 'nope'"),
        (lambda: band_ops.Band(delta=0), "delta must be a positive finite number, got 0"),
        (lambda: band_ops.Band(max_ratio=0.5), "max_ratio must be >= 1"),
        (lambda: band_ops.DCPO(max_ratio=0.9), "max_ratio must be >= 1"),
    ],
)
def test_bad_rule_parameters_fail_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_rules_are_frozen_dataclasses():
    rule = band_ops.Band()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.delta = 1.0  # type: ignore[misc]
    assert dataclasses.asdict(rule) == {
        "divergence": "kl",
        "delta": 0.05,
        "max_ratio": 10.0,
        "ppo_floor_eps": None,
        "name": "band",
    }


def test_custom_rule_registration(monkeypatch):
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))

    @band_ops.register_rule("fixed")
    @dataclasses.dataclass(frozen=True)
    class Fixed:
        name: str = "fixed"

        def bounds(self, old_logprobs):
            return torch.zeros_like(old_logprobs), torch.full_like(old_logprobs, 3.0)

    assert "fixed" in band_ops.available_rules()
    assert band_ops.get_rule("fixed").bounds(OLD)[1].max().item() == 3.0
    with pytest.raises(ValueError, match="already registered"):
        band_ops.register_rule("fixed")(Fixed)


def test_rule_class_returns_the_registered_class_and_names_the_valid_ones() -> None:
    import band_ops

    assert band_ops.rule_class("band") is band_ops.Band
    with pytest.raises(ValueError, match="unknown clipping rule 'bandd'; valid names: band,"):
        band_ops.rule_class("bandd")


def test_the_rule_name_is_not_a_constructor_parameter() -> None:
    import band_ops

    assert band_ops.PPO().name == "ppo" and band_ops.Band(delta=0.1).name == "band"
    with pytest.raises(TypeError):
        band_ops.PPO(name="other")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="bad parameters for clipping rule 'dcpo'"):
        band_ops.get_rule("dcpo", eps_lo=0.1)
