"""The ``fer-export`` command line: export, verify, info and the error exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("capsnet_model")

from capsnet_model import create_model  # noqa: E402
from capsnet_model.checkpoint import ModelInfo, save_model  # noqa: E402
from capsnet_model.data import Preprocess  # noqa: E402
from fer_export.cli import main  # noqa: E402

TINY: dict[str, Any] = {"width": 1 / 16, "image_size": 64, "primary_channels": 4}


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model("e2capsnet", **TINY)
    with torch.no_grad():  # untrained lengths are ~1e-7: spread them over (0, 1)
        model.routing.weight.mul_(1000.0)
        model.primary.conv.weight.mul_(10.0)
    info = ModelInfo(name="e2capsnet", kwargs=TINY, preprocess=Preprocess(image_size=64))
    return save_model(model, path, info)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, model.onnx) written by ``fer-export export --fp16 --int8``."""
    root = tmp_path_factory.mktemp("cli")
    ckpt = _checkpoint(root / "tiny.safetensors", seed=0)
    out = root / "model.onnx"
    code = main(["export", str(ckpt), "-o", str(out), "--fp16", "--int8", "--calib-count", "32"])
    assert code == 0
    return ckpt, out


def test_export_writes_variants(
    exported: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = exported
    assert out.is_file()
    assert (out.parent / "model.fp16.onnx").is_file()
    assert (out.parent / "model.int8.onnx").is_file()


def test_info_text_and_json(
    exported: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = exported
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "neutral" in text and "capsule_length" in text and "image float" in text
    assert main(["info", str(out.parent / "model.int8.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == "int8" and info["input_size"] == 64
    assert info["attention"] == "baked" and info["inputs"][0]["shape"][1:] == [3, 64, 64]
    assert isinstance(info["inputs"][0]["shape"][0], str)  # symbolic batch
    assert info["outputs"][0]["name"] == "scores" and info["size_bytes"] > 0
    assert info["opset"]["ai.onnx"] >= 18 and "torch" in info["exporter"]


def test_info_does_not_import_torch(exported: tuple[Path, Path]) -> None:
    _, out = exported
    code = (
        "import sys; from fer_export.cli import main; rc = main(['info', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_verify_pass_and_fail(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, out = exported
    assert main(["verify", str(out), str(ckpt)]) == 0
    assert "PASSED" in capsys.readouterr().out
    other = _checkpoint(tmp_path / "other.safetensors", seed=1)  # other weights
    assert main(["verify", str(out), str(other), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["max_abs_diff"] > 1e-4


def test_error_exit_codes(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], helpers: Any
) -> None:
    ckpt, out = exported
    cases: list[tuple[list[str], str]] = [
        (["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "m.onnx")],
         "checkpoint not found"),
        (["verify", str(out), str(tmp_path / "missing.safetensors")], "checkpoint not found"),
        (["info", str(tmp_path / "missing.onnx")], "ONNX file not found"),
        (["info", str(ckpt)], "is not a readable ONNX model (cannot parse"),
        (["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--int8", "--calib",
          str(tmp_path / "nofaces")], "calibration folder not found"),
    ]  # fmt: skip
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    cases.append((["export", str(plain), "-o", str(tmp_path / "m.onnx")], "not a capsnet-model"))
    import onnx
    from onnx import TensorProto, helper

    bare = tmp_path / "bare.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(bare))
    cases.append((["info", str(bare)], "no FER metadata"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        helpers.assert_one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "m.onnx").exists()


def _plain_classifier(
    path: Path, size: int | str, classes: int = 7, metadata: dict[str, str] | None = None
) -> Path:
    """A valid ONNX classifier (Conv -> GlobalAveragePool -> Flatten -> Gemm) taking
    ``image (N, 3, size, size)``, with ``metadata`` (none by default); built without torch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "cw"], ["conv"], kernel_shape=[3, 3]),
            helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "gw"], ["scores"]),
        ],
        "plain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "cw"),
            numpy_helper.from_array(rng.normal(size=(4, classes)).astype(np.float32), "gw"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_verify_bad_onnx_is_one_line_exit_2(
    exported: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    helpers: Any,
) -> None:
    """A valid ONNX file verify cannot use is bad input (exit 2, one line), not an
    onnxruntime traceback or a failed verification."""
    ckpt, _ = exported  # a 64 px model with 7 classes
    labels = ["neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness"]

    def meta(size: int) -> dict[str, str]:
        return helpers.tiny_contract(labels=tuple(labels), input_size=size).to_metadata()

    cases = [
        (_plain_classifier(tmp_path / "bare.onnx", 64), "bare.onnx has no FER metadata"),
        (
            _plain_classifier(tmp_path / "small.onnx", 32, metadata=meta(32)),
            "small.onnx: fer.input_size is 32 but E2Capsnet takes 64 x 64 images",
        ),
        (  # symbolic spatial axes: only the metadata says 32
            _plain_classifier(tmp_path / "dyn.onnx", "S", metadata=meta(32)),
            "dyn.onnx: fer.input_size is 32 but E2Capsnet takes 64 x 64 images",
        ),
        (
            _plain_classifier(tmp_path / "graph.onnx", 32, metadata=meta(64)),
            "graph.onnx: fer.input_size is 64 but input 'image' has size 32",
        ),
    ]
    for onnx_path, message in cases:
        for extra in ([], ["--json"]):
            assert main(["verify", str(onnx_path), str(ckpt), *extra]) == 2, onnx_path
            captured = capsys.readouterr()
            helpers.assert_one_error_line(captured.err, message)
            assert captured.out == ""


def test_verify_onnxruntime_failure_is_a_failed_check(
    exported: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    helpers: Any,
) -> None:
    """A graph that passes the checker and the contract but that ONNX Runtime cannot run
    (a Reshape of 3 x 64 x 64 values into rows of 7) is a failed verification, not a
    traceback."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ckpt, _ = exported
    labels = ("neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "rows"], ["scores"])],
        "reshape",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 7])],
        initializer=[numpy_helper.from_array(np.array([-1, 7], np.int64), "rows")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = helpers.tiny_contract(labels=labels, input_size=64)
    helper.set_model_props(model, contract.to_metadata())
    path = tmp_path / "reshape.onnx"
    onnx.save(model, str(path))
    assert main(["verify", str(path), str(ckpt), "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["passed"] is False and report["checker_ok"] is True
    assert "batch 1: onnxruntime failed" in report["problems"][0], report["problems"]
    assert "Traceback" not in captured.err
