"""Evaluation: accuracy, mean per-class accuracy, confusion matrix (CSV and PNG).

RAF-DB and AffectNet are imbalanced (RAF-DB test: 1185 happy faces, 74 fearful), so the mean
of the per-class accuracies -- the diagonal of the row-normalised confusion matrix -- is
reported next to the overall accuracy. Confusion matrices have true labels as rows and
predictions as columns.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from capsnet_model._io import atomic_write_bytes, atomic_write_text
from capsnet_model.datasets import EXPRESSIONS


def confusion_matrix(
    targets: Sequence[int] | np.ndarray | torch.Tensor,
    predictions: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: row = true label, column = prediction."""
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} targets but {p.size} predictions")
    for name, v in (("target", t), ("prediction", p)):
        bad = (v < 0) | (v >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} {int(v[bad][0])} at position {int(np.argmax(bad))} is outside "
                f"0..{num_classes - 1}"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


@dataclass
class Evaluation:
    """Metrics of one evaluation pass.

    ``per_class_accuracy[k]`` is ``None`` for a class with no samples;
    ``mean_class_accuracy`` averages the classes that have samples.
    """

    confusion: np.ndarray
    labels: tuple[str, ...]
    loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        n = self.num_samples
        return float(np.trace(self.confusion) / n) if n else float("nan")

    @property
    def per_class_accuracy(self) -> list[float | None]:
        rows = self.confusion.sum(axis=1)
        return [
            float(self.confusion[k, k] / rows[k]) if rows[k] else None for k in range(len(rows))
        ]

    @property
    def mean_class_accuracy(self) -> float:
        present = [a for a in self.per_class_accuracy if a is not None]
        return float(np.mean(present)) if present else float("nan")

    def __post_init__(self) -> None:
        self.confusion = np.asarray(self.confusion, dtype=np.int64)
        _check_confusion(self.confusion, self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "accuracy": self.accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "loss": self.loss,
            "per_class_accuracy": dict(zip(self.labels, self.per_class_accuracy, strict=True)),
            "confusion": self.confusion.tolist(),
            "labels": list(self.labels),
            **self.extra,
        }

    def summary(self) -> str:
        loss = "" if self.loss is None else f", loss {self.loss:.4f}"
        return (
            f"accuracy {self.accuracy:.4f}, mean class accuracy "
            f"{self.mean_class_accuracy:.4f} on {self.num_samples} samples{loss}"
        )

    def save(self, directory: str | Path, prefix: str = "test") -> dict[str, Path]:
        """Write ``<prefix>_metrics.json``, ``<prefix>_confusion.csv`` and
        ``<prefix>_confusion.png`` into ``directory``; returns the paths by kind."""
        d = Path(directory)
        paths = {
            "metrics": d / f"{prefix}_metrics.json",
            "csv": d / f"{prefix}_confusion.csv",
            "png": d / f"{prefix}_confusion.png",
        }
        atomic_write_text(paths["metrics"], json.dumps(self.to_dict(), indent=2) + "\n")
        write_confusion_csv(self.confusion, self.labels, paths["csv"])
        write_confusion_png(self.confusion, self.labels, paths["png"], title=f"{prefix} set")
        return paths


def write_confusion_csv(confusion: np.ndarray, labels: Sequence[str], path: str | Path) -> Path:
    """CSV with a header row of predicted labels and one row per true label (counts)."""
    _check_confusion(confusion, labels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *labels])
    for name, row in zip(labels, confusion, strict=True):
        writer.writerow([name, *(int(v) for v in row)])
    return atomic_write_text(path, buf.getvalue())


