"""Learning curves: train/val loss and accuracy per epoch, from the run's history."""

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
