"""Shared fixtures: a tiny Llama model with a character tokenizer, saved and loaded by path, and
a toy prompt set; nothing is downloaded (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIGITS = "0123456789"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rl_trainer.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), hidden_size=32, seed=0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def digit_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prompts "say 3" with answer "3": ten prompts, one per digit."""
    root = tmp_path_factory.mktemp("data")
    return write_jsonl(root / "digits.jsonl", [{"prompt": f"say {d}", "answer": d} for d in DIGITS])


def digit_share(
    prompts: list[str], completions: list[str], *, answer: list[str], **_
) -> list[float]:
    """Reward of the toy task: the share of completion characters that are the answer digit."""
    return [(c.count(a) / len(c)) if c else 0.0 for c, a in zip(completions, answer, strict=True)]


def digits_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Reward of the learning tests: the share of completion characters that are digits."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


DIGITS_REWARD = [("digits", digits_reward, 1.0)]


def tiny_config(model_dir: Path, data: Path, output_dir: Path, **overrides: object):
    """Returns a TrainerConfig for fast CPU tests (overrides are dotted keys)."""
    from rl_trainer.config import load_config

    base = {
        "model.path": str(model_dir),
        "data.path": str(data),
        "rollout.group_size": 4,
        "rollout.prompts_per_step": 2,
        "rollout.max_new_tokens": 4,
        "optim.lr": 1e-2,
        "optim.steps": 2,
        "optim.micro_batch_size": 4,
        "logging.output_dir": str(output_dir),
        "logging.progress_bar": False,
        "logging.tensorboard": False,
        "algorithm.rewards": [{"name": "exact_match"}],
    }
    base.update(overrides)
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()])
