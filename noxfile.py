"""Nox sessions for the bandpo-fer uv workspace.

Members are discovered from ``packages/*/pyproject.toml`` and ``apps/*/pyproject.toml``; every
per-member session is parametrised over them, so a new member needs no change here.

Sessions (``uv run nox -l`` lists them):

- ``tests-<py>(package='NAME')``: the member installed from ``uv.lock`` with its ``test``
  dependency group (``uv sync --frozen --package NAME --group test``), then pytest on its
  ``tests/``. Python 3.11, 3.12 and 3.13.
- ``workspace``: the root ``tests/`` (dependency rules of DESIGN.md, repo consistency).
- ``lint``: ``ruff check`` and ``ruff format --check`` over the whole repository.
- ``typecheck(package='NAME')``: mypy on the member's ``src/`` with the member installed.
- ``bench(package='NAME')``: every ``benchmarks/bench_*.py`` of the member (skipped when
  there is none), with the member's ``bench`` dependency group when it has one.

The default selection (plain ``uv run nox``) is every member's tests on Python 3.11, the
workspace tests, lint and every member's typecheck: it needs only Python 3.11 and fits CI's
budget on 2 cores.

Interpreters are never downloaded: nox looks for ``python3.X`` on ``PATH`` (with pyenv, expose
them with ``PYENV_VERSION=3.11.7:3.12.1:3.13.0``). With ``CI`` set, a missing interpreter is an
error, otherwise the session is skipped.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.11", "3.12", "3.13"]
DEFAULT_PYTHON = PYTHONS[0]
MEMBER_GLOBS = ("packages/*/pyproject.toml", "apps/*/pyproject.toml")

# Never download an interpreter, neither through nox nor through uv.
os.environ["UV_PYTHON_DOWNLOADS"] = "never"
nox.options.download_python = "never"
nox.options.default_venv_backend = "uv"


@dataclass(frozen=True)
class Member:
    name: str
    path: Path

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def _discover_members() -> list[Member]:
    members: list[Member] = []
    for pattern in MEMBER_GLOBS:
        for pyproject in sorted(ROOT.glob(pattern)):
            with pyproject.open("rb") as fh:
                name = tomllib.load(fh).get("project", {}).get("name")
            if not name:
                raise SystemExit(f"{pyproject}: no [project].name")
            members.append(Member(name=name, path=pyproject.parent))
    return members


MEMBERS = {m.name: m for m in _discover_members()}
MEMBER_NAMES = list(MEMBERS)

# Default selection (plain `uv run nox`, and CI's .ci/run): only Python 3.11 is needed.
nox.options.sessions = [
    *(f"tests-{DEFAULT_PYTHON}(package='{name}')" for name in MEMBER_NAMES),
    "workspace",
    "lint",
    *(f"typecheck(package='{name}')" for name in MEMBER_NAMES),
]


def _member_groups(member: Member) -> dict[str, list[str]]:
    with (member.path / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh).get("dependency-groups", {})


def _sync_member(session: nox.Session, member: Member, *extra_groups: str) -> None:
    """Install ``member`` and its ``test`` group, exactly as locked, into the session venv.

    ``uv sync`` targets the environment named by UV_PROJECT_ENVIRONMENT (the session's venv);
    ``--frozen`` installs what ``uv.lock`` says without re-resolving. Workspace members are
    installed editable, their other dependencies at the locked versions.
    """
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--package",
        member.name,
        "--no-default-groups",
        "--group",
        "test",
        *(arg for group in extra_groups for arg in ("--group", group)),
        env={
            "UV_PROJECT_ENVIRONMENT": session.virtualenv.location,
            "UV_PYTHON": session.virtualenv.location,
        },
    )


def _install_dev_tools(session: nox.Session) -> None:
    """Install the root ``dev`` group's tools (ruff, mypy, pytest, ...) at their locked versions.

    Workspace members (and what only they pull in, e.g. torch) are pruned from the export.
    """
    requirements = Path(session.create_tmp()) / "dev-tools.txt"
    prune = [arg for name in MEMBER_NAMES for arg in ("--prune", name)]
    session.run_install(
        "uv",
        "export",
        "--frozen",
        "--quiet",
        "--only-group",
        "dev",
        "--no-hashes",
        "--no-emit-workspace",
        *prune,
        "--output-file",
        str(requirements),
    )
    session.install("-r", str(requirements))


@nox.session(python=PYTHONS, venv_backend="uv")
@nox.parametrize("package", MEMBER_NAMES)
def tests(session: nox.Session, package: str) -> None:
    """Run one member's test suite against its locked dependencies."""
    member = MEMBERS[package]
    tests_dir = member.path / "tests"
    if not tests_dir.is_dir():
        session.error(f"{member.rel}: no tests/ directory")
    _sync_member(session, member)
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        str(tests_dir),
    )


@nox.session(python=DEFAULT_PYTHON, venv_backend="uv")
def workspace(session: nox.Session) -> None:
    """Run the workspace tests in tests/ (dependency rules, repo consistency)."""
    _install_dev_tools(session)
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs, str(ROOT / "tests")
    )


@nox.session(python=DEFAULT_PYTHON, venv_backend="uv")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    _install_dev_tools(session)
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))


@nox.session(python=DEFAULT_PYTHON, venv_backend="uv")
@nox.parametrize("package", MEMBER_NAMES)
def typecheck(session: nox.Session, package: str) -> None:
    """mypy on one member's src/, with the member and its dependencies installed."""
    member = MEMBERS[package]
    src = member.path / "src"
    if not src.is_dir():
        session.error(f"{member.rel}: no src/ directory")
    _sync_member(session, member)
    _install_dev_tools(session)
    session.run("mypy", *session.posargs, str(src))


@nox.session(python=DEFAULT_PYTHON, venv_backend="uv")
@nox.parametrize("package", MEMBER_NAMES)
def bench(session: nox.Session, package: str) -> None:
    """Run every benchmarks/bench_*.py of one member (each prints its own ratios)."""
    member = MEMBERS[package]
    bench_dir = member.path / "benchmarks"
    scripts = sorted(bench_dir.glob("bench_*.py")) if bench_dir.is_dir() else []
    if not scripts:
        session.skip(f"{member.rel}: no benchmarks/bench_*.py, nothing to run")
    # A member's `bench` dependency group holds what only its benchmarks need (e.g. the
    # baseline library they compare against).
    _sync_member(session, member, *(["bench"] if "bench" in _member_groups(member) else []))
    for script in scripts:
        session.run("python", str(script), *session.posargs)
