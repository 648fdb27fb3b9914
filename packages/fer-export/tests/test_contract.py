"""Reading model files: every ``fer.*`` metadata value checked against the contract, the
graph checked against the metadata, and one message per kind of bad file (no torch)."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fer_export.contract import (
    MAX_INPUT_SIZE,
    ContractError,
    ModelContract,
    ModelLoadError,
    load_onnx,
    paint_attention_map,
    read_model,
)
from fer_export.runtime import FERSession


def _write(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _with(helpers: types.ModuleType, **changes: str | None) -> dict[str, str]:
    """The tiny model's metadata with ``fer.<key>`` set (or removed for None)."""
    meta = helpers.tiny_contract().to_metadata()
    for key, value in changes.items():
        if value is None:
            meta.pop(f"fer.{key}", None)
        else:
            meta[f"fer.{key}"] = value
    return meta


# -- one bad value per case: the message names the file, the key, the value, what is expected

BAD_VALUES: list[tuple[str, str, str]] = [
    # key, stored value, a piece of the message after "expected"
    ("labels", "happy", "not JSON"),  # used to become the labels h, a, p, p, y
    ("labels", '"happy"', "it is a string"),
    ("labels", '["happy"]', "1 label(s)"),
    ("labels", '["happy", "happy", "sad", "angry"]', "'happy' appears twice"),
    ("labels", '["happy", "", "sad", "angry"]', "label 1 is blank"),
    ("labels", '["happy", "  ", "sad", "angry"]', "label 1 is blank"),
    ("labels", '["happy", 3, "sad", "angry"]', "label 1 is a number, not text"),
    ("labels", '["happy", "\\u001b[2J", "sad", "angry"]', "control character"),
    ("labels", '{"0": "happy"}', "it is an object"),
    ("input_size", "big", "not JSON"),
    ("input_size", "16.0", "not an integer"),
    ("input_size", "true", "it is a boolean"),
    ("input_size", "0", "out of range"),
    ("input_size", "-16", "out of range"),
    ("input_size", str(MAX_INPUT_SIZE + 1), "out of range"),
    ("input_size", "1" + "0" * 5000, "not usable JSON"),
    ("input_size", "[16]", "it is a list"),
    ("mean", "[0.5, 0.4]", "2 value(s)"),
    ("mean", "[0.5, 0.4, 0.3, 0.2]", "4 value(s)"),
    ("mean", "[NaN, 0.4, 0.3]", "not finite"),
    ("mean", "[1e39, 0.4, 0.3]", "not finite in float32"),
    ("mean", '["0.5", 0.4, 0.3]', "value 0 is a string, not a number"),
    ("mean", "0.5", "it is a number"),
    ("std", "[0.25, 0, 0.3]", "value 1 is 0.0"),
    ("std", "[0.25, -0.2, 0.3]", "value 1 is -0.2"),
    ("std", "[0.25, 1e-45, 0.3]", "value 1 is 1e-45"),
    ("std", "[0.25, Infinity, 0.3]", "not finite"),
    ("std", "[true, 0.2, 0.3]", "value 0 is a boolean"),
    ("attention", "sideways", "one of baked, input, none"),
    ("attention", '"baked"', "one of baked, input, none"),  # plain text, not JSON
    ("score_kind", "probability", "one of capsule_length, logit"),
    ("channel_order", "rgb", "one of RGB, BGR"),
    ("precision", "fp8", "one of fp32, fp16, int8"),
    ("layout", "NHWC", "'NCHW'"),
    ("pixel_scale", "0", "a number > 0"),
    ("pixel_scale", "-1", "a number > 0"),
    ("pixel_scale", "Infinity", "not finite"),
    ("pixel_scale", "1/255", "not JSON"),
    ("face_margin", "-0.1", "a number >= 0 and < 1"),
    ("face_margin", "1", "a number >= 0 and < 1"),
    ("face_margin", "NaN", "not finite"),
    ("au_centres", "[[1, 2, 3]]", "centre 0 is [1, 2, 3]"),
    ("au_centres", '[[1, "2"]]', "centre 0 y is a string"),
    ("au_centres", "[[1, 2]]" * 2, "not JSON"),
    ("au_centres", json.dumps([[1, 2]] * 300), "300 centres"),
    ("au_grid", "0", "out of range"),
    ("au_grid", "100000", "out of range"),
    ("au_falloff", "0", "a number > 0"),
    ("exporter", '{"torch": 2}', "the value of 'torch' is a number"),
    ("exporter", '["torch"]', "it is a list"),
    ("extra", "[]", "it is a list"),
    ("extra", '{"a": ' * 40 + "1" + "}" * 40, "nested deeper than 32 levels"),
    ("extra", "[" * 20000, "nested too deeply"),
    ("model_name", "tiny\x1b[31m", "control character"),
]


