"""ARCHITECTURE.md's dependency rules, enforced for every workspace member.

Members are discovered from ``packages/*/pyproject.toml`` and ``apps/*/pyproject.toml``.
The table lives in ``RULES`` (tests/dependency_rules.py) and must match ARCHITECTURE.md
(``tests/test_architecture.py`` compares them):

=====================  =====================================================================
band-ops               torch
band-ops[trl]          + trl (the adapter module band_ops.trl only)
config-layers          pydantic, pyyaml
rl-trainer             band-ops, config-layers, torch, transformers, accelerate, peft,
                       safetensors, datasets (+ tqdm, tokenizers: already brought by transformers)
rl-trainer[math]       + math-verify (imported lazily)
fer-images            numpy, opencv
capsnet-model          torch, numpy, albumentations, opencv, fer-images, config-layers
fer-export (runtime)   onnxruntime / onnxruntime-gpu, onnx, numpy, opencv, fer-images
fer-export[export]     + torch, onnxscript, capsnet-model
apps                   anything they declare
=====================  =====================================================================

"opencv" is any of opencv-python, opencv-python-headless, opencv-contrib-python(-headless).

What is checked, per member:

1. Declared dependencies (packages). Every distribution in ``[project].dependencies`` is in
   the member's runtime row; every distribution in an optional-dependencies extra is in the
   runtime row or in that extra's own row (only fer-export[export] has one). A package
   without a row fails: a new package needs a row in ARCHITECTURE.md and in ``RULES``.
2. Imports. Every ``import x`` / ``from x import y`` in ``src/<import_name>/**/*.py``, at
   module level or nested (functions, classes, if/try blocks), is parsed with ``ast``.
   Relative imports, the standard library (``sys.stdlib_module_names``) and the member's own
   import name are skipped. The top-level import name is mapped to its distribution(s)
   (``IMPORT_TO_DISTRIBUTIONS``, e.g. cv2 -> opencv-*, yaml -> PyYAML; workspace members by
   their src/ directory; otherwise the import name with "_" -> "-"). Then:

   - a package importing an app fails (packages never import apps);
   - a package importing a distribution outside its row (runtime + extras) fails;
   - an import whose distribution is declared in neither ``[project].dependencies`` nor an
     extra fails -- a try/except ImportError does not excuse an undeclared import;
   - an import whose distribution is declared only in an extra must not run when the package
     is imported without that extra: it must be inside a function (lazy), in a ``try:``
     with a handler that catches it (ImportError, ModuleNotFoundError, Exception,
     BaseException or a bare ``except:``), under ``if TYPE_CHECKING:``, or
     in a module on that extra's side. For fer-export the ``[export]`` side is the module or
     subpackage ``fer_export.export`` (and its submodules): there torch, onnxscript and
     capsnet_model may be imported at module level; anywhere else in fer_export they must
     be lazy or guarded, and runtime modules must not import ``fer_export.export`` at module
     level either (relative imports are resolved for this check only).

   Apps may import anything they declare (same declared/extra rules, no row).

Not seen: imports done by string (``importlib.import_module``, ``__import__``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from dependency_rules import (
    IMPORT_TO_DISTRIBUTIONS,
    RULES,
    Checker,
    Member,
    Violation,
    discover,
    load_member,
)

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = discover(ROOT)


# --------------------------------------------------------------------------- real members


def test_workspace_has_members() -> None:
    names = {m.name for m in MEMBERS}
    assert "band-ops" in names, f"discovery found {sorted(names)}"
    for member in MEMBERS:
        assert member.kind == ("app" if member.root.parent.name == "apps" else "package")


@pytest.mark.parametrize("member", MEMBERS, ids=[m.name for m in MEMBERS])
def test_member_follows_dependency_rules(member: Member) -> None:
    violations = Checker(MEMBERS).check(member)
    assert not violations, "\n".join(map(str, violations))


def test_rules_cover_design_table() -> None:
    assert set(RULES) == {
        "band-ops",
        "config-layers",
        "rl-trainer",
        "fer-images",
        "capsnet-model",
        "fer-export",
    }
    assert "torch" not in RULES["config-layers"].allowed
    assert RULES["band-ops"].runtime == {"torch"}
    assert RULES["band-ops"].allowed == {"torch", "trl"}
    assert "torch" not in RULES["fer-images"].allowed
    assert "torch" not in RULES["fer-export"].runtime
    assert {"torch", "onnxscript", "capsnet-model"} <= RULES["fer-export"].allowed


# ------------------------------------------------------------------ synthetic workspaces

MakeMember = Callable[..., Member]


@pytest.fixture
def make_member(tmp_path: Path) -> MakeMember:
    """Write a member (pyproject + src files) into a throwaway workspace under tmp_path."""

    def make(
        name: str,
        files: dict[str, str],
        *,
        dependencies: tuple[str, ...] = (),
        extras: dict[str, list[str]] | None = None,
        kind: str = "package",
    ) -> Member:
        root = tmp_path / ("apps" if kind == "app" else "packages") / name
        lines = [
            "[project]",
            f'name = "{name}"',
            'version = "0.0.0"',
            f"dependencies = {list(dependencies)!r}",
        ]
        if extras:
            lines.append("[project.optional-dependencies]")
            lines += [f"{extra} = {reqs!r}" for extra, reqs in extras.items()]
        root.mkdir(parents=True)
        (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
        for rel, text in files.items():
            path = root / "src" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return load_member(root / "pyproject.toml", kind)

    return make


def check(member: Member, *others: Member) -> list[Violation]:
    return Checker([member, *others]).check(member)


def kinds(violations: list[Violation]) -> list[str]:
    return [v.kind for v in violations]


def test_clean_member_passes(make_member: MakeMember) -> None:
    member = make_member(
        "band-ops",
        {
            "band_ops/__init__.py": """
                from __future__ import annotations
                import math, os.path
                from dataclasses import dataclass
                import torch
                from torch import nn
                from . import losses
                from .losses import policy_loss
                from band_ops.losses import policy_loss as again
            """,
            "band_ops/losses.py": "import torch.nn.functional as F\ndef policy_loss(): ...\n",
        },
        dependencies=("torch>=2.4",),
    )
    assert check(member) == []


def test_forbidden_import_is_reported(make_member: MakeMember) -> None:
    member = make_member(
        "band-ops",
        {"band_ops/__init__.py": "import torch\nfrom transformers import AutoModel\n"},
        dependencies=("torch",),
    )
    violations = check(member)
    assert kinds(violations) == ["forbidden-import"]
    assert "transformers" in violations[0].message
    assert "__init__.py:2" in violations[0].message


def test_nested_forbidden_import_is_reported(make_member: MakeMember) -> None:
    member = make_member(
        "band-ops",
        {
            "band_ops/sub/deep.py": """
                import torch
                class Policy:
                    def load(self):
                        if True:
                            import numpy as np
                        return np
            """,
            "band_ops/__init__.py": "",
            "band_ops/sub/__init__.py": "",
        },
        dependencies=("torch",),
    )
    violations = check(member)
    assert kinds(violations) == ["forbidden-import"]
    assert "numpy" in violations[0].message and "deep.py:6" in violations[0].message


def test_guard_does_not_excuse_a_forbidden_import(make_member: MakeMember) -> None:
    member = make_member(
        "band-ops",
        {"band_ops/__init__.py": "try:\n    import transformers\nexcept ImportError:\n    pass\n"},
        dependencies=("torch",),
    )
    assert kinds(check(member)) == ["forbidden-import"]


def test_undeclared_import_is_reported(make_member: MakeMember) -> None:
    member = make_member("band-ops", {"band_ops/__init__.py": "import torch\n"})
    violations = check(member)
    assert kinds(violations) == ["undeclared-import"]
    assert "torch" in violations[0].message


def test_undeclared_guarded_import_is_reported(make_member: MakeMember) -> None:
    member = make_member(
        "rl-trainer",
        {
            "rl_trainer/__init__.py": """
                import torch
                try:
                    import safetensors
                except ImportError:
                    safetensors = None
            """,
        },
        dependencies=("torch",),
    )
    violations = check(member)
    assert kinds(violations) == ["undeclared-import"]
    assert "safetensors" in violations[0].message


def test_forbidden_declared_dependency_is_reported(make_member: MakeMember) -> None:
    member = make_member(
        "band-ops",
        {"band_ops/__init__.py": "import torch\n"},
        dependencies=("torch", "numpy>=2"),
        extras={"hub": ["transformers"]},
    )
    violations = check(member)
    assert kinds(violations) == ["forbidden-dependency", "forbidden-dependency"]
    assert "numpy" in violations[0].message and "[hub]" in violations[1].message


def test_package_without_a_rule_is_reported(make_member: MakeMember) -> None:
    member = make_member("new-thing", {"new_thing/__init__.py": ""})
    assert kinds(check(member)) == ["no-rule"]


def test_package_importing_an_app_is_reported(make_member: MakeMember) -> None:
    app = make_member("fer-edge", {"fer_edge/__init__.py": ""}, kind="app")
    member = make_member(
        "band-ops",
        {"band_ops/__init__.py": "import torch\nfrom fer_edge import serve\n"},
        dependencies=("torch",),
    )
    assert kinds(check(member, app)) == ["imports-app"]


def test_workspace_dependency_and_import_mapping(make_member: MakeMember) -> None:
    band_ops = make_member("band-ops", {"band_ops/__init__.py": ""}, dependencies=("torch",))
    trainer = make_member(
        "rl-trainer",
        {"rl_trainer/__init__.py": "import band_ops\nfrom band_ops.losses import x\n"},
        dependencies=("band-ops", "torch"),
    )
    assert check(trainer, band_ops) == []
    capsnet = make_member(
        "capsnet-model",
        {"capsnet_model/__init__.py": "import cv2\nimport numpy\nimport albumentations as A\n"},
        dependencies=("torch", "numpy", "albumentations", "opencv-python-headless>=4.10"),
    )
    assert check(capsnet) == []
    assert IMPORT_TO_DISTRIBUTIONS["yaml"] == ("pyyaml",)


def _fer_export(make_member: MakeMember, files: dict[str, str]) -> Member:
    return make_member(
        "fer-export",
        {"fer_export/__init__.py": "", **files},
        dependencies=(
            "numpy",
            "onnx",
            "onnxruntime-gpu; platform_machine == 'x86_64' and sys_platform == 'linux'",
            "onnxruntime; platform_machine != 'x86_64' or sys_platform != 'linux'",
        ),
        extras={"export": ["torch", "onnxscript", "capsnet-model"]},
    )


def test_fer_export_runtime_may_not_import_torch_at_module_level(make_member: MakeMember) -> None:
    member = _fer_export(
        make_member, {"fer_export/runtime.py": "import onnxruntime\nimport torch\n"}
    )
    violations = check(member)
    assert kinds(violations) == ["unguarded-optional-import"]
    assert "torch" in violations[0].message and "fer_export.export" in violations[0].message


def test_try_without_an_import_error_handler_is_no_guard(make_member: MakeMember) -> None:
    member = _fer_export(
        make_member,
        {"fer_export/runtime.py": "try:\n    import torch\nexcept RuntimeError:\n    pass\n"},
    )
    assert kinds(check(member)) == ["unguarded-optional-import"]


def test_fer_export_export_side_may_import_torch(make_member: MakeMember) -> None:
    member = _fer_export(
        make_member,
        {
            "fer_export/export/__init__.py": "import torch\nimport onnxscript\n",
            "fer_export/export/onnx.py": "import torch\nfrom capsnet_model import build\n",
            "fer_export/runtime.py": """
                from typing import TYPE_CHECKING
                import numpy as np
                import onnxruntime as ort
                if TYPE_CHECKING:
                    import torch
                try:
                    import onnxscript
                except (ModuleNotFoundError, RuntimeError):
                    onnxscript = None
                def to_numpy(t):
                    import torch
                    from .export import onnx
                    return t
            """,
        },
    )
    assert check(member) == []


def test_fer_export_runtime_may_not_import_export_side(make_member: MakeMember) -> None:
    member = _fer_export(
        make_member,
        {
            "fer_export/export.py": "import torch\n",
            "fer_export/cli.py": "from . import export\n",
            "fer_export/runtime.py": "from fer_export.export import something\n",
        },
    )
    violations = check(member)
    assert kinds(violations) == ["unguarded-optional-import"] * 2
    assert "cli.py" in violations[0].message and "runtime.py" in violations[1].message


def test_unparsable_file_is_reported(make_member: MakeMember) -> None:
    member = make_member(
        "band-ops", {"band_ops/__init__.py": "def broken(:\n"}, dependencies=("torch",)
    )
    assert kinds(check(member)) == ["unparsable"]


def test_app_may_import_what_it_declares(make_member: MakeMember) -> None:
    app = make_member(
        "fer-edge",
        {"fer_edge/__init__.py": "import fastapi\nimport yaml\nimport cv2\nimport uvicorn\n"},
        dependencies=("fastapi", "PyYAML", "opencv-python-headless"),
        kind="app",
    )
    violations = check(app)
    assert kinds(violations) == ["undeclared-import"]
    assert "uvicorn" in violations[0].message
