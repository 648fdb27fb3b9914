"""The whole configuration is checked before any work: a bad value stops the run with exit code 2
and a message naming the key, before the warm start and before anything is written."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

import bandpo_train.run as run_module
from bandpo_train.cli import main
from bandpo_train.config import check_config, load_app_config
from bandpo_train.run import train
from bandpo_train.study import design, runner
from config_layers import ConfigError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
MARKER = "already-here.txt"


def _output_dir(tmp_path: Path) -> Path:
    """Returns an output directory holding one file, so that anything new in it shows."""
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("x")
    return out


def _assert_untouched(out: Path) -> None:
    assert not (out / "embedded").exists()
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def _command() -> list[str]:
    script = shutil.which("bandpo-train", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "bandpo_train"]


def test_unknown_rule_exits_2_before_any_work(tmp_path) -> None:
    out = _output_dir(tmp_path)
    proc = subprocess.run(
        [*_command(), f"output_dir={out}", "algorithm.rule=bandd"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,  # the check itself is instant; start-up is importing torch and friends
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "algorithm.rule: unknown clipping rule 'bandd'" in proc.stderr
    valid = "band, band_lower, band_upper, clip_higher, dcpo, ppo"
    assert f"valid names: {valid}; did you mean 'band'?" in proc.stderr
    _assert_untouched(out)


# (overrides, path of the bad key, part of the message)
BAD = {
    "rule": (["algorithm.rule=bandd"], ("algorithm", "rule"), "did you mean 'band'?"),
    "divergence": (
        ["algorithm.rule_params.divergence=kll"],
        ("algorithm", "rule_params", "divergence"),
        "unknown divergence 'kll'; valid names: chi2, hellinger, js, kl,",
    ),
    "divergence_hint": (
        ["algorithm.rule_params.divergence=kll"],
        ("algorithm", "rule_params", "divergence"),
        "did you mean 'kl'?",
    ),
    "delta_zero": (
        ["algorithm.rule_params.delta=0"],
        ("algorithm", "rule_params", "delta"),
        "delta must be a positive finite number, got 0",
    ),
    "delta_negative": (
        ["algorithm.rule_params.delta=-0.05"],
        ("algorithm", "rule_params", "delta"),
        "delta must be a positive finite number, got -0.05",
    ),
    "max_ratio": (
        ["algorithm.rule_params.max_ratio=0.5"],
        ("algorithm", "rule_params", "max_ratio"),
        "max_ratio must be >= 1",
    ),
    "band_unknown_param": (
        ["algorithm.rule_params.eps=0.2"],
        ("algorithm", "rule_params", "eps"),
        "clipping rule 'band': unknown key for Band; valid keys: divergence, delta, max_ratio",
    ),
    "ppo_eps": (
        ["algorithm.rule=ppo", "algorithm.rule_params={eps: 1.5}"],
        ("algorithm", "rule_params", "eps"),
        "clipping rule 'ppo': eps must be in [0, 1.0), got 1.5",
    ),
    "clip_higher_eps_low": (
        ["algorithm.rule=clip_higher", "algorithm.rule_params={eps_low: -0.1}"],
        ("algorithm", "rule_params", "eps_low"),
        "eps_low must be in [0, 1.0), got -0.1",
    ),
    "clip_higher_eps_high": (
        ["algorithm.rule=clip_higher", "algorithm.rule_params={eps_high: -0.1}"],
        ("algorithm", "rule_params", "eps_high"),
        "eps_high must be in [0, inf), got -0.1",
    ),
    "dcpo_eps": (
        ["algorithm.rule=dcpo", "algorithm.rule_params={eps_low: .nan}"],
        ("algorithm", "rule_params", "eps_low"),
        "eps_low must be in [0, inf), got nan",
    ),
    "reward": (
        ["algorithm.rewards.0.name=exact_mach"],
        ("algorithm", "rewards", 0, "name"),
        "unknown reward 'exact_mach'; valid names: answer_or_decoy, exact_match,",
    ),
    "reward_hint": (
        ["algorithm.rewards=[{name: math_verif}]"],
        ("algorithm", "rewards", 0, "name"),
        "did you mean 'math_verify'?",
    ),
    "reward_param": (
        ["algorithm.rewards.0.params={colum: answer}"],
        ("algorithm", "rewards", 0, "params"),
        "unknown parameter(s) 'colum' for reward 'exact_match'",
    ),
    "aggregation": (
        ["algorithm.aggregation=token_mean"],
        ("algorithm", "aggregation"),
        "unknown aggregation 'token_mean'",
    ),
    "dual_clip": (
        ["algorithm.dual_clip=0.5"],
        ("algorithm", "dual_clip"),
        "dual_clip must be a number > 1 or None, got 0.5",
    ),
    "advantage": (
        ["algorithm.advantage=grpoo"],
        ("algorithm", "advantage"),
        "unknown advantage estimator 'grpoo'; valid names: dr_grpo, grpo, rloo; did you mean",
    ),
    "advantage_param": (
        ["algorithm.advantage_params={eps: -1}"],
        ("algorithm", "advantage_params"),
        "eps must be a finite number >= 0, got -1",
    ),
    "task": (["task.name=additon"], ("task", "name"), "did you mean 'addition'?"),
    "task_size": (["task.train_size=0"], ("task", "train_size"), "must be > 0, got 0"),
    "tiny_model": (["task.num_layers=-1"], ("task", "num_layers"), "must be > 0, got -1"),
    "warm_start_lr": (["warm_start.lr=0"], ("warm_start", "lr"), "must be a finite number > 0"),
    "warm_start_batch": (["warm_start.batch_size=0"], ("warm_start", "batch_size"), "> 0"),
    "correct_reward": (
        ["task.name=rare", "eval.correct_reward=exact_match"],
        ("eval", "correct_reward"),
        "'exact_match' is not one of the run's rewards (one_of)",
    ),
    "rollout_backend": (["rollout.backend=vlm"], ("rollout", "backend"), "valid names: hf, vllm"),
    "max_steps": (["max_steps=0"], ("max_steps",), "must be > 0"),
    "embedded_column": (
        ["data.prompt_column=problem"],
        ("data", "prompt_column"),
        "'problem' is not a column of the embedded 'addition' data",
    ),
    "embedded_system_prompt": (
        ["data.system_prompt=Be brief."],
        ("data", "system_prompt"),
        "no chat template",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_is_rejected_at_load(case: str) -> None:
    overrides, path, fragment = BAD[case]
    with pytest.raises(ConfigError) as info:
        load_app_config(None, overrides)
    message = str(info.value)
    assert info.value.path == path
    assert fragment in message
    # The message points at the override that set the bad value.
    assert message.startswith(f"override {overrides[-1]!r}: "), message
    assert "\n" not in message


def test_model_without_data_is_rejected_at_load(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"data\.path: required when model\.path is set"):
        load_app_config(None, [f"model.path={tmp_path}"])


def test_bad_value_in_a_file_names_the_line(tmp_path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("max_steps: 8\nalgorithm:\n  rule: band\n  rule_params: {delta: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_app_config(file)
    assert str(info.value).startswith(f"{file}, line 4: algorithm.rule_params.delta: ")
    assert "delta must be a positive finite number, got -1" in str(info.value)


def test_bad_override_of_a_preset_is_rejected() -> None:
    with pytest.raises(ConfigError, match="eps must be in"):
        load_app_config(None, ["algorithm.rule_params.eps=1.0"], preset="grpo")


def test_study_arms_pass_the_checks(tmp_path) -> None:
    for arm in design.ARMS.values():
        for lr in design.LEARNING_RATES:
            config = load_app_config(None, runner.run_overrides(lr, arm, 0, 1, tmp_path))
            check_config(config)
            assert config.algorithm.rule_params == arm.params


@pytest.fixture
def no_work(monkeypatch):
    """Makes any step past the checks fail the test: the warm start and the trainer."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started although the configuration is invalid")

    monkeypatch.setattr(run_module, "prepare_embedded", forbidden)
    monkeypatch.setattr(run_module, "GRPOTrainer", forbidden)


