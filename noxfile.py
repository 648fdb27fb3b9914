"""Nox sessions for the bandpo-fer uv workspace.

Members are discovered from ``packages/*/pyproject.toml`` and ``apps/*/pyproject.toml``; every
per-member session is parametrised over them, so a new member needs no change here.

Sessions (``uv run nox -l`` lists them):

- ``tests-<py>(package='NAME')``: the member installed from ``uv.lock`` with its ``test``
  dependency group (``uv sync --frozen --package NAME --group test``), then pytest on its
  ``tests/``. Python 3.11, 3.12 and 3.13.
- ``workspace``: the root ``tests/`` (dependency rules of ARCHITECTURE.md, repo consistency).
- ``lint``: ``ruff check`` and ``ruff format --check`` over the whole repository.
- ``typecheck(package='NAME')``: mypy on the member's ``src/`` with the member installed.
- ``bench(package='NAME')``: every ``benchmarks/bench_*.py`` of the member (skipped when
  there is none), with the member's ``bench`` dependency group when it has one.
- ``install(package='NAME')``: what ``pip install NAME`` gives a user. Builds the member's wheel
  and the wheels of the workspace members it needs (``uv build --no-sources``), installs them
  into a fresh venv outside the workspace with everything else from the registry, imports the
  member, runs a smoke test and checks that nothing beyond its declared dependencies came in.
  Not in the default selection (it downloads from the registry).

The default selection (plain ``uv run nox``) is every member's tests on Python 3.11, the
workspace tests, lint and every member's typecheck: it needs only Python 3.11 and fits CI's
budget on 2 cores.

Interpreters are never downloaded: nox looks for ``python3.X`` on ``PATH`` (with pyenv, expose
them with ``PYENV_VERSION=3.11.7:3.12.1:3.13.0``). With ``CI`` set, a missing interpreter is an
error, otherwise the session is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
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


# --- install(package=...): the member as users get it -------------------------------------------

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(member: Member) -> dict:
    with (member.path / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]


def _install_closure(package: str, extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """Workspace members that ``pip install package[extras]`` pulls in (itself included).

    Follows [project].dependencies, plus the optional-dependencies of the extras actually
    requested (``fer-export[export]`` pulls in capsnet-model, ``fer-export`` does not).
    Returns {name: version}.
    """
    requested: dict[str, set[str]] = {}
    todo = [(_normalize(package), set(extras))]
    while todo:
        name, wanted = todo.pop()
        if name in requested and wanted <= requested[name]:
            continue
        requested[name] = requested.get(name, set()) | wanted
        project = _project(MEMBERS[name])
        reqs = list(project.get("dependencies", []))
        for extra in requested[name]:
            reqs += project.get("optional-dependencies", {}).get(extra, [])
        for req in reqs:
            match = _REQUIREMENT.match(req)
            if match and _normalize(match.group(1)) in MEMBERS:
                sub = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
                todo.append((_normalize(match.group(1)), sub))
    return {name: _project(MEMBERS[name])["version"] for name in sorted(requested)}


# A small check per member, run in the fresh venv after `import <package>`.
INSTALL_SMOKE: dict[str, str] = {
    "band-ops": """
import torch
from band_ops import Band
low, high = Band(divergence="kl", delta=0.05).bounds(torch.log(torch.tensor([0.01, 0.9])))
assert low.shape == high.shape == (2,), (low, high)
assert bool((low <= 1).all()) and bool((high >= 1).all()), (low, high)
print("Band bounds", low.tolist(), high.tolist())
""",
    "rl-trainer": """
from rl_trainer import TrainerConfig, load_config
config = load_config(None)
assert isinstance(config, TrainerConfig), config
print("TrainerConfig ok")
""",
    "capsnet-model": """
import torch
from capsnet_model import create_model
model = create_model("e2capsnet_small").eval()
with torch.no_grad():
    out = model(torch.zeros(1, 3, model.image_size, model.image_size))
assert out.shape == (1, 7), out.shape
print("e2capsnet_small forward", tuple(out.shape))
""",
    "config-layers": """
