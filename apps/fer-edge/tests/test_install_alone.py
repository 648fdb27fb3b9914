"""fer-edge installed on its own (with the fer-export runtime) brings no torch and still works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHECK = """
import importlib.util, json, sys
import fer_edge.cli, fer_export, fer_export.runtime
present = [m for m in ("torch", "capsnet_model", "torchvision") if importlib.util.find_spec(m)]
print(json.dumps({"present": present, "python": sys.executable}))
"""


@pytest.mark.slow
def test_fer_edge_installs_without_torch(tmp_path: Path) -> None:
    """A fresh venv outside the workspace gets fer-edge + fer-export from their directories
    and their registry dependencies (from uv's cache when warm): torch must not come in, the
    CLI must start."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed on PATH for this test (pip install uv)"
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([uv, "venv", "--quiet", "--python", py_version, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            str(ROOT / "packages" / "fer-export"),
            str(ROOT / "apps" / "fer-edge"),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    out = subprocess.run(
        [str(python), "-c", CHECK], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert '"present": []' in out.stdout, out.stdout
    help_text = subprocess.run(
        [str(venv / "bin" / "fer-edge"), "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "run" in help_text and "serve" in help_text
