"""No member imports another member's private modules (``sibling._x``): what one member uses
of another is that member's public API, so it can change its insides without breaking others.

Stdlib only (the workspace session does not install the members): every ``src/`` file is
parsed with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(ROOT.glob("packages/*/src/*")) + sorted(ROOT.glob("apps/*/src/*"))
IMPORT_NAMES = {path.name for path in SOURCES if (path / "__init__.py").is_file()}


def _private_sibling_imports(package: Path, root: Path = ROOT) -> list[str]:
    found = []
    for file in sorted(package.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top, *rest = name.split(".")
                if top == package.name or top not in IMPORT_NAMES:
                    continue
                if any(part.startswith("_") for part in rest):
                    found.append(f"{file.relative_to(root)}:{node.lineno}: imports {name}")
    return found


def test_the_members_are_found() -> None:
    assert {"band_ops", "rl_trainer", "config_layers", "bandpo_train"} <= IMPORT_NAMES


@pytest.mark.parametrize("package", SOURCES, ids=[p.name for p in SOURCES])
def test_no_private_imports_across_members(package: Path) -> None:
    if not (package / "__init__.py").is_file():
        pytest.skip(f"{package} is not an import package")
    assert _private_sibling_imports(package) == []


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    package = tmp_path / "bandpo_train"
    package.mkdir()
    (package / "x.py").write_text(
        "import rl_trainer\nfrom rl_trainer._io import atomic_write_text\n"
    )
    assert _private_sibling_imports(package, tmp_path) == [
        "bandpo_train/x.py:2: imports rl_trainer._io"
    ]
