"""The packages' atomic-write helpers stay one helper: identical copies, tested once each.

fer-export, capsnet-model and rl-trainer are released on their own and may not import each
other for a file write, so each ships ``src/<name>/_io.py``. Two copies once drifted (one
fsynced, only the other created the folder, both left files 0600); here they must be equal,
and every copy runs the behaviour tests below (mode under the umask, folder created, nothing
left behind, the pre-rename check).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = sorted(ROOT.glob("packages/*/src/*/_io.py"))


def test_every_writing_package_has_the_helper() -> None:
    owners = {path.parents[2].name for path in HELPERS}
    assert {"fer-export", "capsnet-model", "rl-trainer"} <= owners, owners


def test_helper_copies_are_identical() -> None:
    first = HELPERS[0].read_bytes()
    drifted = [str(p.relative_to(ROOT)) for p in HELPERS[1:] if p.read_bytes() != first]
    assert not drifted, f"differ from {HELPERS[0].relative_to(ROOT)}: {drifted}"


#: The packages whose helper the behaviour tests run against (one per package that writes files).
PACKAGES = ("capsnet_model", "fer_export", "rl_trainer")


def test_every_helper_copy_is_tested() -> None:
    assert set(PACKAGES) == {path.parent.name for path in HELPERS}


@pytest.fixture(params=PACKAGES)
def io_module(request: pytest.FixtureRequest) -> ModuleType:
    # Loaded from its file: the workspace session does not install the members, and the
    # helper needs nothing but the standard library.
    path = next(p for p in HELPERS if p.parent.name == request.param)
    spec = importlib.util.spec_from_file_location(f"{request.param}_io_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_new_file_is_0644_under_umask_022(
    io_module: ModuleType, tmp_path: Path, umask_022: None
) -> None:
    path = io_module.atomic_write_bytes(tmp_path / "model.bin", b"abc")
    assert path.read_bytes() == b"abc"
    assert _mode(path) == 0o644, oct(_mode(path))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_mode_follows_the_umask_and_replaces_a_0600_file(
    io_module: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(0o600)  # what the earlier helper left behind
    old = os.umask(0o027)
    try:
        io_module.atomic_write_text(path, "new")
    finally:
        os.umask(old)
    assert path.read_text() == "new"
    assert _mode(path) == 0o640, oct(_mode(path))


def test_folder_is_created(io_module: ModuleType, tmp_path: Path) -> None:
    path = io_module.atomic_write_text(tmp_path / "a" / "b" / "f.txt", "héllo")
    assert path == tmp_path / "a" / "b" / "f.txt"
    assert path.read_bytes() == "héllo".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_failed_write_leaves_nothing_and_keeps_the_old_file(
    io_module: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        io_module.atomic_write_bytes(path, object())  # type: ignore[arg-type]  # write() raises
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failed_replace_leaves_nothing(
    io_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.txt"

    def fail(src: object, dst: object) -> None:
        assert Path(str(src)).read_bytes() == b"new"  # the whole data was written first
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        io_module.atomic_write_text(path, "new")
    assert list(tmp_path.iterdir()) == []


def test_check_sees_the_complete_file_and_can_refuse_it(
    io_module: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    seen: list[bytes] = []

    def refuse(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp != path
        seen.append(tmp.read_bytes())
        raise ValueError("verification failed")

    with pytest.raises(ValueError, match="verification failed"):
        io_module.atomic_write_bytes(path, b"new", check=refuse)
    assert seen == [b"new"]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    io_module.atomic_write_bytes(path, b"newer", check=lambda tmp: seen.append(tmp.read_bytes()))
    assert path.read_bytes() == b"newer" and seen[-1] == b"newer"
