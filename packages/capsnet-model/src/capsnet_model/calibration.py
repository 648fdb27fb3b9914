"""Confidence calibration of a classifier's scores (numpy only): temperature scaling, the
expected calibration error, reliability bins for a plot and an abstention threshold.

The probability formula is the one fer-export's ONNX contract (``fer.calibration``) states, so
a model calibrated here gives the same probabilities at deployment::

    probabilities = softmax(transform(scores) / T)

with ``transform`` ``"log"`` (``log(max(score, 1e-12))``: capsule lengths; T = 1 then simply
normalises the lengths to sum 1) or ``"identity"`` (logits). T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one. T is fitted by minimising the negative
log-likelihood on a held-out set (the validation split), never on the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

__all__ = [
    "LOG_FLOOR",
    "TEMPERATURE_BOUNDS",
    "TRANSFORMS",
    "CalibrationInputError",
    "ReliabilityBins",
    "ThresholdChoice",
    "Transform",
    "choose_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "probabilities",
    "reliability_bins",
    "transform_scores",
]

Transform = Literal["log", "identity"]
#: The score transforms: ``log`` for capsule lengths, ``identity`` for logits.
TRANSFORMS: tuple[str, ...] = get_args(Transform)
#: Scores below this are taken as this before the log (a zero capsule length stays finite).
LOG_FLOOR = 1e-12
#: The range :func:`fit_temperature` searches; a fit that ends on a bound says the model is
#: far off (or, at the low end, that the held-out set is classified perfectly).
TEMPERATURE_BOUNDS = (0.01, 100.0)
#: How far a row of ``probs`` may sum from 1.
_SUM_TOLERANCE = 1e-3
#: Coarse grid points over log T before the golden-section refinement.
_GRID = 41
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class CalibrationInputError(ValueError):
    """Scores, probabilities, targets or a setting that calibration cannot use (the message
    names the bad value and what was expected)."""


# --------------------------------------------------------------------------- input checks


def _matrix(values: Any, name: str) -> np.ndarray:
    """Returns ``values`` as a finite float64 (N, C) array with N >= 1 and C >= 2."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CalibrationInputError(f"{name} must be a numeric (N, C) array: {err}") from err
    if array.ndim != 2:
        raise CalibrationInputError(
            f"{name} must be a 2-D (samples, classes) array, got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise CalibrationInputError(f"{name} is empty (0 samples): calibration needs a set")
    if array.shape[1] < 2:
        raise CalibrationInputError(
            f"{name} must have at least 2 classes (columns), got shape {array.shape}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise CalibrationInputError(
            f"{name} must be finite, got {array[row, col]} at row {row}, column {col}"
        )
    return array


def _probs(values: Any) -> np.ndarray:
    """Returns ``values`` checked as probabilities: (N, C), in [0, 1], rows summing to 1."""
    probs = _matrix(values, "probs")
    low, high = float(probs.min()), float(probs.max())
    if low < 0.0 or high > 1.0 + _SUM_TOLERANCE:
        value = low if low < 0.0 else high
        raise CalibrationInputError(f"probs must lie in [0, 1], got {value}")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > _SUM_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise CalibrationInputError(
            f"each row of probs must sum to 1, row {row} sums to {sums[row]:.6g}; pass "
            "probabilities(scores, T, transform), not raw scores"
        )
    return probs


def _targets(values: Any, n: int, classes: int, what: str) -> np.ndarray:
    """Returns ``values`` as an int64 vector of ``n`` class indices in ``0..classes-1``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise CalibrationInputError(
            f"targets must be a 1-D array of class indices, got shape {array.shape}"
        )
    if array.shape[0] != n:
        raise CalibrationInputError(f"{what} has {n} rows but targets has {array.shape[0]} values")
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise CalibrationInputError(f"targets must be integer class indices, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        whole = np.isfinite(array) & (array == np.round(array))
        if not whole.all():
            i = int(np.argmin(whole))
            raise CalibrationInputError(
                f"targets must be integer class indices, got {array[i]} at position {i}"
            )
    targets = array.astype(np.int64)
    bad = (targets < 0) | (targets >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise CalibrationInputError(
            f"target {targets[i]} at position {i} is outside 0..{classes - 1} "
            f"({classes} classes in {what})"
        )
    return targets


def _transform(transform: Any) -> Transform:
    if transform not in TRANSFORMS:
        valid = ", ".join(repr(t) for t in TRANSFORMS)
        raise CalibrationInputError(f"transform must be one of {valid}, got {transform!r}")
    checked: Transform = transform
    return checked


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise CalibrationInputError(f"temperature must be a number > 0, got {value!r}")
    t = float(value)
    if not (math.isfinite(t) and t > 0.0):
        raise CalibrationInputError(f"temperature must be a finite number > 0, got {value!r}")
    return t


def _bins(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise CalibrationInputError(f"bins must be an integer >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- probabilities


def transform_scores(scores: Any, transform: Transform = "log") -> np.ndarray:
    """Returns ``transform(scores)`` as float64 (N, C): ``log(max(score, 1e-12))`` for
    ``"log"``, the scores themselves for ``"identity"``."""
    kind = _transform(transform)
    array = _matrix(scores, "scores")
    if kind == "log":
        if float(array.min()) < 0.0:
            raise CalibrationInputError(
                f"scores must be >= 0 for transform 'log' (capsule lengths), got "
                f"{float(array.min())}; use transform 'identity' for logits"
            )
        return np.log(np.maximum(array, LOG_FLOOR))
    return array


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def probabilities(
    scores: Any, temperature: float = 1.0, transform: Transform = "log"
) -> np.ndarray:
    """Returns ``softmax(transform(scores) / temperature)``: float64 (N, C), each row summing
    to 1 (all-zero capsule lengths give the uniform row, never NaN)."""
    t = _temperature(temperature)
    logits = transform_scores(scores, transform)
    result: np.ndarray = np.exp(_log_softmax(logits / t))
    return result


def negative_log_likelihood(
    scores: Any, targets: Any, temperature: float = 1.0, transform: Transform = "log"
) -> float:
    """Returns the mean negative log-likelihood of ``targets`` under
    ``probabilities(scores, temperature, transform)``."""
    t = _temperature(temperature)
    logits = transform_scores(scores, transform)
    y = _targets(targets, logits.shape[0], logits.shape[1], "scores")
    return _nll(logits, y, t)


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    log_p = _log_softmax(logits / temperature)
    return float(-log_p[np.arange(len(targets)), targets].mean())


def fit_temperature(
    scores: Any,
    targets: Any,
    transform: Transform = "log",
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """Returns the temperature T in ``bounds`` that minimises the mean negative log-likelihood
    of ``targets`` under ``softmax(transform(scores) / T)``.

    The likelihood is convex in 1/T, so it has one minimum along log T: a coarse grid over
    log T finds its neighbourhood and a golden-section search refines it (deterministic, no
    gradients, no starting point to get wrong). A minimum beyond a bound returns the bound.
    """
    logits = transform_scores(scores, transform)
    y = _targets(targets, logits.shape[0], logits.shape[1], "scores")
    low, high = (float(b) for b in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low < high):
        raise CalibrationInputError(f"bounds must be 0 < low < high, got {bounds!r}")

    def loss(log_t: float) -> float:
        return _nll(logits, y, math.exp(log_t))

    grid = np.linspace(math.log(low), math.log(high), _GRID)
    values = [loss(float(g)) for g in grid]
    best = int(np.argmin(values))
    a = float(grid[max(best - 1, 0)])
    b = float(grid[min(best + 1, _GRID - 1)])
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > 1e-7:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = loss(d)
    # The grid point itself wins when the minimum sits on a bound.
    candidates = [(values[best], float(grid[best])), (fc, c), (fd, d)]
    log_t = min(candidates)[1]
    if log_t <= grid[0]:
        return low  # exactly the bound, not exp(log(bound)) one ulp off
    if log_t >= grid[-1]:
        return high
    return math.exp(log_t)


# --------------------------------------------------------------------------- reliability


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins of the top probability over [0, 1]: what a reliability diagram
    plots. Empty bins hold NaN accuracy and confidence."""

    #: ``bins + 1`` edges from 0 to 1; bin k holds top probabilities in (edge k, edge k+1]
    #: (the first bin also holds 0).
    edges: np.ndarray
    #: Samples per bin.
    counts: np.ndarray
    #: Fraction of each bin's samples whose top class is the target.
    accuracy: np.ndarray
    #: Mean top probability of each bin.
    confidence: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Returns the expected calibration error: the count-weighted mean of
        ``|accuracy - confidence|`` over the non-empty bins."""
        used = self.counts > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float((gaps * self.counts[used]).sum() / self.counts.sum())

    def to_dict(self) -> dict[str, list[Any]]:
        """Returns the bins as JSON-ready lists (empty bins: None)."""

        def plain(values: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in values]

        return {
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "accuracy": plain(self.accuracy),
            "confidence": plain(self.confidence),
        }


def reliability_bins(probs: Any, targets: Any, bins: int = 15) -> ReliabilityBins:
    """Returns the reliability bins of ``probs`` (N, C) against ``targets`` (N,): per
    equal-width bin of the top probability, its count, accuracy and mean confidence."""
    p = _probs(probs)
    y = _targets(targets, p.shape[0], p.shape[1], "probs")
    n_bins = _bins(bins)
    top = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin k covers (k/n, (k+1)/n]; 0 goes to the first bin, anything rounded above 1 to the last
    index = np.clip(np.ceil(top * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
        confidence = np.bincount(index, weights=top, minlength=n_bins) / counts
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, accuracy, confidence)


def expected_calibration_error(probs: Any, targets: Any, bins: int = 15) -> float:
    """Returns the expected calibration error of ``probs`` (N, C) against ``targets`` (N,):
    the count-weighted mean gap between accuracy and mean top probability over ``bins``
    equal-width bins of the top probability (0: calibrated)."""
    return reliability_bins(probs, targets, bins).ece


# --------------------------------------------------------------------------- abstention


class ThresholdChoice(NamedTuple):
    """An abstention threshold and what it does on the set it was chosen on."""

    #: Answer when the top probability is >= this; below it, abstain ("unknown").
    threshold: float
    #: Fraction of the set answered (>= the coverage asked for).
    coverage: float
    #: Accuracy on the answered part.
    accuracy: float


def choose_threshold(probs: Any, targets: Any, coverage: float) -> ThresholdChoice:
    """Returns the highest threshold on the top probability that still answers at least
    ``coverage`` of the set (a face is answered when its top probability is >= the
    threshold), with the coverage reached and the accuracy on the answered faces.

    ``coverage`` is in (0, 1]; 1 gives threshold 0 (never abstain, also on new faces less
    confident than any of this set). Ties at the threshold are all answered, so the coverage
    reached can exceed the one asked for.
    """
    if (
        isinstance(coverage, bool)
        or not isinstance(coverage, int | float | np.floating | np.integer)
        or not math.isfinite(float(coverage))
        or not 0.0 < float(coverage) <= 1.0
    ):
        raise CalibrationInputError(f"coverage must be a number in (0, 1], got {coverage!r}")
    p = _probs(probs)
    y = _targets(targets, p.shape[0], p.shape[1], "probs")
    top = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    if float(coverage) >= 1.0:
        threshold = 0.0
    else:
        # the k most confident faces must be answered; a tiny slack keeps 0.9 * 350 at 315
        k = max(1, math.ceil(float(coverage) * len(top) - 1e-9))
        threshold = float(np.sort(top)[::-1][k - 1])
    answered = top >= threshold
    return ThresholdChoice(
        threshold=threshold,
        coverage=float(answered.mean()),
        accuracy=float(correct[answered].mean()),
    )
