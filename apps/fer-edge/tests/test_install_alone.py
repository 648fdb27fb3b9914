"""fer-edge installed on its own (with the fer-export runtime) on the oldest supported Python
(3.10, JetPack 6's) brings no torch, and its torch-free tests pass there."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
OLDEST = "3.10"  # fer-edge's and fer-export's requires-python; JetPack 6 ships Python 3.10
TORCH_FREE_TESTS = ("test_run.py", "test_server.py", "test_imports.py")


def oldest_python() -> str:
    """An interpreter of the oldest supported version: python3.10 on PATH or in pyenv."""
    found = shutil.which(f"python{OLDEST}")
    candidates = ([found] if found else []) + sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{OLDEST}.*/bin/python{OLDEST}"))
    )
    for candidate in candidates:
        ok = subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0
        if ok:
            return candidate
    raise AssertionError(
        f"no Python {OLDEST} found (PATH or ~/.pyenv/versions): this test installs fer-edge on "
        "the oldest Python it supports"
    )


CHECK = """
import importlib.util, json, sys
import fer_edge.cli, fer_export, fer_export.runtime
present = [m for m in ("torch", "capsnet_model", "torchvision") if importlib.util.find_spec(m)]
print(json.dumps({"present": present, "python": sys.executable}))
"""


@pytest.mark.slow
def test_fer_edge_installs_without_torch(tmp_path: Path) -> None:
    """A fresh Python 3.10 venv outside the workspace gets fer-edge, fer-export and fer-images
    from their directories and their registry dependencies (from uv's cache when warm): torch
    must not come in, the CLI must start, and fer-edge's torch-free tests must pass there."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed on PATH for this test (pip install uv)"
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [uv, "venv", "--quiet", "--python", oldest_python(), str(venv)], check=True, env=env
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            str(ROOT / "packages" / "fer-images"),
            str(ROOT / "packages" / "fer-export"),
            str(ROOT / "apps" / "fer-edge"),
            "pytest>=8.3",
            "httpx>=0.27",
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
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TORCH_FREE_TESTS],
        capture_output=True,
        text=True,
        cwd=HERE,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "passed" in tests.stdout and "failed" not in tests.stdout
