"""``fer-export export -o``: a folder that does not exist yet is created; files are 0644."""

from __future__ import annotations

import os
import stat
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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("e2capsnet", **TINY)
    info = ModelInfo(name="e2capsnet", kwargs=TINY, preprocess=Preprocess(image_size=64))
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", info)


def test_export_creates_the_output_folder(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "model.onnx"
    old = os.umask(0o022)
    try:
        code = main(["export", str(checkpoint), "-o", str(out), "--fp16", "--no-verify"])
    finally:
        os.umask(old)
    assert code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.fp16.onnx", "model.onnx"]
    if sys.platform != "win32":
        # Readable by the service user of a deployment (the temporary file starts as 0600).
        for path in out.parent.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path, oct(path.stat().st_mode))


def test_export_output_errors_are_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], helpers: Any
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (tmp_path, "is a folder; give the .onnx file to write"),
        (blocker / "model.onnx", "cannot create the folder of -o"),
    ]
    for output, message in cases:
        assert main(["export", str(checkpoint), "-o", str(output), "--no-verify"]) == 2
        err = capsys.readouterr().err
        assert str(output) in err.strip().splitlines()[-1], err
        helpers.assert_one_error_line(err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
