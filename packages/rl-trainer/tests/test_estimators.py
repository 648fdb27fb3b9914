from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from rl_trainer.estimators import mean_at_k, mean_pass_at_k, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in subset) for subset in subsets)
    return hits / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edge_values():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every subset has a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 500, 7, 200
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (4, 1, 5, "k must be <= n"),
        (4, 5, 2, "c .* must be <= n"),
        (-1, 0, 1, "n must be >= 0"),
        (4, -1, 1, "c must be >= 0"),
        (4, 1, -2, "k must be >= 0"),
        (4, 1, 0, "k must be >= 1"),
        (4.0, 1, 1, "n must be an int"),
        (4, True, 1, "c must be an int"),
    ],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_prompts():
    counts = [0, 1, 4]
    want = (pass_at_k(4, 0, 2) + pass_at_k(4, 1, 2) + pass_at_k(4, 4, 2)) / 3
    assert mean_pass_at_k(counts, 4, 2) == pytest.approx(want)
    assert mean_pass_at_k([2, 2], 4, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must not be empty"):
        mean_pass_at_k([], 4, 1)
    with pytest.raises(ValueError, match="c .* must be <= n"):
        mean_pass_at_k([1, 5], 4, 1)


def test_mean_at_k_is_mean_of_prompt_means():
    # Prompt means 0.5 and 1/3: not the pooled mean 2/5.
    assert mean_at_k([[1.0, 0.0], [1.0, 0.0, 0.0]]) == pytest.approx((0.5 + 1 / 3) / 2)
    assert mean_at_k([[2.0]]) == 2.0
    with pytest.raises(ValueError, match="must not be empty"):
        mean_at_k([])
    with pytest.raises(ValueError, match="prompt 1 has no rewards"):
        mean_at_k([[1.0], []])
    with pytest.raises(ValueError, match="prompt 0 has a non-finite reward"):
        mean_at_k([[math.nan]])
