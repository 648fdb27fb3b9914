"""Issue 18's metadata keys (dataset, AU source and rule, calibration, abstention, provenance)
and what ModelContract makes of them: probabilities, abstention threshold, provenance line."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fer_export.contract import (
    PREFIX,
    SYNTHETIC_NOTE,
    UNKNOWN_LABEL,
    ContractError,
    ModelContract,
    au_centres_from_rule,
    read_model,
)

CALIBRATION = {
    "method": "temperature", "temperature": 1.43, "transform": "log", "fitted_on": "val",
    "samples": 1363, "ece_before": 0.081, "ece_after": 0.023, "nll_before": 0.61,
    "nll_after": 0.52,
}  # fmt: skip
ABSTENTION = {
    "threshold": 0.42, "coverage_target": 0.9, "fitted_on": "val", "val_coverage": 0.9012,
    "val_accuracy_covered": 0.93,
}  # fmt: skip
PROVENANCE = {
    "dataset": "rafdb", "synthetic": False, "sizes": {"train": 12271, "val": 0, "test": 3068},
    "split": "the data set's own", "test_accuracy": 0.871, "mean_class_accuracy": 0.79,
    "au_source": "template", "trained_with": "fer-train 0.1", "note": "trained on rafdb",
}  # fmt: skip
RULE = [{"landmarks": [21], "down": 0.0}, {"landmarks": list(range(36, 42)), "down": 0.5}]


def _meta(helpers: types.ModuleType, **values: Any) -> dict[str, str]:
    """The tiny contract's metadata with ``values`` (JSON-encoded unless text) set."""
    meta = helpers.tiny_contract().to_metadata()
    for key, value in values.items():
        meta[PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def _error(helpers: types.ModuleType, **values: Any) -> str:
    with pytest.raises(ContractError) as info:
        ModelContract.from_metadata(_meta(helpers, **values), "m.onnx")
    return str(info.value)


# -- old files, every key valid --------------------------------------------------------------


def test_old_file_without_the_keys_loads_with_their_defaults(
    model_path: Path, helpers: types.ModuleType
) -> None:
    loaded = read_model(model_path)
    assert not any(
        k in loaded.metadata
        for k in ("fer.dataset", "fer.calibration", "fer.abstention", "fer.provenance")
    )
    c = loaded.contract
    assert (c.dataset, c.au_source, c.au_rule) == ("", "", ())
    assert (c.calibration, c.abstention, c.provenance) == ({}, {}, {})
    assert c.au_map_source == "template" and not c.calibrated and c.temperature == 1.0
    assert c.abstain_threshold is None and not c.is_synthetic
    assert c.score_transform == "log"  # capsule lengths
    assert c.provenance_line() == (
        "provenance unknown (exported without fer.provenance), uncalibrated, no abstention"
    )
    assert helpers.tiny_contract(attention="none").au_map_source == "none"
    assert helpers.tiny_contract(score_kind="logit").score_transform == "identity"


def test_every_new_key_round_trips(helpers: types.ModuleType) -> None:
    meta = _meta(
        helpers, dataset="rafdb", au_source="template", au_rule=RULE, calibration=CALIBRATION,
        abstention=ABSTENTION, provenance=PROVENANCE,
    )  # fmt: skip
    c = ModelContract.from_metadata(meta, "m.onnx")
    assert c.dataset == "rafdb" and c.au_source == "template"
    assert c.au_rule == (((21,), 0.0), (tuple(range(36, 42)), 0.5))
    assert c.calibration == CALIBRATION and c.abstention == ABSTENTION
    assert c.provenance == PROVENANCE
    assert c.calibrated and c.temperature == 1.43 and c.abstain_threshold == 0.42
    assert ModelContract.from_metadata(c.to_metadata(), "again") == c
    # A rule given as (landmarks, down) pairs -- capsnet-model's AU_RULE rows -- is the same.
    pairs = helpers.tiny_contract(au_rule=[((21,), 0), (tuple(range(36, 42)), 0.5)])
    assert pairs.au_rule == c.au_rule
    assert json.loads(pairs.to_metadata()["fer.au_rule"]) == RULE


# -- bad values: the key, the value and what was expected ------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "detail"),
    [
        ("dataset", "  ", "blank"),
        ("dataset", "raf\x1bdb", "control character"),
        ("au_source", "landmark", ""),
        ("au_rule", "[]", "0 rows"),
        ("au_rule", '[{"landmarks": [68], "down": 0}]', "landmark 68 is not 0..67"),
        ("au_rule", '[{"landmarks": [1, true], "down": 0}]', "landmark True is not 0..67"),
        ("au_rule", '[{"landmarks": [], "down": 0}]', "row 0 landmarks is []"),
        ("au_rule", '[{"landmarks": [1], "down": 0, "right": 1}]', "unknown field(s) right"),
        ("au_rule", '[{"landmarks": [1]}]', "lacks 'landmarks' or 'down'"),
        ("au_rule", '[{"landmarks": [1], "down": "x"}]', "row 0 down is a string"),
        ("calibration", '{"temperature": 1.5}', "method is missing"),
        ("calibration", '{"method": "platt", "temperature": 1}', "not one of temperature"),
        ("calibration", '{"method": "temperature"}', "temperature is missing"),
        ("calibration", '{"method": "temperature", "temperature": 0}', "not > 0"),
        ("calibration", '{"method": "temperature", "temperature": -2}', "not > 0"),
        ("calibration", '{"method": "temperature", "temperature": NaN}', "not finite"),
        ("calibration", '{"method": "temperature", "temperature": 1, "transform": "exp"}',
         "transform is 'exp'"),
        ("calibration", '{"method": "temperature", "temperature": 1, "ece_after": 1.5}',
         "ece_after is 1.5, not in [0, 1]"),
        ("calibration", '{"method": "temperature", "temperature": 1, "samples": -1}',
         "samples is -1"),
        ("calibration", "1.5", "it is a number"),
        ("abstention", '{"coverage_target": 0.9}', "threshold is missing"),
        ("abstention", '{"threshold": 1.2, "coverage_target": 0.9}', "not in [0, 1]"),
        ("abstention", '{"threshold": 0.4, "coverage_target": 0}', "coverage_target is 0"),
        ("abstention", '{"threshold": 0.4}', "coverage_target is missing"),
        ("provenance", '{"synthetic": false}', "dataset is missing"),
        ("provenance", '{"dataset": "rafdb"}', "synthetic is missing"),
        ("provenance", '{"dataset": "rafdb", "synthetic": "no"}', "not true or false"),
        ("provenance", '{"dataset": "x", "synthetic": false, "sizes": {"train": 1.5}}',
         "sizes.train is 1.5"),
        ("provenance", '{"dataset": "x", "synthetic": false, "test_accuracy": 87.1}',
         "test_accuracy is 87.1, not in [0, 1]"),
        ("provenance", '{"dataset": "x", "synthetic": false, "au_source": "mesh"}',
         "au_source is 'mesh'"),
    ],
)  # fmt: skip
def test_bad_value_names_key_value_and_expectation(
    helpers: types.ModuleType, key: str, value: str, detail: str
) -> None:
    message = _error(helpers, **{key: value})
    assert message.startswith(f"m.onnx: {PREFIX}{key} is "), message
    assert ", expected " in message
    assert value[:20] in message or repr(value)[:20] in message  # the bad value, shortened
    assert detail in message, message
    assert "\n" not in message
    # The same rule for a contract built in Python (field name instead of the key).
    if key in ("calibration", "abstention", "provenance", "au_rule"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return
        if parsed in ([], {}):  # a field's "not recorded" value, valid in Python
            return
        with pytest.raises(ContractError, match=f"{key} is "):
            helpers.tiny_contract(**{key: parsed})


def test_not_json_is_named(helpers: types.ModuleType) -> None:
    message = _error(helpers, calibration="{temperature: 2}")
    assert "fer.calibration is '{temperature: 2}', expected JSON: an object" in message
    assert "not JSON" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"attention": "baked", "au_source": "landmarks", "au_rule": RULE},
         "fer.au_source is 'landmarks', which needs fer.attention 'input' (got 'baked')"),
        ({"attention": "input", "au_centres": [[1, 2]], "au_source": "landmarks"},
         "fer.au_rule is missing, expected the AU-centre rule"),
        ({"attention": "none", "au_source": "template"},
         "fer.au_source is 'template' but fer.attention is 'none'"),
        ({"labels": ["happy", UNKNOWN_LABEL], "abstention": ABSTENTION},
         "fer.labels contain 'unknown', which fer.abstention gives"),
        ({"score_kind": "logit", "calibration": CALIBRATION},
         "fer.calibration transform is 'log' but fer.score_kind is 'logit'"),
        ({"dataset": "fer2013", "provenance": PROVENANCE},
         "fer.provenance says dataset 'rafdb' but fer.dataset is 'fer2013'"),
        ({"au_source": "none", "attention": "input", "au_centres": [[1, 2]],
          "provenance": PROVENANCE},
         "fer.provenance says au_source 'template' but fer.au_source is 'none'"),
    ],
)  # fmt: skip
def test_keys_that_contradict_each_other(
    helpers: types.ModuleType, values: dict[str, Any], expected: str
) -> None:
    assert expected in _error(helpers, **values)


