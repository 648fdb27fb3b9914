"""Tests for rl_trainer.cli: the ``rl-trainer`` command (config printing, errors, a real run)."""

from __future__ import annotations

import json

import pytest
import yaml

from rl_trainer.cli import main


def test_config_prints_resolved_yaml(capsys) -> None:
    assert main(["config", "optim.lr=1e-5", "rollout.group_size=16"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["optim"]["lr"] == 1e-5
    assert printed["rollout"]["group_size"] == 16
    assert printed["algorithm"]["rewards"] == [{"name": "exact_match", "weight": 1.0, "params": {}}]
    assert list(printed) == [
        "model",
        "data",
        "rollout",
        "algorithm",
        "optim",
        "logging",
        "checkpoint",
        "eval",
    ]


def test_config_reads_a_file_and_overrides_win(tmp_path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 2.0e-6\n  steps: 7\n", encoding="utf-8")
    assert main(["config", "--config", str(path), "optim.lr=3e-6"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 3e-6 and printed["optim"]["steps"] == 7


def test_unknown_key_exits_2_with_the_message_on_stderr(capsys) -> None:
    assert main(["config", "optim.lrr=1e-5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "rl-trainer:" in captured.err
    assert "optim.lrr" in captured.err and "did you mean 'lr'?" in captured.err


def test_bad_value_exits_2(capsys) -> None:
    assert main(["config", "rollout.group_size=1"]) == 2
    assert "rollout.group_size must be >= 2" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path, capsys) -> None:
    assert main(["config", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_unrecognised_argument_exits_2(capsys) -> None:
    assert main(["config", "--lr", "1e-5"]) == 2
    assert "unrecognised argument '--lr'" in capsys.readouterr().err


def test_no_arguments_print_usage_and_exit_2(capsys) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "usage: rl-trainer {train,evaluate,config}" in captured.out + captured.err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0(capsys, flag) -> None:
    assert main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rl-trainer") and "evaluate" in out


def test_unknown_command_exits_2(capsys) -> None:
    assert main(["trian", "optim.lr=1e-5"]) == 2
    captured = capsys.readouterr()
    assert "unknown command 'trian'" in captured.err and "usage:" in captured.err


def test_evaluate_without_eval_path_exits_2(capsys) -> None:
    assert main(["evaluate", "model.path=/nowhere", "data.path=/nowhere.jsonl"]) == 2
    assert "evaluate needs data.eval_path" in capsys.readouterr().err


def test_train_with_a_missing_model_exits_2(tmp_path, digit_data, capsys) -> None:
    args = [f"model.path={tmp_path / 'no-model'}", f"data.path={digit_data}"]
    assert main(["train", *args, f"logging.output_dir={tmp_path / 'run'}"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_train_one_step(tmp_path, tiny_model_dir, digit_data, capsys) -> None:
    out_dir = tmp_path / "run"
    status = main(
        [
            "train",
            f"model.path={tiny_model_dir}",
            f"data.path={digit_data}",
            "rollout.group_size=4",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=4",
            "optim.lr=1e-2",
            "optim.steps=1",
            "optim.micro_batch_size=4",
            f"logging.output_dir={out_dir}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
        ]
    )
    assert status == 0, capsys.readouterr().err
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["step"] == 1 and "reward/total" in record
    assert (out_dir / "config.yaml").is_file()
    saved = yaml.safe_load((out_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["optim"]["steps"] == 1 and saved["model"]["path"] == str(tiny_model_dir)
    assert (out_dir / "final" / "model.safetensors").is_file()
    printed = json.loads(capsys.readouterr().out)  # the last step's metrics, as JSON
    assert "reward/total" in printed
