"""Shared settings: nothing is downloaded; runs are kept tiny unless a test says otherwise."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A few seconds per run: small task, short warm start, small rollouts.
FAST = [
    "logging.progress_bar=false",
    "warm_start.steps=30",
    "task.train_size=64",
    "task.eval_size=8",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "optim.micro_batch_size=16",
]
