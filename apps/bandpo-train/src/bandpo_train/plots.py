"""PNG plots of a run's metrics.jsonl: reward, entropy, clip fractions and KL against steps, and
the run's clips by side, advantage sign and old probability (band-ops' signed counts)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

from bandpo_train.records import read_metrics

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

PANELS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "reward": ("reward (mean over the rollout)", (("reward_mean", "reward"),)),
    "entropy": ("token entropy (nats)", (("entropy", "entropy"),)),
    "clip_fractions": (
        "fraction of tokens clipped",
        (("clip_frac_low", "low (A < 0)"), ("clip_frac_high", "high (A > 0)")),
    ),
    "kl": (
        "KL estimate",
        (("approx_kl", "to the sampling policy (k3)"), ("kl_ref", "to the reference")),
    ),
}


def plot_run(metrics: Path, out_dir: Path) -> list[Path]:
    """Writes one PNG per panel into ``out_dir``; returns their paths."""
    records = read_metrics(metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (ylabel, series) in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        drawn = False
        for key, label in series:
            points = [
                (r["step"], r[key])
                for r in records
                if isinstance(r.get(key), int | float) and math.isfinite(r[key])
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=label, linewidth=1.2)
                drawn = True
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn and len(series) > 1:
            ax.legend()
        if not drawn:
            ax.text(
                0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes
            )
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    written.append(plot_clip_cells(records, out_dir / "clip_cells.png"))
    return written


BUCKETS = ("p<0.01", "p0.01-0.1", "p0.1-0.5", "p>0.5")
#: The two cells where PPO-style clipping stops the gradient.
ACTIVE_CELLS = (
    ("upper", "pos", "above the upper bound, A > 0"),
    ("lower", "neg", "below the lower bound, A < 0"),
)


def plot_clip_cells(records: list[dict], path: Path) -> Path:
    """Writes a bar chart of the whole run: per old-probability bucket, the share of A > 0
    tokens clipped above and of A < 0 tokens clipped below (summed counts, not averaged
    fractions), with each bucket's token count on the bars; returns ``path``."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=110)
    width = 0.38
    drawn = False
    for i, (side, sign, label) in enumerate(ACTIVE_CELLS):
        shares, counts = [], []
        for bucket in BUCKETS:
            count = sum(float(r.get(f"count/{sign}/{bucket}") or 0.0) for r in records)
            clipped = sum(float(r.get(f"clipped_{side}/{sign}/{bucket}") or 0.0) for r in records)
            counts.append(count)
            shares.append(clipped / count if count else 0.0)
        xs = [j + (i - 0.5) * width for j in range(len(BUCKETS))]
        bars = ax.bar(xs, shares, width=width, label=label)
        for bar, count in zip(bars, counts, strict=True):
            ax.annotate(
                f"n={count:.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        drawn = drawn or any(counts)
    ax.set_xticks(range(len(BUCKETS)))
    ax.set_xticklabels(BUCKETS)
    ax.set_xlabel("old probability of the token")
    ax.set_ylabel("share clipped (whole run)")
    ax.grid(alpha=0.3, axis="y")
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no signed clip counts in this run",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
