"""Clipping rules: old log-probabilities -> per-token ratio bounds (lower, upper), in a registry.

A rule is any object with ``name`` and ``bounds(old_logprobs) -> (lower, upper)``; the built-in
rules are frozen dataclasses so that a trainer config can hold them and print them. The registry
maps a name to a rule class; ``get_rule(name, **params)`` builds one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

from band_ops.bounds import (
    check_delta,
    check_max_ratio,
    checked_logprobs,
    compute_dtype,
    ratio_bounds,
)
from band_ops.divergences import get_divergence


@runtime_checkable
class ClippingRule(Protocol):
    """What the policy loss needs from a rule: a name and per-token bounds without gradient."""

    name: str

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (lower, upper) ratio bounds with the shape and dtype of ``old_logprobs``."""
        ...


R = TypeVar("R")
_RULES: dict[str, type] = {}


def register_rule(name: str) -> Callable[[type[R]], type[R]]:
    """Class decorator: registers a rule class under ``name``.

    The class is expected to give its instances ``name`` (the built-in rules declare it as a
    dataclass field with ``init=False``, so it is not a parameter).
    """

    def _register(cls: type[R]) -> type[R]:
        if name in _RULES:
            raise ValueError(f"clipping rule {name!r} is already registered")
        _RULES[name] = cls
        return cls

    return _register


def available_rules() -> list[str]:
    """Returns the registered rule names, sorted."""
    return sorted(_RULES)


def rule_class(name: str) -> type:
    """Returns the class registered as rule ``name``; the ValueError lists the valid names.

    Configurations use it to check a rule's parameters before anything is built: the built-in
    rules are dataclasses whose fields (other than ``name``) are the parameters.
    """
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown clipping rule {name!r}; valid names: {', '.join(available_rules())}"
        ) from None


def get_rule(name: str, **params: Any) -> ClippingRule:
    """Returns a new rule ``name`` built with ``params``; the error lists the valid names."""
    cls = rule_class(name)
    try:
        rule: ClippingRule = cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for clipping rule {name!r}: {exc}") from None
    return rule


def resolve_rule(rule: str | ClippingRule) -> ClippingRule:
    """Returns ``rule`` itself if it is a rule object, else the registered rule with defaults."""
    if isinstance(rule, str):
        return get_rule(rule)
    if isinstance(rule, ClippingRule):
        return rule
    raise ValueError(
        f"rule must be a registered name ({', '.join(available_rules())}) or an object with "
        f"`name` and `bounds(old_logprobs)`, got {rule!r}"
    )


def _check_eps(name: str, value: float, upper_limit: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (0 <= value < upper_limit) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, {upper_limit}), got {value!r}")


