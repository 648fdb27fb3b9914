"""fer-train's calibration step on hand-made scores: what it fits, measures and writes."""

from __future__ import annotations

import numpy as np
import pytest

from capsnet_model.calibration import probabilities
from fer_train.config import AppConfig
from fer_train.run import _calibrate


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Capsule-length-like scores of an over-confident 3-class model and their targets."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return probabilities(3.0 * logits, 1.0, "identity") * 1.3, targets


def test_fitted_on_val_measured_on_test() -> None:
    val, test = _scores(4000, 0), _scores(4000, 1)
    cfg = AppConfig()
    c = _calibrate(cfg, "log", ("a", "b", "c"), val, test, "")
    assert c.temperature == pytest.approx(3.0, rel=0.1) and not c.skipped
    assert c.metrics["test"]["ece_after"] < c.metrics["test"]["ece_before"]
    meta = c.calibration_meta
    assert meta is not None and meta["samples"] == 4000 and meta["fitted_on"] == "val"
    assert meta["ece_after"] == c.metrics["test"]["ece_after"]  # the file states test figures
    ab = c.abstention_meta
    assert ab is not None and ab["coverage_target"] == 0.9 and ab["val_coverage"] >= 0.9
    # on a test set drawn like the validation set, the coverage comes out close
    assert c.abstention["test_coverage"] == pytest.approx(0.9, abs=0.03)


def test_no_validation_split_skips_both() -> None:
    c = _calibrate(AppConfig(), "log", ("a", "b", "c"), None, _scores(50, 1), "no val")
    assert c.skipped == "no val" and c.calibration_meta is None and c.abstention_meta is None
    assert c.metrics["skipped"] == "no val" and c.abstention == {"skipped": "no val"}
    assert "ece_before" in c.metrics["test"] and "ece_after" not in c.metrics["test"]


def test_a_class_named_unknown_gets_no_abstention() -> None:
    c = _calibrate(AppConfig(), "log", ("a", "unknown", "c"), _scores(200, 0), _scores(50, 1), "")
    assert c.calibration_meta is not None and c.abstention_meta is None
    assert "unknown" in c.abstention["skipped"]
