"""Which ONNX Runtime build ``pip install fer-export`` resolves to, per platform.

PyPI's CPU ``onnxruntime`` and NVIDIA's ``onnxruntime-gpu`` both install the ``onnxruntime``
module; two in one environment overwrite each other. fer-export therefore brings exactly one
(or none on linux aarch64, where a Jetson takes NVIDIA's JetPack wheel), and its ``[cpu]``
extra never adds a second one. Resolved with ``uv pip compile --python-platform`` on the
registry requirements of packages/fer-export/pyproject.toml (workspace siblings left out):
offline from uv's cache first, from the registry when that fails (missing files, or an old
cached index page); skipped, with the reason, when the registry cannot be reached.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "packages" / "fer-export" / "pyproject.toml"
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}
NETWORK_DOWN = ("Failed to fetch", "error sending request", "dns error", "Connection refused",
                "Could not connect", "timed out", "failed to lookup address")  # fmt: skip

# platform (uv's --python-platform), extras -> the ONNX Runtime distributions resolved
EXPECTED: dict[tuple[str, tuple[str, ...]], set[str]] = {
    ("x86_64-manylinux_2_28", ()): {"onnxruntime-gpu"},
    ("x86_64-manylinux_2_28", ("cpu",)): {"onnxruntime-gpu"},
    ("aarch64-manylinux_2_28", ()): set(),
    ("aarch64-manylinux_2_28", ("cpu",)): {"onnxruntime"},
    ("aarch64-apple-darwin", ()): {"onnxruntime"},
    ("x86_64-pc-windows-msvc", ()): {"onnxruntime"},
}


def _requirements(extras: tuple[str, ...]) -> list[str]:
    """fer-export's registry requirements (base plus ``extras``); siblings are not on it."""
    with PYPROJECT.open("rb") as fh:
        project = tomllib.load(fh)["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [line for line in lines if not line.startswith(("fer-images", "capsnet-model"))]


def _compile(requirements: Path, platform: str) -> str:
    """Returns the pinned requirements uv resolves for ``platform``, or skips without them."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    command = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate",
               "--python-version", "3.11", "--python-platform", platform,
               str(requirements)]  # fmt: skip
    done = subprocess.run([*command, "--offline"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        # The cache may lack files or hold an old index page that offers only
        # old versions ("No solution found"): either way the registry decides.
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 and any(s in done.stderr for s in NETWORK_DOWN):
            pytest.skip(f"uv's cache lacks fer-export's requirements and the registry is "
                        f"unreachable: {done.stderr.strip().splitlines()[-1]}")  # fmt: skip
    assert done.returncode == 0, f"uv pip compile for {platform} failed:\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize(("platform", "extras"), list(EXPECTED), ids=lambda v: str(v or "base"))
def test_one_onnxruntime_build_per_platform(
    platform: str, extras: tuple[str, ...], tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.in"
    requirements.write_text("\n".join(_requirements(extras)) + "\n", encoding="utf-8")
    pinned = _compile(requirements, platform)
    names = {
        re.split(r"[=<>!~ ;\[]", line.strip(), maxsplit=1)[0].lower()
        for line in pinned.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert "onnx" in names, f"{platform}: unexpected resolution:\n{pinned}"
    assert names & RUNTIMES == EXPECTED[platform, extras], f"{platform} {extras}:\n{pinned}"
