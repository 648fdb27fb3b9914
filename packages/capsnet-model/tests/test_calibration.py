"""Temperature scaling, ECE, reliability bins and the abstention threshold on synthetic
scores whose true calibration is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsnet_model.calibration import (
    TEMPERATURE_BOUNDS,
    CalibrationInputError,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
    reliability_bins,
)


def _calibrated(n: int, classes: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns logits whose softmax is the true class distribution, and targets drawn from
    it: a perfectly calibrated model by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    targets = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, targets


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    out: np.ndarray = e / e.sum(1, keepdims=True)
    return out


def test_a_calibrated_model_has_ece_near_zero() -> None:
    logits, targets = _calibrated(40_000)
    ece = expected_calibration_error(_softmax(logits), targets)
    # sampling noise alone, over 15 bins of 40,000 draws
    assert ece < 0.01


def test_an_over_confident_model_gets_t_above_one_and_a_lower_ece() -> None:
    logits, targets = _calibrated(20_000, seed=1)
    scores = 3.0 * logits  # the same ranking, three times too sharp
    t = fit_temperature(scores, targets, "identity")
    assert t == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(probabilities(scores, 1.0, "identity"), targets)
    after = expected_calibration_error(probabilities(scores, t, "identity"), targets)
    assert before > 0.1 and after < 0.02
    assert negative_log_likelihood(scores, targets, t, "identity") < negative_log_likelihood(
        scores, targets, 1.0, "identity"
    )


def test_an_under_confident_model_gets_t_below_one() -> None:
    logits, targets = _calibrated(20_000, seed=2)
    t = fit_temperature(logits / 2.0, targets, "identity")
    assert t == pytest.approx(0.5, rel=0.05)


def test_capsule_lengths_use_the_log_transform() -> None:
    """Capsule lengths in (0, 1) that do not sum to 1: log, then softmax. T = 1 normalises
    the lengths; the over-confidence is found on the log scale."""
    logits, targets = _calibrated(20_000, seed=3)
    lengths = _softmax(2.0 * logits) * 1.4  # rows sum to 1.4, like real capsule lengths
    np.testing.assert_allclose(probabilities(lengths, 1.0, "log"), lengths / 1.4, atol=1e-12)
    assert fit_temperature(lengths, targets, "log") == pytest.approx(2.0, rel=0.05)


def test_probabilities_sum_to_one_without_nan_for_zero_lengths() -> None:
    scores = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.9, 0.2, 0.1]])
    for t in (0.01, 1.0, 100.0):
        p = probabilities(scores, t, "log")
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(probabilities(scores, 1.0, "log")[0], 1 / 3)
    # a zero length against a positive one is (almost) impossible, not NaN
    assert probabilities(scores, 1.0, "log")[1, 1] == pytest.approx(1.0)


def test_a_perfectly_separated_set_ends_on_the_lower_bound() -> None:
    scores = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    targets = np.array([0, 1] * 10)
    assert fit_temperature(scores, targets, "identity") == TEMPERATURE_BOUNDS[0]


def test_fit_is_deterministic() -> None:
    logits, targets = _calibrated(2_000, seed=4)
    first = fit_temperature(1.7 * logits, targets, "identity")
    assert fit_temperature(1.7 * logits, targets, "identity") == first


def test_reliability_bins_count_every_sample_and_give_the_ece() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.5, 0.5]])
    targets = np.array([0, 1, 0, 0])
    bins = reliability_bins(probs, targets, bins=10)
    # 0.5 falls in (0.4, 0.5], 0.55 in (0.5, 0.6], both 0.95 in (0.9, 1]
    assert bins.counts.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 2]
    assert bins.accuracy[9] == 0.5 and bins.confidence[9] == pytest.approx(0.95)
    assert math.isnan(bins.accuracy[0])
    expected = (1 * abs(1.0 - 0.5) + 1 * abs(1.0 - 0.55) + 2 * abs(0.5 - 0.95)) / 4
    assert bins.ece == pytest.approx(expected)
    assert expected_calibration_error(probs, targets, bins=10) == pytest.approx(expected)
    assert bins.to_dict()["accuracy"][0] is None


def test_threshold_reaches_the_coverage_asked_for() -> None:
    logits, targets = _calibrated(1_000, seed=5)
    probs = _softmax(logits)
    everyone = float((probs.argmax(1) == targets).mean())
    for coverage in (0.1, 0.5, 0.9, 0.95):
        choice = choose_threshold(probs, targets, coverage)
        assert choice.coverage >= coverage
        assert choice.coverage == pytest.approx((probs.max(1) >= choice.threshold).mean())
        # the most confident faces are the more accurate ones
        assert choice.accuracy >= everyone
    assert choose_threshold(probs, targets, 1.0) == (0.0, 1.0, pytest.approx(everyone))


def test_threshold_is_the_highest_that_covers_enough() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    targets = np.array([0, 0, 1, 0])
    threshold, coverage, accuracy = choose_threshold(probs, targets, 0.5)
    assert (threshold, coverage, accuracy) == (0.8, 0.5, 1.0)
    # 0.75 of 4 faces: 3 answered
    assert choose_threshold(probs, targets, 0.75) == (0.7, 0.75, pytest.approx(2 / 3))


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: expected_calibration_error(np.full((3, 2), 0.5), [0, 1]), "3 rows but targets"),
        (lambda: expected_calibration_error(np.zeros((0, 3)), []), "empty"),
        (lambda: expected_calibration_error(np.full(4, 0.5), [0] * 4), "2-D"),
        (lambda: expected_calibration_error([[0.7, 0.7]], [0]), "row 0 sums to 1.4"),
        (lambda: expected_calibration_error([[0.5, 0.5]], [2]), "target 2 at position 0"),
        (lambda: expected_calibration_error([[0.5, 0.5]], [0.5]), "integer class indices"),
        (lambda: expected_calibration_error([[0.5, 0.5]], [0], bins=0), "bins"),
        (lambda: expected_calibration_error([[np.nan, 0.5]], [0]), "finite"),
        (lambda: choose_threshold([[0.5, 0.5]], [0], 0.0), "coverage must be"),
        (lambda: choose_threshold([[0.5, 0.5]], [0], 1.5), "coverage must be"),
        (lambda: choose_threshold([[0.5, 0.5]], [0], True), "coverage must be"),
        (lambda: choose_threshold(np.zeros((0, 2)), [], 0.9), "empty"),
        (lambda: fit_temperature(np.zeros((0, 7)), [], "log"), "empty"),
        (lambda: fit_temperature([[1.0, 2.0]], [0, 1], "log"), "1 rows but targets has 2"),
        (lambda: fit_temperature([[1.0, 2.0]], [0], "softmax"), "transform must be one of"),
        (lambda: fit_temperature([[-1.0, 2.0]], [0], "log"), "use transform 'identity'"),
        (lambda: probabilities([[1.0, 2.0]], 0.0, "log"), "temperature must be"),
        (lambda: probabilities([[1.0, 2.0]], math.inf, "log"), "temperature must be"),
        (lambda: probabilities([[1.0]], 1.0, "log"), "at least 2 classes"),
    ],
)
def test_bad_input_is_a_clear_error(call: object, needle: str) -> None:
    with pytest.raises(CalibrationInputError) as info:
        call()  # type: ignore[operator]
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)
