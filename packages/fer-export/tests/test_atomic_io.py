"""The package's atomic-write helper (``_io``): mode, folder, nothing left behind.

The same file is in every package that has an ``_io`` module (fer-export, capsnet-model,
rl-trainer); the workspace test ``tests/test_atomic_io.py`` keeps the copies identical.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = Path(__file__).resolve().parents[1].joinpath("src")
# The package under test is the one whose src/ sits next to this tests/ folder.
_io: ModuleType = importlib.import_module(
    next(p.parent.name for p in PACKAGE.glob("*/_io.py")) + "._io"
)


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
def test_new_file_is_0644_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    path = _io.atomic_write_bytes(tmp_path / "model.bin", b"abc")
    assert path.read_bytes() == b"abc"
    assert _mode(path) == 0o644, oct(_mode(path))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_mode_follows_the_umask_and_replaces_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(0o600)  # what the earlier helper left behind
    old = os.umask(0o027)
    try:
        _io.atomic_write_text(path, "new")
    finally:
        os.umask(old)
    assert path.read_text() == "new"
    assert _mode(path) == 0o640, oct(_mode(path))


def test_folder_is_created(tmp_path: Path) -> None:
    path = _io.atomic_write_text(tmp_path / "a" / "b" / "f.txt", "héllo")
    assert path == tmp_path / "a" / "b" / "f.txt"
    assert path.read_bytes() == "héllo".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        _io.atomic_write_bytes(path, object())  # type: ignore[arg-type]  # write() raises
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failed_replace_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.txt"

    def fail(src: object, dst: object) -> None:
        assert Path(str(src)).read_bytes() == b"new"  # the whole data was written first
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        _io.atomic_write_text(path, "new")
    assert list(tmp_path.iterdir()) == []


def test_check_sees_the_complete_file_and_can_refuse_it(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    seen: list[bytes] = []

    def refuse(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp != path
        seen.append(tmp.read_bytes())
        raise ValueError("verification failed")

    with pytest.raises(ValueError, match="verification failed"):
        _io.atomic_write_bytes(path, b"new", check=refuse)
    assert seen == [b"new"]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    _io.atomic_write_bytes(path, b"newer", check=lambda tmp: seen.append(tmp.read_bytes()))
    assert path.read_bytes() == b"newer" and seen[-1] == b"newer"
