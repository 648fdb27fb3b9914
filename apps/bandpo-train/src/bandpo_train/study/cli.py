"""``bandpo-train study``: parse the command line, run what is missing, write the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bandpo_train.study.analysis import collect, compare, regime, summarise
from bandpo_train.study.design import (
    ARMS,
    DEFAULT_ARMS,
    DEFAULT_OUT,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    LEARNING_RATES,
    QUICK_ARMS,
    QUICK_OUT,
    QUICK_OVERRIDES,
    QUICK_STEPS,
    UPDATES_PER_ROLLOUT,
    Settings,
)
from bandpo_train.study.report import (
    plot_clip_cells,
    plot_curves,
    write_comparisons,
    write_results,
    write_study_json,
    write_summary,
)
from bandpo_train.study.runner import run_all


def _names(valid: dict[str, Any], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or '(none)'}; valid: {', '.join(valid)}"
            )
        return names

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str]) -> Settings:
    """Returns the study's settings from its command line (argparse exits 2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="bandpo-train study",
        description="PPO vs Band on the trap task, at a learning rate where PPO's clip binds "
        "and at one where it does not, over paired seeds.",
    )
    parser.add_argument(
        "--seeds", type=_positive_int, help=f"seeds per arm (default {DEFAULT_SEEDS})"
    )
    parser.add_argument(
        "--steps", type=_positive_int, help=f"RL steps per run (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--out", help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--arms",
        type=_names(ARMS, "arm"),
        help=f"comma-separated (default {','.join(DEFAULT_ARMS)}; also: band_floor, clip_higher)",
    )
    parser.add_argument(
        "--lrs",
        type=_names(LEARNING_RATES, "learning-rate arm"),
        default=list(LEARNING_RATES),
        help=f"comma-separated (default {','.join(LEARNING_RATES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 seed, {QUICK_STEPS} RL steps, arms {','.join(QUICK_ARMS)}, tiny sizes (CI "
        "smoke run, not a result)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="runs at a time, each in its own process (default: min(2, CPU cores))",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads per run (default 1: one per core with --jobs = cores)",
    )
    args = parser.parse_args(list(argv))
    quick = bool(args.quick)
    return Settings(
        out=Path(args.out or (QUICK_OUT if quick else DEFAULT_OUT)),
        arms=args.arms or list(QUICK_ARMS if quick else DEFAULT_ARMS),
        lrs=args.lrs,
        seeds=args.seeds or (1 if quick else DEFAULT_SEEDS),
        steps=args.steps or (QUICK_STEPS if quick else DEFAULT_STEPS),
        quick=quick,
        jobs=args.jobs,
        threads=args.threads,
        extra=QUICK_OVERRIDES if quick else (),
        argv=list(argv),
    )


def run_study(settings: Settings) -> list[dict[str, Any]]:
    """Runs every missing run of ``settings``, then writes the report; returns the rows."""
    started = time.time()
    settings.out.mkdir(parents=True, exist_ok=True)
    plan = settings.plan()
    print(
        f"study: arms {','.join(settings.arms)}; lrs "
        + ", ".join(f"{lr}={LEARNING_RATES[lr].lr:g}" for lr in settings.lrs)
        + f"; {settings.seeds} seed(s); {settings.steps} RL steps x {UPDATES_PER_ROLLOUT} "
        f"updates; {len(plan)} runs, {settings.jobs} at a time; out {settings.out}",
        flush=True,
    )
    statuses: dict[tuple[str, str, int], str] = {}
    for i, (key, status, _) in enumerate(run_all(settings), 1):
        statuses[key] = status
        lr, arm, seed = key
        print(
            f"[{i}/{len(plan)}] {lr} {arm} seed{seed}: {status} "
            f"({(time.time() - started) / 60:.1f} min)",
            flush=True,
        )
    counts = {k: sum(1 for v in statuses.values() if v == k) for k in ("ran", "skipped", "error")}
    return report(settings, statuses, counts, started)


def report(
    settings: Settings,
    statuses: dict[tuple[str, str, int], str],
    counts: dict[str, int],
    started: float,
) -> list[dict[str, Any]]:
    """Writes results.csv, comparisons.csv, summary.md, study.json and the plots."""
    out = settings.out
    rows = collect(settings, statuses)
    regimes = {lr: regime(rows, lr) for lr in settings.lrs}
    summaries = summarise(settings, rows)
    comparisons = compare(settings, rows)
    write_results(out / "results.csv", rows)
    write_comparisons(out / "comparisons.csv", comparisons)
    plot_curves(out / "p_correct.png", settings, rows, "_p_correct", "P(correct), held-out")
    plot_curves(
        out / "answer_entropy.png", settings, rows, "_answer_entropy", "answer entropy (nats)"
    )
    plot_clip_cells(out / "clip_cells.png", settings, rows)
    write_summary(
        out / "summary.md", settings, regimes, summaries, comparisons, time.time() - started
    )
    write_study_json(out / "study.json", settings, regimes, counts, started)
    print(f"study: {counts} in {(time.time() - started) / 60:.1f} min; {out / 'summary.md'}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``bandpo-train study ...``; returns the exit status (1 when a run failed)."""
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run_study(settings)
    print((settings.out / "summary.md").read_text(encoding="utf-8"))
    return 1 if any(r["status"] != "ok" for r in rows) else 0
