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
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, out = exported
    cases: list[tuple[list[str], str]] = [
        (["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "m.onnx")],
         "checkpoint not found"),
        (["verify", str(out), str(tmp_path / "missing.safetensors")], "checkpoint not found"),
        (["info", str(tmp_path / "missing.onnx")], "ONNX file not found"),
        (["info", str(ckpt)], "is not an ONNX file"),
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
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.onnx").exists()