def test_consistent_combinations_load(helpers: types.ModuleType) -> None:
    landmarks = ModelContract.from_metadata(
        _meta(helpers, attention="input", au_centres=[[1, 2]], au_source="landmarks",
              au_rule=RULE),
        "m.onnx",
    )  # fmt: skip
    assert landmarks.au_map_source == "landmarks"
    # Trained with zero maps: zeros by default for the attention input.
    zero = helpers.tiny_contract(attention="input", au_centres=((1.0, 2.0),), au_source="none")
    assert zero.au_map_source == "none" and not zero.default_attention(2).any()
    # "unknown" as a class name is fine without abstention.
    assert helpers.tiny_contract(labels=("happy", UNKNOWN_LABEL)).abstain_threshold is None


# -- probabilities ---------------------------------------------------------------------------


def _sums_to_one(p: np.ndarray) -> None:
    assert p.dtype == np.float64 and np.isfinite(p).all()
    assert (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-5)


def test_probabilities_of_capsule_lengths(helpers: types.ModuleType) -> None:
    c = helpers.tiny_contract()
    lengths = np.random.default_rng(0).uniform(0, 1, (50, 4)).astype(np.float32)
    lengths[0] = 0.0  # all zero
    lengths[1] = [0.0, 0.0, 0.5, 0.0]
    lengths[2] = [1e-9, 3e-9, 1e-7, 2e-8]  # an untrained model's lengths
    p = c.probabilities(lengths)
    _sums_to_one(p)
    # T = 1: the lengths normalised to sum 1 (zeros count as 1e-12).
    want = np.maximum(lengths.astype(np.float64), 1e-12)
    np.testing.assert_allclose(p, want / want.sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(p[0], 0.25)
    assert p[1, 2] > 1 - 1e-10
    # Calibrated: softmax(log(lengths) / T) = lengths ** (1 / T), normalised.
    t = helpers.tiny_contract(calibration={"method": "temperature", "temperature": 2.0})
    q = t.probabilities(lengths[3:])
    _sums_to_one(q)
    root = np.sqrt(lengths[3:].astype(np.float64))
    np.testing.assert_allclose(q, root / root.sum(axis=1, keepdims=True), rtol=1e-6)


def test_probabilities_of_logits_extreme_values(helpers: types.ModuleType) -> None:
    big = float(np.finfo(np.float32).max)
    logits = np.array(
        [[0.0, 0.0, 0.0, 0.0], [1000.0, -1000.0, 0.0, 5.0], [big, -big, big, 0.0],
         [-big, -big, -big, -big], [1e-30, -1e-30, 0, 0], [3.0, 1.0, 0.2, -4.0]],
        np.float32,
    )  # fmt: skip
    for temperature in (1.0, 1e-3, 50.0):
        cal = {"method": "temperature", "temperature": temperature, "transform": "identity"}
        c = helpers.tiny_contract(score_kind="logit", calibration=cal)
        p = c.probabilities(logits)
        _sums_to_one(p)
        np.testing.assert_allclose(p[0], 0.25)
        np.testing.assert_allclose(p[2, [0, 2]], 0.5)
        np.testing.assert_allclose(p[3], 0.25)
    plain = helpers.tiny_contract(score_kind="logit").probabilities(logits[5:])
    e = np.exp(logits[5].astype(np.float64))
    np.testing.assert_allclose(plain[0], e / e.sum(), rtol=1e-12)


def test_probabilities_refuses_wrong_shapes_and_nan(helpers: types.ModuleType) -> None:
    c = helpers.tiny_contract()
    with pytest.raises(ValueError, match=r"shape \(N, 4\), got \(2, 3\)"):
        c.probabilities(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(N, 4\), got \(4,\)"):
        c.probabilities(np.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        c.probabilities(np.array([[0.1, np.nan, 0.2, 0.3]]))
    assert c.probabilities(np.zeros((0, 4))).shape == (0, 4)


# -- provenance ------------------------------------------------------------------------------


def test_provenance_line_real_data(helpers: types.ModuleType) -> None:
    c = helpers.tiny_contract(
        dataset="rafdb", calibration=CALIBRATION, abstention=ABSTENTION, provenance=PROVENANCE
    )
    assert not c.is_synthetic
    assert c.provenance_line() == (
        "trained on rafdb (12271 train / 3068 test), test accuracy 0.871, mean class 0.790, "
        "calibrated T=1.43, abstains below 0.42"
    )


def test_synthetic_model_says_it_is_a_pipeline_check(helpers: types.ModuleType) -> None:
    p = {**PROVENANCE, "dataset": "synthetic", "synthetic": True, "au_source": "template"}
    c = helpers.tiny_contract(dataset="synthetic", provenance=p)
    assert c.is_synthetic
    line = c.provenance_line()
    assert line.startswith(SYNTHETIC_NOTE + " (12271 train / 3068 test)")
    assert "a pipeline check, not a real-face model" in line
    # Known from the data set name alone (no provenance), and from provenance alone.
    named = helpers.tiny_contract(dataset="synthetic")
    assert named.is_synthetic and named.provenance_line().startswith(SYNTHETIC_NOTE)
    assert "provenance unknown" in named.provenance_line()
    assert helpers.tiny_contract(provenance=p).is_synthetic
    assert "data set rafdb" in helpers.tiny_contract(dataset="rafdb").provenance_line()


# -- the AU rule -----------------------------------------------------------------------------


def test_au_rule_applies_capsnet_models_table() -> None:
    attention = pytest.importorskip("capsnet_model.attention", reason="the export extra")
    rule = tuple((tuple(r.landmarks), float(r.down)) for r in attention.AU_RULE)
    rng = np.random.default_rng(0)
    for _ in range(5):
        lm = rng.uniform(0, 300, (68, 2))
        np.testing.assert_array_equal(
            au_centres_from_rule(rule, lm), attention.au_centres_from_landmarks(lm)
        )
    with pytest.raises(ValueError, match=r"\(68, 2\), got \(5, 2\)"):
        au_centres_from_rule(rule, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        au_centres_from_rule(rule, np.full((68, 2), np.nan))


def test_landmark_map_equals_training_map(helpers: types.ModuleType) -> None:
    """The runtime's map for a crop of any size is the one training made: capsnet-model's
    landmark_attention_map on the crop, then Preprocess.resize to the input size."""
    attention = pytest.importorskip("capsnet_model.attention", reason="the export extra")
    from capsnet_model.data import Preprocess

    c = helpers.tiny_contract(
        input_size=64, attention="input", au_centres=((1.0, 2.0),), au_source="landmarks",
        au_rule=attention.AU_RULE,
    )  # fmt: skip
    template = attention.mean_face_template()
    for h, w in [(64, 64), (100, 100), (200, 150), (40, 50), (333, 333)]:
        lm = template * np.array([w, h]) * 0.8 + np.array([w, h]) * 0.1
        want = Preprocess(image_size=64).resize(attention.landmark_attention_map(lm, (h, w)))
        got = c.landmark_attention(lm, (h, w))
        assert got.shape == (64, 64) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # Another face gives another map: the landmarks matter.
    moved = c.landmark_attention(template * 40 + 20, (64, 64))
    assert np.abs(moved - c.landmark_attention(template * 64, (64, 64))).max() > 0.5
    with pytest.raises(ValueError, match="no fer.au_rule"):
        helpers.tiny_contract().landmark_attention(template * 64, (64, 64))
