"""Tests for rl_trainer.tracking: metrics.jsonl lines, the null encoding of non-finite values,
truncation on resume, the reader, and the tracker names checked without accelerate."""

from __future__ import annotations

import json
import math

import pytest

from rl_trainer.tracking import (
    KNOWN_TRACKERS,
    MetricsWriter,
    encode_record,
    flat_config,
    read_metrics,
    resolve_trackers,
)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_json_line_per_record(tmp_path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write([{"step": 1, "reward/total": 0.5, "loss": -0.1}])
        writer.write([{"step": 2, "reward/total": 0.75}])
    assert _records(path) == [
        {"step": 1, "reward/total": 0.5, "loss": -0.1},
        {"step": 2, "reward/total": 0.75},
    ]


def test_non_finite_values_are_null_and_read_back_as_nan(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write([{"step": 1, "a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}])
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"step": 1, "a": None, "b": None, "c": None, "d": 1.5}
    (record,) = read_metrics(path)
    assert math.isnan(record["a"]) and math.isnan(record["b"]) and record["d"] == 1.5


def test_reader_understands_the_older_string_encoding(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": "nan", "b": "inf", "c": "-inf", "d": "text"}\n')
    (record,) = read_metrics(path)
    assert math.isnan(record["a"]) and record["b"] == math.inf and record["c"] == -math.inf
    assert record["d"] == "text"


def test_resume_drops_later_steps_and_cut_lines_then_appends(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "x": float(s)}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "x"', encoding="utf-8")  # killed mid-line
    with MetricsWriter(path, keep_through=2) as writer:
        writer.write([{"step": 3, "x": 30.0}])
    assert _records(path) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}, {"step": 3, "x": 30.0}]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_truncation_by_another_step_key(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(encode_record({"step": s, "rl_step": (s + 1) // 2}) for s in (1, 2, 3, 4))
    )
    writer = MetricsWriter(path, keep_through=1, step_key="rl_step")
    writer.close()
    assert [r["step"] for r in _records(path)] == [1, 2]
    assert [r["step"] for r in writer.kept] == [1, 2]


def test_fresh_run_in_an_old_directory_starts_a_new_file(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "x": 1.0}) + "\n", encoding="utf-8")
    with MetricsWriter(path) as writer:
        writer.write([{"step": 1, "x": 2.0}])
    assert _records(path) == [{"step": 1, "x": 2.0}]


def test_missing_file_reads_as_empty(tmp_path) -> None:
    assert read_metrics(tmp_path / "nope.jsonl") == []


def test_known_trackers_are_accelerates() -> None:
    from accelerate.utils import LoggerType

    assert set(KNOWN_TRACKERS) == {str(t) for t in LoggerType}


def test_resolve_trackers_keeps_the_old_switch_as_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: object() if name == "tensorboard" else real(name)
    )
    assert resolve_trackers(None, True) == ["tensorboard"]
    assert resolve_trackers(None, False) == []
    assert resolve_trackers(["wandb"], True) == ["wandb"]
    assert resolve_trackers([], True) == []


def test_default_asks_for_no_tracker_when_tensorboard_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    missing = ("tensorboard", "tensorboardX")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in missing else real(name)
    )
    assert resolve_trackers(None, True) == []
    assert resolve_trackers(["tensorboard"], True) == ["tensorboard"]  # asked for: kept


def test_unknown_tracker_in_the_config_is_an_error() -> None:
    from rl_trainer.config import load_config

    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'; valid: all, aim"):
        load_config(None, ["logging.log_with=[tensorbord]"])
    assert load_config(None, ["logging.log_with=[wandb, mlflow]"]).logging.log_with == [
        "wandb",
        "mlflow",
    ]


def test_flat_config_gives_tracker_safe_values() -> None:
    flat = flat_config({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x", "f": {"g": {"h": True}}})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": None, "e": "x", "f.g.h": True}
