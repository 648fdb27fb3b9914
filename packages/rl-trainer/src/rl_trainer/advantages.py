"""Group-relative advantage estimators (pure tensor functions) in a registry.

An estimator maps per-sample scalar rewards to per-sample advantages:
``fn(rewards, group_ids, valid, **params) -> advantages``, all (N,). A group is the set of samples
that share a group id (the id of the prompt they answer), wherever they sit in the batch: groups
are never formed by reshaping positions. Statistics are computed for all groups at once with
``torch.unique(return_inverse=True)`` and ``index_add``.

Invalid samples (``valid`` False, e.g. a reward function failed) are left out of every group
statistic and get advantage 0.0; so do all members of a group with fewer than 2 valid samples.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

AdvantageFn = Callable[..., Tensor]
_ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(
    name: str, *, overwrite: bool = False
) -> Callable[[AdvantageFn], AdvantageFn]:
    """Returns a decorator that registers ``fn(rewards, group_ids, valid, **params)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"advantage estimator name must be a non-empty string, got {name!r}")

    def _register(fn: AdvantageFn) -> AdvantageFn:
        if name in _ADVANTAGES and not overwrite:
            raise ValueError(
                f"advantage estimator {name!r} is already registered; "
                "pass overwrite=True to replace it"
            )
        _ADVANTAGES[name] = fn
        return fn

    return _register


def available_advantages() -> list[str]:
    """Returns the registered advantage estimator names, sorted."""
    return sorted(_ADVANTAGES)


def get_advantage(name: str) -> AdvantageFn:
    """Returns the registered advantage estimator ``name``; the error lists the valid names."""
    try:
        return _ADVANTAGES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown advantage estimator {name!r}; "
            f"valid names: {', '.join(available_advantages())}"
        ) from None


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_ids: Tensor,
    valid: Tensor | None = None,
    **params: Any,
) -> Tensor:
    """Returns the (N,) advantages of estimator ``name`` after checking the inputs.

    Args:
        name: a registered estimator (``available_advantages()``).
        rewards: (N,) floating-point rewards, finite where ``valid``.
        group_ids: (N,) integer group ids (the prompt each sample answers).
        valid: (N,) bool, False for samples to leave out (advantage 0.0); None for all valid.
        params: the estimator's keyword parameters (e.g. ``eps`` for ``grpo``).
    """
    fn = get_advantage(name)
    accepted = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for advantage estimator "
            f"{name!r}; accepted: {', '.join(accepted) or '(none)'}"
        )
    valid = _check_inputs(rewards, group_ids, valid)
    return fn(rewards, group_ids, valid, **params)


