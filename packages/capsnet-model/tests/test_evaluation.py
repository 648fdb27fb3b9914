"""Evaluation: confusion matrices (counts, orientation, files), metrics and model evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from capsnet_model.datasets import EXPRESSIONS
from capsnet_model.evaluation import (
    Evaluation,
    confusion_matrix,
    evaluate,
    predict,
    read_confusion_csv,
    write_confusion_csv,
    write_confusion_png,
)

NUM_CLASSES = len(EXPRESSIONS)


class LabelReader(nn.Module):
    """Scores the class written into pixel (0, 0, 0) of each image: a perfect classifier."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))
        self.seen_training: list[bool] = []
        self.seen_attention: list[bool] = []

    def forward(self, image: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        self.seen_training.append(self.training)
        self.seen_attention.append(attention is not None)
        label = image[:, 0, 0, 0].round().long()
        return self.scale * nn.functional.one_hot(label, self.num_classes).float()


class Constant(nn.Module):
    """Always predicts class ``k``."""

    def __init__(self, k: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, image: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.bias.expand(image.shape[0], -1).clone()
        scores[:, self.k] = 1.0
        return scores


def _labelled(labels: list[int], size: int = 4) -> TensorDataset:
    images = torch.rand(len(labels), 3, size, size)
    y = torch.tensor(labels)
    images[:, 0, 0, 0] = y.float()
    attention = torch.rand(len(labels), 1, size, size)
    return TensorDataset(images, attention, y)


LABELS = [0, 0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 6, 2, 0, 1, 3, 3]


# --- confusion_matrix ---------------------------------------------------------------------


def test_confusion_matrix_counts() -> None:
    targets = [0, 0, 1, 2, 2, 2, 1]
    predictions = [0, 1, 1, 2, 0, 2, 1]
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    cm = confusion_matrix(targets, predictions, 3)
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    cm_t = confusion_matrix(torch.tensor(targets), np.array(predictions), 3)
    np.testing.assert_array_equal(cm_t, expected)


def test_confusion_matrix_rows_are_true_labels() -> None:
    cm = confusion_matrix([0], [2], 3)
    assert cm[0, 2] == 1 and cm[2, 0] == 0 and cm.sum() == 1
    assert confusion_matrix([], [], 4).shape == (4, 4)


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="target 5 at position 1 is outside 0..2"):
        confusion_matrix([0, 5, 1, 7], [0, 0, 0, 0], 3)
    with pytest.raises(ValueError, match="prediction -1 at position 2"):
        confusion_matrix([0, 1, 2], [0, 1, -1], 3)
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        confusion_matrix([0, 1, 2], [0, 1], 3)


# --- Evaluation ---------------------------------------------------------------------------

CONFUSION = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])


def test_evaluation_metrics_by_hand() -> None:
    ev = Evaluation(CONFUSION, ("a", "b", "c"), loss=0.5, extra={"epoch": 4})
    assert ev.num_samples == 8
    assert ev.accuracy == pytest.approx(5 / 8)
    assert ev.per_class_accuracy == [pytest.approx(0.75), None, pytest.approx(0.5)]
    assert ev.mean_class_accuracy == pytest.approx((0.75 + 0.5) / 2)  # absent class ignored
    d = ev.to_dict()
    assert set(d) == {
        "num_samples",
        "accuracy",
        "mean_class_accuracy",
        "loss",
        "per_class_accuracy",
        "confusion",
        "labels",
        "epoch",
    }
    assert d["per_class_accuracy"] == {"a": 0.75, "b": None, "c": 0.5}
    assert d["confusion"] == CONFUSION.tolist() and d["labels"] == ["a", "b", "c"]
    assert d["loss"] == 0.5 and d["epoch"] == 4
    json.dumps(d)  # JSON-serialisable as is
    assert "0.6250" in ev.summary() and "8 samples" in ev.summary()


def test_empty_evaluation_is_nan() -> None:
    ev = Evaluation(np.zeros((2, 2), np.int64), ("a", "b"))
    assert np.isnan(ev.accuracy) and np.isnan(ev.mean_class_accuracy)
    assert ev.per_class_accuracy == [None, None]


