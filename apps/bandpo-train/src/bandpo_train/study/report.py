"""The study's outputs: ``results.csv`` (one row per run), ``comparisons.csv``, ``summary.md``
(design, prediction, precondition, tables, verdict), ``study.json`` and the plots."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bandpo_train.study.analysis import (
    RESULT_FIELDS,
    ArmSummary,
    Comparison,
    Regime,
)
from bandpo_train.study.design import (
    ALPHA,
    ARMS,
    COMMON_OVERRIDES,
    LEARNING_RATES,
    LOW_BUCKET,
    PASS_K,
    REFERENCE_ARM,
    REGIME_SHARE,
    SUCCESS_P,
    UPDATES_PER_ROLLOUT,
    Settings,
)
from bandpo_train.study_stats import t_interval
from bandpo_train.versions import versions

QUICK_NOTE = " (--quick: tiny sizes and few steps, a smoke run, not a result)"
PREDICTION = (
    "At the binding learning rate, `band` and `band_upper` beat `ppo` on the final P(correct) "
    f"and pass@{PASS_K}, with a higher answer entropy on the way; `band_lower` behaves like "
    "`ppo`. At the low learning rate, where PPO's clip does not bind, no arm differs from `ppo`."
)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def write_results(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(r.get(k)) for k in RESULT_FIELDS})


def write_comparisons(path: Path, comparisons: Sequence[Comparison]) -> None:
    fields = ["family", "lr", "arm", "outcome", "n", "mean_diff", "lo", "hi", "p", "p_holm"]
    fields.append("verdict")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for c in comparisons:
            d = c.difference
            numbers = [_fmt(x) for x in (d.mean, d.lo, d.hi, c.p_value, c.p_holm)]
            writer.writerow([c.family, c.lr, c.arm, c.outcome, d.n, *numbers, c.direction()])


def _regime_line(r: Regime) -> str:
    share = "n/a" if math.isnan(r.share) else f"{r.share:.1%}"
    return (
        f"PPO clipped above {share} of the {r.tokens:.0f} A>0, {LOW_BUCKET} token-updates "
        f"({r.clipped:.0f}; {r.runs} run(s))"
    )


def write_summary(
    path: Path,
    settings: Settings,
    regimes: dict[str, Regime],
    summaries: Sequence[ArmSummary],
    comparisons: Sequence[Comparison],
    wall_s: float,
) -> None:
    """Writes ``summary.md``: it always says, per learning rate, "regime reached" or "regime
    not reached", and draws conclusions only where the regime was reached."""
    note = QUICK_NOTE if settings.quick else ""
    lines = [
        f"# Clipping study: PPO vs Band on the trap task{note}",
        "",
        f"{settings.seeds} seed(s) per arm, {settings.steps} RL steps x {UPDATES_PER_ROLLOUT} "
        "updates per run; arms and learning rates fixed before running (see "
        "`bandpo_train/study/design.py`).",
        "",
        f"**Prediction (stated before running).** {PREDICTION}",
        "",
        "## Precondition: does PPO's clip bind on rare positive tokens?",
        "",
        f"Required: PPO clips above at least {REGIME_SHARE:.0%} of the A>0, {LOW_BUCKET} "
        "token-updates (band-ops' signed clip counts, summed over every update of every PPO run).",
        "",
    ]
    for lr in settings.lrs:
        r = regimes[lr]
        verdict = "regime reached" if r.reached else "regime not reached"
        lines.append(
            f"- **{lr}** (lr {LEARNING_RATES[lr].lr:g}): {_regime_line(r)}: **{verdict}**."
        )
    lines += ["", "## Outcomes per arm", ""]
    header = (
        "| lr | arm | runs | success share [exact 95%] | P(correct) first | "
        f"P(correct) final | pass@{PASS_K} final | answer entropy AUC |"
    )
    lines += [header, "|" + " --- |" * 8]
    for s in summaries:
        iv = s.intervals
        failed = f" ({s.n_failed} failed)" if s.n_failed else ""
        lines.append(
            f"| {s.lr} | {s.arm} | {s.n_ok}{failed} | {_share(s.success)} | "
            f"{iv['p_correct_first'].text()} | {iv['p_correct_final'].text()} | "
            f"{iv[f'pass@{PASS_K}_final'].text()} | {iv['answer_entropy_auc'].text()} |"
        )
    lines += [
        "",
        f"Success: final P(correct) > {SUCCESS_P} on the held-out prompts (exact, from the "
        "policy's probabilities, no sampling). Continuous outcomes: mean [95% t-interval].",
        "",
        f"## Differences to `{REFERENCE_ARM}` (paired by seed)",
        "",
        "Two-sided paired sign-flip permutation tests (exact up to 16 pairs; for success this "
        "is McNemar's exact test), Holm-adjusted within each family: the "
        f"{sum(c.family == 'primary' for c in comparisons)} primary comparisons (final "
        "P(correct), success) carry the verdict; the secondary ones (pass@16, answer entropy) "
        f"are adjusted among themselves. Significant at {ALPHA}.",
        "",
        "| family | lr | arm | outcome | mean difference [95% t] | p | p (Holm) | verdict |",
        "|" + " --- |" * 8,
    ]
    for c in comparisons:
        lines.append(
            f"| {c.family} | {c.lr} | {c.arm} | {c.label} | {c.difference.text()} | "
            f"{_p(c.p_value)} | {_p(c.p_holm)} | {c.direction()} |"
        )
    lines += ["", "## Verdict", ""]
    lines += _verdict(settings, regimes, comparisons)
    lines += [
        "",
        "Plots: `p_correct.png` (P(correct) over RL steps), `answer_entropy.png` (entropy of "
        "the answer-token distribution), `clip_cells.png` (PPO's upper-clip share by old "
        "probability, A>0).",
        "",
        f"Study wall time (this invocation): {wall_s / 60:.1f} min.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _share(iv: Any) -> str:
    if iv.n == 0:
        return "n/a"
    return f"{iv.mean:.2f} [{iv.lo:.2f}, {iv.hi:.2f}] (n={iv.n})"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


def _verdict(
    settings: Settings, regimes: dict[str, Regime], comparisons: Sequence[Comparison]
) -> list[str]:
    """Returns the verdict lines: what held of the prediction, per learning rate."""
    lines = []
    for lr in settings.lrs:
        found = [c for c in comparisons if c.lr == lr and c.family == "primary"]
        significant = [c for c in found if c.significant]
        said = (
            "; ".join(f"`{c.arm}` {c.direction()} {c.label}" for c in significant)
            or "no arm differs significantly from `ppo`"
        )
        if lr == "low":
            binds = regimes[lr].reached
            lines.append(
                "- **low** (negative control): "
                + ("PPO's clip binds here too, so this is no control; " if binds else "")
                + f"{said}."
            )
        elif not regimes[lr].reached:
            lines.append(
                f"- **{lr}**: regime not reached: PPO's clip did not bind on rare positive "
                f"tokens, so these runs cannot test the claim; no conclusion ({said})."
            )
        else:
            lines.append(f"- **{lr}**: regime reached; {said}.")
    return lines


# --------------------------------------------------------------------------------------------
# plots

ARM_COLOURS = {
    "ppo": "tab:blue",
    "band": "tab:green",
    "band_upper": "tab:olive",
    "band_lower": "tab:purple",
    "clip_higher": "tab:orange",
    "band_floor": "tab:cyan",
}


def plot_curves(
    path: Path, settings: Settings, rows: Sequence[dict[str, Any]], key: str, ylabel: str
) -> None:
    """Writes one PNG, a panel per learning rate: per arm, the mean over seeds of the probe
    curve ``key`` with its 95% t band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(settings.lrs), figsize=(5.5 * len(settings.lrs), 3.8), dpi=110, squeeze=False
    )
    for ax, lr in zip(axes[0], settings.lrs, strict=True):
        drawn = False
        for arm in settings.arms:
            runs = [
                r
                for r in rows
                if r["lr"] == lr and r["arm"] == arm and r["status"] == "ok" and r.get(key)
            ]
            if not runs:
                continue
            length = min(len(r[key]) for r in runs)
            xs = runs[0]["_probe_steps"][:length]
            stats = [t_interval([r[key][i] for r in runs]) for i in range(length)]
            colour = ARM_COLOURS.get(arm)
            ax.plot(xs, [s.mean for s in stats], label=f"{arm} (n={len(runs)})", color=colour)
            if len(runs) > 1:
                ax.fill_between(
                    xs, [s.lo for s in stats], [s.hi for s in stats], color=colour, alpha=0.15
                )
            drawn = True
        ax.set_title(f"{lr} (lr {LEARNING_RATES[lr].lr:g})", fontsize=10)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("mean over seeds, 95% t band", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_clip_cells(path: Path, settings: Settings, rows: Sequence[dict[str, Any]]) -> None:
    """Writes a bar chart: per learning rate and old-probability bucket, the share of A>0
    token-updates that PPO clipped above (pooled over its runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bandpo_train.records import read_metrics

    buckets = ["p<0.01", "p0.01-0.1", "p0.1-0.5", "p>0.5"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=110)
    width = 0.8 / max(len(settings.lrs), 1)
    for i, lr in enumerate(settings.lrs):
        shares = []
        for bucket in buckets:
            tokens = clipped = 0.0
            for r in rows:
                if r["lr"] != lr or r["arm"] != REFERENCE_ARM or r["status"] != "ok":
                    continue
                for rec in read_metrics(Path(r["output_dir"]) / "metrics.jsonl"):
                    tokens += float(rec.get(f"count/pos/{bucket}") or 0.0)
                    clipped += float(rec.get(f"clipped_upper/pos/{bucket}") or 0.0)
            shares.append(clipped / tokens if tokens else 0.0)
        xs = [j + i * width for j in range(len(buckets))]
        ax.bar(xs, shares, width=width, label=f"{lr} (lr {LEARNING_RATES[lr].lr:g})")
    ax.axhline(REGIME_SHARE, color="grey", linestyle="--", linewidth=1, label="regime threshold")
    ax.set_xticks([j + width * (len(settings.lrs) - 1) / 2 for j in range(len(buckets))])
    ax.set_xticklabels(buckets)
    ax.set_ylabel("PPO upper-clipped share, A>0")
    ax.set_xlabel("old probability")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_study_json(
    path: Path,
    settings: Settings,
    regimes: dict[str, Regime],
    counts: dict[str, int],
    started: float,
) -> None:
    data = {
        "command": ["bandpo-train", "study", *settings.argv],
        "out": str(settings.out),
        "quick": settings.quick,
        "seeds": list(range(settings.seeds)),
        "rl_steps_per_run": settings.steps,
        "updates_per_rollout": UPDATES_PER_ROLLOUT,
        "jobs": settings.jobs,
        "torch_threads": settings.threads,
        "arms": {a: asdict(ARMS[a]) for a in settings.arms},
        "learning_rates": {lr: asdict(LEARNING_RATES[lr]) for lr in settings.lrs},
        "common_overrides": list(COMMON_OVERRIDES),
        "extra_overrides": list(settings.extra),
        "prediction": PREDICTION,
        "success": f"final P(correct) > {SUCCESS_P}",
        "regime": {
            lr: {**asdict(r), "share": r.share, "reached": r.reached} for lr, r in regimes.items()
        },
        "tests": "paired sign-flip permutation (exact <= 16 pairs), Holm over all comparisons",
        "runs": counts,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": time.time() - started,
        "versions": versions(),
    }
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
