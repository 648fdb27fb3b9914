"""Every member's range on a sibling member includes that sibling's current version, so the set
of versions in this repository is installable together from the registry."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = sorted([*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("apps/*/pyproject.toml")])


def _project(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)["project"]


MEMBERS = {_project(p)["name"]: _project(p) for p in PYPROJECTS}


def _requirements(project: dict) -> list[tuple[str, Requirement]]:
    """(where, requirement) for runtime dependencies and every optional extra."""
    out = [("dependencies", Requirement(r)) for r in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out += [(f"[{extra}]", Requirement(r)) for r in reqs]
    return out


SIBLING_EDGES = [
    (name, where, req)
    for name, project in MEMBERS.items()
    for where, req in _requirements(project)
    if req.name in MEMBERS and req.name != name
]


def test_there_are_sibling_dependencies() -> None:
    names = {(name, req.name) for name, _, req in SIBLING_EDGES}
    assert ("rl-trainer", "band-ops") in names and ("fer-edge", "fer-export") in names


@pytest.mark.parametrize(
    ("member", "where", "req"),
    SIBLING_EDGES,
    ids=[f"{n}->{r.name}" for n, _, r in SIBLING_EDGES],
)
def test_sibling_range_includes_current_version(member: str, where: str, req: Requirement) -> None:
    current = Version(MEMBERS[req.name]["version"])
    assert req.specifier.contains(current, prereleases=True), (
        f"{member} {where} requires {req}, which excludes {req.name}'s current version {current}"
        f"; widen the range (or bump {member} together with {req.name})"
    )
    ops = {spec.operator for spec in req.specifier}
    assert ">=" in ops and "<" in ops, (
        f"{member} {where}: {req} should be a bounded range '>=X,<Y' on a sibling"
    )


def test_version_lives_in_pyproject_only() -> None:
    """``uv version --package NAME --bump ...`` is the whole bump: ``__version__`` is read from
    the installed metadata, never written a second time."""
    for path in PYPROJECTS:
        Version(_project(path)["version"])  # PEP 440
        for init in (path.parent / "src").glob("*/__init__.py"):
            text = init.read_text()
            assert '__version__ = "' not in text, f"{init} hard-codes __version__"
