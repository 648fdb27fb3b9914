"""The model card next to model.onnx: a Hugging Face YAML header the Hub can read, the run's
figures, and a synthetic-faces model saying it is a pipeline check."""

from __future__ import annotations

from typing import Any

import yaml

from fer_train.model_card import render_model_card


def _metrics(**changes: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "model": "e2capsnet_small",
        "parameters": 349224,
        "image_size": 64,
        "attention": "template",
        "onnx_score_kind": "capsule_length",
        "dataset": "synthetic faces (64 px)",
        "data_kind": "synthetic",
        "sizes": {"train": 1890, "val": 210, "test": 350},
        "test_samples": 350,
        "test_accuracy": 0.9943,
        "mean_class_accuracy": 0.9941,
        "per_class_accuracy": {"neutral": 1.0, "sadness": 0.98},
        "temperature": 0.306,
        "ece_before": 0.290,
        "ece_after": 0.0088,
        "abstain_threshold": 0.988,
        "test_coverage": 0.926,
        "test_accuracy_covered": 1.0,
        "calibration": {"val_samples": 210},
        "abstention": {"coverage_target": 0.9},
        "onnx_test_accuracy": 0.9943,
        "onnx_agreement": 1.0,
        "variants": {"int8": {"file": "model.int8.onnx", "size_ratio": 0.3, "agreement": 0.997}},
        "provenance": {"synthetic": True, "split": "train seed 0, test seed 1"},
        "environment": {"torch_threads": 2, "platform": "Linux", "versions": {"torch": "2.15"}},
        "epochs_run": 8,
        "best_epoch": 7,
    }
    m.update(changes)
    return m


def _header(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def test_synthetic_card_header_and_warning() -> None:
    card = render_model_card(_metrics())
    head = _header(card)
    assert head["license"] == "apache-2.0" and head["library_name"] == "onnx"
    assert "pipeline-check" in head["tags"] and head["datasets"] == ["synthetic"]
    result = head["model-index"][0]["results"][0]
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values["Test accuracy"] == 0.9943 and values["Mean class accuracy"] == 0.9941
    body = card.split("\n---\n", 1)[1]
    assert "A pipeline check, not a real-face model" in body.split("## Model")[0]
    assert "T = 0.306" in body and "0.290 before, 0.009 after" in body
    assert "below 0.988 is answered `unknown`" in body and "92.6 %" in body
    assert "model.int8.onnx" in body and "0.9970" in body
    assert "Not for recognising expressions of real people" in body


def test_real_data_card_names_the_data_terms_and_no_pipeline_tag() -> None:
    card = render_model_card(
        _metrics(data_kind="rafdb", dataset="RAF-DB basic", provenance={"synthetic": False})
    )
    head = _header(card)
    assert head["license"] == "other" and head["license_name"] == "rafdb-terms"
    assert "pipeline-check" not in head["tags"]
    assert "pipeline check" not in card
    assert "the weights derive from RAF-DB basic" in card


def test_uncalibrated_card_says_so() -> None:
    card = render_model_card(
        _metrics(temperature=None, abstain_threshold=None, calibration={"skipped": "no val"})
    )
    assert "**Calibration:** none (no val)" in card and "**Abstention:**" not in card
    assert "Expected calibration error" not in card.split("\n---\n", 1)[0]
