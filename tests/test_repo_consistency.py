"""The README's Quickstart and CI's entry point (.ci/run) agree."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README.md Quickstart has no ```bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_quickstart_is_the_training_app_and_the_test_command() -> None:
    commands = _quickstart_commands()
    assert len(commands) == 2, commands
    assert commands[0] == "uv run bandpo-train"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert _ci_commands()[-1] == _quickstart_commands()[1]


def test_ci_script_is_strict_and_never_downloads_python() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run is not executable"
    commands = _ci_commands()
    assert "set -euo pipefail" in commands
    assert "export UV_PYTHON_DOWNLOADS=never" in commands
