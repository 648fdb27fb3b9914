"""Kill a training process with SIGKILL after a checkpoint, restart it with
``checkpoint.resume=latest``, and get the same metrics and weights as a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def command(model: Path, data: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rl_trainer",
        "train",
        f"model.path={model}",
        f"data.path={data}",
        f"logging.output_dir={out}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "rollout.prompts_per_step=4",
        "rollout.group_size=8",
        "rollout.max_new_tokens=8",
        f"optim.steps={steps}",
        "optim.lr=1e-2",
        "optim.micro_batch_size=8",
        "algorithm.ppo_epochs=2",
        "checkpoint.save_every=1",
        "checkpoint.keep_last=0",
        "checkpoint.resume=latest",
        'algorithm.rewards=[{name: format, params: {pattern: ".*[0-9].*"}}]',
    ]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def metrics(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(
    tmp_path, tiny_model_dir, digit_data
) -> None:
    steps = 12
    straight = tmp_path / "straight"
    done = subprocess.run(
        command(tiny_model_dir, digit_data, straight, steps),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command(tiny_model_dir, digit_data, killed, steps),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = killed / "checkpoints" / "step-000004" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = max(
        int(p.name.split("-")[1])
        for p in (killed / "checkpoints").iterdir()
        if not p.name.endswith(".tmp")
    )
    assert 4 <= interrupted_at < steps
    assert not (killed / "final").exists()

    resumed = subprocess.run(
        command(tiny_model_dir, digit_data, killed, steps),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a, b = metrics(straight), metrics(killed)
    assert sorted(b) == list(range(1, steps + 1))  # each step logged exactly once
    for step in range(interrupted_at + 1, steps + 1):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6), step
        assert a[step]["reward/total"] == b[step]["reward/total"], step
    wa = load_file(straight / "final" / "model.safetensors")
    wb = load_file(killed / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
    assert any(
        not torch.equal(
            wa[k], load_file(straight / "checkpoints" / "step-000001" / "model.safetensors")[k]
        )
        for k in wa
    )
