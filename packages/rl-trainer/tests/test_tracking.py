"""Tests for rl_trainer.tracking: metrics.jsonl lines, non-finite values, truncation on resume."""

from __future__ import annotations

import json
import math

from rl_trainer.tracking import MetricsTracker


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tracker(out_dir, start_step: int = 0, **kwargs) -> MetricsTracker:
    kwargs = {"progress_bar": False, "tensorboard": False, **kwargs}
    return MetricsTracker(out_dir, total_steps=10, start_step=start_step, **kwargs)


def test_one_json_line_per_logged_step(tmp_path) -> None:
    tracker = _tracker(tmp_path / "run")
    tracker.log(1, {"reward/total": 0.5, "loss": -0.1})
    tracker.log(2, {"reward/total": 0.75})
    tracker.close()
    assert _records(tmp_path / "run" / "metrics.jsonl") == [
        {"step": 1, "reward/total": 0.5, "loss": -0.1},
        {"step": 2, "reward/total": 0.75},
    ]
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_non_finite_values_stay_valid_json(tmp_path) -> None:
    tracker = _tracker(tmp_path)
    tracker.log(1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5})
    tracker.close()
    text = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"step": 1, "a": "nan", "b": "inf", "c": "-inf", "d": 1.5}


def test_resume_drops_later_steps_and_cut_lines_then_appends(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "x": float(s)}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "x"', encoding="utf-8")  # killed mid-line
    tracker = _tracker(tmp_path, start_step=2)
    tracker.log(3, {"x": 30.0})
    tracker.close()
    assert _records(path) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}, {"step": 3, "x": 30.0}]


def test_fresh_run_in_an_old_directory_starts_a_new_file(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "x": 1.0}) + "\n", encoding="utf-8")
    tracker = _tracker(tmp_path)
    tracker.log(1, {"x": 2.0})
    tracker.close()
    assert _records(path) == [{"step": 1, "x": 2.0}]


def test_progress_bar_and_write(tmp_path, capsys) -> None:
    tracker = _tracker(tmp_path, progress_bar=True)
    tracker.log(1, {"reward/total": 0.123456, "entropy": math.nan, "other": 1.0})
    tracker.advance()
    tracker.write("hello")
    tracker.close()
    captured = capsys.readouterr()
    assert "hello" in captured.out + captured.err
    assert "reward=0.123" in captured.err and "ent=nan" in captured.err


def test_write_without_progress_bar_prints(tmp_path, capsys) -> None:
    tracker = _tracker(tmp_path)
    tracker.write("sample line")
    tracker.close()
    assert capsys.readouterr().out == "sample line\n"
