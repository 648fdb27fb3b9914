"""Benchmark: seconds per RL step with the vLLM rollout backend against the transformers
sampler (``hf``), same model, task and settings, in the same run; and the share of each step
spent generating (and, for vLLM, syncing the weights).

Run (from the workspace root; vLLM in its own environment, see rl-trainer's README)::

    RL_TRAINER_VLLM_PYTHON=/path/to/vllm-venv/bin/python HF_HUB_OFFLINE=1 \\
        .venv/bin/python packages/rl-trainer/benchmarks/bench_vllm.py [--steps 5 --rounds 3]

The task is bandpo-train's embedded default: "37+45=" -> "82", exact-match reward, 4 new
tokens, 32 prompts x 8 completions per step, ppo_epochs 2 x mini_batches 4 (8 updates per
rollout, full weights synced once per rollout). The model is a tiny Llama (hidden 128, 4
heads: vLLM's CPU attention needs head_dim >= 32), float32, written once and loaded by path by
both trainers. ``rl-trainer vllm-serve`` starts the server on it (``--sync`` picks the weight
path: reload or, with LoRA, the adapter hot-load).

The two trainers run interleaved: a round is ``--steps`` RL steps of one, then of the other,
after ``--warmup`` steps each; the table shows the median over rounds of the mean s/step and the
speed-up hf / vllm. On a 2-core machine the server and the trainer share the cores, so this
measures the plumbing (HTTP, sync, a second engine), not vLLM's speed on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, server: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the vLLM server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(2)
    raise SystemExit("the vLLM server did not start in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed RL steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="LoRA run: adapter hot-load sync")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    args = parser.parse_args()
    python = os.environ.get("RL_TRAINER_VLLM_PYTHON")
    if not python:
        print("skipped: set RL_TRAINER_VLLM_PYTHON to the python of vLLM's environment")
        return

    import torch

    from rl_trainer.config import load_config
    from rl_trainer.tiny import save_tiny_model
    from rl_trainer.trainer import GRPOTrainer

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    model = save_tiny_model(root / "model", characters="0123456789+=", hidden_size=128, num_heads=4)
    rng = random.Random(0)
    rows = []
    for _ in range(512):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "rl_trainer", "vllm-serve", "--model", str(model),
            "--port", str(port), "--python", python, "--dtype", "float32",
            "--max-model-len", "64", "--lora-rank", "16", "--cache-dir", str(root / "cache"),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait(url, server)
        common = [
            f"model.path={model}",
            f"data.path={data}",
            "data.chat_template=false",
            "rollout.group_size=8",
            "rollout.prompts_per_step=32",
            "rollout.max_new_tokens=4",
            "algorithm.ppo_epochs=2",
            "algorithm.mini_batches=4",
            "algorithm.rewards=[{name: exact_match}]",
            "optim.lr=1e-4",
            "optim.micro_batch_size=64",
            f"optim.steps={10**6}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "checkpoint.save_final=false",
            *(["model.lora.enabled=true", "model.lora.r=8"] if args.lora else []),
        ]
        trainers = {
            name: GRPOTrainer(
                load_config(None, [*common, f"logging.output_dir={root / name}", *extra])
            )
            for name, extra in (
                ("hf", []),
                ("vllm", ["rollout.backend=vllm", f"rollout.vllm.url={url}"]),
            )
        }
        for trainer in trainers.values():
            for _ in range(args.warmup):
                trainer.train_step()
        per_step: dict[str, list[float]] = {name: [] for name in trainers}
        shares: dict[str, list[float]] = {name: [] for name in trainers}
        sync_shares: list[float] = []
        drift: list[float] = []
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                started = time.perf_counter()
                steps = [trainer.train_step() for _ in range(args.steps)]
                per_step[name].append((time.perf_counter() - started) / args.steps)
                total = sum(s["time/step_s"] for s in steps)
                shares[name].append(sum(s["time/generate_s"] for s in steps) / total)
                if name == "vllm":
                    backend = trainer.backend
                    sync_shares.append(backend.sync_s / max(total, 1e-9))  # type: ignore[attr-defined]
                    backend.sync_s = 0.0  # type: ignore[attr-defined]
                    drift.extend(s["rollout/logprob_diff_max"] for s in steps)
        hf = statistics.median(per_step["hf"])
        vllm = statistics.median(per_step["vllm"])
        print(f"{'sampler':8s} {'s/step (median)':>16s} {'steps/s':>8s} {'generation share':>17s}")
        for name, value in (("hf", hf), ("vllm", vllm)):
            share = statistics.median(shares[name])
            print(f"{name:8s} {value:16.3f} {1 / value:8.2f} {share:17.0%}")
        print(f"speed-up hf/vllm: {hf / vllm:.2f}x (>1: vLLM faster)")
        print(
            f"vllm weight sync: {statistics.median(sync_shares):.0%} of step time "
            f"({'LoRA adapter' if args.lora else 'full reload'}); "
            f"max |log-prob diff| vs trainer over timed steps: {max(drift):.1e}"
        )
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