@pytest.mark.parametrize(
    ("key", "value", "detail"), BAD_VALUES, ids=[f"{k}={v[:20]}" for k, v, _ in BAD_VALUES]
)
def test_bad_metadata_value(
    make_model: Any, helpers: types.ModuleType, key: str, value: str, detail: str
) -> None:
    path = make_model("bad.onnx", metadata=_with(helpers, **{key: value}))
    with pytest.raises(ContractError) as info:
        read_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: fer.{key} is "), message
    assert "expected" in message and detail in message, message
    assert "\n" not in message and len(message) < 500, message
    shown = repr(value) if len(value) <= 60 else f"({len(value)} chars)"
    assert shown in message, message
    # The same check, the same message, wherever a model is loaded.
    with pytest.raises(ContractError) as again:
        FERSession(path, "cpu", warmup=False)
    assert str(again.value) == message


def test_several_bad_values_are_all_named(make_model: Any, helpers: types.ModuleType) -> None:
    meta = _with(helpers, labels="happy", std="[1, 0, 1]", channel_order="YUV", score_kind=None)
    with pytest.raises(ContractError) as info:
        read_model(make_model("multi.onnx", metadata=meta))
    message = str(info.value)
    for key in ("fer.labels", "fer.std", "fer.channel_order"):
        assert key in message, message
    assert "fer.score_kind" not in message  # optional: missing is fine


@pytest.mark.parametrize("key", ["labels", "input_size", "mean", "std", "attention"])
def test_missing_required_key_is_named(
    make_model: Any, helpers: types.ModuleType, key: str
) -> None:
    path = make_model("missing.onnx", metadata=_with(helpers, **{key: None}))
    with pytest.raises(ContractError, match=f"missing.onnx: metadata lacks fer.{key}$"):
        read_model(path)


def test_missing_format_and_other_format(make_model: Any, helpers: types.ModuleType) -> None:
    with pytest.raises(ContractError, match="metadata lacks fer.format"):
        read_model(make_model("a.onnx", metadata=_with(helpers, format=None)))
    with pytest.raises(ContractError, match="fer.format is 'fer-export/2', expected"):
        read_model(make_model("b.onnx", metadata=_with(helpers, format="fer-export/2")))


def test_missing_optional_keys_keep_defaults(make_model: Any, helpers: types.ModuleType) -> None:
    required = ("format", "labels", "input_size", "mean", "std", "attention")
    meta = {k: v for k, v in _with(helpers).items() if k[len("fer.") :] in required}
    contract = read_model(make_model("lean.onnx", metadata=meta)).contract
    want = ModelContract(
        labels=helpers.LABELS, input_size=16, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3)
    )
    assert contract == want
    assert contract.pixel_scale == 1 / 255 and contract.face_margin == 0.15
    assert contract.score_kind == "capsule_length" and contract.channel_order == "RGB"


