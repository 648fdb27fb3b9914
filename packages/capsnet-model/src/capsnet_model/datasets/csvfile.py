"""Reading label files and CSVs: UTF-8 checks, well-formed CSV records, integers."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from capsnet_model.datasets.collect import Collector
from capsnet_model.datasets.samples import DatasetError


def not_utf8(text: str) -> str | None:
    """Where ``text`` (decoded with ``errors="surrogateescape"``) held a byte that is not UTF-8
    (``"byte 0xff at character 3"``), or None when it is all UTF-8."""
    for i, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return f"byte 0x{ord(char) - 0xDC00:02x} at character {i + 1}"
    return None


def csv_records(
    path: Path, required: Sequence[str], out: Collector
) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, row)`` for each well-formed data row of the CSV file at ``path``.

    Column names are stripped of spaces. A row that is not UTF-8, has more or fewer fields
    than the header or that the csv module refuses goes to ``out.error`` (raised or skipped);
    a bad header always raises.
    """
    # surrogateescape keeps a stray byte from ending the whole read: it becomes one bad row.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DatasetError(f"{path}, line {reader.line_num}: bad CSV header: {exc}") from exc
        if header is None:
            raise DatasetError(f"CSV file is empty: {path}")
        bad = not_utf8(",".join(header))
        if bad is not None:
            raise DatasetError(f"{path}, line {reader.line_num}: header is not UTF-8 text ({bad})")
        names = [name.strip() for name in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise DatasetError(
                f"CSV file {path} lacks column(s) {', '.join(missing)}; has: {', '.join(names)}"
            )
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                out.error(f"{path}, line {reader.line_num}", f"bad row: {exc}")
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            where = f"{path}, line {reader.line_num}"
            if len(fields) != len(names):
                out.error(
                    where,
                    f"bad row: {len(fields)} fields, expected {len(names)} ({', '.join(names)})",
                )
                continue
            problems = ((name, not_utf8(value)) for name, value in zip(names, fields, strict=True))
            problem = next(((name, bad) for name, bad in problems if bad is not None), None)
            if problem is not None:
                out.error(where, f"bad row: column {problem[0]} is not UTF-8 text ({problem[1]})")
                continue
            yield where, dict(zip(names, fields, strict=True))


def parse_int(text: str) -> int | None:
    """Returns ``text`` as an integer (spaces ignored), or None when it is not one."""
    try:
        return int(text.strip())
    except ValueError:
        return None
