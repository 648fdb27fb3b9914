"""ARCHITECTURE.md stays true: its dependency table is exactly ``RULES``.

The table between the ``dependency-rules:start`` / ``:end`` markers has one row per member
(``name``: runtime distributions) and one per extra (``name[extra]``: what the extra adds, and
the modules where it may be imported at module level), every name in backticks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dependency_rules import RULES, Rule

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "ARCHITECTURE.md"
_ROW = re.compile(r"`([a-z0-9-]+)(?:\[([a-z0-9-]+)\])?`")


def parse_table(text: str) -> dict[str, Rule]:
    """Returns the rules written in ``text``'s dependency table (ValueError naming a bad row)."""
    match = re.search(r"<!-- dependency-rules:start.*?-->\n(.*?)<!-- dependency-rules:end -->",
                      text, re.S)  # fmt: skip
    if match is None:
        raise ValueError("no <!-- dependency-rules:start --> ... :end --> block")
    runtime: dict[str, frozenset[str]] = {}
    extras: dict[str, dict[str, frozenset[str]]] = {}
    modules: dict[str, dict[str, tuple[str, ...]]] = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("row", "---"):
            continue
        row = _ROW.fullmatch(cells[0])
        if row is None:
            raise ValueError(f"ARCHITECTURE.md: bad row name {cells[0]!r} in {line!r}")
        name, extra = row.groups()
        dists = frozenset(re.findall(r"`([^`]+)`", cells[1]))
        if extra is None:
            if name in runtime:
                raise ValueError(f"ARCHITECTURE.md: {name} has two rows")
            runtime[name] = dists
        else:
            extras.setdefault(name, {})[extra] = dists
            if found := tuple(re.findall(r"`([^`]+)`", cells[2])):
                modules.setdefault(name, {})[extra] = found
    if unknown := sorted(set(extras) - set(runtime)):
        raise ValueError(f"ARCHITECTURE.md: extra rows without a member row: {unknown}")
    return {
        name: Rule(runtime=dists, extras=extras.get(name, {}), extra_modules=modules.get(name, {}))
        for name, dists in runtime.items()
    }


def _plain(rules: dict[str, Rule]) -> dict[str, tuple[object, ...]]:
    return {
        name: (
            sorted(rule.runtime),
            {e: sorted(d) for e, d in rule.extras.items()},
            {e: sorted(m) for e, m in rule.extra_modules.items()},
        )
        for name, rule in rules.items()
    }


def test_architecture_table_is_rules() -> None:
    assert _plain(parse_table(DOC.read_text(encoding="utf-8"))) == _plain(RULES)


def test_parser_sees_a_difference() -> None:
    text = DOC.read_text(encoding="utf-8")
    changed = text.replace("| `band-ops` | `torch` |", "| `band-ops` | `torch`, `numpy` |")
    assert changed != text
    assert _plain(parse_table(changed)) != _plain(RULES)
    with pytest.raises(ValueError, match="bad row name"):
        parse_table(text.replace("| `band-ops[trl]` |", "| band-ops trl |"))


def test_no_reference_to_the_old_design_document() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for pattern in ("*.md", "*.py", "tests/*.py", "packages/*/*.md", "apps/*/*.md")
        for path in ROOT.glob(pattern)
        if path != Path(__file__) and "DESIGN.md" in path.read_text(encoding="utf-8")
    ]
    assert not stale, f"refer to DESIGN.md (not in the repository; see ARCHITECTURE.md): {stale}"
