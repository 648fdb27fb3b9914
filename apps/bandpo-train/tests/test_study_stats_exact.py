"""Exact intervals and paired tests of the study, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from bandpo_train.study_stats import (
    EXACT_PAIRS,
    clopper_pearson,
    holm,
    paired_permutation_p,
)


def test_clopper_pearson_matches_closed_forms() -> None:
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n).
    none = clopper_pearson(0, 10)
    assert none.lo == 0.0 and none.hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    every = clopper_pearson(10, 10)
    assert every.hi == 1.0 and every.lo == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    half = clopper_pearson(5, 10)  # tabulated: 0.1871, 0.8129
    assert half.mean == 0.5
    assert half.lo == pytest.approx(0.18709, abs=1e-4) and half.hi == pytest.approx(
        0.81291, abs=1e-4
    )


def test_clopper_pearson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        clopper_pearson(11, 10)
    with pytest.raises(ValueError):
        clopper_pearson(0, 0)


def test_sign_flip_test_is_exact_for_few_pairs() -> None:
    # Six positive differences: only all-plus and all-minus are as extreme: 2 / 64.
    assert paired_permutation_p([1.0] * 6) == pytest.approx(2 / 64)
    # Binary outcomes: 5 discordant pairs all one way, 3 ties: McNemar exact 2 / 32.
    assert paired_permutation_p([1, 1, 1, 1, 1, 0, 0, 0]) == pytest.approx(2 / 32)
    assert paired_permutation_p([0.0, 0.0]) == 1.0
    assert math.isnan(paired_permutation_p([None, math.nan]))


def test_sign_flip_test_samples_for_many_pairs() -> None:
    n = EXACT_PAIRS + 4
    p = paired_permutation_p([1.0] * n)
    assert 0 < p < 0.001  # exact would be 2 / 2^20; the drawn test counts the observed one
    mixed = paired_permutation_p([1.0, -1.0] * (n // 2))
    assert mixed > 0.9


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