def test_save_writes_json_csv_png_atomically(tmp_path: Path) -> None:
    ev = Evaluation(CONFUSION, ("a", "b", "c"), loss=1.25)
    paths = ev.save(tmp_path / "out", prefix="val")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "val_metrics.json",
        "val_confusion.csv",
        "val_confusion.png",
    }
    assert paths["metrics"].name == "val_metrics.json"
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["accuracy"] == pytest.approx(5 / 8) and metrics["loss"] == 1.25
    assert metrics["per_class_accuracy"]["b"] is None
    matrix, labels = read_confusion_csv(paths["csv"])
    np.testing.assert_array_equal(matrix, CONFUSION)
    assert labels == ("a", "b", "c")
    png = cv2.imread(str(paths["png"]), cv2.IMREAD_UNCHANGED)
    assert png is not None and png.ndim == 3 and png.shape[2] == 3
    big = Evaluation(np.eye(7, dtype=np.int64), EXPRESSIONS).save(tmp_path / "out", prefix="big")
    big_png = cv2.imread(str(big["png"]), cv2.IMREAD_UNCHANGED)
    assert big_png is not None
    assert big_png.shape[0] > png.shape[0] and big_png.shape[1] > png.shape[1]
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert len(list((tmp_path / "out").iterdir())) == 6


def test_png_and_csv_reject_mismatched_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not match 2 labels"):
        write_confusion_png(CONFUSION, ("a", "b"), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"confusion matrix \(3, 3\) does not match 4 labels"):
        write_confusion_csv(CONFUSION, ("a", "b", "c", "d"), tmp_path / "x.csv")
    assert not list(tmp_path.iterdir())


# --- predict / evaluate -------------------------------------------------------------------


def test_perfect_model_scores_one() -> None:
    model = LabelReader()
    ev = evaluate(model, _labelled(LABELS), batch_size=5)
    assert ev.accuracy == 1.0 and ev.mean_class_accuracy == 1.0
    assert ev.num_samples == len(LABELS)
    np.testing.assert_array_equal(np.diag(ev.confusion), np.bincount(LABELS, minlength=7))
    assert len(model.seen_training) == 4 and all(model.seen_attention)  # ceil(17 / 5) batches


@pytest.mark.parametrize("k", [0, 3, 5])
def test_constant_model_scores_the_class_share(k: int) -> None:
    ev = evaluate(Constant(k), _labelled(LABELS))
    assert ev.accuracy == pytest.approx(LABELS.count(k) / len(LABELS))
    np.testing.assert_array_equal(ev.confusion[:, k], np.bincount(LABELS, minlength=7))
    assert ev.per_class_accuracy[k] == 1.0
    assert ev.mean_class_accuracy == pytest.approx(1 / 7)  # all classes present, one right


def test_predict_order_two_part_batches_and_loaders() -> None:
    data = _labelled(LABELS)
    pairs = TensorDataset(data.tensors[0], data.tensors[2])
    model = LabelReader()
    scores, targets = predict(model, DataLoader(pairs, batch_size=4))
    assert targets.tolist() == LABELS
    assert scores.argmax(1).tolist() == LABELS and scores.dtype == torch.float32
    assert not any(model.seen_attention)
    with pytest.raises(ValueError, match="got 4 parts"):
        predict(model, [(torch.zeros(1, 3, 4, 4), None, torch.zeros(1), torch.zeros(1))])


@pytest.mark.parametrize("training", [True, False])
def test_predict_runs_in_eval_mode_and_restores_it(training: bool) -> None:
    model = LabelReader().train(training)
    predict(model, _labelled(LABELS))
    assert model.seen_training and not any(model.seen_training)
    assert model.training is training
    with pytest.raises(ValueError, match="data set is empty"):
        predict(model, _labelled([]))
    assert model.training is training


def test_predict_restores_mode_when_the_model_fails() -> None:
    class Broken(LabelReader):
        def forward(
            self, image: torch.Tensor, attention: torch.Tensor | None = None
        ) -> torch.Tensor:
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        predict(model, _labelled(LABELS))
    assert model.training


def test_evaluate_checks_the_number_of_labels() -> None:
    with pytest.raises(ValueError, match="model gives 7 scores but there are 3 labels"):
        evaluate(LabelReader(), _labelled(LABELS), labels=("a", "b", "c"))
    ev = evaluate(LabelReader(3), _labelled([0, 1, 2, 2]), labels=("a", "b", "c"))
    assert ev.labels == ("a", "b", "c") and ev.accuracy == 1.0
