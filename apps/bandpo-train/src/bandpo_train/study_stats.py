"""Statistics of the clipping study: Student-t intervals, moving averages, steps to a
threshold (with censoring), areas under curves and clip fractions of rare tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FINAL_FRACTION = 0.1  # final reward: the last 10% of RL steps
LOW_BUCKET = "p<0.01"
SMOOTH_RL_STEPS = 10  # moving-average width (RL steps) for the threshold and the plots

# Two-sided 95% Student-t quantiles t(0.975, df).
T_975: dict[int, float] = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t_quantile(df: int) -> float:
    """Returns t(0.975, df); between tabulated values the next smaller df (wider, conservative),
    1.96 beyond 120 would be the normal limit but 1.980 is kept (conservative)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df!r}")
    return T_975[max(d for d in T_975 if d <= df)]


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` finite values and its 95% t-interval (NaN bounds when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def finite(values: Sequence[float | None]) -> list[float]:
    """Returns the finite numbers of ``values`` (None and NaN dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def t_interval(values: Sequence[float | None]) -> Interval:
    """Returns the mean and 95% Student-t interval of the finite ``values``."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def moving_average(values: Sequence[float], width: int) -> list[float]:
    """Returns the trailing moving average: out[i] = mean(values[max(0, i-width+1) : i+1])."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width!r}")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def steps_to_threshold(
    rewards: Sequence[float], threshold: float, width: int = SMOOTH_RL_STEPS
) -> tuple[int, bool]:
    """Returns (RL step, censored): the first RL step (1-based) whose trailing ``width``-step
    moving average of ``rewards`` (one per RL step) reaches ``threshold``; (len, True) when it
    never does."""
    for i, value in enumerate(moving_average(list(rewards), width)):
        if value >= threshold:
            return i + 1, False
    return len(rewards), True


def auc_per_step(values: Sequence[float | None]) -> float:
    """Returns the area under a curve (unit step) per step: the mean of the finite values."""
    xs = finite(values)
    return sum(xs) / len(xs) if xs else math.nan


def tail_mean(values: Sequence[float], fraction: float = FINAL_FRACTION) -> float:
    """Returns the mean of the last ``ceil(fraction * len)`` values (at least one)."""
    xs = list(values)
    if not xs:
        return math.nan
    k = max(1, math.ceil(fraction * len(xs)))
    return sum(xs[-k:]) / k


def weighted_bucket_clip(records: Sequence[dict[str, Any]], bucket: str = LOW_BUCKET) -> float:
    """Returns the fraction of ``bucket`` tokens clipped over a run: per-step clip fractions
    weighted by the bucket's token share; NaN when the bucket never held a token."""
    num = den = 0.0
    for r in records:
        clip, share = r.get(f"clip_frac/{bucket}"), r.get(f"token_frac/{bucket}")
        if isinstance(clip, int | float) and isinstance(share, int | float):
            if math.isfinite(clip) and math.isfinite(share):
                num += clip * share
                den += share
    return num / den if den > 0 else math.nan


@dataclass(frozen=True)
class CensoredSummary:
    """Steps to threshold over seeds, some of which may be censored at ``limit``."""

    n: int
    reached: int
    limit: int
    interval: Interval  # over the runs that reached it when all did; else NaN
    lower_bound_mean: float  # mean with censored runs counted at ``limit``: a lower bound
    median_text: str

    def text(self) -> str:
        if self.n == 0:
            return "n/a"
        if self.reached == self.n:
            return self.interval.text(1)
        if self.reached == 0:
            return f"> {self.limit} (0/{self.n} reached)"
        return (
            f">= {self.lower_bound_mean:.1f} ({self.reached}/{self.n} reached, "
            f"median {self.median_text})"
        )


def censored_summary(steps: Sequence[int], censored: Sequence[bool], limit: int) -> CensoredSummary:
    """Summarises steps-to-threshold: a t-interval only when no run is censored, otherwise the
    mean with censored runs at ``limit`` (a lower bound) and the median (``> limit`` when the
    middle run is censored)."""
    if len(steps) != len(censored):
        raise ValueError("steps and censored must have the same length")
    n = len(steps)
    reached = sum(1 for c in censored if not c)
    if n == 0:
        nan = Interval(math.nan, math.nan, math.nan, 0)
        return CensoredSummary(0, 0, limit, nan, math.nan, "n/a")
    interval = (
        t_interval([float(s) for s in steps])
        if reached == n
        else Interval(math.nan, math.nan, math.nan, 0)
    )
    lower = sum(float(limit) if c else float(s) for s, c in zip(steps, censored, strict=True)) / n
    order = sorted((math.inf if c else float(s)) for s, c in zip(steps, censored, strict=True))
    middle = [order[(n - 1) // 2], order[n // 2]]
    if all(math.isfinite(m) for m in middle):
        median = f"{sum(middle) / 2:g}"
    elif not any(math.isfinite(m) for m in middle):
        median = f"> {limit}"
    else:
        median = f">= {(min(middle) + limit) / 2:g}"
    return CensoredSummary(n, reached, limit, interval, lower, median)


# --------------------------------------------------------------------------------------------
# exact intervals and paired tests for outcomes that are not bell-shaped


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """Returns P(X <= k) for X ~ Binomial(n, p), summed exactly."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return math.fsum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _solve(f: Any, target: float) -> float:
    """Returns p in [0, 1] with f(p) = target for a decreasing f, by bisection (1e-12)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if f(mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> Interval:
    """Returns the exact (Clopper-Pearson) interval of a binomial proportion.

    The interval never leaves [0, 1] and covers the true proportion with probability at least
    ``level`` for every proportion (it is conservative); ``mean`` is ``successes / n``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    alpha = 1 - level
    # lower: P(X >= k | p) = alpha/2, i.e. P(X <= k - 1 | p) = 1 - alpha/2 (0 when k = 0).
    lower = (
        0.0
        if successes == 0
        else _solve(lambda p: _binomial_cdf(successes - 1, n, p), 1 - alpha / 2)
    )
    # upper: P(X <= k | p) = alpha/2 (1 when k = n).
    upper = 1.0 if successes == n else _solve(lambda p: _binomial_cdf(successes, n, p), alpha / 2)
    return Interval(successes / n, lower, upper, n)


#: Sign-flip tests enumerate every assignment up to this many pairs (2^16 = 65,536), and
#: draw this many random assignments beyond it.
EXACT_PAIRS = 16
RANDOM_FLIPS = 20_000


def paired_permutation_p(differences: Sequence[float | None], *, seed: int = 0) -> float:
    """Returns the two-sided p-value of a paired sign-flip permutation test of mean 0.

    Under the null hypothesis (no difference between the paired arms) each paired difference
    is as likely to have either sign; the p-value is the share of sign assignments whose mean
    is at least as far from 0 as the observed one. Exact (all 2^n assignments) up to
    ``EXACT_PAIRS`` pairs, else ``RANDOM_FLIPS`` random ones with the observed counted in
    (p never 0). With outcomes in {0, 1} this is the exact McNemar test. NaN/None pairs are
    dropped; no pairs give NaN.
    """
    values = finite(differences)
    n = len(values)
    if n == 0:
        return math.nan
    observed = abs(math.fsum(values)) * (1 - 1e-12)
    if n <= EXACT_PAIRS:
        hits = 0
        for mask in range(1 << n):
            total = math.fsum(-v if mask >> i & 1 else v for i, v in enumerate(values))
            hits += abs(total) >= observed
        return hits / (1 << n)
    import random

    rng = random.Random(seed)
    hits = 1  # the observed assignment
    for _ in range(RANDOM_FLIPS):
        total = math.fsum(v if rng.random() < 0.5 else -v for v in values)
        hits += abs(total) >= observed
    return hits / (RANDOM_FLIPS + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Returns Holm's step-down adjusted p-values (same order as given; NaN stays NaN).

    Compare each adjusted value with the family-wise level (0.05): it controls the chance of
    any false rejection among all the comparisons, under any dependence between them.
    """
    indexed = sorted(
        (p, i) for i, p in enumerate(p_values) if isinstance(p, int | float) and math.isfinite(p)
    )
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