from dataclasses import dataclass
from config_layers import ConfigError, load_config
@dataclass
class Run:
    lr: float = 1e-3
assert load_config(Run, None, ["lr=2e-5"]) == Run(lr=2e-5)
try:
    load_config(Run, None, ["lrr=1"])
except ConfigError as exc:
    print("config_layers ok:", exc)
else:
    raise AssertionError("an unknown key was accepted")
""",
    "fer-images": """
import cv2, numpy as np
from fer_images import ImageTooLargeError, decode_rgb
ok, png = cv2.imencode(".png", np.zeros((3, 4, 3), np.uint8))
assert decode_rgb(png.tobytes()).shape == (3, 4, 3)
try:
    decode_rgb(png.tobytes(), max_pixels=11)
except ImageTooLargeError as exc:
    print("fer_images ok:", exc)
else:
    raise AssertionError("the pixel limit was not enforced")
""",
    "fer-export": """
from fer_export import FERSession, ModelContract
print("fer_export ok", FERSession.__name__, ModelContract.__name__)
""",
}

# Distributions an install must bring / must not bring (normalised names). On top of these,
# every installed distribution must be required by the member, directly or transitively.
INSTALL_REQUIRED: dict[str, set[str]] = {
    "config-layers": {"pydantic", "pyyaml"},
    "band-ops": {"torch"},
    "fer-images": {"numpy", "opencv-python-headless"},
    "fer-export": {"onnx", "numpy", "fer-images"},
    "fer-edge": {"fer-export", "fastapi", "uvicorn"},
}
INSTALL_FORBIDDEN: dict[str, set[str]] = {
    "config-layers": {"torch", "numpy"},
    "band-ops": {"transformers", "accelerate", "peft"},
    "fer-images": {"torch", "onnxruntime", "onnxruntime-gpu"},
    "capsnet-model": {"onnxruntime", "onnxruntime-gpu", "transformers"},
    "fer-export": {"torch", "capsnet-model", "onnxscript"},
    "fer-edge": {"torch", "capsnet-model", "onnxscript"},
}


def _import_names(member: Member) -> list[str]:
    return sorted(p.parent.name for p in (member.path / "src").glob("*/__init__.py"))


@nox.session(python=False, default=False)
@nox.parametrize("package", MEMBER_NAMES)
def install(session: nox.Session, package: str) -> None:
    """Build the member's wheel (and its sibling wheels), install it in a fresh venv, check it."""
    member = MEMBERS[package]
    if shutil.which("uv") is None:
        session.error("uv is not on PATH; install it (https://docs.astral.sh/uv/)")
    closure = _install_closure(package)
    session.log(f"workspace members in the install of {package}: {closure}")
    # `-- --wheel-dir DIR`: test the member's wheel found in DIR (the release's own dist/)
    # instead of building a new one; siblings are still built from the workspace.
    prebuilt: Path | None = None
    if session.posargs:
        if len(session.posargs) != 2 or session.posargs[0] != "--wheel-dir":
            session.error(f"unexpected arguments {session.posargs}; accepted: --wheel-dir DIR")
        prebuilt = Path(session.posargs[1]).resolve()
    # Outside the workspace: nothing of the repository can leak onto sys.path or into uv's
    # project discovery.
    work = Path(tempfile.mkdtemp(prefix=f"nox-install-{package}-"))
    try:
        dist = work / "dist"
        dist.mkdir(parents=True)
        for name in closure:
            if prebuilt is not None and name == package:
                stem = f"{name.replace('-', '_')}-{closure[name]}-"
                given = [w for w in prebuilt.glob("*.whl") if w.name.startswith(stem)]
                if len(given) != 1:
                    session.error(f"expected one wheel {stem}*.whl in {prebuilt}, found {given}")
                shutil.copy2(given[0], dist / given[0].name)
                session.log(f"testing the given wheel {given[0]}")
                continue
            session.run(
                "uv", "build", "--directory", str(ROOT), "--package", name,
                "--no-sources", "--wheel", "-o", str(dist), external=True,
            )  # fmt: skip
        wheels: list[str] = []
        for name in closure:
            stem = f"{name.replace('-', '_')}-{closure[name]}-"
            found = [w for w in dist.glob("*.whl") if w.name.startswith(stem)]
            if len(found) != 1:
                session.error(f"expected one wheel {stem}*.whl in {dist}, found {found}")
            wheels.append(str(found[0]))
        venv = work / "venv"
        with session.chdir(work):
            session.run("uv", "venv", "--python", DEFAULT_PYTHON, str(venv), external=True)
            python = str(venv / ("Scripts" if sys.platform == "win32" else "bin") / "python")
            # The sibling wheels are named explicitly so that they come from dist/, never from
            # a same-named project on the registry; everything else comes from the registry.
            session.run(
                "uv", "pip", "install", "--python", python, "--find-links", str(dist), *wheels,
                external=True,
            )  # fmt: skip
            _check_install(session, package, python, closure)
            imports = _import_names(member)
            session.run(python, "-c", "".join(f"import {m}\n" for m in imports), external=True)
            if package in INSTALL_SMOKE:
                session.run(python, "-c", INSTALL_SMOKE[package], external=True)
            for script in _project(member).get("scripts", {}):
                exe = Path(python).parent / script
                session.run(str(exe), "--help", external=True, silent=True)
                session.log(f"{script} --help: exit 0")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_install(
    session: nox.Session, package: str, python: str, closure: dict[str, str]
) -> None:
    """Fail when the venv holds more than the member's dependency closure, or the wrong things."""
    listing = session.run(
        "uv", "pip", "list", "--python", python, "--format", "json", external=True, silent=True
    )
    # stderr is merged into the output: keep the JSON line only.
    rows = next(line for line in str(listing).splitlines() if line.startswith("["))
    installed = {_normalize(d["name"]): d["version"] for d in json.loads(rows)}
    session.log(
        f"{len(installed)} distributions installed:\n"
        + "\n".join(f"  {name}=={version}" for name, version in sorted(installed.items()))
    )
    problems = []
    for name, version in closure.items():
        if installed.get(name) != version:
            problems.append(f"{name}: expected the workspace's {version} from the built wheel, "
                            f"got {installed.get(name)}")  # fmt: skip
    if extra := sorted(set(installed) - _required_closure(session, package, python)):
        problems.append(f"installed but not required by {package}: {extra}")
    if missing := sorted(INSTALL_REQUIRED.get(package, set()) - set(installed)):
        problems.append(f"{package} must bring {missing}, but they were not installed")
    if forbidden := sorted(INSTALL_FORBIDDEN.get(package, set()) & set(installed)):
        problems.append(f"{package} must not bring {forbidden}, but they were installed")
    if problems:
        session.error(f"install of {package}: " + "; ".join(problems))
    session.log(f"install of {package}: only its declared dependency closure came in")


