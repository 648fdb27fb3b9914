"""``bandpo-train report DIR``: the README's figures from a run's files, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bandpo_train.cli import main
from bandpo_train.summary import RunFilesError, render, summarize


def _run(root: Path, rewards: list[float]) -> Path:
    root.mkdir(parents=True)
    lines = []
    for rl_step, reward in enumerate(rewards, 1):
        for update in range(4):  # 4 optimiser steps per RL step repeat its rollout reward
            lines.append({"step": 4 * (rl_step - 1) + update + 1, "rl_step": rl_step,
                          "reward_mean": reward})  # fmt: skip
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = {"num_processes": 1, "device": "cpu", "rule": "band", "optimizer_steps": 4 * len(rewards),
           "rl_steps": len(rewards), "wall_s": 57.4, "eval": {}}  # fmt: skip
    (root / "run.json").write_text(json.dumps(run))
    evaluation = {"eval/greedy_accuracy": 0.35, "eval/pass@1": 0.2, "eval/pass@4": 0.44,
                  "eval/mean@4": 0.21}  # fmt: skip
    (root / "eval.json").write_text(json.dumps(evaluation))
    return root


def test_figures_from_the_run_files(tmp_path: Path) -> None:
    rewards = [0.1] * 2 + [0.2] * 16 + [0.3, 0.5]  # 20 RL steps: tenths are 2 steps
    figures = summarize(_run(tmp_path / "run", rewards))
    assert figures["rl_steps"] == 20 and figures["optimizer_steps"] == 80
    assert figures["reward_first_tenth"] == pytest.approx(0.1)
    assert figures["reward_last_tenth"] == pytest.approx(0.4)
    assert figures["eval"]["greedy_accuracy"] == 0.35
    table = render(figures)
    assert "| rollout reward, first tenth of the RL steps | 0.100 |" in table
    assert "| rollout reward, last tenth of the RL steps | 0.400 |" in table
    assert "| held-out greedy accuracy | 0.350 |" in table
    assert "| held-out pass@4 | 0.440 |" in table
    assert "| wall time (s) | 57 |" in table


def test_cli_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _run(tmp_path / "run", [0.0, 1.0] * 10)
    assert main(["report", str(root)]) == 0
    assert "| RL steps / optimiser steps | 20 / 80 |" in capsys.readouterr().out
    assert main(["report", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rl_steps"] == 20


def test_bad_run_folders_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _run(tmp_path / "broken", [0.1] * 10)
    with (broken / "metrics.jsonl").open("a") as fh:
        fh.write("{not json\n")
    no_run = _run(tmp_path / "unfinished", [0.1] * 10)
    (no_run / "run.json").unlink()
    cases = [
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(no_run)], "run.json: not found"),
        ([str(broken)], "metrics.jsonl:41: expected a JSON object"),
        ([], "expected one run folder"),
    ]
    for args, message in cases:
        assert main(["report", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
    with pytest.raises(RunFilesError):
        summarize(no_run)
