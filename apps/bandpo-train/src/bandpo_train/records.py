"""Reading a run's metrics.jsonl (shared by the plots and the study).

The file is written by rl-trainer's one writer (``rl_trainer.tracking.MetricsWriter``):
non-finite numbers are stored as ``null`` and read back here as NaN, and a line cut short by a
kill is skipped. This module is the app's single reader of that format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl_trainer.tracking import read_metrics as _read_metrics


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Returns the records of a metrics.jsonl file (null values as NaN); [] when it does not
    exist."""
    return _read_metrics(path)
