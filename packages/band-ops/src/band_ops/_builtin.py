"""Registers the built-in divergences (imported for its side effect by ``band_ops``)."""

from __future__ import annotations

from band_ops import closed_forms, divergences
from band_ops.divergences import register_divergence
from band_ops.kl import kl_bounds

register_divergence(
    "kl",
    divergences.kl_generator,
    solver=kl_bounds,
    description="KL(old || new), the paper's main variant; Halley iteration",
)
register_divergence(
    "reverse_kl",
    divergences.reverse_kl_generator,
    derivative=divergences.reverse_kl_derivative,
    description="KL(new || old); generic Newton solver",
)
register_divergence(
    "tv",
    divergences.tv_generator,
    solver=closed_forms.tv_bounds,
    description="total variation |q - p|; closed form r = 1 -+ delta/p",
)
register_divergence(
    "chi2",
    divergences.chi2_generator,
    solver=closed_forms.chi2_bounds,
    description="Pearson chi2; closed form r = 1 -+ sqrt(delta (1-p)/p)",
)
register_divergence(
    "neyman_chi2",
    divergences.neyman_chi2_generator,
    solver=closed_forms.neyman_chi2_bounds,
    description="Neyman chi2; closed form (roots of a quadratic in q)",
)
register_divergence(
    "hellinger",
    divergences.hellinger_generator,
    solver=closed_forms.hellinger_bounds,
    description="squared Hellinger; closed form through p = sin^2 a",
)
register_divergence(
    "js",
    divergences.js_generator,
    derivative=divergences.js_derivative,
    description="Jensen-Shannon (natural log); generic Newton solver",
)
