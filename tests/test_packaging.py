"""Every member is a releasable package on its own (issue 8, "Independent packages").

- metadata completeness of each member's pyproject.toml (what PyPI shows and pip resolves);
- every member actually built with `uv build --all-packages --no-sources`: each wheel's METADATA
  (long description = README, Project-URLs, no workspace paths) and each sdist's contents
  (marked ``slow``: a few seconds with uv's cache, network only when the cache lacks hatchling);
- the logic of CI's `.github/scripts/changed_members.py` (changed paths -> members to test).
"""

from __future__ import annotations

import email
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = sorted([*ROOT.glob("packages/*/pyproject.toml"), *ROOT.glob("apps/*/pyproject.toml")])
REQUIRED_URLS = ("Homepage", "Repository", "Changelog")
# PEP 440 public version (release, pre, post, dev segments).
PEP440 = re.compile(
    r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"
    r"((a|b|rc)(0|[1-9][0-9]*))?(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?$"
)
_REQ = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")
PYTHON_CLASSIFIER = re.compile(r"^Programming Language :: Python :: (3\.\d+)$")
KNOWN_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _load(pyproject: Path) -> dict:
    with pyproject.open("rb") as fh:
        return tomllib.load(fh)


MEMBER_NAMES = {normalize(_load(p)["project"]["name"]) for p in PYPROJECTS}


def _id(pyproject: Path) -> str:
    return pyproject.parent.name


members = pytest.mark.parametrize("pyproject", PYPROJECTS, ids=_id)


def _all_requirements(project: dict) -> list[str]:
    reqs = list(project.get("dependencies", []))
    for extra_reqs in project.get("optional-dependencies", {}).values():
        reqs += extra_reqs
    return reqs


def _split(requirement: str) -> tuple[str, str]:
    """(normalised name, version specifier) of a PEP 508 requirement string."""
    match = _REQ.match(requirement)
    assert match is not None, f"cannot parse requirement {requirement!r}"
    return normalize(match.group(1)), match.group(3).strip()


def test_members_found() -> None:
    assert len(PYPROJECTS) >= 7, PYPROJECTS


@members
def test_core_metadata(pyproject: Path) -> None:
    project = _load(pyproject)["project"]
    where = pyproject.relative_to(ROOT)
    for key in ("name", "version", "description", "license", "requires-python", "readme"):
        assert project.get(key), f"{where}: [project].{key} is missing or empty"
    assert not set(project.get("dynamic", ())) & {"version", "dependencies"}, (
        f"{where}: version and dependencies must be static"
    )
    assert PEP440.match(project["version"]), f"{where}: version {project['version']!r} not PEP 440"
    assert project["name"] == pyproject.parent.name, f"{where}: name differs from its directory"
    readme = project["readme"]
    readme_file = readme if isinstance(readme, str) else readme.get("file", "")
    assert readme_file.endswith(".md"), f"{where}: readme should be Markdown, got {readme!r}"
    assert (pyproject.parent / readme_file).is_file(), f"{where}: readme {readme_file} missing"
    assert (pyproject.parent / "CHANGELOG.md").is_file(), f"{where}: no CHANGELOG.md"


@members
def test_python_classifiers_match_requires_python(pyproject: Path) -> None:
    project = _load(pyproject)["project"]
    where = pyproject.relative_to(ROOT)
    match = re.fullmatch(r">=\s*(3\.\d+)", project["requires-python"].strip())
    assert match, f"{where}: requires-python should be '>=3.X', got {project['requires-python']!r}"
    minimum = tuple(int(x) for x in match.group(1).split("."))
    expected = {v for v in KNOWN_PYTHONS if tuple(int(x) for x in v.split(".")) >= minimum}
    classifiers = project.get("classifiers", [])
    declared = {m.group(1) for c in classifiers if (m := PYTHON_CLASSIFIER.match(c))}
    assert declared == expected, (
        f"{where}: Python classifiers {sorted(declared)} do not match "
        f"requires-python {project['requires-python']!r} (expected {sorted(expected)})"
    )


@members
def test_project_urls(pyproject: Path) -> None:
    urls = _load(pyproject)["project"].get("urls", {})
    where = pyproject.relative_to(ROOT)
    missing = [key for key in REQUIRED_URLS if key not in urls]
    assert not missing, f"{where}: [project.urls] lacks {missing}"
    for key, url in urls.items():
        assert url.startswith("https://"), f"{where}: [project.urls].{key} = {url!r} not https"


@members
def test_dependencies_are_bounded_and_publishable(pyproject: Path) -> None:
    project = _load(pyproject)["project"]
    where = pyproject.relative_to(ROOT)
    problems = []
    for req in _all_requirements(project):
        if "file:" in req or "@ " in req or " @" in req:
            problems.append(f"{req!r}: path/URL reference, not publishable")
            continue
        name, spec = _split(req)
        if ">=" not in spec and "==" not in spec and "~=" not in spec:
            problems.append(f"{req!r}: no lower bound")
        if name in MEMBER_NAMES and name != normalize(project["name"]):
            if not re.fullmatch(r">=[0-9][^,]*,\s*<[0-9].*", spec):
                problems.append(f"{req!r}: a sibling dependency needs a range '>=X,<Y'")
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


