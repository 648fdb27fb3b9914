"""The embedded default: a tiny model and a toy task built on the spot, warm-started so that RL
has signal. Nothing is downloaded; the model and data land in ``<output_dir>/embedded``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from bandpo_train.config import AppConfig
from bandpo_train.tasks import get_task
from bandpo_train.warm_start import warm_start
from rl_trainer.tiny import build_char_tokenizer, build_tiny_model

logger = logging.getLogger(__name__)

DONE = "embedded.json"


def prepare_embedded(config: AppConfig, *, build: bool) -> Path:
    """Points ``config`` at the embedded model and data, building them first when ``build``.

    Only one process should build (``build=True`` on the main process, the others wait and
    call this again with ``build=False``). A finished build is reused, so a resumed run starts
    from the same warm-started weights.
    """
    task = get_task(config.task.name)
    root = Path(config.logging.output_dir) / "embedded"
    model_dir, train_file, eval_file = root / "model", root / "train.jsonl", root / "eval.jsonl"
    if build and not (root / DONE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        rows = task.rows(config.task.train_size, config.task.seed)
        held_out = task.rows(config.task.eval_size, config.task.seed + 1)
        for path, data in ((train_file, rows), (eval_file, held_out)):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
            tmp.replace(path)
        tokenizer = build_char_tokenizer(task.characters, chat_template=None)
        model = build_tiny_model(
            tokenizer,
            hidden_size=config.task.hidden_size,
            num_layers=config.task.num_layers,
            seed=config.task.seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.task.seed)
            losses = warm_start(
                model,
                tokenizer,
                rows,
                task.warm_start_target,
                steps=config.warm_start.steps,
                lr=config.warm_start.lr,
                batch_size=config.warm_start.batch_size,
                seed=config.task.seed,
            )
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        summary = {
            "task": task.name,
            "warm_start_steps": config.warm_start.steps,
            "warm_start_loss_first": losses[0] if losses else None,
            "warm_start_loss_last": losses[-1] if losses else None,
        }
        (root / DONE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        logger.info(
            "embedded default: %s task, warm start loss %.3f -> %.3f",
            task.name,
            losses[0] if losses else float("nan"),
            losses[-1] if losses else float("nan"),
        )
    config.model.path = str(model_dir)
    config.data.path = str(train_file)
    config.data.eval_path = config.data.eval_path or str(eval_file)
    config.data.chat_template = False
    config.rollout.max_new_tokens = task.max_new_tokens
    if [r.name for r in config.algorithm.rewards] == ["exact_match"]:
        config.algorithm.rewards = list(task.rewards)
    return root
