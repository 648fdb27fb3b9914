from __future__ import annotations

import math

import pytest
import torch

import band_ops
from band_ops import divergences


def test_builtins_are_registered():
    assert set(band_ops.available_divergences()) >= {
        "kl",
        "reverse_kl",
        "tv",
        "chi2",
        "neyman_chi2",
        "hellinger",
        "js",
    }


def test_user_generator_is_solved_by_the_generic_solver(monkeypatch):
    monkeypatch.setattr(divergences, "_DIVERGENCES", dict(divergences._DIVERGENCES))

    @band_ops.register_divergence("my_chi2")
    def my_chi2(u):
        return (u - 1) ** 2

    old = torch.log(torch.tensor([0.001, 0.05, 0.3, 0.8], dtype=torch.float64))
    got = band_ops.ratio_bounds(old, divergence="my_chi2", delta=0.02)
    want = band_ops.ratio_bounds(old, divergence="chi2", delta=0.02)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_user_generator_with_infinite_value_at_zero(monkeypatch):
    monkeypatch.setattr(divergences, "_DIVERGENCES", dict(divergences._DIVERGENCES))
    # Squared log distance, f(u) = (log u)^2 / 2: infinite at 0, so the lower end never saturates.
    band_ops.register_divergence("sq_log", lambda u: torch.log(u) ** 2 / 2)
    old = torch.log(torch.tensor([0.01, 0.5], dtype=torch.float64))
    lower, upper = band_ops.ratio_bounds(old, divergence="sq_log", delta=0.1)
    assert (lower > 0).all() and (upper > 1).all()
    g = band_ops.binary_divergence("sq_log", old.exp(), lower)
    torch.testing.assert_close(g, torch.full_like(g, 0.1), rtol=1e-9, atol=0)


def test_registering_a_taken_name_needs_overwrite(monkeypatch):
    monkeypatch.setattr(divergences, "_DIVERGENCES", dict(divergences._DIVERGENCES))
    with pytest.raises(ValueError, match="'kl' is already registered"):
        band_ops.register_divergence("kl", divergences.chi2_generator)
    band_ops.register_divergence("kl", divergences.chi2_generator, overwrite=True)
    assert band_ops.get_divergence("kl").generator is divergences.chi2_generator


@pytest.mark.parametrize(
    "f, message",
    [
        (lambda u: (u - 2) ** 2, r"f\(1\) = 0"),
        (lambda u: -((u - 1) ** 2), "not convex"),
        (lambda u: u.sum(), "same shape"),
        (lambda u: torch.log(u - 1), "not finite"),
    ],
)
def test_bad_generators_are_rejected_at_registration(monkeypatch, f, message):
    monkeypatch.setattr(divergences, "_DIVERGENCES", dict(divergences._DIVERGENCES))
    with pytest.raises(ValueError, match=message):
        band_ops.register_divergence("bad", f)
    assert "bad" not in band_ops.available_divergences()


@pytest.mark.parametrize(
    "name", ["kl", "reverse_kl", "tv", "chi2", "neyman_chi2", "hellinger", "js"]
)
def test_generators_give_the_named_divergence_on_the_binary_pair(name):
    # g_f(p, r) from the generator equals the textbook formula in q = r p.
    p, q = 0.3, 0.45
    formulas = {
        "kl": p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)),
        "reverse_kl": q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)),
        "tv": abs(q - p),
        "chi2": (q - p) ** 2 / p + (q - p) ** 2 / (1 - p),
        "neyman_chi2": (q - p) ** 2 / q + (q - p) ** 2 / (1 - q),
        "hellinger": (math.sqrt(q) - math.sqrt(p)) ** 2
        + (math.sqrt(1 - q) - math.sqrt(1 - p)) ** 2,
    }
    m = ((p + q) / 2, 1 - (p + q) / 2)
    formulas["js"] = 0.5 * (
        p * math.log(p / m[0])
        + (1 - p) * math.log((1 - p) / m[1])
        + q * math.log(q / m[0])
        + (1 - q) * math.log((1 - q) / m[1])
    )
    g = band_ops.binary_divergence(
        name, torch.tensor(p, dtype=torch.float64), torch.tensor(q / p, dtype=torch.float64)
    )
    assert float(g) == pytest.approx(formulas[name], rel=1e-12)
