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
