"""PNG plots of a run's metrics.jsonl: reward, entropy, clip fractions and KL against steps."""

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
    return written