def _constant_bounds(old_logprobs: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    lower = torch.full_like(old_logprobs, low).detach()
    upper = torch.full_like(old_logprobs, high).detach()
    return lower, upper


@register_rule("ppo")
@dataclass(frozen=True)
class PPO:
    """PPO's symmetric clip: r in [1 - eps, 1 + eps] for every token (Schulman et al., 2017)."""

    eps: float = 0.2
    # Set by the registry name, not a parameter (so configs cannot disagree with it).
    name: str = field(default="ppo", init=False)

    def __post_init__(self) -> None:
        _check_eps("eps", self.eps, 1.0)

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns constant bounds (1 - eps, 1 + eps) shaped like ``old_logprobs``."""
        return _constant_bounds(old_logprobs, 1 - self.eps, 1 + self.eps)


@register_rule("clip_higher")
@dataclass(frozen=True)
class ClipHigher:
    """DAPO's Clip-Higher: r in [1 - eps_low, 1 + eps_high], decoupled (Yu et al., 2025)."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    name: str = field(default="clip_higher", init=False)

    def __post_init__(self) -> None:
        _check_eps("eps_low", self.eps_low, 1.0)
        _check_eps("eps_high", self.eps_high)

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns constant bounds (1 - eps_low, 1 + eps_high) shaped like ``old_logprobs``."""
        return _constant_bounds(old_logprobs, 1 - self.eps_low, 1 + self.eps_high)


@register_rule("band")
@dataclass(frozen=True)
class Band:
    """BandPO's Band: the f-divergence trust region D_f <= delta as per-token ratio bounds.

    ``ppo_floor_eps=e`` relaxes the band where it is tighter than PPO's clip (likely tokens):
    lower = min(band lower, 1 - e), upper = max(band upper, 1 + e), applied after
    ``max_ratio``. It is this package's reading of the paper's option that relaxes the bound for
    high-probability tokens, not a copy of its code. None (default) leaves the band as it is.
    """

    divergence: str = "kl"
    delta: float = 0.05
    max_ratio: float | None = 10.0
    ppo_floor_eps: float | None = None
    name: str = field(default="band", init=False)

    def __post_init__(self) -> None:
        _check_band(self.divergence, self.delta, self.max_ratio)
        if self.ppo_floor_eps is not None:
            _check_eps("ppo_floor_eps", self.ppo_floor_eps, 1.0)

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``ratio_bounds(old_logprobs, divergence, delta, max_ratio)``, widened to at
        least PPO's ``[1 - ppo_floor_eps, 1 + ppo_floor_eps]`` when that is set."""
        lower, upper = ratio_bounds(
            old_logprobs, divergence=self.divergence, delta=self.delta, max_ratio=self.max_ratio
        )
        if self.ppo_floor_eps is not None:
            lower = lower.clamp(max=1 - self.ppo_floor_eps)
            upper = upper.clamp(min=1 + self.ppo_floor_eps)
        return lower, upper


@register_rule("band_upper")
@dataclass(frozen=True)
class BandUpper:
    """Band's upper bound with PPO's fixed lower bound: r in [1 - eps, band upper(p)].

    The ablation that keeps Band's widening of the upper side (rare tokens with a positive
    advantage may rise further) and PPO's clip of the lower side.
    """

    divergence: str = "kl"
    delta: float = 0.05
    max_ratio: float | None = 10.0
    eps: float = 0.2
    name: str = field(default="band_upper", init=False)

    def __post_init__(self) -> None:
        _check_band(self.divergence, self.delta, self.max_ratio)
        _check_eps("eps", self.eps, 1.0)

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (1 - eps, the upper end of ``ratio_bounds``) shaped like ``old_logprobs``."""
        _, upper = ratio_bounds(
            old_logprobs, divergence=self.divergence, delta=self.delta, max_ratio=self.max_ratio
        )
        return torch.full_like(upper, 1 - self.eps), upper


@register_rule("band_lower")
@dataclass(frozen=True)
class BandLower:
    """Band's lower bound with PPO's fixed upper bound: r in [band lower(p), 1 + eps].

    The reverse ablation of ``band_upper``: Band's lower side (rare tokens with a negative
    advantage may fall further) with PPO's clip of the upper side.
    """

    divergence: str = "kl"
    delta: float = 0.05
    max_ratio: float | None = 10.0
    eps: float = 0.2
    name: str = field(default="band_lower", init=False)

    def __post_init__(self) -> None:
        _check_band(self.divergence, self.delta, self.max_ratio)
        _check_eps("eps", self.eps, 1.0)

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (the lower end of ``ratio_bounds``, 1 + eps) shaped like ``old_logprobs``.

        ``max_ratio`` only caps Band's upper end, which this rule does not use; it is a
        parameter so that the three Band rules take the same configuration.
        """
        lower, _ = ratio_bounds(
            old_logprobs, divergence=self.divergence, delta=self.delta, max_ratio=self.max_ratio
        )
        return lower, torch.full_like(lower, 1 + self.eps)


def _check_band(divergence: str, delta: float, max_ratio: float | None) -> None:
    get_divergence(divergence)  # fail at construction on an unknown name
    check_delta(delta)
    check_max_ratio(max_ratio)


@register_rule("dcpo")
@dataclass(frozen=True)
class DCPO:
    """DCPO's dynamic adaptive clipping (Yang et al., 2025, arXiv 2509.02333).

    L(p) = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / p, 0)), U(p) = 1/2 + 1/2 sqrt(1 + 4 eps_high / p),
    with U capped at ``max_ratio``: rare tokens get wide bounds, likely tokens PPO-like ones.
    """

    eps_low: float = 0.16
    eps_high: float = 0.2
    max_ratio: float | None = 10.0
    name: str = field(default="dcpo", init=False)

    def __post_init__(self) -> None:
        _check_eps("eps_low", self.eps_low)
        _check_eps("eps_high", self.eps_high)
        check_max_ratio(self.max_ratio)

    def bounds(self, old_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (L(p), U(p)) for p = exp(old_logprobs), computed in at least float32.

        Log-probabilities are checked as ``ratio_bounds`` checks them: a NaN or a value above
        0 beyond rounding noise raises ValueError naming it and its index.
        """
        compute = compute_dtype(old_logprobs)
        with torch.no_grad():
            if old_logprobs.numel() == 0:
                empty = old_logprobs.detach().new_empty(old_logprobs.shape)
                return empty, empty.clone()
            logp = checked_logprobs(old_logprobs, compute).reshape(old_logprobs.shape)
            inv_p = torch.exp(-logp)  # 1 / p
            lower = (1 - 4 * self.eps_low * inv_p).clamp_(min=0).sqrt_().mul_(0.5).add_(0.5)
            upper = (1 + 4 * self.eps_high * inv_p).sqrt_().mul_(0.5).add_(0.5)
            if self.max_ratio is not None:
                upper = upper.clamp_(max=self.max_ratio)
            upper = upper.clamp_(max=torch.finfo(old_logprobs.dtype).max)
        return lower.to(old_logprobs.dtype), upper.to(old_logprobs.dtype)
