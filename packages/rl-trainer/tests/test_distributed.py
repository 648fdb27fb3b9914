"""Two CPU processes under ``accelerate launch`` (gloo): both ranks take part, gradients are
synchronised, weights stay identical, and the step equals one process doing all the work."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_REWARD, tiny_config

from rl_trainer.configs import accelerate_config
from rl_trainer.trainer import GRPOTrainer

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: list[str], *, timeout: int = 300, config_file: Path | None = None
) -> subprocess.CompletedProcess:
    """Runs ``accelerate launch`` with 2 CPU processes: from flags, or from ``config_file``."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "the accelerate CLI is not installed next to this Python"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_CPU": "true",
    }
    cmd = [
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
        str(free_port()),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize(
    "aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_two_cpu_processes_match_one(tmp_path, tiny_model_dir, digit_data, aggregation) -> None:
    # 2 prompts x 4 completions per rank, micro-batches of 3: each rank accumulates 3.
    overrides = {
        "rollout.prompts_per_step": 4,
        "rollout.group_size": 4,
        "algorithm.mini_batches": 1,
        "optim.micro_batch_size": 3,
        "optim.lr": 1e-2,
        "algorithm.aggregation": aggregation,
        "optim.max_grad_norm": None,
    }
    out = tmp_path / "dist"
    out.mkdir()
    proc = launch(
        [str(WORKER), str(tiny_model_dir), str(digit_data), str(out), json.dumps(overrides)]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = torch.load(out / "result.pt", weights_only=False)

    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert all(r["accumulation_steps"] == 3 for r in ranks)
    # Each rank sampled different prompts, yet the synchronised gradients and weights agree.
    assert ranks[0]["samples"] != ranks[1]["samples"]
    for rank in ranks:  # reduce_scalars: the same named results on every rank
        assert rank["reduced"] == {
            "sum": {"rank": 1.0, "one": 2.0},
            "mean": {"rank": 0.5, "one": 1.0},
            "max": {"rank": 1.0, "one": 1.0},
            "min": {"rank": 0.0, "one": 1.0},
        }
    assert torch.allclose(ranks[0]["grad"], ranks[1]["grad"], rtol=0, atol=1e-7)
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])

    # One process replaying all 16 samples (6 micro-batches) computes the same gradient: the
    # loss is normalised once, by the global count, not per micro-batch or per process.
    single = GRPOTrainer(
        tiny_config(tiny_model_dir, digit_data, tmp_path / "single", **overrides),
        reward_functions=DIGITS_REWARD,
    )
    samples = ranks[0]["samples"] + ranks[1]["samples"]
    batch = single.prepare_batch(
        [s[0] for s in samples], [s[1] for s in samples], torch.tensor([s[2] for s in samples])
    )
    model = single.accelerator.unwrap_model(single.model)
    grads: list[torch.Tensor] = []
    real_step = single.optimizer.step

    def recording_step(*args, **kwargs):
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
        return real_step(*args, **kwargs)

    single.optimizer.step = recording_step
    single.update(batch)
    reference = grads[0]
    assert float(reference.abs().max()) > 0
    diff = float((reference - ranks[0]["grad"]).abs().max()) / float(reference.abs().max())
    assert diff < 1e-5, diff
    weights = torch.cat([v.flatten().float() for v in model.state_dict().values()])
    # Weights after one AdamW step: Adam divides by sqrt(v) + eps, which magnifies float
    # rounding in gradients near zero (about 1e-9) to ~1e-5; the gradient check above is exact.
    assert float((weights - ranks[0]["weights"]).abs().max()) < 1e-4


@pytest.mark.slow
def test_cli_training_runs_under_the_shipped_cpu_config(
    tmp_path, tiny_model_dir, digit_data
) -> None:
    out = tmp_path / "run"
    args = [
        "-m",
        "rl_trainer",
        "train",
        f"model.path={tiny_model_dir}",
        f"data.path={digit_data}",
        f"data.eval_path={digit_data}",
        f"logging.output_dir={out}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "rollout.max_new_tokens=4",
        "optim.steps=2",
        "optim.lr=1e-2",
        "checkpoint.save_every=1",
        "eval.max_prompts=3",
        'algorithm.rewards=[{name: format, params: {pattern: ".*[0-9].*"}}]',
    ]
    proc = launch(args, config_file=accelerate_config("cpu_2proc"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 2]  # two steps, then the final evaluation
    assert lines[-1]["eval/prompts"] == 3  # 2 + 1 prompts: the short rank repeats one, unused
    checkpoint = out / "checkpoints" / "step-000002"
    assert (checkpoint / "random_states_0.pkl").is_file()
    assert (checkpoint / "random_states_1.pkl").is_file()
    assert (out / "final" / "model.safetensors").is_file()
