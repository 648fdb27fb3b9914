"""The embedded default: a tiny model and a toy task built on the spot, warm-started so that RL
has signal. Nothing is downloaded; the model and data land in ``<output_dir>/embedded``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from datasets import Dataset

from bandpo_train.config import AppConfig, run_rewards
from bandpo_train.tasks import get_task
from bandpo_train.warm_start import warm_start
from config_layers import ConfigError
from rl_trainer import atomic_write_text
from rl_trainer.data import load_prompt_dataset, tokenize_prompts
from rl_trainer.models import apply_lora
from rl_trainer.tiny import build_char_tokenizer, build_tiny_model

logger = logging.getLogger(__name__)

DONE = "embedded.json"


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def check_embedded(config: AppConfig) -> None:
    """Raises ConfigError (a ValueError) when the embedded default cannot be built and trained as
    configured, without writing anything: the tiny model is built on the meta device (its size,
    ``model.attn_implementation``, ``model.lora.*``) and the task's prompts go through
    rl-trainer's prompt checks (``data.max_prompt_length``, ``data.overlong_prompts``).
    """
    task = get_task(config.task.name)
    tokenizer = build_char_tokenizer(task.characters, chat_template=None)
    try:
        with torch.device("meta"):
            model = build_tiny_model(
                tokenizer,
                hidden_size=config.task.hidden_size,
                num_layers=config.task.num_layers,
                seed=config.task.seed,
            )
    # transformers validates the architecture with its own exception classes (not ValueErrors),
    # which differ between versions.
    except Exception as exc:
        raise ConfigError(
            f"cannot build the tiny model with hidden_size={config.task.hidden_size}, "
            f"num_layers={config.task.num_layers}: {_last_line(exc)}",
            ("task", "hidden_size"),
        ) from None
    attn = config.model.attn_implementation
    if attn and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(attn)
        except (ValueError, ImportError) as exc:
            raise ConfigError(_last_line(exc), ("model", "attn_implementation")) from None
    if config.model.lora.enabled:
        try:
            apply_lora(model, config.model.lora)
        except ValueError as exc:
            raise ConfigError(str(exc), ("model", "lora", "target_modules")) from None
    data = config.data
    if data.eval_path:
        try:
            held_out = load_prompt_dataset(data.eval_path, data.prompt_column, data.answer_column)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"data.eval_path: {exc}") from None
    else:
        held_out = Dataset.from_list(task.rows(config.task.eval_size, config.task.seed + 1))
    sets = {
        f"the embedded {task.name!r} data": Dataset.from_list(
            task.rows(config.task.train_size, config.task.seed)
        ),
        data.eval_path or f"the embedded {task.name!r} held-out data": held_out,
    }
    for where, dataset in sets.items():
        # The trainer's own tokenisation: the embedded run has no chat template.
        tokenize_prompts(
            dataset,
            tokenizer,
            prompt_column=data.prompt_column,
            chat_template=False,
            system_prompt=data.system_prompt,
            max_prompt_length=data.max_prompt_length,
            overlong=data.overlong_prompts,
            where=where,
        )


def prepare_embedded(config: AppConfig, *, build: bool) -> Path:
    """Points ``config`` at the embedded model and data, building them first when ``build``.

    Only one process should build (``build=True`` on the main process, the others wait and
    call this again with ``build=False``). A finished build is reused, so a resumed run starts
    from the same warm-started weights.
    """
    task = get_task(config.task.name)
    rewards = run_rewards(config)  # before model.path is set: it depends on the embedded default
    root = Path(config.logging.output_dir) / "embedded"
    model_dir, train_file, eval_file = root / "model", root / "train.jsonl", root / "eval.jsonl"
    if build and not (root / DONE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        rows = task.rows(config.task.train_size, config.task.seed)
        held_out = task.rows(config.task.eval_size, config.task.seed + 1)
        for path, data in ((train_file, rows), (eval_file, held_out)):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in data))
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
    config.algorithm.rewards = rewards
    return root
