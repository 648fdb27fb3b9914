"""Reading a run's metrics.jsonl (shared by the run loop, the plots and the study)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Returns the records of a metrics.jsonl file; [] when it does not exist.

    A line that does not parse (the last one, cut short by a kill) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
