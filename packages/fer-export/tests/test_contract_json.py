"""The one JSON form of the contract (``ModelContract.to_dict``): its keys and values, the
metadata written from it, and ``fer-export info --json`` answering it."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from fer_export.cli import main
from fer_export.contract import PREFIX, ModelContract

#: Keys GET /metadata documented before the contract had one JSON form (fer-edge README).
METADATA_KEYS = {
    "labels", "num_classes", "input_size", "input_shape", "layout", "channel_order",
    "pixel_scale", "mean", "std", "attention", "score_kind", "face_margin", "precision",
    "model_name", "model_version", "exporter",
}  # fmt: skip


def test_to_dict_holds_every_field_as_json(helpers: types.ModuleType) -> None:
    contract = helpers.tiny_contract(
        attention="input",
        au_centres=helpers.AU_CENTRES,
        exporter={"fer-export": "1.0"},
        extra={"model_class": "Tiny", "nested": {"a": [1, 2]}},
    )
    d = contract.to_dict()
    assert METADATA_KEYS <= set(d)
    assert json.loads(json.dumps(d)) == d  # plain JSON types only
    assert d["format"] == "fer-export/1" and d["layout"] == "NCHW"
    assert d["labels"] == list(helpers.LABELS) and d["num_classes"] == len(helpers.LABELS)
    assert d["input_size"] == 16 and d["input_shape"] == ["N", 3, 16, 16]
    assert d["mean"] == [0.5, 0.4, 0.3] and d["std"] == [0.25, 0.2, 0.3]
    assert d["au_centres"] == [list(c) for c in helpers.AU_CENTRES]
    assert d["extra"] == {"model_class": "Tiny", "nested": {"a": [1, 2]}}
    # A copy: changing it leaves the contract alone.
    d["exporter"]["x"] = "y"
    assert "x" not in contract.exporter


#: Keys added for issue 18: a file need not have them, and they are not written when empty.
OPTIONAL_KEYS = {"dataset", "au_source", "au_rule", "calibration", "abstention", "provenance"}
DERIVED = {PREFIX + "num_classes", PREFIX + "input_shape"}


def test_metadata_is_the_json_form_without_derived_keys(helpers: types.ModuleType) -> None:
    contract = helpers.tiny_contract(attention="input", au_centres=helpers.AU_CENTRES)
    meta = contract.to_metadata()
    d = contract.to_dict()
    assert OPTIONAL_KEYS <= set(d)  # in the JSON form as "", [] or {}
    assert set(meta) == {PREFIX + k for k in d} - DERIVED - {PREFIX + k for k in OPTIONAL_KEYS}
    for key, text in meta.items():
        value = d[key[len(PREFIX) :]]
        assert (text if isinstance(value, str) else json.loads(text)) == value, key
    assert ModelContract.from_metadata(meta) == contract


def test_info_json_answers_the_contract_json(
    model_path: Path, helpers: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    contract = helpers.tiny_contract()
    assert {k: info[k] for k in contract.to_dict()} == contract.to_dict()
    # The key this command used for the model name before it answered the contract's form.
    assert info["model"] == info["model_name"] == "tiny"
    assert info["file"] == str(model_path) and info["size_bytes"] == model_path.stat().st_size
    assert info["inputs"][0]["name"] == "image" and info["outputs"][0]["name"] == "scores"


def test_metadata_with_every_key_is_the_json_form(helpers: types.ModuleType) -> None:
    contract = helpers.tiny_contract(
        attention="input",
        au_centres=helpers.AU_CENTRES,
        dataset="rafdb",
        au_source="landmarks",
        au_rule=[{"landmarks": [36, 45], "down": 0.5}],
        calibration={"method": "temperature", "temperature": 1.5, "transform": "log"},
        abstention={"threshold": 0.4, "coverage_target": 0.9},
        provenance={"dataset": "rafdb", "synthetic": False, "sizes": {"train": 10, "test": 5}},
    )
    meta = contract.to_metadata()
    d = contract.to_dict()
    assert set(meta) == {PREFIX + k for k in d} - DERIVED
    assert d["au_rule"] == [{"landmarks": [36, 45], "down": 0.5}]
    for key, text in meta.items():
        value = d[key[len(PREFIX) :]]
        assert (text if isinstance(value, str) else json.loads(text)) == value, key
    assert ModelContract.from_metadata(meta) == contract
