#!/usr/bin/env python3
"""Which workspace members a change touches, for CI's test matrix (python3 stdlib only).

A member is touched when a file under its directory changes; the member's dependents are then
touched too, transitively. Dependents are read from every member's [project].dependencies, its
optional-dependencies (extras) *and* its dependency groups (what its tests use): fer-export
reaches capsnet-model only through its `export` extra, yet a change to capsnet-model is tested
in fer-export, fer-train and fer-edge as well; fer-edge's tests train a model with fer-train,
so a change to fer-train re-tests fer-edge.
A change to a workspace-wide file (the root pyproject.toml, uv.lock, noxfile.py, tests/,
.github/, .ci/) touches every member.

Usage:
    changed_members.py --all                   every member
    changed_members.py --base REF [--head REF] members touched by `git diff REF...HEAD`
    changed_members.py PATH ...                members touched by these changed paths
Prints a JSON list of member names (sorted), e.g. ["band-ops", "bandpo-train", "rl-trainer"].
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMBER_GLOBS = ("packages/*/pyproject.toml", "apps/*/pyproject.toml")
# Paths (files, or directories ending in "/") whose change touches every member.
WORKSPACE_PATHS = ("pyproject.toml", "uv.lock", "noxfile.py", "tests/", ".github/", ".ci/")

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_members(root: Path = ROOT) -> dict[str, tuple[str, set[str]]]:
    """{member name: (its directory relative to root, the member names it depends on)}."""
    projects: dict[str, tuple[str, list[str]]] = {}
    for pattern in MEMBER_GLOBS:
        for pyproject in sorted(root.glob(pattern)):
            with pyproject.open("rb") as fh:
                data = tomllib.load(fh)
            project = data["project"]
            reqs = list(project.get("dependencies", []))
            for extra_reqs in project.get("optional-dependencies", {}).values():
                reqs += extra_reqs
            for group in data.get("dependency-groups", {}).values():
                reqs += [r for r in group if isinstance(r, str)]  # skip {include-group = ...}
            rel = pyproject.parent.relative_to(root).as_posix()
            projects[normalize(project["name"])] = (rel, reqs)
    members: dict[str, tuple[str, set[str]]] = {}
    for name, (rel, reqs) in projects.items():
        deps = set()
        for req in reqs:
            match = _NAME.match(req)
            if match and normalize(match.group(1)) in projects:
                deps.add(normalize(match.group(1)))
        members[name] = (rel, deps - {name})
    return members


def dependents(members: dict[str, tuple[str, set[str]]], names: Iterable[str]) -> set[str]:
    """``names`` plus every member that depends on one of them, transitively."""
    out = set(names)
    grew = True
    while grew:
        grew = False
        for name, (_, deps) in members.items():
            if name not in out and deps & out:
                out.add(name)
                grew = True
    return out


def touched(members: dict[str, tuple[str, set[str]]], paths: Iterable[str]) -> list[str]:
    """Members touched by a change to ``paths`` (relative to the repository root), sorted."""
    direct: set[str] = set()
    for raw in paths:
        path = raw.strip().removeprefix("./")
        if not path:
            continue
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in WORKSPACE_PATHS):
            return sorted(members)
        for name, (rel, _) in members.items():
            if path == rel or path.startswith(rel + "/"):
                direct.add(name)
    return sorted(dependents(members, direct))


def changed_paths(base: str, head: str = "HEAD") -> list[str]:
    """Files changed between the merge base of ``base`` and ``head``, and ``head``."""
    out = subprocess.run(
        ["git", "diff", "--name-only", f"{base}...{head}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every member")
    parser.add_argument("--base", help="git ref to diff against (merge base ... head)")
    parser.add_argument("--head", default="HEAD", help="git ref of the change (default HEAD)")
    parser.add_argument("paths", nargs="*", help="changed paths, relative to the repo root")
    args = parser.parse_args(argv)
    members = load_members()
    if args.all:
        names = sorted(members)
    elif args.base:
        names = touched(members, changed_paths(args.base, args.head))
    else:
        names = touched(members, args.paths)
    print(json.dumps(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
