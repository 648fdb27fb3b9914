"""bandpo-train end to end: the embedded default, the metrics contract, presets, resume, the
2-process CPU launch, plots and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

from bandpo_train.cli import main
from bandpo_train.config import AppConfig, available_presets, load_app_config, preset_path
from bandpo_train.run import CONTRACT_KEYS, check_launch_environment, train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- config


def test_defaults_are_the_embedded_default() -> None:
    config = AppConfig()
    assert config.embedded and config.task.name == "addition"
    assert config.algorithm.rule == "band" and config.algorithm.mini_batches == 4
    assert config.total_updates == config.optim.steps * 4


def test_shortcuts_set_output_dir_and_optimiser_steps(tmp_path) -> None:
    config = load_app_config(None, [f"output_dir={tmp_path}", "max_steps=10"])
    assert config.logging.output_dir == str(tmp_path)
    assert config.total_updates == 10 and config.optim.steps == 3  # ceil(10 / 4) rollouts


@pytest.mark.parametrize(
    "name", ["bandpo-kl", "grpo", "clip-higher", "bandpo-kl-lora", "bandpo-kl-vllm"]
)
def test_presets_load_and_build_their_rule(name) -> None:
    import band_ops

    assert name in available_presets()
    config = load_app_config(None, [], preset=name)
    rule = band_ops.get_rule(config.algorithm.rule, **config.algorithm.rule_params)
    assert not config.embedded
    assert config.rollout.group_size == 16 and config.algorithm.mini_batches == 4
    assert config.optim.lr in (1e-6, 1e-5)
    assert config.algorithm.kl_coef == 0.001 and config.algorithm.kl_estimator == "k3"
    expected = {
        "bandpo-kl": "band",
        "bandpo-kl-lora": "band",
        "bandpo-kl-vllm": "band",
        "grpo": "ppo",
        "clip-higher": "clip_higher",
    }[name]
    assert rule.name == expected
    assert config.model.lora.enabled == (name == "bandpo-kl-lora")
    assert config.rollout.backend == ("vllm" if name.endswith("vllm") else "hf")
    assert preset_path(name).is_file()


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="bandpo-kl"):
        load_app_config(None, [], preset="bandpo")


# ----------------------------------------------------------------------------- runs


def test_embedded_run_writes_the_contract(tmp_path) -> None:
    out = tmp_path / "run"
    summary = train(load_app_config(None, [f"output_dir={out}", "max_steps=6", *FAST]))
    records = lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # one line per optimiser step
    assert [r["rl_step"] for r in records] == [1, 1, 1, 1, 2, 2]
    for record in records:
        assert set(CONTRACT_KEYS) <= set(record)
        assert record["tokens_per_s"] > 0 and 0 <= record["reward_mean"] <= 1
    run = json.loads((out / "run.json").read_text())
    assert run["num_processes"] == 1 and run["optimizer_steps"] == 6 == summary["optimizer_steps"]
    assert run["task"] == "addition" and run["dtype"] == "torch.float32"
    assert set(json.loads((out / "eval.json").read_text())) >= {"eval/pass@1", "eval/mean@4"}
    for plot in ("reward", "entropy", "clip_fractions", "kl", "clip_cells"):
        png = out / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file() and (out / "embedded" / "model").is_dir()


def test_resume_continues_the_metrics(tmp_path) -> None:
    out = tmp_path / "run"
    common = [f"output_dir={out}", *FAST, "checkpoint.save_every=1", "checkpoint.resume=latest"]
    train(load_app_config(None, [*common, "max_steps=8"]))
    train(load_app_config(None, [*common, "max_steps=12"]))
    records = lines(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))
    assert [r["rl_step"] for r in records][-4:] == [3, 3, 3, 3]


def test_cli_runs_on_one_process(tmp_path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "bandpo_train", f"output_dir={out}", "max_steps=2", *FAST],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(lines(out / "metrics.jsonl")) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(tmp_path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "bandpo_train",
            f"output_dir={out}",
            "max_steps=2",
            *FAST,
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["num_processes"] == 2
    assert len(lines(out / "metrics.jsonl")) == 2


@pytest.mark.slow
def test_embedded_default_shows_reward_rising(tmp_path) -> None:
    """The default exactly as `bandpo-train` runs it (seed 0): 250 warm-start steps, then 600 RL
    steps of 32 prompts x 8 completions, 4 optimiser steps each. Measured (`bandpo-train report`):
    rollout reward 0.089 over the first tenth of the run, 0.270 over the last (greedy held-out
    accuracy 0.35); the test asks for a rise of at least 0.05."""
    out = tmp_path / "default"
    run = train(load_app_config(None, [f"output_dir={out}", "logging.progress_bar=false"]))
    rewards = {r["rl_step"]: r["reward_mean"] for r in lines(out / "metrics.jsonl")}
    ordered = [rewards[k] for k in sorted(rewards)]
    tenth = len(ordered) // 10
    first, last = sum(ordered[:tenth]) / tenth, sum(ordered[-tenth:]) / tenth
    assert last >= first + 0.05, (first, last)
    assert run["optimizer_steps"] == 2400  # its wall time is measured in the README, not here


# ----------------------------------------------------------------------------- errors


def test_missing_model_directory_is_a_clear_error(tmp_path, capsys) -> None:
    code = main(
        [
            f"output_dir={tmp_path}",
            f"model.path={tmp_path / 'nope'}",
            f"data.path={tmp_path / 'd.jsonl'}",
        ]
    )
    assert code == 2
    assert "not a model directory" in capsys.readouterr().err


def test_dataset_without_columns_is_a_clear_error(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(load_app_config(None, [f"output_dir={out}", "max_steps=1", *FAST]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n')
    code = main(
        [
            f"output_dir={tmp_path / 'x'}",
            f"model.path={out / 'embedded' / 'model'}",
            f"data.path={bad}",
            "data.chat_template=false",
        ]
    )
    assert code == 2
    assert "missing column(s) ['prompt']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "what"),
    [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")],
)
def test_gpu_only_launch_config_on_cpu_is_an_error(monkeypatch, variable, what) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ValueError, match=f"asks for {what}.*has none"):
        check_launch_environment()


def test_unexpected_argument_is_rejected(capsys) -> None:
    assert main(["--fast"]) == 2
    assert "unrecognised argument '--fast'; accepted forms:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- structure


def test_run_uses_the_trainer_loop_and_no_private_members() -> None:
    import inspect
    import re

    from bandpo_train import run

    source = inspect.getsource(run)
    assert "trainer.train()" in source
    assert not re.search(r"\btrainer\._[a-z]", source), "run.py reaches into GRPOTrainer internals"
    assert "train_step(" not in source  # no loop of its own


def test_records_read_null_as_nan_and_old_strings(tmp_path) -> None:
    import math

    from bandpo_train.records import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "entropy": null}\n{"step": 2, "entropy": "nan"}\n{"step": 3')
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]  # the cut last line is skipped
    assert all(math.isnan(r["entropy"]) for r in records)
