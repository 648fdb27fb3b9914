"""f-divergences on the binary reduction (token vs. rest of the vocabulary), and their registry.

An f-divergence is ``D_f(new || old) = sum_i old_i * f(new_i / old_i)`` for a convex generator
``f`` with ``f(1) = 0``. BandPO reduces the vocabulary to two outcomes: the sampled token, with old
probability ``p`` and ratio ``r = q / p``, and the rest of the vocabulary, rescaled proportionally
(ratio ``s = (1 - r p) / (1 - p)``). The constraint function is then

    g_f(p, r) = p f(r) + (1 - p) f(s),

convex in ``r`` with ``g_f(p, 1) = 0``; the band is ``{r in [0, 1/p] : g_f(p, r) <= delta}``.

Each registered divergence has a generator (used by the generic solver and by the tests) and,
where one exists, an exact or specialised solver that returns the band's end points directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Generator = Callable[[Tensor], Tensor]
# (log p, delta) -> (lower, upper): log p is (N,), float32 or float64, clamped to
# [log(smallest normal), 0]. A solver must return 0 <= lower <= 1 <= upper <= exp(-log p),
# saturated ends exact.
BoundsSolver = Callable[[Tensor, float], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Divergence:
    """A registered f-divergence: its generator and, optionally, a dedicated bounds solver."""

    name: str
    generator: Generator
    solver: BoundsSolver | None = None
    description: str = ""
    derivative: Generator | None = None


_DIVERGENCES: dict[str, Divergence] = {}


def register_divergence(
    name: str,
    generator: Generator | None = None,
    *,
    solver: BoundsSolver | None = None,
    derivative: Generator | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Callable[[Generator], Generator] | Generator:
    """Registers a convex generator ``f`` (with ``f(1) = 0``) under ``name``; returns it.

    Use as a call, ``register_divergence("mine", f)``, or as a decorator on ``f``. Divergences
    without a ``solver`` are solved by the generic safeguarded Newton solver, which needs ``f``
    to be written with torch operations (it is differentiated with autograd) and to be finite on
    ``(0, inf)``; ``f(0)`` may be ``inf``. Pass ``derivative`` (f') to spare the solver autograd.
    The generic solver is the slow path (on large batches 2-3x slower than the paper's
    bisection, where the built-in solvers are 10x-40x faster than it): for speed, pass a
    ``solver`` (see ``BoundsSolver``).
    A generator is checked at registration: ``f(1)`` must be 0 and ``f`` must be convex on a few
    sample points.
    """

    def _register(f: Generator) -> Generator:
        if not isinstance(name, str) or not name:
            raise ValueError(f"divergence name must be a non-empty string, got {name!r}")
        if name in _DIVERGENCES and not overwrite:
            raise ValueError(
                f"divergence {name!r} is already registered; pass overwrite=True to replace it"
            )
        _check_generator(name, f)
        _DIVERGENCES[name] = Divergence(name, f, solver, description, derivative)
        return f

    if generator is None:
        return _register
    return _register(generator)


def get_divergence(name: str) -> Divergence:
    """Returns the registered divergence ``name``; the error lists the valid names."""
    try:
        return _DIVERGENCES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown divergence {name!r}; valid names: {', '.join(available_divergences())}"
        ) from None


def available_divergences() -> list[str]:
    """Returns the registered divergence names, sorted."""
    return sorted(_DIVERGENCES)


def binary_divergence(name: str, p: Tensor, r: Tensor) -> Tensor:
    """Returns ``g_f(p, r)``, the divergence between the binary reductions of new and old.

    Args:
        name: a registered divergence.
        p: (...) old probabilities of the sampled tokens, in (0, 1).
        r: (...) ratios new/old, in [0, 1/p].
    """
    f = get_divergence(name).generator
    s = (1 - r * p) / (1 - p)
    return p * f(r) + (1 - p) * f(s)


def _check_generator(name: str, f: Generator) -> None:
    u = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    try:
        fu = f(u)
    except Exception as exc:  # a user generator may fail in any way; say which one
        raise ValueError(
            f"generator of divergence {name!r} failed on a float64 tensor: {exc}"
        ) from exc
    if not isinstance(fu, Tensor) or fu.shape != u.shape:
        raise ValueError(
            f"generator of divergence {name!r} must map a tensor to a tensor of the same shape"
        )
    if not torch.isfinite(fu).all():
        raise ValueError(f"generator of divergence {name!r} is not finite on {u.tolist()}")
    if abs(float(fu[2])) > 1e-12:
        raise ValueError(f"generator of divergence {name!r} must satisfy f(1) = 0, got {fu[2]}")
    # Second differences on an uneven grid: convexity means slopes increase.
    slopes = (fu[1:] - fu[:-1]) / (u[1:] - u[:-1])
    if (slopes[1:] < slopes[:-1] - 1e-12).any():
        raise ValueError(f"generator of divergence {name!r} is not convex on {u.tolist()}")


# --- generators -------------------------------------------------------------------------------


def kl_generator(u: Tensor) -> Tensor:
    """KL(old || new): f(u) = u - 1 - log u."""
    return u - 1 - torch.log(u)


def reverse_kl_generator(u: Tensor) -> Tensor:
    """KL(new || old): f(u) = u log u (with 0 log 0 = 0)."""
    return torch.xlogy(u, u) - (u - 1)


def tv_generator(u: Tensor) -> Tensor:
    """Total variation, half the L1 distance: f(u) = |u - 1| / 2, so g = |q - p|."""
    return (u - 1).abs() / 2


def chi2_generator(u: Tensor) -> Tensor:
    """Pearson chi-square sum (new - old)^2 / old: f(u) = (u - 1)^2."""
    return (u - 1) ** 2


def neyman_chi2_generator(u: Tensor) -> Tensor:
    """Neyman chi-square sum (old - new)^2 / new: f(u) = (1 - u)^2 / u."""
    return (1 - u) ** 2 / u


def hellinger_generator(u: Tensor) -> Tensor:
    """Squared Hellinger sum (sqrt(new) - sqrt(old))^2: f(u) = (sqrt(u) - 1)^2."""
    return (torch.sqrt(u) - 1) ** 2


def reverse_kl_derivative(u: Tensor) -> Tensor:
    """f'(u) = log u for the reverse-KL generator."""
    return torch.log(u)


def js_derivative(u: Tensor) -> Tensor:
    """f'(u) = log(2u / (1 + u)) / 2 for the Jensen-Shannon generator."""
    return torch.log(2 * u / (1 + u)) / 2


def js_generator(u: Tensor) -> Tensor:
    """Jensen-Shannon (natural log): f(u) = (u log u - (1 + u) log((1 + u) / 2)) / 2."""
    return (torch.xlogy(u, u) - (1 + u) * torch.log((1 + u) / 2)) / 2