def _required_closure(session: nox.Session, package: str, python: str) -> set[str]:
    """Distributions in ``python``'s venv that ``package`` requires, directly or transitively.

    Walks the installed Requires-Dist metadata with markers evaluated for that venv (extras
    included, e.g. torch -> cuda-toolkit[cublas] -> nvidia-cublas), so anything else in the
    venv came in from outside the member's declared dependencies.
    """
    from importlib.metadata import distributions

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    probe = (
        "import platform, sysconfig; "
        "print(sysconfig.get_paths()['purelib']); print(platform.python_version())"
    )
    out = session.run(python, "-c", probe, external=True, silent=True)
    purelib, full_version = str(out).strip().splitlines()[-2:]
    env = {
        **default_environment(),
        "python_full_version": full_version,
        "python_version": ".".join(full_version.split(".")[:2]),
    }
    metadata = {_normalize(d.metadata["Name"]): d for d in distributions(path=[purelib])}
    seen: dict[str, set[str]] = {}
    todo: list[tuple[str, set[str]]] = [(_normalize(package), set())]
    while todo:
        name, extras = todo.pop()
        if name not in metadata or (name in seen and extras <= seen[name]):
            continue
        seen[name] = seen.get(name, set()) | extras
        for line in metadata[name].requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in ["", *seen[name]]
            ):
                continue
            todo.append((_normalize(req.name), set(req.extras)))
    return set(seen)
