"""Evaluation estimators over n samples per prompt: unbiased pass@k and mean@k."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any


def _check_count(name: str, value: Any) -> int:
    """Returns ``value`` as a non-negative int, or raises ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def pass_at_k(n: int, c: int, k: int) -> float:
    """Returns the unbiased pass@k estimate ``1 - C(n - c, k) / C(n, k)`` for one prompt.

    The probability that at least one of k samples drawn without replacement from n samples,
    c of them correct, is correct (Chen et al., "Evaluating Large Language Models Trained on
    Code", arXiv 2107.03374). Computed as ``1 - prod_{i = n-c+1}^{n} (1 - k / i)``, which avoids
    the huge binomial coefficients.

    Args:
        n: samples drawn for the prompt, >= 1.
        c: correct samples among them, 0 <= c <= n.
        k: the k of pass@k, 1 <= k <= n.
    """
    n, c, k = _check_count("n", n), _check_count("c", c), _check_count("k", k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"k must be <= n (the samples drawn); got k={k}, n={n}")
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n; got c={c}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """Returns the mean over prompts of ``pass_at_k(n, c, k)``, each prompt with n samples."""
    if len(correct_counts) == 0:
        raise ValueError("correct_counts must not be empty (one count per prompt)")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


def mean_at_k(rewards_per_prompt: Sequence[Sequence[float]]) -> float:
    """Returns the mean over prompts of the mean reward of each prompt's samples (mean@k)."""
    if len(rewards_per_prompt) == 0:
        raise ValueError("rewards_per_prompt must not be empty (one list of rewards per prompt)")
    means = []
    for i, rewards in enumerate(rewards_per_prompt):
        values = [float(r) for r in rewards]
        if not values:
            raise ValueError(f"prompt {i} has no rewards; every prompt needs at least one sample")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"prompt {i} has a non-finite reward: {values}")
        means.append(math.fsum(values) / len(values))
    return math.fsum(means) / len(means)
