"""The packages' atomic-write helpers stay one helper: identical copies, identically tested.

fer-export, capsnet-model and rl-trainer are released on their own and may not import each
other for a file write, so each ships ``src/<name>/_io.py``. Two copies once drifted (one
fsynced, only the other created the folder, both left files 0600); here they must be equal,
and each package must run the same ``tests/test_atomic_io.py`` against its own copy.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELPERS = sorted(ROOT.glob("packages/*/src/*/_io.py"))


def test_every_writing_package_has_the_helper() -> None:
    owners = {path.parents[2].name for path in HELPERS}
    assert {"fer-export", "capsnet-model", "rl-trainer"} <= owners, owners


def test_helper_copies_are_identical() -> None:
    first = HELPERS[0].read_bytes()
    drifted = [str(p.relative_to(ROOT)) for p in HELPERS[1:] if p.read_bytes() != first]
    assert not drifted, f"differ from {HELPERS[0].relative_to(ROOT)}: {drifted}"


def test_each_copy_has_the_same_tests() -> None:
    tests = [path.parents[2] / "tests" / "test_atomic_io.py" for path in HELPERS]
    missing = [str(t.relative_to(ROOT)) for t in tests if not t.is_file()]
    assert not missing, f"no atomic-write tests: {missing}"
    first = tests[0].read_bytes()
    drifted = [str(t.relative_to(ROOT)) for t in tests[1:] if t.read_bytes() != first]
    assert not drifted, f"differ from {tests[0].relative_to(ROOT)}: {drifted}"
