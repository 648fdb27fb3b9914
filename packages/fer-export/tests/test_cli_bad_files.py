"""``fer-export info | bench | verify`` on bad model files: one line naming the real cause,
exit code 2, no traceback (no torch needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fer_export.cli import main


def _bad_files(tmp_path: Path, helpers: types.ModuleType) -> dict[str, tuple[Path, str]]:
    """name -> (path, the piece of the error message that names the cause)."""
    folder = tmp_path / "models.onnx"
    folder.mkdir()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"PK\x03\x04 a zip file, not a model" * 8)
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(helpers.build_model(metadata={}).SerializeToString())
    meta = helpers.tiny_contract().to_metadata()
    happy = tmp_path / "happy.onnx"
    happy.write_bytes(
        helpers.build_model(metadata={**meta, "fer.labels": "happy"}).SerializeToString()
    )
    five = tmp_path / "five.onnx"
    labels = json.dumps(["a", "b", "c", "d", "e"])
    five.write_bytes(
        helpers.build_model(metadata={**meta, "fer.labels": labels}).SerializeToString()
    )
    return {
        "missing": (tmp_path / "absent.onnx", "ONNX file not found"),
        "directory": (folder, "is a directory, expected an .onnx file"),
        "empty": (empty, "is empty (0 bytes)"),
        "junk": (junk, "is not a readable ONNX model (cannot parse: DecodeError"),
        "no metadata": (plain, "has no FER metadata"),
        "labels text": (happy, "fer.labels is 'happy', expected JSON: a list"),
        "class count": (five, "has 4 classes but fer.labels names 5"),
    }


CASES = ["missing", "directory", "empty", "junk", "no metadata", "labels text", "class count"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("command", ["info", "bench", "verify"])
def test_bad_model_file(
    tmp_path: Path,
    helpers: types.ModuleType,
    capsys: pytest.CaptureFixture[str],
    command: str,
    name: str,
) -> None:
    path, cause = _bad_files(tmp_path, helpers)[name]
    argv = [command, str(path)]
    if command == "verify":  # the model file is checked before the checkpoint is looked at
        argv.append(str(tmp_path / "never-read.safetensors"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fer-export: error: "), lines
    assert cause in lines[0] and str(path) in lines[0], lines
    assert captured.out == ""


def test_bad_file_from_the_command_line(tmp_path: Path, helpers: types.ModuleType) -> None:
    """The real entry point: exit code 2, one line, and verify loads no torch for it."""
    path, cause = _bad_files(tmp_path, helpers)["no metadata"]
    code = (
        "import sys; from fer_export.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "verify", str(path), str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fer-export: error: {path} {cause}"), lines