def test_attention_input_needs_centres(make_model: Any, helpers: types.ModuleType) -> None:
    path = make_model("att.onnx", metadata=_with(helpers, attention="input"), attention_input=True)
    with pytest.raises(ContractError, match="fer.au_centres is empty.*fer.attention is 'input'"):
        read_model(path)


def test_unknown_fer_keys_are_ignored(make_model: Any, helpers: types.ModuleType) -> None:
    meta = {**_with(helpers), "fer.future_key": "{not json at all"}
    assert read_model(make_model("new.onnx", metadata=meta)).contract == helpers.tiny_contract()


def test_valid_file_round_trips(make_model: Any, helpers: types.ModuleType) -> None:
    contract = helpers.tiny_contract(
        channel_order="BGR", extra={"nested": {"list": [1, 2.5, None, "x"]}}, exporter={"a": "1"}
    )
    loaded = read_model(make_model("ok.onnx", contract=contract))
    assert loaded.contract == contract
    assert loaded.metadata == contract.to_metadata()
    assert loaded.static_batch is None


def test_metadata_values_that_are_not_text() -> None:
    meta: dict[Any, Any] = {"fer.format": "fer-export/1", "fer.labels": b'["a", "b"]'}
    with pytest.raises(ContractError, match="fer.labels is b'.*stored value is bytes, not"):
        ModelContract.from_metadata(meta, "m.onnx")
    with pytest.raises(ContractError, match=r"metadata key b'fer.x' is not valid UTF-8"):
        ModelContract.from_metadata({b"fer.x": "1"}, "m.onnx")


def test_direct_construction_uses_the_same_rules(helpers: types.ModuleType) -> None:
    with pytest.raises(ContractError, match=r"labels is \('a', 'a'\).*'a' appears twice"):
        helpers.tiny_contract(labels=("a", "a"))
    with pytest.raises(ContractError, match="input_size is 0"):
        helpers.tiny_contract(input_size=0)
    with pytest.raises(ContractError, match="std is .*value 2 is 0.0"):
        helpers.tiny_contract(std=(1.0, 1.0, 0.0))


# -- raw bytes in the protobuf ------------------------------------------------------------------


def _patched(helpers: types.ModuleType, key: str, value: str, old: bytes, new: bytes) -> bytes:
    meta = {**helpers.tiny_contract().to_metadata(), key: value}
    data = helpers.build_model(metadata=meta).SerializeToString()
    assert data.count(old) == 1
    return data.replace(old, new)


def test_invalid_utf8_in_fer_value(tmp_path: Path, helpers: types.ModuleType) -> None:
    path = tmp_path / "utf8.onnx"
    path.write_bytes(_patched(helpers, "fer.model_name", "QQQQ", b"QQQQ", b"\xff\xfeQQ"))
    with pytest.raises(ContractError, match=r"'fer.model_name' holds bytes that are not UTF-8"):
        read_model(path)


def test_invalid_utf8_outside_fer_is_kept_escaped(
    tmp_path: Path, helpers: types.ModuleType
) -> None:
    path = tmp_path / "utf8.onnx"
    path.write_bytes(_patched(helpers, "note", "QQQQ", b"QQQQ", b"\xff\xfeQQ"))
    loaded = read_model(path)
    assert loaded.metadata["note"] == "\\xff\\xfeQQ"
    assert FERSession(path, "cpu", warmup=False).metadata["note"] == "\\xff\\xfeQQ"


def test_duplicate_fer_key(tmp_path: Path, helpers: types.ModuleType) -> None:
    model = helpers.build_model()
    entry = model.metadata_props.add()
    entry.key, entry.value = "fer.labels", '["a", "b", "c", "d"]'
    with pytest.raises(ContractError, match="metadata key fer.labels appears more than once"):
        read_model(_write(tmp_path / "dup.onnx", model))


# -- the graph must agree with the metadata ---------------------------------------------------


