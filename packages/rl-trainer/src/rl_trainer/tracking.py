"""Where metrics go: ``metrics.jsonl`` (one writer and one reader for every RL run) and the
experiment trackers that accelerate drives (TensorBoard, W&B, MLflow, ... via ``log_with``).

``metrics.jsonl`` holds one JSON object per line. JSON has no NaN or infinity, so a non-finite
number is written as ``null`` and read back as NaN; a line cut short by a kill is skipped when
the file is read. Files written before this encoding held the strings ``"nan"``, ``"inf"`` and
``"-inf"``; the reader turns those into floats too.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rl_trainer._io import atomic_write_text

METRICS_FILE = "metrics.jsonl"

# Tracker names accelerate accepts in ``log_with`` (its LoggerType values); kept here so that
# configuration checks need not import accelerate. tests/test_tracking.py compares them.
KNOWN_TRACKERS: tuple[str, ...] = (
    "all",
    "aim",
    "clearml",
    "comet_ml",
    "dvclive",
    "mlflow",
    "swanlab",
    "tensorboard",
    "trackio",
    "wandb",
)

_LEGACY_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def jsonable(value: Any) -> Any:
    """Returns ``value`` as written to metrics.jsonl: None for a non-finite float, else itself."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_record(record: Mapping[str, Any]) -> str:
    """Returns one metrics.jsonl line (with its newline) for ``record``."""
    return json.dumps({k: jsonable(v) for k, v in record.items()}, allow_nan=False) + "\n"


def _decode(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, str) and value in _LEGACY_NON_FINITE:
        return _LEGACY_NON_FINITE[value]
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Returns the records of a metrics.jsonl file, null values as NaN; [] when it does not exist.

    A line that does not parse (the last one, cut short by a kill) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append({k: _decode(v) for k, v in record.items()})
    return records


class MetricsWriter:
    """Appends records to a metrics.jsonl file; only the main process should own one.

    On opening, records whose ``step_key`` is above ``keep_through`` are dropped (and cut lines
    removed), so a run resumed from step N continues the same file without a step appearing
    twice; ``keep_through=0`` starts a fresh file. The rewrite goes through a temporary file and
    a rename, so a kill never leaves the file half-written.
    """

    def __init__(self, path: str | Path, *, keep_through: int = 0, step_key: str = "step") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if int(r.get(step_key, 0)) <= keep_through]
        self.kept = kept
        atomic_write_text(self.path, "".join(encode_record(r) for r in kept))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Appends ``records``, one line each, and flushes."""
        self._file.write("".join(encode_record(r) for r in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_trackers(log_with: list[str] | None, tensorboard: bool) -> list[str]:
    """Returns the tracker names of a run: ``logging.log_with``, or when it is unset the older
    ``logging.tensorboard`` switch (``[tensorboard]`` when a TensorBoard writer is installed,
    else none: the default must not make accelerate warn about a tracker nobody asked for)."""
    if log_with is not None:
        return list(log_with)
    installed = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
    return ["tensorboard"] if tensorboard and installed else []


def flat_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Returns ``values`` (nested dicts) as dotted keys with bool/int/float/str/None values
    (lists and other values as their string), what every tracker accepts as hyperparameters."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


__all__ = [
    "KNOWN_TRACKERS",
    "METRICS_FILE",
    "MetricsWriter",
    "encode_record",
    "flat_config",
    "jsonable",
    "read_metrics",
    "resolve_trackers",
]