def _check_inputs(rewards: Tensor, group_ids: Tensor, valid: Tensor | None) -> Tensor:
    """Returns ``valid`` (all True if None) after checking shapes, dtypes and finiteness."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor (N,), got {_describe(rewards)}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got {rewards.dtype}")
    if not isinstance(group_ids, Tensor) or group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must be a tensor of shape {tuple(rewards.shape)} like rewards, "
            f"got {_describe(group_ids)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor (int64), got {group_ids.dtype}")
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)  # (N,)
    elif not isinstance(valid, Tensor) or valid.shape != rewards.shape:
        raise ValueError(
            f"valid must be a tensor of shape {tuple(rewards.shape)} like rewards, "
            f"got {_describe(valid)}"
        )
    elif valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
    if group_ids.device != rewards.device or valid.device != rewards.device:
        raise ValueError(
            f"rewards, group_ids and valid must be on one device, got {rewards.device}, "
            f"{group_ids.device} and {valid.device}"
        )
    bad = valid & ~torch.isfinite(rewards)  # (N,)
    if bad.any():
        where = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"rewards must be finite where valid; {int(bad.sum())} are not, at indices {where} "
            "(mark them invalid with valid=False)"
        )
    return valid


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


class _Groups(NamedTuple):
    """Per-group statistics of the valid rewards, float64: inverse (N,), n_valid/mean/var (G,)."""

    inverse: Tensor  # (N,) group index of each sample, in [0, G)
    n_valid: Tensor  # (G,) number of valid members
    mean: Tensor  # (G,) mean of valid rewards (0 where no valid member)
    var: Tensor  # (G,) unbiased variance of valid rewards (0 where fewer than 2)


def _groups(rewards: Tensor, group_ids: Tensor, valid: Tensor) -> _Groups:
    """Returns the per-group statistics of the valid rewards (no loop over groups)."""
    unique_ids, index = torch.unique(group_ids, return_inverse=True)  # (G,), (N,)
    n_groups = unique_ids.numel()
    w = valid.to(torch.float64)  # (N,)
    r = torch.where(valid, rewards.to(torch.float64), 0.0)  # (N,) invalid may be NaN
    count = torch.zeros(n_groups, dtype=torch.float64, device=rewards.device)  # (G,)
    count.index_add_(0, index, w)
    total = torch.zeros_like(count).index_add_(0, index, r)  # (G,)
    mean = total / count.clamp_min(1.0)  # (G,)
    # Second pass: corrects the rounding of the mean, which is then exact for equal rewards.
    residual = torch.where(valid, r - mean[index], 0.0)  # (N,)
    mean = mean + torch.zeros_like(count).index_add_(0, index, residual) / count.clamp_min(1.0)
    sq_dev = w * (r - mean[index]) ** 2  # (N,)
    ss = torch.zeros_like(count).index_add_(0, index, sq_dev)  # (G,)
    var = torch.where(count >= 2, ss / (count - 1).clamp_min(1.0), 0.0)  # (G,)
    return _Groups(index, count, mean, var)


def _finish(adv: Tensor, g: _Groups, valid: Tensor, like: Tensor) -> Tensor:
    """Returns ``adv`` with invalid samples and groups of < 2 valid members zeroed."""
    keep = valid & (g.n_valid[g.inverse] >= 2)  # (N,)
    return torch.where(keep, adv, 0.0).to(like.dtype)  # (N,)


@register_advantage("grpo")
def grpo(
    rewards: Tensor,
    group_ids: Tensor,
    valid: Tensor,
    *,
    eps: float = 1e-6,
    scale: bool = True,
) -> Tensor:
    """Returns GRPO advantages ``(r - group mean) / (group std + eps)``, (N,).

    Group-relative outcome advantages of GRPO (Shao et al., DeepSeekMath, arXiv 2402.03300),
    with the unbiased (Bessel-corrected) group std. ``scale=False`` drops the division by the
    std, which is Dr. GRPO (``dr_grpo``).
    """
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not (0 <= eps < math.inf):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    g = _groups(rewards, group_ids, valid)
    adv = rewards.to(torch.float64) - g.mean[g.inverse]  # (N,)
    if scale:
        denom = g.var.sqrt()[g.inverse] + eps  # (N,)
        adv = torch.where(denom > 0, adv / denom, 0.0)  # (N,) equal rewards with eps=0 give 0
    return _finish(adv, g, valid, rewards)


@register_advantage("dr_grpo")
def dr_grpo(rewards: Tensor, group_ids: Tensor, valid: Tensor) -> Tensor:
    """Returns Dr. GRPO advantages ``r - group mean``, (N,).

    Dr. GRPO (Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv 2503.20783) removes GRPO's division by the group std, which weights questions by
    the inverse of their reward spread.
    """
    return grpo(rewards, group_ids, valid, scale=False)


@register_advantage("rloo")
def rloo(rewards: Tensor, group_ids: Tensor, valid: Tensor) -> Tensor:
    """Returns RLOO advantages ``r_i - mean of the other valid members of i's group``, (N,).

    REINFORCE Leave-One-Out (Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740): each sample's
    baseline is the mean reward of the other samples for the same prompt, which equals
    ``n / (n - 1) * (r_i - group mean)`` for a group of n valid samples.
    """
    g = _groups(rewards, group_ids, valid)
    n = g.n_valid[g.inverse]  # (N,)
    adv = n / (n - 1).clamp_min(1.0) * (rewards.to(torch.float64) - g.mean[g.inverse])  # (N,)
    return _finish(adv, g, valid, rewards)


def _flat_groups(rewards: Tensor, valid: Tensor, g: _Groups, atol: float) -> Tensor:
    """Returns (G,) bool: the group's valid rewards span <= atol, or it has < 2 of them."""
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not (0 <= atol < math.inf):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    r = rewards.to(torch.float64)  # (N,)
    n_groups = g.n_valid.numel()
    hi = torch.full((n_groups,), -math.inf, dtype=torch.float64, device=rewards.device)  # (G,)
    lo = torch.full((n_groups,), math.inf, dtype=torch.float64, device=rewards.device)  # (G,)
    hi = hi.scatter_reduce(0, g.inverse, torch.where(valid, r, -math.inf), "amax")  # (G,)
    lo = lo.scatter_reduce(0, g.inverse, torch.where(valid, r, math.inf), "amin")  # (G,)
    return (g.n_valid < 2) | (hi - lo <= atol)  # (G,)


def zero_variance_mask(
    rewards: Tensor, group_ids: Tensor, valid: Tensor | None = None, atol: float = 1e-6
) -> Tensor:
    """Returns (N,) bool: True where the sample's group carries no learning signal.

    A group carries none when its valid rewards are all equal within ``atol`` (max - min <=
    atol) or it has fewer than 2 valid members: every group-relative advantage is then 0. This
    is the filter of DAPO's dynamic sampling (Yu et al., arXiv 2503.14476), which drops such
    groups from the batch. Invalid samples get their group's flag.
    """
    valid = _check_inputs(rewards, group_ids, valid)
    g = _groups(rewards, group_ids, valid)
    return _flat_groups(rewards, valid, g, atol)[g.inverse]  # (N,)


def group_statistics(
    rewards: Tensor, group_ids: Tensor, valid: Tensor | None = None, atol: float = 1e-6
) -> dict[str, float]:
    """Returns batch statistics of the groups, for logging.

    Keys: ``groups`` (distinct group ids), ``zero_std_groups`` (groups flagged by
    ``zero_variance_mask``), ``zero_std_frac`` (their fraction) and ``reward_std_mean`` (mean of
    the unbiased within-group reward std over groups with at least 2 valid members; 0.0 if none).
    """
    valid = _check_inputs(rewards, group_ids, valid)
    g = _groups(rewards, group_ids, valid)
    n_groups = g.n_valid.numel()
    if n_groups == 0:
        return {"groups": 0.0, "zero_std_groups": 0.0, "zero_std_frac": 0.0, "reward_std_mean": 0.0}
    zero = int(_flat_groups(rewards, valid, g, atol).sum())
    scored = g.n_valid >= 2  # (G,)
    std_mean = float(g.var[scored].sqrt().mean()) if scored.any() else 0.0
    return {
        "groups": float(n_groups),
        "zero_std_groups": float(zero),
        "zero_std_frac": zero / n_groups,
        "reward_std_mean": std_mean,
    }