def test_labels_must_match_static_class_count(make_model: Any, helpers: types.ModuleType) -> None:
    labels = json.dumps(["a", "b", "c", "d", "e"])
    path = make_model("cls.onnx", metadata=_with(helpers, labels=labels))
    with pytest.raises(ContractError, match=r"cls.onnx: output 'scores' has 4 classes but fer."):
        read_model(path)


def test_input_size_must_match_static_spatial_size(
    make_model: Any, helpers: types.ModuleType
) -> None:
    path = make_model("size.onnx", metadata=_with(helpers, input_size="32"))
    with pytest.raises(
        ContractError, match=r"size.onnx: fer.input_size is 32 but input 'image' has size 16"
    ):
        read_model(path)


def test_dynamic_spatial_size_takes_the_metadata(
    make_model: Any, helpers: types.ModuleType
) -> None:
    path = make_model(
        "dyn.onnx",
        metadata=_with(helpers, input_size="48"),
        image_shape=("N", 3, "H", "W"),
        num_classes=len(helpers.LABELS),
    )
    assert read_model(path).contract.input_size == 48


def test_scores_must_be_float32(tmp_path: Path, helpers: types.ModuleType) -> None:
    model = helpers.build_model()
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(ContractError, match="output 'scores' must be float32, got float16"):
        read_model(_write(tmp_path / "half.onnx", model))


def test_unknown_input_dtype_is_named(tmp_path: Path, helpers: types.ModuleType) -> None:
    model = helpers.build_model()
    model.graph.input[0].type.tensor_type.elem_type = 999
    with pytest.raises(ContractError, match="input 'image' must be float32, got elem_type 999"):
        read_model(_write(tmp_path / "odd.onnx", model))


# -- files that are not ONNX models: the cause, not a guess -----------------------------------


def test_file_errors(tmp_path: Path, helpers: types.ModuleType) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all" * 10)
    no_graph = tmp_path / "nograph.onnx"
    no_graph.write_bytes(onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString())
    no_nodes = helper.make_model(helper.make_graph([], "g", [], []))
    cases = [
        (tmp_path / "absent.onnx", FileNotFoundError, "ONNX file not found: "),
        (tmp_path, ModelLoadError, " is a directory, expected an .onnx file"),
        (empty, ModelLoadError, " is empty (0 bytes)"),
        (junk, ModelLoadError, " is not a readable ONNX model (cannot parse: DecodeError"),
        (no_graph, ModelLoadError, " is not an ONNX model (it parses, but holds no graph)"),
        (_write(tmp_path / "nonodes.onnx", no_nodes), ModelLoadError, "graph has no nodes"),
    ]
    for path, kind, message in cases:
        with pytest.raises(kind) as info:
            load_onnx(path)
        assert message in str(info.value) and str(path) in str(info.value), info.value
        with pytest.raises(kind) as again:
            FERSession(path, "cpu", warmup=False)
        assert str(again.value) == str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_fifo_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)  # reading it would block: the check must come first
    with pytest.raises(ModelLoadError, match="pipe.onnx is not a regular file"):
        load_onnx(fifo)


# -- the attention map painter (now one centre at a time) -------------------------------------


def test_paint_matches_all_centres_at_once(helpers: types.ModuleType) -> None:
    centres = np.asarray((*helpers.AU_CENTRES, (10.5, 90.0), (-5.0, 200.0)), np.float32)
    grid, falloff = 100, 0.07
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    d = np.abs(xs[None] - centres[:, 0, None, None]) + np.abs(ys[None] - centres[:, 1, None, None])
    want = np.clip(1.0 - falloff * d, 0.0, 1.0).max(axis=0).astype(np.float32)
    np.testing.assert_array_equal(paint_attention_map(centres, grid, falloff, grid), want)
    assert paint_attention_map([], grid, falloff, 16).shape == (16, 16)


def test_readme_documents_every_key(helpers: types.ModuleType) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for key in helpers.tiny_contract().to_metadata():
        assert f"`{key}`" in readme, key