# --- every member built for real ---------------------------------------------------------------


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH: install uv (https://docs.astral.sh/uv/) to build members")
    return uv


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels and sdists of every member, built as for a release (``--no-sources``)."""
    out = tmp_path_factory.mktemp("dist")
    cmd = [_uv(), "build", "--all-packages", "--no-sources", "-o", str(out)]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    # The build backend (hatchling) normally comes from uv's cache: try offline first, and go
    # to the registry only when the cache lacks it (a fresh CI cache).
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "UV_OFFLINE": "1"}
    )
    if proc.returncode != 0:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _dist_stem(project: dict) -> str:
    return re.sub(r"[-_.]+", "_", project["name"]).lower()


@pytest.mark.slow
@members
def test_wheel_metadata(dists: Path, pyproject: Path) -> None:
    project = _load(pyproject)["project"]
    wheels = list(dists.glob(f"{_dist_stem(project)}-{project['version']}-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as whl:
        names = whl.namelist()
        name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        raw = whl.read(name)
        meta = email.message_from_bytes(raw)
    # PEP 561: the marker that lets mypy use the package's own annotations.
    packages = {n.split("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert packages and all(f"{p}/py.typed" in names for p in packages), sorted(names)[:20]
    assert normalize(meta["Name"]) == normalize(project["name"])
    assert meta["Version"] == project["version"]
    assert meta["Summary"] == project["description"]
    assert project["license"] in (meta["License-Expression"], meta["License"])
    assert meta["Requires-Python"] == project["requires-python"]
    requires = meta.get_all("Requires-Dist") or []
    assert requires, "no Requires-Dist"
    declared = {_split(r)[0] for r in project["dependencies"]}
    assert {_split(r)[0] for r in requires} >= declared
    for req in requires:
        assert "file:" not in req and "@" not in req, f"workspace/path reference leaked: {req}"
    urls = {line.split(",", 1)[0].strip() for line in meta.get_all("Project-URL") or []}
    assert set(REQUIRED_URLS) <= urls, f"Project-URL lines: {sorted(urls)}"
    assert meta["Description-Content-Type"] == "text/markdown"
    readme = (pyproject.parent / project["readme"]).read_text(encoding="utf-8")
    body = raw.decode("utf-8").split("\n\n", 1)[1]  # headers, blank line, README (UTF-8)
    assert body.strip() == readme.strip(), "long description is not the README"


@pytest.mark.slow
@members
def test_sdist_contents(dists: Path, pyproject: Path) -> None:
    project = _load(pyproject)["project"]
    sdists = list(dists.glob(f"{_dist_stem(project)}-{project['version']}.tar.gz"))
    assert len(sdists) == 1, sdists
    with tarfile.open(sdists[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    package = next((pyproject.parent / "src").iterdir()).name
    for required in ("pyproject.toml", "README.md", "CHANGELOG.md", f"src/{package}/__init__.py"):
        assert required in names, f"{sdists[0].name} lacks {required}: {sorted(names)[:20]}"


# --- CI's changed-members script ---------------------------------------------------------------


@pytest.fixture(scope="module")
def changed() -> ModuleType:
    path = ROOT / ".github/scripts/changed_members.py"
    spec = importlib.util.spec_from_file_location("changed_members", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("changed_members", module)
    spec.loader.exec_module(module)
    return module


def _touched(changed: ModuleType, *paths: str) -> list[str]:
    return changed.touched(changed.load_members(ROOT), paths)


ALL = sorted(MEMBER_NAMES)


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["packages/band-ops/src/band_ops/rules.py"], ["band-ops", "bandpo-train", "rl-trainer"]),
        (["packages/rl-trainer/README.md"], ["bandpo-train", "rl-trainer"]),
        # fer-export needs capsnet-model only in its `export` extra: extras count.
        (
            ["packages/capsnet-model/src/capsnet_model/models.py"],
            ["capsnet-model", "fer-edge", "fer-export", "fer-train"],
        ),
        (["packages/fer-export/CHANGELOG.md"], ["fer-edge", "fer-export", "fer-train"]),
        # Both FER sides decode through fer-images.
        (
            ["packages/fer-images/src/fer_images/probe.py"],
            ["capsnet-model", "fer-edge", "fer-export", "fer-images", "fer-train"],
        ),
        # fer-edge's tests train with fer-train (its `test` group): groups count too.
        (["apps/fer-train/src/fer_train/cli.py"], ["fer-edge", "fer-train"]),
        (["apps/fer-edge/README.md"], ["fer-edge"]),
        (["uv.lock"], ALL),
        (["pyproject.toml"], ALL),
        (["noxfile.py"], ALL),
        (["tests/test_packaging.py"], ALL),
        ([".github/workflows/ci.yml"], ALL),
        (["README.md", "ARCHITECTURE.md", "packages/README.md"], []),
        ([], []),
        (["packages/band-ops-extra/x.py"], []),  # a prefix of a member's directory is not it
    ],
)
def test_changed_members(changed: ModuleType, paths: list[str], expected: list[str]) -> None:
    assert _touched(changed, *paths) == expected


def test_changed_members_cli(changed: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert changed.main(["packages/band-ops/pyproject.toml"]) == 0
    assert capsys.readouterr().out.strip() == '["band-ops", "bandpo-train", "rl-trainer"]'
    assert changed.main(["--all"]) == 0
    assert capsys.readouterr().out.strip() == str(ALL).replace("'", '"')