# Values that are only wrong together with the launch, the disk or the tiny model: checked by
# train() on every process before anything is written.
LATE = {
    "tiny_model": (["task.hidden_size=66"], "cannot build the tiny model with hidden_size=66"),
    "lora_targets": (
        ["model.lora.enabled=true", "model.lora.target_modules=[c_attn]"],
        "Target modules {'c_attn'} not found",
    ),
    "attention": (["model.attn_implementation=flashx"], "model.attn_implementation: "),
    "prompt_length": (["data.max_prompt_length=3"], "longer than data.max_prompt_length=3"),
    "batch_split": (
        ["rollout.prompts_per_step=1", "rollout.group_size=2", "algorithm.mini_batches=4"],
        "fewer than algorithm.mini_batches=4",
    ),
    "resume": (["checkpoint.resume=/nonexistent/step-000001"], "checkpoint.resume="),
    "eval_file": (["data.eval_path=/nonexistent/eval.jsonl"], "data.eval_path: prompt dataset"),
}


@pytest.mark.parametrize("case", sorted(LATE))
def test_cli_rejects_before_any_work(case, tmp_path, capsys, no_work) -> None:
    overrides, fragment = LATE[case]
    out = _output_dir(tmp_path)
    assert main([f"output_dir={out}", *FAST, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bandpo-train: ") and fragment in err, err
    _assert_untouched(out)


@pytest.mark.parametrize("case", ["rule", "delta_zero", "ppo_eps", "reward"])
def test_cli_rejects_at_load(case, tmp_path, capsys, no_work) -> None:
    overrides, _, fragment = BAD[case]
    out = _output_dir(tmp_path)
    assert main([f"output_dir={out}", *overrides]) == 2
    assert fragment in capsys.readouterr().err
    _assert_untouched(out)


def test_train_checks_a_config_changed_after_loading(tmp_path, no_work) -> None:
    out = _output_dir(tmp_path)
    config = load_app_config(None, [f"output_dir={out}", *FAST])
    config.algorithm.rule_params = {"divergence": "kl", "delta": 0.0}
    with pytest.raises(ConfigError, match="delta must be a positive finite number, got 0.0"):
        train(config)
    _assert_untouched(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bad_config_under_accelerate_launch_writes_nothing(tmp_path) -> None:
    """Two CPU processes: the check runs before the process group starts, so the launch ends with
    the first process's exit status 2 (the launcher then stops the other) and no files."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate
    out = _output_dir(tmp_path)
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "bandpo_train",
            f"output_dir={out}",
            "algorithm.rule=bandd",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "algorithm.rule: unknown clipping rule 'bandd'" in proc.stderr
    assert "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    _assert_untouched(out)
