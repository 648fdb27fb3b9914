"""``fer-export triton``: the model repository, Triton's own config schema, and a real server.

Three layers:

* always: the repository's files and ``config.pbtxt``'s fields, read with the small text-format
  reader below (the main environment has no Triton packages);
* with ``FER_TRITON_PYTHON`` (the venv ``.ci/triton-env`` builds: nvidia-pytriton 0.7.0,
  tritonclient, onnxruntime; numpy<2 keeps it out of the workspace): ``config.pbtxt`` parsed
  with Triton's ``model_config_pb2`` schema, round-tripped, and checked against the model;
* also with it: the python-backend twin of the repository served by the ``tritonserver``
  binary pytriton bundles (2.51, python backend only), on 127.0.0.1, CPU, and
  :class:`TritonFERClient` run in that venv over HTTP and gRPC with concurrent requests,
  compared with :class:`FERSession` on the same images.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import fer_export.triton as triton
from fer_export.cli import main
from fer_export.contract import read_model
from fer_export.runtime import FERSession
from fer_export.triton import (
    RepositoryExistsError,
    TritonClientMissingError,
    TritonConfigError,
    TritonOptions,
    load_contract,
    write_repository,
)

SRC = Path(__file__).resolve().parents[1] / "src"
FER_IMAGES_SRC = Path(__file__).resolve().parents[2] / "fer-images" / "src"
TRITON_PYTHON = os.environ.get("FER_TRITON_PYTHON", "")
#: Longest wait for the bundled server to load the model (it takes ~3 s here).
SERVER_START_S = 45.0


# ---------------------------------------------------------------------------------------------
# A small reader of protobuf text format (enough for config.pbtxt): messages become dicts of
# field name -> list of values; scalars stay text (strings unquoted and unescaped).

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+')


def _tokens(text: str) -> list[str]:
    out = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match, f"cannot read config.pbtxt at {text[position : position + 30]!r}"
        token = match.group()
        position = match.end()
        if not token.isspace() and not token.startswith("#"):
            out.append(token)
    return out


def _unquote(token: str) -> str:
    raw = token[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    return raw.encode("latin-1").decode("utf-8")


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """config.pbtxt as nested dicts (every field a list of values)."""
    tokens = _tokens(text)
    index = 0

    def value() -> Any:
        nonlocal index
        token = tokens[index]
        index += 1
        if token == "{":
            return message("}")
        if token.startswith('"'):
            return _unquote(token)
        return token

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal index
        fields: dict[str, list[Any]] = {}
        while index < len(tokens) and tokens[index] != end:
            name = tokens[index]
            index += 1
            if tokens[index] == ":":
                index += 1
            if tokens[index] == "[":
                index += 1
                while tokens[index] != "]":
                    fields.setdefault(name, []).append(value())
                    if tokens[index] == ",":
                        index += 1
                index += 1
            else:
                fields.setdefault(name, []).append(value())
            if index < len(tokens) and tokens[index] == ",":
                index += 1
        index += 1
        return fields

    return message(None)


def one(fields: dict[str, list[Any]], name: str) -> Any:
    values = fields.get(name, [])
    assert len(values) == 1, f"{name}: expected one value, got {values}"
    return values[0]


def parameters(fields: dict[str, list[Any]]) -> dict[str, str]:
    return {
        one(p, "key"): one(one(p, "value"), "string_value") for p in fields.get("parameters", [])
    }


# ---------------------------------------------------------------------------------------------
# Always: the files and fields


def test_baked_model_repository(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    folder = write_repository(model_path, out)
    assert folder == out / "tiny"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1",
        "1/fer_contract.json",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    assert (folder / "1" / "model.onnx").read_bytes() == model_path.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == [
        "neutral",
        "happiness",
        "surprise",
        "sadness",
    ]
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert one(config, "name") == "tiny"
    assert one(config, "platform") == "onnxruntime_onnx"
    assert one(config, "backend") == "onnxruntime"
    assert one(config, "max_batch_size") == "32"
    (image,) = config["input"]
    assert one(image, "name") == "image" and one(image, "data_type") == "TYPE_FP32"
    assert image["dims"] == ["3", "16", "16"]
    (scores,) = config["output"]
    assert one(scores, "name") == "scores" and one(scores, "data_type") == "TYPE_FP32"
    assert scores["dims"] == ["4"] and one(scores, "label_filename") == "labels.txt"
    batching = one(config, "dynamic_batching")
    assert batching["preferred_batch_size"] == ["8", "32"]
    assert one(batching, "max_queue_delay_microseconds") == "500"
    (group,) = config["instance_group"]
    assert one(group, "kind") == "KIND_GPU" and one(group, "count") == "1"
    assert "optimization" not in config
    (warmup,) = config["model_warmup"]
    assert [one(i, "key") for i in warmup["inputs"]] == ["image"]
    metadata = read_model(model_path).metadata
    assert parameters(config) == {k: v for k, v in metadata.items() if k.startswith("fer.")}


def test_input_attention_model_repository(attention_model_path: Path, tmp_path: Path) -> None:
    folder = write_repository(attention_model_path, tmp_path / "repo", name="fer_att")
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert one(config, "name") == "fer_att"
    inputs = {one(i, "name"): i for i in config["input"]}
    assert sorted(inputs) == ["attention", "image"]
    assert inputs["attention"]["dims"] == ["1", "16", "16"]
    assert one(inputs["attention"], "data_type") == "TYPE_FP32"
    assert inputs["image"]["dims"] == ["3", "16", "16"]
    (warmup,) = config["model_warmup"]
    assert sorted(one(i, "key") for i in warmup["inputs"]) == ["attention", "image"]
    assert parameters(config)["fer.attention"] == "input"
    document = json.loads((folder / "1" / "fer_contract.json").read_text())
    assert document["attention"] == "input"
    assert document["au_template"]["centres"] == [[30.0, 35.0], [70.0, 35.0], [50.0, 75.0]]
    assert [t["name"] for t in document["inputs"]] == ["image", "attention"]
    assert document["inputs"][1]["shape"] == [-1, 1, 16, 16]
    assert (
        load_contract(folder / "1" / "fer_contract.json")
        == read_model(attention_model_path).contract
    )


def test_contract_json_has_what_a_client_needs(model_path: Path, tmp_path: Path) -> None:
    contract = read_model(model_path).contract
    folder = write_repository(model_path, tmp_path / "repo")
    document = json.loads((folder / "1" / "fer_contract.json").read_text())
    assert document["labels"] == list(contract.labels)
    assert document["input_size"] == 16
    assert document["mean"] == [0.5, 0.4, 0.3] and document["std"] == [0.25, 0.2, 0.3]
    assert document["pixel_scale"] == pytest.approx(1 / 255)
    assert document["channel_order"] == "RGB" and document["face_margin"] == 0.15
    assert document["attention"] == "baked" and document["layout"] == "NCHW"
    assert document["metadata"] == read_model(model_path).metadata
    assert load_contract(folder / "1" / "fer_contract.json") == contract
    assert load_contract(model_path) == contract


def test_tensorrt_fp16_and_cpu_variant(attention_model_path: Path, tmp_path: Path) -> None:
    options = TritonOptions(max_batch=16, fp16=True, trt_cache_dir="/cache/trt", instances=2)
    folder = write_repository(attention_model_path, tmp_path / "gpu", options=options)
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert one(config, "max_batch_size") == "16"
    assert one(one(config, "dynamic_batching"), "preferred_batch_size") == "8"
    (group,) = config["instance_group"]
    assert one(group, "kind") == "KIND_GPU" and one(group, "count") == "2"
    accelerators = one(one(config, "optimization"), "execution_accelerators")
    (trt,) = accelerators["gpu_execution_accelerator"]
    assert one(trt, "name") == "tensorrt"
    trt_parameters = {one(p, "key"): one(p, "value") for p in trt["parameters"]}
    assert trt_parameters["precision_mode"] == "FP16"
    assert trt_parameters["trt_engine_cache_path"] == "/cache/trt"
    assert trt_parameters["trt_profile_max_shapes"] == "image:16x3x16x16,attention:16x1x16x16"
    assert trt_parameters["trt_profile_min_shapes"] == "image:1x3x16x16,attention:1x1x16x16"

    cpu = TritonOptions(kind="cpu", preferred_batch=(4, 2, 4), queue_delay_us=0, warmup=False)
    folder = write_repository(attention_model_path, tmp_path / "cpu", options=cpu)
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert one(one(config, "instance_group"), "kind") == "KIND_CPU"
    assert one(config, "dynamic_batching")["preferred_batch_size"] == ["2", "4"]
    assert "optimization" not in config and "model_warmup" not in config

    with pytest.raises(TritonConfigError, match="kind is 'cpu', expected 'gpu' with TensorRT"):
        TritonOptions(kind="cpu", tensorrt=True)


def test_python_backend_twin(model_path: Path, tmp_path: Path) -> None:
    options = TritonOptions(backend="python", kind="cpu")
    folder = write_repository(model_path, tmp_path / "repo", options=options)
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert one(config, "backend") == "python" and "platform" not in config
    onnxruntime = parse_pbtxt(
        (write_repository(model_path, tmp_path / "ort", options=TritonOptions(kind="cpu")))
        .joinpath("config.pbtxt")
        .read_text()
    )
    for key in ("input", "output", "max_batch_size", "dynamic_batching", "instance_group"):
        assert config[key] == onnxruntime[key], key
    source = (folder / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    assert (folder / "1" / "model.onnx").read_bytes() == model_path.read_bytes()


def test_cli_writes_the_repository(model_path: Path, tmp_path: Path) -> None:
    """The contract checked from outside: ``fer-export triton MODEL --out DIR``."""
    out = tmp_path / "models"
    done = subprocess.run(
        [sys.executable, "-m", "fer_export.cli", "triton", str(model_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "tiny" / "config.pbtxt").is_file()
    assert (out / "tiny" / "1" / "model.onnx").is_file()
    assert f"wrote {out / 'tiny'}" in done.stdout
    code = main(
        ["triton", str(model_path), "--out", str(out), "--name", "other", "--kind", "cpu",
         "--max-batch", "8", "--preferred-batch", "2", "4"]
    )  # fmt: skip
    assert code == 0
    config = parse_pbtxt((out / "other" / "config.pbtxt").read_text())
    assert one(config, "name") == "other" and one(config, "max_batch_size") == "8"
    assert one(config, "dynamic_batching")["preferred_batch_size"] == ["2", "4"]
    assert one(one(config, "instance_group"), "kind") == "KIND_CPU"


def test_existing_target_needs_force(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    (out / "tiny").mkdir(parents=True)  # an empty folder is taken over
    write_repository(model_path, out)
    (out / "tiny" / "note.txt").write_text("mine")
    before = sorted(p.name for p in (out / "tiny").iterdir())
    assert main(["triton", str(model_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fer-export: error: ") and err.count("\n") == 1
    assert f"{out / 'tiny'} exists and is not empty" in err and "--force" in err
    assert sorted(p.name for p in (out / "tiny").iterdir()) == before
    with pytest.raises(RepositoryExistsError):
        write_repository(model_path, out)
    assert main(["triton", str(model_path), "--out", str(out), "--force"]) == 0
    assert not (out / "tiny" / "note.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "tiny.onnx"]


def test_failure_leaves_nothing_behind(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "repo"
    write_repository(model_path, out, name="old")
    real_write = triton._write
    calls = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(triton, "_write", failing)
    with pytest.raises(OSError, match="No space left"):
        write_repository(model_path, out)
    calls.clear()
    with pytest.raises(OSError, match="No space left"):
        write_repository(model_path, out, name="old", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["old"]  # no 'tiny', old kept whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "tiny.onnx"]
    assert (out / "old" / "1" / "model.onnx").read_bytes() == model_path.read_bytes()
    calls.clear()
    with pytest.raises(OSError, match="No space left"):
        write_repository(model_path, tmp_path / "new")  # the folder it made goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "tiny.onnx"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch", "0"], "--max-batch is 0, expected an integer from 1"),
        (["--preferred-batch", "64"], "--preferred-batch is (64,), expected batch sizes from 1"),
        (["--name", "../up"], "model name '../up' is not usable"),
        (["--name", ".hidden"], "model name '.hidden' is not usable"),
        (["--kind", "cpu", "--fp16"], "--kind is 'cpu', expected 'gpu' with TensorRT"),
        (["--backend", "python", "--tensorrt"], "--backend is 'python', expected 'onnxruntime'"),
        (["--trt-cache", " ", "--tensorrt"], "--trt-cache is ' ', expected a folder path"),
        (["--queue-delay-us", "-1"], "--queue-delay-us is -1, expected an integer >= 0"),
    ],
)
def test_bad_options_are_one_line(
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "repo"
    assert main(["triton", str(model_path), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fer-export: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_models_are_one_line(
    make_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    static = make_model("static.onnx", image_shape=(2, 3, 16, 16), batch_dim=2)
    missing = tmp_path / "missing.onnx"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx at all")
    cases = [
        (static, "has a static batch size of 2"),
        (missing, "ONNX file not found"),
        (garbage, "not a readable ONNX model"),
    ]
    for path, message in cases:
        assert main(["triton", str(path), "--out", str(tmp_path / "repo")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fer-export: error: ") and message in err, err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["triton", str(make_model()), "--out", str(a_file)]) == 2
    assert f"{a_file} is a file, expected a folder" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_default_name_is_made_usable(make_model: Any, helpers: Any, tmp_path: Path) -> None:
    path = make_model("m.onnx", contract=helpers.tiny_contract(model_name="E2 Capsnet/small v1"))
    assert write_repository(path, tmp_path / "repo").name == "E2_Capsnet_small_v1"
    path = make_model("fallback.onnx", contract=helpers.tiny_contract(model_name=""))
    assert write_repository(path, tmp_path / "repo").name == "fallback"


def test_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(TritonClientMissingError, match=r'pip install "tritonclient\[grpc\]"'):
        triton.TritonFERClient("localhost:8001", "fer", "grpc")
    with pytest.raises(ValueError, match="protocol is 'ws'"):
        triton.TritonFERClient("localhost:8001", "fer", "ws")


def test_help_and_usage_list_triton(capsys: pytest.CaptureFixture[str]) -> None:
    """``fer-export --help`` and the usage in cli.py's docstring name every subcommand,
    ``triton`` included."""
    import fer_export.cli as cli

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "triton" in shown and "Triton" in shown
    commands = re.search(r"\{([a-z,]+)\}", shown)
    assert commands is not None, shown
    names = commands.group(1).split(",")
    assert "triton" in names
    usage = cli.__doc__ or ""
    for name in names:
        assert f"fer-export {name} " in usage, name
    for flag in ("--out DIR", "--backend onnxruntime|python", "--force"):
        assert flag in usage, flag


def _fake_tritonclient(model: Path, calls: list[int]) -> dict[str, types.ModuleType]:
    """Stand-ins for ``tritonclient.http`` and ``tritonclient.utils`` whose server runs
    ``model`` with ONNX Runtime (the config as Triton's HTTP endpoint answers it, the fer.*
    metadata as parameters); ``calls`` gets each request's batch size."""
    import onnxruntime as ort

    loaded = read_model(model)
    contract = loaded.contract
    s = contract.input_size
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = [{"name": "image", "dims": [3, s, s]}]
    if contract.attention == "input":
        inputs.append({"name": "attention", "dims": [1, s, s]})
    config = {
        "max_batch_size": 4,
        "input": inputs,
        "output": [{"name": "scores", "dims": [contract.num_classes]}],
        "parameters": {k: {"string_value": v} for k, v in loaded.metadata.items()},
    }

    class InferInput:
        def __init__(self, name: str, shape: list[int], datatype: str) -> None:
            self.name = name

        def set_data_from_numpy(self, value: np.ndarray) -> None:
            self.value = value

    class Result:
        def __init__(self, scores: np.ndarray) -> None:
            self.scores = scores

        def as_numpy(self, name: str) -> np.ndarray:
            return self.scores

    class Client:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def is_model_ready(self, name: str, version: str) -> bool:
            return name == "fer"

        def get_model_config(self, name: str, version: str) -> dict[str, Any]:
            return config

        def infer(self, name: str, inputs: list[InferInput], **kwargs: Any) -> Result:
            feeds = {i.name: i.value for i in inputs}
            calls.append(len(feeds["image"]))
            return Result(session.run(["scores"], feeds)[0])

        def close(self) -> None:
            pass

    http = types.ModuleType("tritonclient.http")
    http.InferenceServerClient = Client  # type: ignore[attr-defined]
    http.InferInput = InferInput  # type: ignore[attr-defined]
    http.InferRequestedOutput = lambda name: name  # type: ignore[attr-defined]
    utils = types.ModuleType("tritonclient.utils")
    utils.InferenceServerException = type("InferenceServerException", (Exception,), {})  # type: ignore[attr-defined]
    package = types.ModuleType("tritonclient")
    package.http, package.utils = http, utils  # type: ignore[attr-defined]
    return {"tritonclient": package, "tritonclient.http": http, "tritonclient.utils": utils}


