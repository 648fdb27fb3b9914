"""``rl-trainer --version`` and ``rl-trainer COMMAND --help`` exit 0, as installed scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rl_trainer

SCRIPT = Path(sys.executable).parent / (
    "rl-trainer.exe" if sys.platform == "win32" else "rl-trainer"
)
ENTRY_POINTS = {
    "script": [str(SCRIPT)],
    "module": [sys.executable, "-m", "rl_trainer"],
}


def _run(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    if entry == "script" and not SCRIPT.is_file():
        pytest.skip(f"the rl-trainer script is not installed next to {sys.executable}")
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_version_exits_0(entry: str) -> None:
    done = _run(entry, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"rl-trainer {rl_trainer.__version__}"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("command", ["train", "evaluate", "config", "accelerate-configs"])
def test_command_help_exits_0(entry: str, command: str) -> None:
    done = _run(entry, command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: rl-trainer {command}"), done.stdout
    assert done.stderr == ""


def test_help_after_overrides_and_short_flag() -> None:
    done = _run("module", "train", "optim.lr=1e-6", "-h")
    assert done.returncode == 0, done.stderr
    assert "model.path and data.path" in done.stdout


def test_no_command_and_unknown_command_still_exit_2() -> None:
    assert _run("module").returncode == 2
    done = _run("module", "trian", "--help")
    assert done.returncode == 2 and "unknown command 'trian'" in done.stderr
