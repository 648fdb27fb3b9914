"""Registers the built-in divergences (imported for its side effect by ``band_ops``)."""

from __future__ import annotations

from band_ops import closed_forms
from band_ops import divergences as d
from band_ops.js import js_bounds
from band_ops.kl import kl_bounds
from band_ops.reverse_kl import reverse_kl_bounds

# name, generator, dedicated solver, derivative for the generic solver, description
_BUILTINS = (
    (
        "kl",
        d.kl_generator,
        kl_bounds,
        None,
        "KL(old || new), the paper's main variant; tabulated start, one Halley step",
    ),
    (
        "reverse_kl",
        d.reverse_kl_generator,
        reverse_kl_bounds,
        d.reverse_kl_derivative,
        "KL(new || old); tabulated start, one Halley step",
    ),
    ("tv", d.tv_generator, closed_forms.tv_bounds, None, "total variation |q - p|; closed form"),
    ("chi2", d.chi2_generator, closed_forms.chi2_bounds, None, "Pearson chi2; closed form"),
    (
        "neyman_chi2",
        d.neyman_chi2_generator,
        closed_forms.neyman_chi2_bounds,
        None,
        "Neyman chi2; closed form",
    ),
    (
        "hellinger",
        d.hellinger_generator,
        closed_forms.hellinger_bounds,
        None,
        "squared Hellinger; closed form",
    ),
    (
        "js",
        d.js_generator,
        js_bounds,
        d.js_derivative,
        "Jensen-Shannon; tabulated start, one Halley step",
    ),
)

for _name, _generator, _solver, _derivative, _description in _BUILTINS:
    d.register_divergence(
        _name, _generator, solver=_solver, derivative=_derivative, description=_description
    )
