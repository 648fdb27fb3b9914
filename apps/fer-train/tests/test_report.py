"""report.md's calibration section from hand-made metrics: each case says what it should."""

from __future__ import annotations

from typing import Any

from fer_train.report import _calibration_section


def _metrics(**calibration: Any) -> dict[str, Any]:
    figures = {"ece_before": 0.3, "ece_after": 0.01, "nll_before": 0.9, "nll_after": 0.1}
    cal = {
        "method": "temperature",
        "transform": "log",
        "temperature": 0.5,
        "at_bound": None,
        "val_samples": 210,
        "bins": 15,
        "test": figures,
        "val": figures,
        **calibration,
    }
    abstention = {
        "threshold": 0.61,
        "coverage_target": 0.9,
        "val_coverage": 0.9,
        "val_accuracy_covered": 0.99,
        "test_coverage": 0.88,
        "test_accuracy_covered": 0.995,
        "test_abstained": 42,
    }
    return {"calibration": cal, "abstention": abstention, "test_accuracy": 0.97}


def test_the_section_states_t_ece_threshold_and_coverage() -> None:
    text = "\n".join(_calibration_section(_metrics()))
    assert "**T = 0.5**, fitted on the 210 validation faces" in text
    assert "**0.3000 before, 0.0100 after**" in text
    assert "below **0.6100** is labelled `unknown`" in text
    assert "coverage 88.0%, accuracy 0.9950 on the answered faces** (42 abstained" in text
    assert "bound" not in text


def test_a_fit_on_a_bound_is_said() -> None:
    lower = "\n".join(_calibration_section(_metrics(temperature=0.01, at_bound="lower")))
    assert "lower bound" in lower and "says little" in lower
    upper = "\n".join(_calibration_section(_metrics(temperature=100.0, at_bound="upper")))
    assert "upper bound" in upper and "flattened" in upper


def test_skipped_calibration_and_abstention_are_said() -> None:
    m = _metrics()
    m["calibration"] = {"skipped": "no validation split", "test": {"ece_before": 0.2}, "bins": 15}
    m["abstention"] = {"skipped": "no validation split"}
    text = "\n".join(_calibration_section(m))
    assert "**skipped**: no validation split" in text and "never abstains" in text
    assert "test ECE at T = 1: 0.2000" in text
    m = _metrics()
    m["abstention"] = {"skipped": "the labels include 'unknown'"}
    text = "\n".join(_calibration_section(m))
    assert "abstention: none (the labels include 'unknown')" in text and "T = 0.5" in text
