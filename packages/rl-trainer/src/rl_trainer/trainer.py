"""``GRPOTrainer``: the rollout -> reward -> advantage -> clipped-update loop on Accelerate.

One step (ARCHITECTURE.md, "Data flows"):

1. Every process draws the same global batch of ``prompts_per_step`` prompts and keeps its own
   slice; it samples ``group_size`` completions for each (rollout backend).
2. Rewards per completion (reward registry); failed samples are masked and reported.
3. Rewards, prompt ids and validity are gathered from all processes and group advantages are
   computed by prompt identity (advantage registry); zero-variance groups are counted and, with
   ``filter_zero_std``, dropped.
4. Old log-probs (and the reference's, for a KL term) are computed once, without gradient, and
   the clipping rule's bounds once from them.
5. ``ppo_epochs`` passes, each of ``mini_batches`` optimiser steps; each mini-batch is split into
   micro-batches whose losses are normalised by the mini-batch's token (or sequence) count summed
   over all micro-batches and processes, so accumulation and data parallelism change nothing.

``train()`` is the one loop; callbacks (``rl_trainer.callbacks``) extend it: progress bar and
``metrics.jsonl`` are callbacks, experiment trackers go through accelerate's ``log_with``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

import band_ops
import config_layers
from rl_trainer import checkpoint as ckpt
from rl_trainer import config_io
from rl_trainer.advantages import get_advantage
from rl_trainer.batch import RolloutBatch, score_logprobs
from rl_trainer.callbacks import (
    DEFAULT_CALLBACKS,
    CallbackHandler,
    CallbackLike,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from rl_trainer.collectives import reduce_scalars
from rl_trainer.components import (
    adamw,
    check_batch_geometry,
    check_context,
    configure_deepspeed,
    disable_dropout,
    load_prompts,
    lr_schedule,
    make_accelerator,
    reuse_rollout_logprobs,
)
from rl_trainer.config import TrainerConfig
from rl_trainer.data import PromptSampler, PromptSet
from rl_trainer.evaluation import evaluate
from rl_trainer.loss import micro_batch_loss
from rl_trainer.models import is_peft_model, load_policy, load_reference, load_tokenizer
from rl_trainer.rewards import RewardSpec, get_reward
from rl_trainer.rollout import RolloutBackend, SamplingParams, create_rollout_backend
from rl_trainer.rollout_step import prepare_batch, rollout_step
from rl_trainer.tracking import flat_config
from rl_trainer.update import optimizer_step, run_updates

logger = logging.getLogger(__name__)

CustomReward = tuple[str, Callable[..., Sequence[float | None]], float]


class NonFiniteLossError(RuntimeError):
    """Raised after ``optim.max_nonfinite_steps`` consecutive non-finite optimiser steps."""


class GRPOTrainer:
    """GRPO-family RL (GRPO, Dr. GRPO, RLOO advantages; PPO, Clip-Higher, DCPO, Band clipping).

    Args:
        config: the run's configuration (``rl_trainer.config.load_config``).
        model, tokenizer: an already loaded policy and tokenizer (else ``config.model.path``).
        train_dataset, eval_dataset: ``datasets.Dataset`` objects (else ``config.data.path`` /
            ``config.data.eval_path``); they need the prompt and answer columns.
        reward_functions: ``(name, fn, weight)`` rewards used instead of ``algorithm.rewards``
            (Python callables that a YAML file cannot name).
        accelerator: an existing Accelerator (else one is made; on a machine without CUDA it
            is a CPU one, so ``accelerate launch --multi_gpu --num_processes 2`` gives 2 CPU
            processes over gloo). Its own ``log_with`` trackers are used.
        callbacks: ``TrainerCallback`` instances (or classes) run after the default ones
            (``MetricsFileCallback``, ``ProgressCallback``); see ``add_callback``.
    """

    def __init__(
        self,
        config: TrainerConfig,
        *,
        model: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        reward_functions: Sequence[CustomReward] = (),
        accelerator: Accelerator | None = None,
        callbacks: Sequence[CallbackLike] = (),
    ) -> None:
        self.config = config
        cfg = config
        if model is None and not cfg.model.path:
            raise ValueError("model.path is required: a local model directory or a hub id")
        if train_dataset is None and not cfg.data.path:
            raise ValueError("data.path is required: a jsonl/json/parquet file of prompts")
        world = PartialState(cpu=not torch.cuda.is_available()).num_processes
        check_batch_geometry(cfg, world)
        self.samples_per_process = cfg.rollout.prompts_per_step // world * cfg.rollout.group_size
        mini = math.ceil(self.samples_per_process / cfg.algorithm.mini_batches)
        self.accumulation_steps = math.ceil(mini / cfg.optim.micro_batch_size)
        self.accelerator = accelerator or make_accelerator(cfg, self.accumulation_steps)
        acc = self.accelerator
        if acc.gradient_accumulation_steps != self.accumulation_steps:
            raise ValueError(
                f"the accelerator accumulates {acc.gradient_accumulation_steps} micro-batches, the "
                f"config implies {self.accumulation_steps}: build it with "
                f"gradient_accumulation_steps={self.accumulation_steps} or pass none"
            )
        configure_deepspeed(acc, cfg)
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and (
            acc.distributed_type != DistributedType.FSDP
        ):
            logger.warning(
                "the accelerate config asks for FSDP, but accelerate runs %s here (FSDP needs "
                "CUDA devices; on CPU it falls back to plain data parallelism)",
                acc.distributed_type,
            )
        set_seed(cfg.optim.seed, device_specific=True)

        # Names and parameters are checked before anything heavy is loaded.
        self.rule = band_ops.get_rule(cfg.algorithm.rule, **cfg.algorithm.rule_params)
        if cfg.algorithm.aggregation not in band_ops.available_aggregations():
            raise ValueError(
                f"unknown algorithm.aggregation {cfg.algorithm.aggregation!r}; valid: "
                f"{', '.join(band_ops.available_aggregations())}"
            )
        get_advantage(cfg.algorithm.advantage)
        self.reward_specs: list[Any] = list(reward_functions) or list(cfg.algorithm.rewards)
        for spec in self.reward_specs:
            if isinstance(spec, RewardSpec):
                get_reward(spec.name, **spec.params)
        self.callback_handler = CallbackHandler([*DEFAULT_CALLBACKS, *callbacks])

        self.tokenizer = tokenizer or load_tokenizer(cfg.model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        with acc.main_process_first():
            self.train_prompts = load_prompts(
                train_dataset, cfg.data.path, "data.path", cfg.data, self.tokenizer
            )
            self.eval_prompts = (
                load_prompts(
                    eval_dataset, cfg.data.eval_path, "data.eval_path", cfg.data, self.tokenizer
                )
                if eval_dataset is not None or cfg.data.eval_path
                else None
            )

        policy = model if model is not None else load_policy(cfg.model, acc.device)
        check_context(policy, self.train_prompts, cfg.rollout.max_new_tokens)
        disable_dropout(policy)
        self.uses_lora = is_peft_model(policy)
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = adamw(
            params,
            lr=cfg.optim.lr,
            betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
            eps=cfg.optim.adam_eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.total_updates = cfg.optim.steps * cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_schedule(cfg.optim.scheduler, cfg.optim.warmup_steps, self.total_updates)
        )
        self.model, self.optimizer = acc.prepare(policy, optimizer)
        # Stepped by hand once per optimiser update (a prepared scheduler would step once per
        # process), but saved and restored with the rest of the state.
        acc.register_for_checkpointing(self.scheduler)

        self.reference: nn.Module | None = None
        if cfg.algorithm.kl_coef > 0 and not self.uses_lora:
            self.reference = acc.prepare_model(
                load_reference(cfg.model, acc.device), evaluation_mode=True
            )

        self.backend: RolloutBackend = create_rollout_backend(
            cfg.rollout.backend,
            self.model,
            self.tokenizer,
            acc,
            generation_batch_size=cfg.rollout.generation_batch_size,
            sampler=cfg.rollout.sampler,
            config=cfg,
        )
        self.reuse_rollout_logprobs = reuse_rollout_logprobs(cfg, policy)
        self.sampler = PromptSampler(
            len(self.train_prompts), seed=cfg.optim.seed, shuffle=cfg.data.shuffle
        )
        self.state = TrainerState(
            max_steps=cfg.optim.steps,
            num_processes=acc.num_processes,
            is_world_process_zero=acc.is_main_process,
        )
        self.control = TrainerControl()
        self.last_updates: list[dict[str, float]] = []
        # A few (prompt, completion) pairs of the last rollout, for the console.
        self.last_examples: list[tuple[str, str]] = []
        self.consecutive_nonfinite = 0
        self.nonfinite_steps = 0
        self.output_dir = Path(cfg.logging.output_dir)
        # Across nodes: the folders must match checkpoint.save_on_each_node, and every process
        # must resume from the same step (one node starting afresh would run its collectives out
        # of step with the others').
        ckpt.check_output_layout(
            acc, self.output_dir, save_on_each_node=cfg.checkpoint.save_on_each_node
        )
        resume_from = ckpt.resolve_resume_everywhere(acc, cfg.checkpoint.resume, self.output_dir)
        if resume_from is not None:
            self.load(resume_from)

    @property
    def step(self) -> int:
        """RL steps done (restored by ``load``)."""
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    # ------------------------------------------------------------------ callbacks

    def add_callback(self, callback: CallbackLike) -> None:
        """Appends a ``TrainerCallback`` (an instance, or a class built without arguments)."""
        self.callback_handler.add(callback)

    def pop_callback(self, callback: CallbackLike) -> TrainerCallback | None:
        """Removes and returns the first callback that is ``callback`` or an instance of that
        class (None when there is none)."""
        return self.callback_handler.pop(callback)

    def remove_callback(self, callback: CallbackLike) -> None:
        """Removes the first callback that is ``callback`` or an instance of that class."""
        self.callback_handler.pop(callback)

    @property
    def callbacks(self) -> list[TrainerCallback]:
        """The callbacks, in the order their hooks run."""
        return self.callback_handler.callbacks

    # ------------------------------------------------------------------ rollout

    def sampling_params(self) -> SamplingParams:
        """Returns the rollout's sampling parameters (``rollout.*``)."""
        r = self.config.rollout
        return SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k)

    def _score(self, model: nn.Module, batch: RolloutBatch) -> torch.Tensor:
        return score_logprobs(
            model,
            batch,
            micro_batch_size=self.config.optim.micro_batch_size,
            temperature=self.config.rollout.temperature,
        )  # (N, T)

    def rollout(self) -> tuple[RolloutBatch | None, dict[str, float], list[tuple[str, str]]]:
        """Returns this process's prepared batch (None when every group was filtered out), the
        rollout metrics and a few (prompt, completion) examples (``rollout_step``)."""
        return rollout_step(
            model=self.model,
            reference=self.reference,
            rule=self.rule,
            backend=self.backend,
            tokenizer=self.tokenizer,
            accelerator=self.accelerator,
            config=self.config,
            prompts=self.train_prompts,
            sampler=self.sampler,
            reward_specs=self.reward_specs,
            sampling=self.sampling_params(),
            reuse_rollout_logprobs=self.reuse_rollout_logprobs,
        )

    def prepare_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        advantages: torch.Tensor,
        *,
        masked: bool = False,
        old_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> RolloutBatch:
        """Returns a RolloutBatch with old (and reference) log-probs and the rule's bounds,
        from the current weights (``rl_trainer.rollout_step.prepare_batch``)."""
        return prepare_batch(
            prompt_ids,
            completion_ids,
            advantages,  # (N,)
            model=self.model,
            reference=self.reference,
            rule=self.rule,
            tokenizer=self.tokenizer,
            accelerator=self.accelerator,
            config=self.config,
            masked=masked,
            old_logprobs=old_logprobs,
        )

    # ------------------------------------------------------------------ update

    def _update(self, batch: RolloutBatch) -> dict[str, float]:
        """One optimiser step on a mini-batch; returns its token-weighted metrics."""
        result = optimizer_step(
            self.model,
            batch,
            accelerator=self.accelerator,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            backend=self.backend,
            rule=self.rule,
            config=self.config,
            accumulation_steps=self.accumulation_steps,
            # Looked up here at call time, so tests can patch ``rl_trainer.trainer``'s name.
            loss_fn=micro_batch_loss,
        )
        if result is not None:
            if result:  # {}: a mini-batch without tokens neither resets nor counts
                self.consecutive_nonfinite = 0
            return result
        self.consecutive_nonfinite += 1
        self.nonfinite_steps += 1
        logger.warning(
            "step %d: non-finite loss or gradient, update skipped (%d in a row)",
            self.step + 1,
            self.consecutive_nonfinite,
        )
        limit = self.config.optim.max_nonfinite_steps
        if self.consecutive_nonfinite >= limit:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive updates had a non-finite loss or "
                f"gradient (optim.max_nonfinite_steps={limit}); lower optim.lr, check the "
                f"rewards, or use float32"
            )
        return {"nonfinite": 1.0}

    def update(self, batch: RolloutBatch, max_updates: int | None = None) -> dict[str, float]:
        """Runs ``ppo_epochs`` x ``mini_batches`` optimiser steps on ``batch`` (at most
        ``max_updates`` of them, fewer when a callback stops training); returns their means.

        Each optimiser step's own metrics are kept in ``self.last_updates`` (one dict per step,
        in order) and handed to the callbacks' ``on_step_end``.
        """
        self.last_updates = []

        def after_step(result: dict[str, float]) -> bool:
            self.last_updates.append(result)
            self.state.update = len(self.last_updates)
            self.callback_handler.call("on_step_end", self, metrics=result)
            return self.control.should_training_stop

        seed = self.config.optim.seed * 1_000_003 + self.step * 101 + self.accelerator.process_index
        return run_updates(
            batch,
            ppo_epochs=self.config.algorithm.ppo_epochs,
            mini_batches=self.config.algorithm.mini_batches,
            generator=torch.Generator().manual_seed(seed),
            step=self._update,
            after_step=after_step,
            max_updates=max_updates,
        )

    # ------------------------------------------------------------------ the loop

    def train_step(self, max_updates: int | None = None) -> dict[str, float]:
        """Runs one RL step (rollout + updates, at most ``max_updates`` optimiser steps);
        returns its metrics (the same on every process)."""
        start = time.perf_counter()
        self.last_updates = []
        self.state.update = 0
        batch, metrics, examples = self.rollout()
        rollout_s = time.perf_counter() - start
        self.callback_handler.call("on_rollout_end", self, metrics=metrics)
        if batch is None:
            metrics["skipped"] = 1.0
            logger.warning(
                "step %d: every group had zero reward variance; update skipped", self.step + 1
            )
        else:
            update_start = time.perf_counter()
            metrics.update(self.update(batch, max_updates))
            metrics["time/update_s"] = time.perf_counter() - update_start
            local = {"tokens": float(batch.attention_mask.sum())}
            tokens = reduce_scalars(local, self.accelerator)["tokens"]
            metrics["tokens_per_s"] = (
                tokens * self.config.algorithm.ppo_epochs / (time.perf_counter() - start)
            )
        metrics["time/rollout_s"] = rollout_s
        metrics["time/step_s"] = time.perf_counter() - start
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["nonfinite_steps_total"] = float(self.nonfinite_steps)
        self.step += 1
        self.last_examples = examples
        return metrics

    def train(self) -> dict[str, float]:
        """Runs until ``optim.steps`` RL steps (or a callback's stop request); returns the last
        step's metrics (plus the final evaluation's).

        After each RL step: evaluation every ``eval.every`` steps, a log record (trackers and
        ``on_log``: metrics.jsonl, console) every ``logging.log_every`` steps and at the last
        one, a checkpoint every ``checkpoint.save_every`` steps -- or when a callback sets the
        matching ``control`` flag. At the end: the final evaluation, checkpoint and model.
        """
        cfg = self.config
        acc = self.accelerator
        control = self.control = TrainerControl()
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config_io.dump_yaml(cfg, self.output_dir / "config.yaml")
        self._start_trackers()
        metrics: dict[str, float] = {}
        evaluated_at = saved_at = -1
        try:
            self.callback_handler.call("on_train_begin", self)
            while self.step < cfg.optim.steps and not control.should_training_stop:
                metrics = self.train_step()
                last = self.step == cfg.optim.steps or control.should_training_stop
                control.should_evaluate = bool(
                    cfg.eval.every and self.step % cfg.eval.every == 0 and self.eval_prompts
                )
                control.should_log = self.step % cfg.logging.log_every == 0 or last
                control.should_save = bool(
                    cfg.checkpoint.save_every and self.step % cfg.checkpoint.save_every == 0
                )
                self.callback_handler.call(
                    "on_rl_step_end", self, metrics=metrics, updates=self.last_updates
                )
                if control.should_evaluate and self.eval_prompts:
                    metrics.update(self.evaluate())
                    evaluated_at = self.step
                if control.should_log:
                    self.log(metrics)
                if control.should_save:
                    self.save()
                    saved_at = self.step
                control.should_evaluate = control.should_log = control.should_save = False
            if self.eval_prompts and evaluated_at != self.step:
                final_eval = self.evaluate()
                metrics.update(final_eval)
                self.log({"final": 1.0, **final_eval})
            if cfg.checkpoint.save_final and saved_at != self.step:
                self.save()
            self.save_model(self.output_dir / "final")
        finally:
            self.callback_handler.call("on_train_end", self, metrics=metrics)
            self._finish_trackers()
        return metrics

    # ------------------------------------------------------------------ logging

    def _start_trackers(self) -> None:
        acc = self.accelerator
        if acc.log_with and not acc.trackers:
            acc.init_trackers(
                self.config.logging.project, config=flat_config(config_layers.to_dict(self.config))
            )

    def _finish_trackers(self) -> None:
        # Not accelerator.end_training(): that also destroys the process group, which callers
        # still need after train() (evaluation, saving, their own collectives).
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()

    def log(self, metrics: Mapping[str, float]) -> None:
        """Sends ``metrics`` at the current step to the trackers (main process) and the
        callbacks' ``on_log`` (metrics.jsonl, console)."""
        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if self.accelerator.trackers:
            self.accelerator.log(numeric, step=self.step)
        self.callback_handler.call("on_log", self, metrics=numeric)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, prompts: PromptSet | None = None) -> dict[str, float]:
        """Returns held-out metrics (``rl_trainer.evaluation.evaluate``) on ``prompts`` or the
        configured evaluation set; the callbacks' ``on_evaluate`` gets them."""
        prompts = prompts or self.eval_prompts
        if prompts is None:
            raise ValueError("no evaluation prompts: set data.eval_path")
        metrics = evaluate(
            self.backend,
            self.tokenizer,
            prompts,
            reward_specs=self.reward_specs,
            config=self.config.eval,
            sampling=self.sampling_params(),
            accelerator=self.accelerator,
        )
        self.callback_handler.call("on_evaluate", self, metrics=metrics)
        return metrics

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "nonfinite_steps": self.nonfinite_steps,
            "accelerator_step": self.accelerator.step,
        }

    def save(self) -> Path:
        """Writes a full-state checkpoint of the current step (every process must call it);
        the callbacks' ``on_save`` gets its path."""
        path = ckpt.save_checkpoint(
            self.accelerator,
            self.model,
            self.output_dir,
            self.step,
            self.state_dict(),
            keep_last=self.config.checkpoint.keep_last,
            save_adapter=self.uses_lora,
            on_each_node=self.config.checkpoint.save_on_each_node,
        )
        self.callback_handler.call("on_save", self, checkpoint=path)
        return path

    def load(self, directory: str | Path) -> None:
        """Restores a checkpoint written by ``save`` (model, optimiser, scheduler, RNG, step)."""
        state = ckpt.load_checkpoint(self.accelerator, directory)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.accelerator.step = int(state.get("accelerator_step", 0))
        logger.info("resumed from %s at step %d", directory, self.step)

    def save_model(self, directory: str | Path) -> Path:
        """Writes the trained weights for inference (safetensors; LoRA: the adapters alone)
        and the tokenizer; returns the directory."""
        acc = self.accelerator
        directory = Path(directory)
        state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            tmp = directory.with_name(directory.name + ".tmp")
            acc.unwrap_model(self.model).save_pretrained(
                str(tmp), state_dict=state, safe_serialization=True
            )
            self.tokenizer.save_pretrained(str(tmp))
            if directory.exists():
                import shutil

                shutil.rmtree(directory)
            tmp.rename(directory)
        acc.wait_for_everyone()
        return directory


__all__ = [
    "GRPOTrainer",
    "NonFiniteLossError",
    "RewardSpec",
    "RolloutBatch",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "check_batch_geometry",
]
