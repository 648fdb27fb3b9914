"""Bounded fuzz tests of reading model files: random ``fer.*`` metadata values on a valid
tiny model, random bytes as a whole file, and a valid file with bytes changed or cut off.

Every case must end in a valid contract (that loads and round-trips) or in a one-line
``ContractError`` / ``ModelLoadError`` naming the file -- never another exception type.
Deterministic (derandomized, no example database) and a few seconds long.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any

import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fer_export.contract import (
    ContractError,
    ModelContract,
    ModelFile,
    ModelLoadError,
    read_model,
)
from fer_export.runtime import FERSession

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Every key the writer writes (ModelContract.to_metadata), plus one it does not know.
KEYS = [
    "fer.format", "fer.labels", "fer.input_size", "fer.mean", "fer.std", "fer.attention",
    "fer.score_kind", "fer.channel_order", "fer.pixel_scale", "fer.layout", "fer.model_name",
    "fer.model_version", "fer.precision", "fer.face_margin", "fer.au_centres", "fer.au_grid",
    "fer.au_falloff", "fer.exporter", "fer.extra", "fer.dataset", "fer.au_source",
    "fer.au_rule", "fer.calibration", "fer.abstention", "fer.provenance",
    "fer.unknown_future_key",
]  # fmt: skip

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=25,
)
_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -0.0, 1e-45, 1e-38, 3.4e38, 3.5e38, 1e308, 0.5, 16, 1.0 / 255.0]),
)
_number_text = st.one_of(
    _number.map(lambda x: json.dumps(x) if not isinstance(x, int) else str(x)),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 4400, "0x10"]),
)
_plausible = st.one_of(
    # Near-valid values, so that many cases pass and reach the graph check and the runtime.
    st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=6, unique=True).map(json.dumps),
    st.lists(_number, min_size=2, max_size=4).map(json.dumps),
    st.lists(st.lists(_number, min_size=1, max_size=3), max_size=4).map(json.dumps),
    st.integers(min_value=-5, max_value=5000).map(str),
    st.sampled_from(
        ["baked", "input", "none", "logit", "capsule_length", "RGB", "BGR", "fp16", "int8",
         "NCHW", "fer-export/1", "16", "4", "0.15", "0.99", "{}", "[]", "null", '{"a": "1"}',
         "template", "landmarks", "synthetic", "unknown", '[{"landmarks": [36, 45], "down": 0.5}]',
         '[{"landmarks": [68], "down": 0}]', '{"method": "temperature", "temperature": 1.5}',
         '{"method": "temperature", "temperature": 0, "transform": "log"}',
         '{"threshold": 0.4, "coverage_target": 0.9}', '{"threshold": 2, "coverage_target": 0}',
         '{"dataset": "rafdb", "synthetic": false}', '{"dataset": "x", "synthetic": "no"}']
    ),
)  # fmt: skip
_value = st.one_of(
    _json.map(json.dumps),  # random JSON of any type
    st.text(max_size=40),  # random strings, control characters included
    _number_text,  # huge numbers, NaN, inf
    st.integers(min_value=1, max_value=30_000).map(lambda n: "[" * n),  # unbalanced nesting
    st.integers(min_value=20, max_value=3_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=60).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(min_value=1_000, max_value=300_000).map(lambda n: "x" * n),  # very long
    st.integers(min_value=100, max_value=20_000).map(lambda n: json.dumps(["l"] * n)),
    _plausible,
)


@pytest.fixture(scope="module")
def base(helpers: types.ModuleType) -> onnx.ModelProto:
    """The valid tiny model (4 labels, 16 x 16 input, one input)."""
    model: onnx.ModelProto = helpers.build_model()
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _outcome(path: Path) -> tuple[ModelFile | None, str]:
    """``(the ModelFile, "")`` or ``(None, the message)`` after checking that the error is
    one of ours, one line, naming the file; any other exception fails the test."""
    try:
        return read_model(path), ""
    except (ContractError, ModelLoadError) as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        assert str(path) in message, message
        return None, message


def type_of(message: str) -> str:
    """A coarse class of an error message, for hypothesis' statistics."""
    for word in ("lacks", "not JSON", "nested", "classes", "graph inputs", "size", "format"):
        if word in message:
            return f"error: {word}"
    return "error: other"


@settings(FUZZ, max_examples=400)
@given(changes=st.dictionaries(st.sampled_from(KEYS), st.none() | _value, min_size=1, max_size=4))
def test_random_metadata_values(
    base: onnx.ModelProto, work: Path, changes: dict[str, str | None]
) -> None:
    meta = {p.key: p.value for p in base.metadata_props}
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    model = onnx.ModelProto()
    model.CopyFrom(base)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    path = work / "meta.onnx"
    path.write_bytes(model.SerializeToString())

    loaded, message = _outcome(path)
    event("valid contract" if loaded is not None else type_of(message))
    if loaded is None:
        named = [k for k in changes if k in message]
        assert named, (changes, message)  # the error names a key that was changed
        assert len(message) < 2_500, message  # long values are shortened
        return
    contract = loaded.contract
    # A contract that passed holds values the runtime can use, and writes itself back.
    assert len(set(contract.labels)) == len(contract.labels) == 4
    assert contract.input_size == 16
    assert all(math.isfinite(v) for v in (*contract.mean, *contract.std, contract.pixel_scale))
    assert min(contract.std) > 0 and 0 <= contract.face_margin < 1
    again = ModelContract.from_metadata(contract.to_metadata(), "again")
    assert again.to_metadata() == contract.to_metadata()
    session = FERSession(path, "cpu", warmup=False)
    assert session.labels == contract.labels


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_model_file(work: Path, data: bytes) -> None:
    path = work / "random.onnx"
    path.write_bytes(data)
    loaded, _ = _outcome(path)
    assert loaded is None  # random bytes are never a FER model


@settings(FUZZ, max_examples=300)
@given(
    edits=st.lists(
        st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(0, 255)),
        max_size=6,
    ),
    keep=st.floats(min_value=0, max_value=1),
)
def test_damaged_model_file(
    base: onnx.ModelProto, work: Path, edits: list[tuple[float, int]], keep: float
) -> None:
    data = bytearray(base.SerializeToString())
    for where, byte in edits:
        data[int(where * len(data))] = byte
    path = work / "damaged.onnx"
    path.write_bytes(bytes(data[: max(0, round(keep * len(data)))]))
    loaded, _ = _outcome(path)
    if loaded is not None:  # the damage missed everything that matters
        assert loaded.contract.num_classes == 4 and loaded.contract.input_size == 16


@settings(FUZZ, max_examples=150)
@given(
    values=st.dictionaries(
        st.sampled_from(KEYS),
        st.one_of(st.binary(max_size=20), st.integers(), st.none(), st.lists(st.integers())),
        min_size=1,
        max_size=3,
    )
)
def test_non_text_values_from_python(helpers: types.ModuleType, values: dict[str, Any]) -> None:
    """from_metadata called with a dict that is not all text (bytes from a protobuf with bad
    UTF-8, or a caller's mistake): a ContractError, never a TypeError."""
    meta: dict[str, Any] = {**helpers.tiny_contract().to_metadata(), **values}
    try:
        ModelContract.from_metadata(meta, "python")
    except ContractError as exc:
        assert str(exc).startswith("python")