def read_confusion_csv(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Inverse of :func:`write_confusion_csv`."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    labels = tuple(rows[0][1:])
    return np.asarray([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64), labels


def _check_confusion(confusion: np.ndarray, labels: Sequence[str]) -> None:
    n = len(labels)
    if confusion.shape != (n, n):
        raise ValueError(f"confusion matrix {confusion.shape} does not match {n} labels")


def write_confusion_png(
    confusion: np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    cell: int = 72,
) -> Path:
    """Heat map of the row-normalised matrix; each cell shows its percentage and count.

    Rows are true labels, columns predictions; the colour is the row fraction (viridis).
    Drawn with OpenCV, so no plotting library is needed.
    """
    _check_confusion(confusion, labels)
    n = len(labels)
    rows = confusion.sum(axis=1, keepdims=True)
    frac = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    left, top, bottom = 110, 46, 56
    width, height = left + n * cell + 16, top + n * cell + bottom
    img = np.full((height, width, 3), 255, np.uint8)
    colours = cv2.applyColorMap(np.clip(frac * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[
        ..., ::-1
    ]  # (n, n, 3) RGB
    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            colour = tuple(int(c) for c in colours[i, j])
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            ink = (0, 0, 0) if frac[i, j] > 0.6 else (255, 255, 255)
            cv2.putText(
                img,
                f"{100 * frac[i, j]:.0f}%",
                (x0 + 8, y0 + cell // 2),
                font,
                0.5,
                ink,
                1,
                cv2.LINE_AA,
            )
            cv2.putText(
                img,
                str(int(confusion[i, j])),
                (x0 + 8, y0 + cell // 2 + 18),
                font,
                0.38,
                ink,
                1,
                cv2.LINE_AA,
            )
    for k, name in enumerate(labels):
        short = name[:11]
        cv2.putText(
            img, short, (6, top + k * cell + cell // 2 + 4), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA
        )
        cv2.putText(
            img,
            short[:9],
            (left + k * cell + 4, top + n * cell + 18),
            font,
            0.38,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    cv2.putText(
        img,
        "predicted",
        (left + n * cell // 2 - 36, height - 12),
        font,
        0.45,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    heading = f"{title}: " if title else ""
    acc = np.trace(confusion) / max(1, confusion.sum())
    cv2.putText(
        img,
        f"{heading}rows = true label, accuracy {100 * acc:.1f}%",
        (6, 28),
        font,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode the confusion matrix PNG for {path}")
    return atomic_write_bytes(path, png.tobytes())


def _batches(
    data: Dataset[Any] | DataLoader[Any] | Iterable[Any], batch_size: int
) -> Iterable[Any]:
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def _unpack(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    if len(batch) == 2:
        return batch[0], None, batch[1]
    raise ValueError(
        f"batches must be (image, label) or (image, attention, label), got {len(batch)} parts"
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any] | Iterable[Any],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores (N, C) and labels (N,) for every item, in order, in eval mode."""
    if device is not None:
        dev = torch.device(device)
    else:
        first = next(iter(model.parameters()), None)
        dev = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    scores: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    try:
        for batch in _batches(data, batch_size):
            image, attention, label = _unpack(batch)
            att = attention.to(dev) if attention is not None else None
            scores.append(model(image.to(dev), att).float().cpu())
            targets.append(torch.as_tensor(label).long())
    finally:
        model.train(was_training)
    if not scores:
        raise ValueError("nothing to evaluate: the data set is empty")
    return torch.cat(scores), torch.cat(targets)


def evaluate(
    model: nn.Module,
    data: Dataset[Any] | DataLoader[Any] | Iterable[Any],
    *,
    labels: Sequence[str] = EXPRESSIONS,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Accuracy, mean per-class accuracy and confusion matrix of ``model`` on ``data``.

    ``data`` yields ``(image, attention, label)`` (e.g. :class:`~capsnet_model.data.FaceTensors`)
    or ``(image, label)`` items; a Dataset is batched with ``batch_size``.
    """
    scores, targets = predict(model, data, batch_size=batch_size, device=device)
    if scores.shape[1] != len(labels):
        raise ValueError(f"model gives {scores.shape[1]} scores but there are {len(labels)} labels")
    conf = confusion_matrix(targets, scores.argmax(dim=1), len(labels))
    return Evaluation(conf, tuple(labels))