def test_client_abstains_and_maps_like_fersession(
    make_model: Any, helpers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a server (a stand-in tritonclient running the model with ONNX Runtime):
    TritonFERClient's answers equal FERSession's field for field for abstain "model", None
    and a number, with each face's own landmark map, and it refuses a landmarks model
    without a finder as FERSession does."""
    from fer_export.landmarks import LandmarksUnavailableError

    rule = (((17, 21), 0.0), ((22, 26), 0.0), ((48, 54), 0.3))
    contract = helpers.tiny_contract(
        attention="input", au_centres=helpers.AU_CENTRES, au_source="landmarks", au_rule=rule,
        score_kind="logit", abstention={"threshold": 0.5, "coverage_target": 0.5},
        calibration={"method": "temperature", "temperature": 0.01, "transform": "identity"},
    )  # fmt: skip
    model = make_model("lm.onnx", contract=contract, attention_input=True)
    calls: list[int] = []
    for name, module in _fake_tritonclient(model, calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "dlib", None)
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    monkeypatch.delenv("CAPSNET_DLIB_LANDMARKS", raising=False)

    def finder(crop: np.ndarray) -> np.ndarray | None:
        if crop.shape[1] < 40:  # some faces without landmarks: the template map
            return None
        h, w = crop.shape[:2]
        i = np.arange(68, dtype=np.float64)
        return np.stack([(0.2 + 0.6 * (i * 37 % 68) / 67) * w, (0.3 + 0.4 * i / 67) * h], 1)

    # Reddish, grey and bluish noise: top probabilities 0.33 to 0.61 around the threshold 0.5.
    rng = np.random.default_rng(5)
    colours = ((190, 40, 30), (100, 100, 100), (20, 60, 180))
    images = [
        np.clip(rng.integers(0, 60, (60, 80, 3)) + np.array(c), 0, 255).astype(np.uint8)
        for c in colours
    ]
    boxes = [[[0, 0, 40, 40], [30, 10, 30, 30]], [[5, 5, 50, 40]], [[10, 0, 25, 60]]]
    seen: dict[str, set[Any]] = {"label": set(), "au_map": set()}
    for kwargs in ({}, {"abstain": None}, {"abstain": 0.9}, {"au_source": "template"}):
        given = {} if "au_source" in kwargs else {"landmarks": finder}
        session = FERSession(model, "cpu", **kwargs, **given)  # type: ignore[arg-type]
        client = triton.TritonFERClient("localhost:8000", "fer", **kwargs, **given)  # type: ignore[arg-type]
        assert client.abstain_threshold == session.abstain_threshold
        assert client.au_source == session.au_source
        want = session.predict_decoded(images, boxes)
        calls.clear()
        have = client.predict_decoded(images, boxes)
        assert calls == [4], calls  # 4 faces in one request (max_batch_size 4)
        for w_faces, h_faces in zip(want, have, strict=True):
            assert len(w_faces) == len(h_faces)
            for w, h in zip(w_faces, h_faces, strict=True):
                a, b = w.to_dict(), h.to_dict()
                for key in ("probabilities", "raw_scores"):
                    np.testing.assert_allclose(
                        list(b.pop(key).values()), list(a.pop(key).values()), atol=1e-6
                    )
                assert b.pop("score") == pytest.approx(a.pop("score"), abs=1e-6)
                assert a == b
                seen["label"].add((tuple(kwargs.items()), w.label == "unknown"))
                seen["au_map"].add(w.au_map)
    # Both kinds of answer were compared: "unknown" and not, own maps and the template.
    assert ((), True) in seen["label"] and ((), False) in seen["label"], seen
    assert ((("abstain", None),), True) not in seen["label"]
    assert ((("abstain", 0.9),), False) not in seen["label"]
    assert seen["au_map"] == {"landmarks", "template"}
    with pytest.raises(LandmarksUnavailableError) as refused:
        triton.TritonFERClient("localhost:8000", "fer")
    message = str(refused.value)
    assert "model 'fer' on http localhost:8000 was trained with landmark AU maps" in message
    assert "au_source='template'" in message and "\n" not in message
    with pytest.raises(ValueError, match="abstain must be 'model'"):
        triton.TritonFERClient("localhost:8000", "fer", abstain="always")
    with pytest.raises(ValueError, match="landmarks must be a callable"):
        triton.TritonFERClient("localhost:8000", "fer", landmarks="dlib")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# With FER_TRITON_PYTHON: Triton's own schema, and a real server


def _triton_python() -> Path:
    if not TRITON_PYTHON:
        pytest.skip(
            "FER_TRITON_PYTHON is not set: run .ci/triton-env (it builds a Python 3.11 venv "
            "with nvidia-pytriton, tritonclient, onnxruntime) and set it to the python it prints"
        )
    python = Path(TRITON_PYTHON)
    if not python.is_file():
        pytest.skip(f"FER_TRITON_PYTHON={TRITON_PYTHON} is not a file")
    return python


def _venv_env(tmp_path: Path) -> dict[str, str]:
    """Environment for the venv's python: fer_export and fer_images from this checkout, with
    stand-in distribution metadata (their __init__ reads their version from it)."""
    from importlib import metadata

    shim = tmp_path / "dist-shim"
    for dist, module in (("fer-export", "fer_export"), ("fer-images", "fer_images")):
        version = metadata.version(dist)
        info = shim / f"{module}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(FER_IMAGES_SRC), str(shim)])
    env.pop("PYTHONHOME", None)
    return env


def _run_venv(python: Path, script: str, tmp_path: Path, timeout: float = 120) -> Any:
    """The JSON that ``script`` prints on its last line, run by the venv's python."""
    done = subprocess.run(
        [str(python), "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_venv_env(tmp_path),
    )
    assert done.returncode == 0, f"venv script failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


_SCHEMA_SCRIPT = """
    import json, sys
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    out = {}
    for path in sys.argv[1:]:
        text = open(path, encoding="utf-8").read()
        config = text_format.Parse(text, mc.ModelConfig())
        again = text_format.Parse(text_format.MessageToString(config), mc.ModelConfig())
        wire = mc.ModelConfig.FromString(config.SerializeToString())
        out[path] = {
            "round_trip": again == config and wire == config,
            "config": json_format.MessageToDict(config, preserving_proto_field_name=True),
        }
    print(json.dumps(out))
"""


def test_config_parses_with_triton_schema(
    model_path: Path, attention_model_path: Path, tmp_path: Path
) -> None:
    python = _triton_python()
    repo = tmp_path / "repo"
    variants = {
        "baked": (model_path, TritonOptions()),
        "attention": (attention_model_path, TritonOptions()),
        "trt": (attention_model_path, TritonOptions(fp16=True, trt_cache_dir="/c", gpus=(0, 1))),
        "cpu": (model_path, TritonOptions(kind="cpu", preferred_batch=(2,), warmup=False)),
        "twin": (attention_model_path, TritonOptions(backend="python", kind="cpu")),
    }
    paths = {}
    for name, (model, options) in variants.items():
        paths[name] = write_repository(model, repo, name=name, options=options) / "config.pbtxt"
    script = _SCHEMA_SCRIPT.replace("sys.argv[1:]", repr([str(p) for p in paths.values()]))
    parsed = _run_venv(python, script, tmp_path)
    for name, (model, options) in variants.items():
        result = parsed[str(paths[name])]
        assert result["round_trip"], name
        config = result["config"]
        loaded = read_model(model)
        contract = loaded.contract
        s = contract.input_size
        want_inputs = {"image": ["3", str(s), str(s)]}
        if contract.attention == "input":
            want_inputs["attention"] = ["1", str(s), str(s)]
        # int64 dims are strings in protobuf's JSON mapping
        assert {i["name"]: i["dims"] for i in config["input"]} == want_inputs, name
        assert all(i["data_type"] == "TYPE_FP32" for i in config["input"]), name
        assert [(o["name"], o["dims"], o["data_type"]) for o in config["output"]] == [
            ("scores", [str(contract.num_classes)], "TYPE_FP32")
        ], name
        assert config["max_batch_size"] == options.max_batch, name
        assert config["dynamic_batching"]["preferred_batch_size"] == list(options.batch_sizes)
        group = config["instance_group"][0]
        assert group["kind"] == ("KIND_GPU" if options.kind == "gpu" else "KIND_CPU"), name
        if options.backend == "python":
            assert config["backend"] == "python" and "platform" not in config
        else:
            assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert params == {k: v for k, v in loaded.metadata.items() if k.startswith("fer.")}
        if options.tensorrt:
            (trt,) = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
            assert trt["name"] == "tensorrt" and trt["parameters"]["precision_mode"] == "FP16"
            assert group["gpus"] == [0, 1]
        else:
            assert "optimization" not in config, name


# -- the bundled server -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_paths(python: Path) -> dict[str, Path]:
    """The bundled server's files in the venv, and the base Python's lib folder; skips when
    one is missing."""
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, sys, sysconfig, pathlib, pytriton; "
            "root = pathlib.Path(pytriton.__file__).parent; "
            "print(json.dumps({'root': str(root), 'libdir': sysconfig.get_config_var('LIBDIR'), "
            "'ldlibrary': sysconfig.get_config_var('LDLIBRARY'), "
            "'version': '%d.%d' % sys.version_info[:2]}))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"pytriton does not import in {python}: {probe.stderr.strip()[-300:]}")
    info = json.loads(probe.stdout)
    root = Path(info["root"]) / "tritonserver"
    paths = {
        "binary": root / "bin" / "tritonserver",
        "backends": root / "backends",
        "caches": root / "caches",
        "stub": root / "python_backend_stubs" / info["version"] / "triton_python_backend_stub",
        "libs": Path(info["root"]).parent / "nvidia_pytriton.libs",
        "libpython": Path(info["libdir"] or "") / (info["ldlibrary"] or "libpython"),
    }
    for what, path in paths.items():
        if not path.exists():
            pytest.skip(f"the bundled Triton server needs {what} at {path}, which is missing")
    return paths


@contextlib.contextmanager
def _bundled_server(python: Path, repository: Path, work: Path) -> Iterator[dict[str, Any]]:
    """The ``tritonserver`` that nvidia-pytriton bundles, serving ``repository`` on 127.0.0.1:
    yields its ports; stopped (then killed) on the way out, whatever happens."""
    paths = _server_paths(python)
    backends = work / "backends"
    shutil.copytree(paths["backends"], backends)  # the stub goes in; the venv stays untouched
    shutil.copy2(paths["stub"], backends / "python" / "triton_python_backend_stub")
    http, grpc = _free_port(), _free_port()
    env = dict(os.environ)
    # The stub embeds the base Python: its lib folder first, or the system libpython loads.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(paths["libpython"].parent), str(paths["libs"]), env.get("LD_LIBRARY_PATH", "")]
    )
    # The embedded interpreter finds its prefix (and the venv's packages) from `python3` on PATH.
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    command = [
        str(paths["binary"]),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--cache-directory={paths['caches']}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--exit-timeout-secs=5",
        f"--backend-config=python,shm-region-prefix-name=fer_test_{os.getpid()}_{http}_",
    ]
    log_path = work / "tritonserver.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        ready = False
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{http}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    ready = answer.status == 200
            if ready:
                break
            time.sleep(0.3)
        if not ready:
            tail = log_path.read_text(errors="replace")[-3000:]
            state = f"exited with {server.returncode}" if server.poll() is not None else "hung"
            pytest.fail(f"the bundled tritonserver {state} before it was ready; log:\n{tail}")
        yield {"http": http, "grpc": grpc, "log": log_path}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


#: A landmark finder both environments run (this one for FERSession, the venv for the
#: client): 68 points spread over the crop, none found for about a third of the crops (those
#: whose first pixel's red value is a multiple of 3), so faces get their own maps and the
#: template fallback in one request.
_FINDER_SOURCE = """
def finder(crop):
    import numpy as np

    if int(crop[0, 0, 0]) % 3 == 0:
        return None
    h, w = crop.shape[:2]
    i = np.arange(68, dtype=np.float64)
    x = (0.2 + 0.6 * ((i * 37) % 68) / 67) * w
    y = (0.25 + 0.5 * ((i * 11) % 68) / 67) * h
    return np.stack([x, y], axis=1)
"""


def _finder() -> Any:
    namespace: dict[str, Any] = {}
    exec(_FINDER_SOURCE, namespace)  # the same text the venv script runs
    return namespace["finder"]


_CLIENT_SCRIPT = """
    import json, os, sys
    from concurrent.futures import ThreadPoolExecutor
    from urllib.request import urlopen
    from fer_export.triton import TritonFERClient

    # No landmark finder in this venv, whatever gets installed into it later.
    sys.modules["dlib"] = None
    sys.modules["face_alignment"] = None
    os.environ.pop("CAPSNET_DLIB_LANDMARKS", None)
    FINDER

    spec = json.loads(sys.argv[1])
    out = {}
    for run in spec["runs"]:
        protocol = run["protocol"]
        port = spec["ports"][protocol]
        kwargs = dict(run["kwargs"])
        if run["finder"]:
            kwargs["landmarks"] = finder
        with TritonFERClient(
            f"127.0.0.1:{port}", spec["model"], protocol, timeout_s=30, **kwargs
        ) as c:
            def one(job):
                path, faces = job
                return [p.to_dict() for p in c.predict(path, faces)]
            # Threads at once, each request with a face or two: the server batches them.
            with ThreadPoolExecutor(spec["threads"]) as pool:
                answers = list(pool.map(one, [tuple(j) for j in spec["jobs"]]))
            out[run["name"]] = {
                "answers": answers,
                "abstain_threshold": c.abstain_threshold,
                "au_source": c.au_source,
            }
    # A landmarks model without a finder: refused as FERSession refuses it.
    if spec["refusal"]:
        try:
            TritonFERClient(f"127.0.0.1:{spec['ports']['http']}", spec["model"], "http")
        except Exception as exc:
            out["refusal"] = [type(exc).__name__, str(exc)]
    for protocol in ("http", "grpc"):
        port = spec["ports"][protocol]
        # Errors a deployment meets: a model the server does not have, a server not there.
        for label, url, model in (
            ("unknown_model", f"127.0.0.1:{port}", "no_such_model"),
            ("no_server", f"127.0.0.1:{spec['closed_port']}", spec["model"]),
        ):
            try:
                TritonFERClient(url, model, protocol, timeout_s=10)
            except Exception as exc:
                out[f"{protocol}_{label}"] = [type(exc).__name__, str(exc)]
    # A bad argument fails before any server is asked (there is none on this port).
    try:
        TritonFERClient(f"127.0.0.1:{spec['closed_port']}", spec["model"], abstain="always")
    except Exception as exc:
        out["bad_abstain"] = [type(exc).__name__, str(exc)]
    stats_url = f"http://127.0.0.1:{spec['ports']['http']}/v2/models/{spec['model']}/stats"
    with urlopen(stats_url, timeout=10) as answer:
        out["stats"] = json.load(answer)["model_stats"][0]
    print(json.dumps(out))
""".replace("    FINDER", textwrap.indent(textwrap.dedent(_FINDER_SOURCE), "    "))

#: A rule placing three AU centres on the finder's landmarks (fer.au_rule rows: landmark
#: indices, then how far below their mean, in eye distances).
_AU_RULE = (((17, 21), 0.0), ((22, 26), 0.0), ((48, 54), 0.3))
#: Calibration the models under test carry: probabilities are softmax(logits / 0.5).
_CALIBRATION = {"method": "temperature", "temperature": 0.5, "transform": "identity"}


def _threshold_between(tops: list[float]) -> float:
    """A threshold in the widest gap between the middle half of ``tops``: some faces abstain
    and some do not, and none sits close enough to the threshold for float32 noise between
    two runtimes to flip it."""
    ordered = sorted(tops)
    n = len(ordered)
    pairs = [(ordered[i + 1] - ordered[i], i) for i in range(n // 4, max(n // 4 + 1, 3 * n // 4))]
    gap, i = max(pairs)
    assert gap > 1e-4, f"the test images' top probabilities are too close: {ordered}"
    return (ordered[i] + ordered[i + 1]) / 2


def _field_for_field(want: list[dict[str, Any]], have: list[dict[str, Any]], where: Any) -> None:
    """``have`` (TritonFERClient's faces) equal ``want`` (FERSession's): every field exactly,
    the floats within float32 noise."""
    assert len(have) == len(want), where
    for w, h in zip(want, have, strict=True):
        assert set(h) == set(w), where
        for key in ("box", "crop_box", "label", "label_index", "top_label", "abstained", "au_map"):
            assert h[key] == w[key], (where, key, h[key], w[key])
        for key in ("probabilities", "raw_scores"):
            assert list(h[key]) == list(w[key]), (where, key)
            np.testing.assert_allclose(
                list(h[key].values()), list(w[key].values()), rtol=0, atol=1e-5, err_msg=key
            )
        assert h["score"] == pytest.approx(w["score"], abs=1e-5), where


@pytest.mark.parametrize("which", ["baked", "landmarks"])
def test_python_twin_on_the_bundled_server(
    which: str,
    make_model: Any,
    helpers: Any,
    face_scene: tuple[np.ndarray, tuple[int, int, int, int]],
    tmp_path: Path,
) -> None:
    """The same model and client as production, through the python-backend twin: the
    client's predictions equal FERSession's field for field -- calibrated probabilities,
    raw scores, labels with "unknown" below the model's abstention threshold, ``abstained``,
    and for a model trained with landmark AU maps each face's own map (or the template where
    no landmarks are found); without a finder the client refuses that model as FERSession
    does."""
    python = _triton_python()
    scene, _ = face_scene
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    images = {"scene.png": scene, "noise.png": noise}
    for name, rgb in images.items():
        assert cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    jobs: list[tuple[str, Any]] = [(str(tmp_path / "scene.png"), "detect")]
    for k in range(11):
        jobs.append((str(tmp_path / "noise.png"), [[k, k, 40, 30], [50 - k, 20, 30 + k, 50]]))
    jobs.append((str(tmp_path / "noise.png"), "whole"))

    landmarks = which == "landmarks"
    finder = _finder() if landmarks else None
    values: dict[str, Any] = {"score_kind": "logit", "calibration": _CALIBRATION}
    if landmarks:
        values.update(
            attention="input", au_centres=helpers.AU_CENTRES, au_source="landmarks",
            au_rule=_AU_RULE,
        )  # fmt: skip
    # The model's abstention threshold sits between the top probabilities of these faces.
    plain = make_model("plain.onnx", contract=helpers.tiny_contract(**values),
                       attention_input=landmarks)  # fmt: skip
    probe = FERSession(plain, "cpu", abstain=None, landmarks=finder)
    tops = [f.score for path, faces in jobs for f in probe.predict(path, faces)]
    abstention = {"threshold": _threshold_between(tops), "coverage_target": 0.5}
    model = make_model(
        "model.onnx",
        contract=helpers.tiny_contract(**values, abstention=abstention),
        attention_input=landmarks,
    )
    # A long queue delay with a preferred size of 8 faces (4 requests): concurrent requests
    # are batched even on a loaded machine; each lone request waits at most the delay.
    options = TritonOptions(
        backend="python", kind="cpu", max_batch=16, preferred_batch=(8,), queue_delay_us=300_000
    )
    repository = tmp_path / "repo"
    write_repository(model, repository, name="fer", options=options)

    # (name, protocol, keyword arguments, given the finder) for the client and FERSession.
    runs: list[tuple[str, str, dict[str, Any], bool]] = [
        ("http", "http", {}, landmarks),
        ("grpc", "grpc", {}, landmarks),
        ("http_never", "http", {"abstain": None}, landmarks),
        ("grpc_high", "grpc", {"abstain": 0.99}, landmarks),
    ]
    if landmarks:
        runs.append(("http_template", "http", {"au_source": "template"}, False))
    expected = {}
    for name, _, kwargs, given in runs:
        session = FERSession(model, "cpu", **kwargs, landmarks=finder if given else None)
        expected[name] = [[p.to_dict() for p in session.predict(path, f)] for path, f in jobs]
    assert len(expected["http"][0]) == 1, "the drawn face should be detected"
    # The checks below would prove little if the answers did not include both kinds.
    labels = [p["label"] for faces in expected["http"] for p in faces]
    assert "unknown" in labels and set(labels) - {"unknown"}, labels
    assert not any(p["abstained"] for faces in expected["http_never"] for p in faces)
    assert all(p["abstained"] for faces in expected["grpc_high"] for p in faces)
    au_maps = {p["au_map"] for faces in expected["http"] for p in faces}
    assert au_maps == ({"landmarks", "template"} if landmarks else {"template"}), au_maps

    with _bundled_server(python, repository, tmp_path) as server:
        ports = {"http": server["http"], "grpc": server["grpc"]}
        spec = {
            "ports": ports,
            "closed_port": _free_port(),
            "model": "fer",
            "threads": 4,
            "jobs": jobs,
            "runs": [{"name": n, "protocol": p, "kwargs": k, "finder": f} for n, p, k, f in runs],
            "refusal": landmarks,
        }
        result = _run_venv(
            python,
            _CLIENT_SCRIPT.replace("sys.argv[1]", repr(json.dumps(spec))),
            tmp_path,
            timeout=120,
        )
    for name, _, kwargs, given in runs:
        got = result[name]
        session = FERSession(model, "cpu", **kwargs, landmarks=finder if given else None)
        assert got["abstain_threshold"] == session.abstain_threshold, name
        assert got["au_source"] == session.au_source, name
        assert len(got["answers"]) == len(jobs)
        for job, want, have in zip(jobs, expected[name], got["answers"], strict=True):
            _field_for_field(want, have, (name, job))
    if landmarks:
        kind, message = result["refusal"]
        assert kind == "LandmarksUnavailableError", message
        assert "'fer'" in message and "trained with landmark AU maps" in message
        assert "au_source='template'" in message and "landmarks=" in message
    else:
        assert "refusal" not in result
    kind, message = result["bad_abstain"]
    assert kind == "ValueError" and "abstain must be 'model'" in message, message
    for protocol in ("http", "grpc"):
        kind, message = result[f"{protocol}_unknown_model"]
        assert kind == "TritonUnavailableError", message
        assert "'no_such_model'" in message and "not ready" in message
        kind, message = result[f"{protocol}_no_server"]
        assert kind == "TritonUnavailableError", message
        assert str(spec["closed_port"]) in message
    stats = result["stats"]
    requests = stats["inference_stats"]["success"]["count"]
    executions = stats["execution_count"]
    # The warm-up request plus one per job and run, served in fewer executions: at least
    # one execution ran requests from several clients together.
    assert requests >= len(runs) * len(jobs)
    assert executions < requests, stats
    assert any(b["batch_size"] > 2 for b in stats["batch_stats"]), stats["batch_stats"]
