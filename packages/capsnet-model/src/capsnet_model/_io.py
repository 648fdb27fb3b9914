"""Atomic file writes: readers see the old file or the whole new one, never half of it.

This module is copied, byte for byte, into every workspace package that writes files
(fer-export, capsnet-model, rl-trainer): the packages are released on their own and may not
import each other for it. ``tests/test_atomic_io.py`` at the workspace root keeps the copies
identical.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "new_file_mode"]


def _umask() -> int:
    """Returns the process umask, read without changing it where the OS allows."""
    # os.umask can only be read by setting it, which races with other threads creating
    # files; Linux publishes it in /proc instead.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Returns the permission bits a plain ``open()`` gives a new file: ``0o666 & ~umask``.

    0o644 under the usual umask 022, so a service running as another user can read the file.
    """
    return 0o666 & ~_umask()


def _fsync_folder(folder: Path) -> None:
    """Makes the rename in ``folder`` durable where the OS can sync a folder."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # Windows cannot open a folder; the rename is still atomic
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, check: Callable[[Path], object] | None = None
) -> Path:
    """Returns ``path`` (a ``Path``) after replacing its content with ``data`` atomically.

    Creates the folder if missing, writes a temporary file in that folder, flushes and
    fsyncs it, gives it the mode a plain ``open()`` gives a new file (:func:`new_file_mode`;
    the temporary file starts as 0o600, and a replaced file does not keep its mode), calls
    ``check(temporary_path)`` when given (it raises to refuse the file, e.g. a failed
    verification), renames it over ``path`` with ``os.replace`` and fsyncs the folder. On any
    error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode()
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Returns ``path`` after writing ``text`` to it atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))
