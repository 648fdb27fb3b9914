"""Learning curves (train/val loss and accuracy per epoch) and the reliability diagram of the
calibration (before and after temperature scaling)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from capsnet_model import atomic_write_bytes
from capsnet_model.calibration import ReliabilityBins

PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("loss", (("train_loss", "train"), ("val_loss", "validation"))),
    ("accuracy", (("train_accuracy", "train"), ("val_accuracy", "validation"))),
)


def plot_learning_curves(
    history: Sequence[dict[str, Any]], path: Path, best_epoch: int | None = None
) -> Path:
    """Writes one PNG with a loss panel and an accuracy panel against epochs; returns it."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, (ylabel, series) in zip(axes, PANELS, strict=True):
        drawn = False
        for key, label in series:
            points = [
                (r["epoch"], r[key])
                for r in history
                if isinstance(r.get(key), int | float) and math.isfinite(r[key])
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=label)
                drawn = True
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no epochs logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_reliability(
    before: ReliabilityBins, after: ReliabilityBins, path: Path, temperature: float
) -> Path:
    """Writes one PNG with the reliability diagram before (T = 1) and after temperature
    scaling (per bin of the top probability: the accuracy as a bar, the mean confidence as a
    dot; calibrated bins reach the diagonal); returns it."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=110)
    panels = ((before, "before (T = 1)"), (after, f"after (T = {temperature:.3g})"))
    for ax, (bins, title) in zip(axes, panels, strict=True):
        edges = bins.edges
        width = float(edges[1] - edges[0])
        used = bins.counts > 0
        ax.bar(
            edges[:-1][used],
            bins.accuracy[used],
            width=width,
            align="edge",
            edgecolor="black",
            linewidth=0.5,
            alpha=0.8,
            label="accuracy",
        )
        # the bin's mean confidence above its centre: the gap to the bar is the miscalibration
        ax.plot(
            edges[:-1][used] + width / 2,
            bins.confidence[used],
            "o",
            color="C1",
            ms=4,
            label="mean confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top probability")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {bins.ece:.4f} ({bins.samples} test faces)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
