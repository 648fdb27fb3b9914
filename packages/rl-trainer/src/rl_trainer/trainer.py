"""``GRPOTrainer``: the rollout -> reward -> advantage -> clipped-update loop on Accelerate.

One step (DESIGN.md, "Data flows"):

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
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from datasets import Dataset
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

import band_ops
from rl_trainer import checkpoint as ckpt
from rl_trainer import config_io
from rl_trainer.advantages import (
    compute_advantages,
    get_advantage,
    group_statistics,
    zero_variance_mask,
)
from rl_trainer.config import TrainerConfig
from rl_trainer.data import PromptSampler, PromptSet, load_prompt_dataset, tokenize_prompts
from rl_trainer.evaluation import evaluate
from rl_trainer.logprobs import completion_logits, kl_penalty, token_logprobs_and_entropy
from rl_trainer.models import (
    adapters_disabled,
    is_peft_model,
    load_policy,
    load_reference,
    load_tokenizer,
)
from rl_trainer.rewards import RewardSpec, compute_rewards, get_reward
from rl_trainer.rollout import RolloutBackend, SamplingParams, create_rollout_backend, left_pad
from rl_trainer.tracking import MetricsTracker

logger = logging.getLogger(__name__)

CustomReward = tuple[str, Callable[..., Sequence[float | None]], float]


class NonFiniteLossError(RuntimeError):
    """Raised after ``optim.max_nonfinite_steps`` consecutive non-finite optimiser steps."""


@dataclass
class RolloutBatch:
    """One process's share of a rollout, ready for updates. N samples, P prompt + T completion.

    ``input_ids``/``attention_mask`` are (N, P + T): the prompt left-padded, the completion
    right-padded. ``completion_ids``/``completion_mask``/``old_logprobs``/``ref_logprobs`` and
    the two bound tensors are (N, T); ``advantages`` is (N,).
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    advantages: Tensor
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    lower: Tensor | None = None
    upper: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: Tensor) -> RolloutBatch:
        """Returns the samples at ``index`` (a 1-D long tensor)."""
        return RolloutBatch(
            **{
                name: (value[index] if isinstance(value, Tensor) else value)
                for name, value in self.__dict__.items()
            }
        )


def _disable_dropout(model: nn.Module) -> None:
    # RL compares log-probs of the same tokens under two passes; dropout would make the ratio of
    # an unchanged policy differ from 1. LoRA dropout is set by its own config.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", 0.0)  # noqa: B010


def _adamw(params: list[nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    """Returns AdamW with the fused kernel where torch has one for these parameters (CPU and
    CUDA: one kernel for all tensors instead of a Python loop over them), else the default."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def _schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def check_batch_geometry(config: TrainerConfig, world: int) -> None:
    """Raises ValueError when the rollout batch cannot be split over ``world`` processes."""
    if config.rollout.prompts_per_step % world:
        raise ValueError(
            f"rollout.prompts_per_step={config.rollout.prompts_per_step} must be divisible by "
            f"the number of processes ({world})"
        )
    samples = config.rollout.prompts_per_step // world * config.rollout.group_size
    if samples < config.algorithm.mini_batches:
        raise ValueError(
            f"each process has {samples} samples per step (prompts_per_step / processes * "
            f"group_size), fewer than algorithm.mini_batches={config.algorithm.mini_batches}"
        )


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
            processes over gloo).
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
        self.accelerator = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=self.accumulation_steps,
        )
        acc = self.accelerator
        if acc.gradient_accumulation_steps != self.accumulation_steps:
            raise ValueError(
                f"the accelerator accumulates {acc.gradient_accumulation_steps} micro-batches, the "
                f"config implies {self.accumulation_steps}: build it with "
                f"gradient_accumulation_steps={self.accumulation_steps} or pass none"
            )
        self._configure_deepspeed()
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

        self.tokenizer = tokenizer or load_tokenizer(cfg.model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        with acc.main_process_first():
            self.train_prompts = self._prompts(train_dataset, cfg.data.path, "data.path")
            self.eval_prompts = (
                self._prompts(eval_dataset, cfg.data.eval_path, "data.eval_path")
                if eval_dataset is not None or cfg.data.eval_path
                else None
            )

        policy = model if model is not None else load_policy(cfg.model, acc.device)
        self._check_context(policy)
        _disable_dropout(policy)
        self.uses_lora = is_peft_model(policy)
        params = [p for p in policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = _adamw(
            params,
            lr=cfg.optim.lr,
            betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
            eps=cfg.optim.adam_eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.total_updates = cfg.optim.steps * cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _schedule(cfg.optim.scheduler, cfg.optim.warmup_steps, self.total_updates)
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
        )
        self.reuse_rollout_logprobs = self._reuse_rollout_logprobs(policy)
        self.sampler = PromptSampler(
            len(self.train_prompts), seed=cfg.optim.seed, shuffle=cfg.data.shuffle
        )
        self.step = 0
        self.last_updates: list[dict[str, float]] = []
        self.consecutive_nonfinite = 0
        self.nonfinite_steps = 0
        self.output_dir = Path(cfg.logging.output_dir)
        resume_from = ckpt.resolve_resume(cfg.checkpoint.resume, self.output_dir)
        if resume_from is not None:
            self.load(resume_from)

    # ------------------------------------------------------------------ setup checks

    def _configure_deepspeed(self) -> None:
        acc = self.accelerator
        if acc.distributed_type != DistributedType.DEEPSPEED:
            return
        ds = acc.state.deepspeed_plugin.deepspeed_config
        if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            ds["train_micro_batch_size_per_gpu"] = self.config.optim.micro_batch_size
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = self.config.optim.max_grad_norm or 0.0

    def _reuse_rollout_logprobs(self, policy: nn.Module) -> bool:
        cfg = self.config
        mode = cfg.algorithm.old_logprobs
        if mode == "recompute":
            return False
        loop = cfg.rollout.backend == "hf" and cfg.rollout.sampler == "loop"
        if mode == "rollout":
            if cfg.rollout.backend == "hf" and not loop:
                raise ValueError(
                    "algorithm.old_logprobs=rollout needs log-probs from the sampler: use "
                    "rollout.sampler=loop (transformers' generate returns none)"
                )
            return True
        # auto: the sampler's numbers equal a fresh forward pass only in float32 and without
        # truncation (bf16 kernels differ between cached decoding and a full pass).
        dtypes = {p.dtype for p in policy.parameters()}
        return (
            loop
            and dtypes == {torch.float32}
            and cfg.rollout.top_k == 0
            and cfg.rollout.top_p == 1.0
        )

    def _prompts(self, dataset: Dataset | None, path: str | None, key: str) -> PromptSet:
        cfg = self.config.data
        if dataset is None:
            assert path is not None
            dataset = load_prompt_dataset(path, cfg.prompt_column, cfg.answer_column)
            where = path
        else:
            missing = [
                c for c in (cfg.prompt_column, cfg.answer_column) if c not in dataset.column_names
            ]
            if missing:
                raise ValueError(
                    f"{key}: dataset lacks column(s) {missing}; it has {dataset.column_names}"
                )
            if len(dataset) == 0:
                raise ValueError(f"{key}: the dataset is empty")
            where = f"{key} dataset"
        prompts = tokenize_prompts(
            dataset,
            self.tokenizer,
            prompt_column=cfg.prompt_column,
            chat_template=cfg.chat_template,
            system_prompt=cfg.system_prompt,
            max_prompt_length=cfg.max_prompt_length,
            overlong=cfg.overlong_prompts,
            where=where,
        )
        if cfg.answer_column != "answer" and "answer" not in prompts.columns:
            # Built-in rewards read the "answer" column; alias the configured one.
            prompts.columns["answer"] = prompts.columns[cfg.answer_column]
        return prompts

    def _check_context(self, model: nn.Module) -> None:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        need = max(len(p) for p in self.train_prompts.prompt_ids) + (
            self.config.rollout.max_new_tokens
        )
        if isinstance(limit, int) and need > limit:
            raise ValueError(
                f"the longest prompt plus rollout.max_new_tokens is {need} tokens, more than the "
                f"model's context of {limit} (max_position_embeddings): lower "
                f"data.max_prompt_length or rollout.max_new_tokens"
            )

    # ------------------------------------------------------------------ collectives

    def _sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return t.tolist()

    def _gather(self, t: Tensor) -> Tensor:
        t = t.to(self.accelerator.device)
        return self.accelerator.gather(t) if self.accelerator.num_processes > 1 else t

    # ------------------------------------------------------------------ rollout

    def _sampling(self) -> SamplingParams:
        r = self.config.rollout
        return SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k)

    def _local_prompts(self) -> list[int]:
        acc = self.accelerator
        batch = self.sampler.next_batch(self.config.rollout.prompts_per_step)
        per = len(batch) // acc.num_processes
        return batch[acc.process_index * per : (acc.process_index + 1) * per]

    def _build_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        advantages: Tensor,
    ) -> RolloutBatch:
        device = self.accelerator.device
        pad = int(self.tokenizer.pad_token_id)
        prompts, prompt_mask = left_pad(prompt_ids, pad)  # (N, P)
        length = max(1, max(len(c) for c in completion_ids))
        completions = torch.full((len(completion_ids), length), pad, dtype=torch.long)
        completion_mask = torch.zeros((len(completion_ids), length), dtype=torch.long)
        for i, c in enumerate(completion_ids):
            completions[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
            completion_mask[i, : len(c)] = 1
        return RolloutBatch(
            input_ids=torch.cat([prompts, completions], dim=1).to(device),
            attention_mask=torch.cat([prompt_mask, completion_mask], dim=1).to(device),
            completion_ids=completions.to(device),
            completion_mask=completion_mask.to(device, torch.float32),
            advantages=advantages.to(device, torch.float32),
        )

    @torch.no_grad()
    def _score(self, model: nn.Module, batch: RolloutBatch) -> Tensor:
        """Returns (N, T) log-probs of the batch's completions under ``model`` (no gradient)."""
        out = []
        size = self.config.optim.micro_batch_size
        length = batch.completion_ids.shape[1]
        for start in range(0, len(batch), size):
            part = slice(start, start + size)
            logits = completion_logits(
                model, batch.input_ids[part], batch.attention_mask[part], length
            )
            logprobs, _ = token_logprobs_and_entropy(
                logits,
                batch.completion_ids[part],
                temperature=self.config.rollout.temperature,
                with_entropy=False,
            )
            out.append(logprobs)
        return torch.cat(out, dim=0)

    def rollout(self) -> tuple[RolloutBatch | None, dict[str, float], list[tuple[str, str]]]:
        """Returns this process's prepared batch (None when every group was filtered out), the
        rollout metrics and a few (prompt, completion) examples."""
        cfg = self.config
        acc = self.accelerator
        positions = self._local_prompts()
        prompt_ids, prompt_texts, columns = self.train_prompts.select(positions)
        start = time.perf_counter()
        out = self.backend.generate(prompt_ids, cfg.rollout.group_size, self._sampling())
        generate_s = time.perf_counter() - start
        index = out.prompt_index
        completions = self.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        sample_prompts = [prompt_texts[p] for p in index]
        sample_columns = {name: [values[p] for p in index] for name, values in columns.items()}
        rewards = compute_rewards(self.reward_specs, sample_prompts, completions, sample_columns)

        # Group statistics over all processes, by prompt identity (the dataset row).
        rows = torch.tensor([self.train_prompts.rows[positions[p]] for p in index])
        all_rewards = self._gather(rewards.total.float())
        all_rows = self._gather(rows.long())
        all_valid = self._gather(rewards.valid.to(torch.long)).bool()
        advantages = compute_advantages(
            cfg.algorithm.advantage,
            all_rewards,
            all_rows,
            all_valid,
            **cfg.algorithm.advantage_params,
        )
        zero_std = zero_variance_mask(all_rewards, all_rows, all_valid)
        mine = slice(acc.process_index * len(index), (acc.process_index + 1) * len(index))
        keep = all_valid[mine].clone()
        if cfg.algorithm.filter_zero_std:
            keep &= ~zero_std[mine]
        kept = keep.nonzero().flatten().tolist()

        metrics = self._rollout_metrics(rewards, all_rewards, all_rows, all_valid, out)
        metrics["time/generate_s"] = generate_s
        metrics["samples_used_frac"] = self._sum([len(kept)])[0] / all_rewards.numel()
        examples = list(zip(sample_prompts[:2], completions[:2], strict=True))
        if self._sum([len(kept)])[0] == 0:
            return None, metrics, examples

        rollout_logprobs = out.logprobs if self.reuse_rollout_logprobs else None
        if self.reuse_rollout_logprobs and rollout_logprobs is None:
            raise ValueError(
                f"rollout backend {cfg.rollout.backend!r} returned no log-probs; set "
                f"algorithm.old_logprobs=recompute"
            )
        chosen = kept or [0]  # collectives need every process: one masked sample if none left
        batch = self.prepare_batch(
            [prompt_ids[index[i]] for i in chosen],
            [out.completion_ids[i] for i in chosen],
            advantages[mine][chosen] if kept else torch.zeros(1),
            masked=not kept,
            old_logprobs=None
            if rollout_logprobs is None
            else [rollout_logprobs[i] for i in chosen],
        )
        return batch, metrics, examples

    def prepare_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        advantages: Tensor,
        *,
        masked: bool = False,
        old_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> RolloutBatch:
        """Returns a RolloutBatch with old (and reference) log-probs and the rule's bounds.

        Both are computed here once, without gradient, from the current weights, which are the
        weights that sampled the completions; every mini-batch update then reuses them.
        ``masked`` zeroes the completion mask (a placeholder that contributes nothing).
        ``old_logprobs`` (one value per completion token, from the sampler) replaces the forward
        pass that would otherwise compute them.
        """
        batch = self._build_batch(prompt_ids, completion_ids, advantages)
        if masked:
            batch.completion_mask.zero_()
        if old_logprobs is None:
            batch.old_logprobs = self._score(self.model, batch)
        else:
            old = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
            for i, values in enumerate(old_logprobs):
                old[i, : len(values)] = torch.as_tensor(values, dtype=torch.float32)
            batch.old_logprobs = old.to(batch.completion_ids.device)
        if self.config.algorithm.kl_coef > 0:
            if self.reference is not None:
                batch.ref_logprobs = self._score(self.reference, batch)
            else:
                with adapters_disabled(self.accelerator.unwrap_model(self.model)):
                    batch.ref_logprobs = self._score(self.model, batch)
        # Padded positions get log-prob 0 (p = 1): a valid input for every rule, never used.
        safe_old = batch.old_logprobs.masked_fill(batch.completion_mask == 0, 0.0)
        batch.lower, batch.upper = (b.detach() for b in self.rule.bounds(safe_old))
        return batch

    def _rollout_metrics(
        self, rewards: Any, all_rewards: Tensor, all_rows: Tensor, all_valid: Tensor, out: Any
    ) -> dict[str, float]:
        eos = self.tokenizer.eos_token_id
        lengths = [len(c) for c in out.completion_ids]
        truncated = [1.0 if not c or c[-1] != eos else 0.0 for c in out.completion_ids]
        local = rewards.metrics()
        n_valid = float(rewards.valid.sum())
        sums = self._sum(
            [
                sum(lengths),
                float(len(lengths)),
                sum(truncated),
                float(max(lengths, default=0)),
                float(len(rewards.failures)),
                *[
                    local[k] * n_valid if n_valid else 0.0
                    for k in sorted(local)
                    if k.startswith("reward/")
                    and k not in ("reward/total_std", "reward/failed_frac")
                ],
                n_valid,
            ]
        )
        count = sums[1]
        keys = sorted(
            k
            for k in local
            if k.startswith("reward/") and k not in ("reward/total_std", "reward/failed_frac")
        )
        metrics: dict[str, float] = {
            "response_length/mean": sums[0] / count,
            "response_length/truncated_frac": sums[2] / count,
            "reward/failures": sums[4],
        }
        valid_total = max(sums[-1], 1.0)
        for i, key in enumerate(keys):
            metrics[key] = sums[5 + i] / valid_total
        valid_rewards = all_rewards[all_valid]
        metrics["reward/total"] = float(valid_rewards.mean()) if len(valid_rewards) else math.nan
        metrics["reward/total_std"] = float(valid_rewards.std()) if len(valid_rewards) > 1 else 0.0
        metrics["reward/failed_frac"] = 1.0 - float(all_valid.float().mean())
        for key, value in group_statistics(all_rewards, all_rows, all_valid).items():
            metrics[f"groups/{key}"] = float(value)
        return metrics

    # ------------------------------------------------------------------ update

    def _normalizer(self, batch: RolloutBatch) -> float:
        mask = batch.completion_mask
        tokens, sequences = self._sum([float(mask.sum()), float((mask.sum(-1) > 0).sum())])
        return tokens if self.config.algorithm.aggregation == "token-mean" else sequences

    def _micro_batches(self, batch: RolloutBatch) -> list[RolloutBatch]:
        size = self.config.optim.micro_batch_size
        parts = [
            batch.select(torch.arange(s, min(s + size, len(batch)), device=batch.input_ids.device))
            for s in range(0, len(batch), size)
        ]
        if len(parts) > self.accumulation_steps:
            raise RuntimeError(
                f"internal: {len(parts)} micro-batches > accumulation steps "
                f"{self.accumulation_steps}"
            )
        while len(parts) < self.accumulation_steps:
            # Same count on every process (collectives); a masked copy contributes nothing.
            dummy = batch.select(torch.zeros(1, dtype=torch.long, device=batch.input_ids.device))
            dummy.completion_mask = torch.zeros_like(dummy.completion_mask)
            parts.append(dummy)
        return parts

    def _micro_loss(
        self, micro: RolloutBatch, normalizer: float
    ) -> tuple[Tensor, dict[str, float], float]:
        cfg = self.config.algorithm
        logits = completion_logits(
            self.model, micro.input_ids, micro.attention_mask, micro.completion_ids.shape[1]
        )
        need_entropy_grad = cfg.entropy_coef != 0
        logprobs, entropy = token_logprobs_and_entropy(
            logits,
            micro.completion_ids,
            temperature=self.config.rollout.temperature,
            with_entropy=need_entropy_grad,
        )
        if entropy is None:
            with torch.no_grad():
                _, entropy = token_logprobs_and_entropy(
                    logits.detach(),
                    micro.completion_ids,
                    temperature=self.config.rollout.temperature,
                )
        assert entropy is not None and micro.old_logprobs is not None
        assert micro.lower is not None and micro.upper is not None
        mask = micro.completion_mask
        horizon = cfg.loss_horizon or self.config.rollout.max_new_tokens
        loss, pg_metrics = band_ops.policy_loss(
            logprobs,
            micro.old_logprobs,
            micro.advantages,
            mask,
            rule=self.rule,
            aggregation=cfg.aggregation,
            dual_clip=cfg.dual_clip,
            bounds=(micro.lower, micro.upper),
            normalizer=normalizer,
            horizon=horizon,
        )
        tokens = float(mask.sum())
        metrics = {f"{k}": float(v) for k, v in pg_metrics.items()}
        metrics["pg_loss"] = float(loss.detach())
        if cfg.kl_coef > 0:
            assert micro.ref_logprobs is not None
            kl = kl_penalty(logprobs, micro.ref_logprobs, cfg.kl_estimator)
            kl_term = band_ops.aggregate(
                kl, mask, cfg.aggregation, normalizer=normalizer, horizon=horizon
            )
            loss = loss + cfg.kl_coef * kl_term
            metrics["kl_ref"] = float((kl.detach() * mask).sum() / max(tokens, 1.0))
        entropy_mean = float((entropy.detach() * mask).sum() / max(tokens, 1.0))
        metrics["entropy"] = entropy_mean
        if cfg.entropy_coef != 0:
            entropy_term = band_ops.aggregate(
                entropy, mask, cfg.aggregation, normalizer=normalizer, horizon=horizon
            )
            loss = loss - cfg.entropy_coef * entropy_term
        return loss, metrics, tokens

    def _update(self, batch: RolloutBatch) -> dict[str, float]:
        """One optimiser step on a mini-batch; returns its token-weighted metrics."""
        acc = self.accelerator
        normalizer = self._normalizer(batch)
        if normalizer == 0:
            return {}
        # The loss of each micro-batch is its share of the global aggregate; accelerate divides
        # by the accumulation steps and data parallelism averages over processes, so scale back.
        scale = acc.num_processes * self.accumulation_steps
        sums: dict[str, float] = {}
        total_tokens = 0.0
        loss_sum = 0.0
        nonfinite = 0.0
        for micro in self._micro_batches(batch):
            with acc.accumulate(self.model):
                loss, metrics, tokens = self._micro_loss(micro, normalizer)
                if not torch.isfinite(loss.detach()):
                    nonfinite = 1.0
                acc.backward(loss * scale)
                loss_sum += float(loss.detach())
                if tokens:
                    total_tokens += tokens
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + value * tokens
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.optim.max_grad_norm
        grad_norm = acc.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        grad_norm_value = float(grad_norm) if grad_norm is not None else math.nan
        flags = self._sum(
            [nonfinite, 0.0 if math.isfinite(grad_norm_value) or grad_norm is None else 1.0]
        )
        if flags[0] or flags[1]:
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_nonfinite += 1
            self.nonfinite_steps += 1
            logger.warning(
                "step %d: non-finite loss or gradient, update skipped (%d in a row)",
                self.step + 1,
                self.consecutive_nonfinite,
            )
            if self.consecutive_nonfinite >= self.config.optim.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self.consecutive_nonfinite} consecutive updates had a non-finite loss or "
                    f"gradient (optim.max_nonfinite_steps={self.config.optim.max_nonfinite_steps});"
                    f" lower optim.lr, check the rewards, or use float32"
                )
            return {"nonfinite": 1.0}
        self.consecutive_nonfinite = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.backend.sync_weights()
        totals = self._sum([total_tokens, *sums.values()])
        out = {k: v / max(totals[0], 1.0) for k, v in zip(sums, totals[1:], strict=True)}
        out["loss"] = self._sum([loss_sum])[0]
        out["grad_norm"] = grad_norm_value
        return out

    def update(self, batch: RolloutBatch, max_updates: int | None = None) -> dict[str, float]:
        """Runs ``ppo_epochs`` x ``mini_batches`` optimiser steps on ``batch`` (at most
        ``max_updates`` of them); returns their means.

        Each optimiser step's own metrics are kept in ``self.last_updates`` (one dict per step,
        in order), for callers that log per optimiser step.
        """
        cfg = self.config.algorithm
        collected: dict[str, list[float]] = {}
        self.last_updates = []
        budget = cfg.ppo_epochs * cfg.mini_batches if max_updates is None else max_updates
        generator = torch.Generator().manual_seed(
            self.config.optim.seed * 1_000_003 + self.step * 101 + self.accelerator.process_index
        )
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(batch), generator=generator).to(batch.input_ids.device)
            for chunk in torch.tensor_split(order, cfg.mini_batches):
                mini = batch.select(chunk) if len(chunk) else batch.select(order[:1])
                if not len(chunk):
                    mini.completion_mask = torch.zeros_like(mini.completion_mask)
                if len(self.last_updates) >= budget:
                    break
                result = self._update(mini)
                self.last_updates.append(result)
                for key, value in result.items():
                    collected.setdefault(key, []).append(value)
        out = {k: sum(v) / len(v) for k, v in collected.items() if k != "nonfinite"}
        out["nonfinite_updates"] = float(sum(collected.get("nonfinite", [])))
        return out

    # ------------------------------------------------------------------ the loop

    def train_step(self, max_updates: int | None = None) -> dict[str, float]:
        """Runs one RL step (rollout + updates, at most ``max_updates`` optimiser steps);
        returns its metrics (the same on every process)."""
        start = time.perf_counter()
        self.last_updates = []
        batch, metrics, examples = self.rollout()
        rollout_s = time.perf_counter() - start
        if batch is None:
            metrics["skipped"] = 1.0
            logger.warning(
                "step %d: every group had zero reward variance; update skipped", self.step + 1
            )
        else:
            update_start = time.perf_counter()
            metrics.update(self.update(batch, max_updates))
            metrics["time/update_s"] = time.perf_counter() - update_start
            tokens = self._sum([float(batch.attention_mask.sum())])[0]
            metrics["tokens_per_s"] = (
                tokens * self.config.algorithm.ppo_epochs / (time.perf_counter() - start)
            )
        metrics["time/rollout_s"] = rollout_s
        metrics["time/step_s"] = time.perf_counter() - start
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["nonfinite_steps_total"] = float(self.nonfinite_steps)
        self.step += 1
        self._examples = examples
        return metrics

    def train(self) -> dict[str, float]:
        """Runs until ``optim.steps``; returns the last step's metrics (plus final evaluation)."""
        cfg = self.config
        acc = self.accelerator
        tracker = None
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config_io.dump_yaml(cfg, self.output_dir / "config.yaml")
            tracker = MetricsTracker(
                self.output_dir,
                total_steps=cfg.optim.steps,
                start_step=self.step,
                progress_bar=cfg.logging.progress_bar,
                tensorboard=cfg.logging.tensorboard,
            )
        metrics: dict[str, float] = {}
        try:
            while self.step < cfg.optim.steps:
                metrics = self.train_step()
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.eval_prompts:
                    metrics.update(self.evaluate())
                if tracker is not None:
                    if self.step % cfg.logging.log_every == 0 or self.step == cfg.optim.steps:
                        tracker.log(self.step, metrics)
                        for prompt, completion in self._examples[: cfg.logging.print_samples]:
                            tracker.write(f"[step {self.step}] {prompt!r} -> {completion!r}")
                    tracker.advance()
                if cfg.checkpoint.save_every and self.step % cfg.checkpoint.save_every == 0:
                    self.save()
            if self.eval_prompts and not (cfg.eval.every and self.step % cfg.eval.every == 0):
                final_eval = self.evaluate()
                metrics.update(final_eval)
                if tracker is not None:
                    tracker.log(self.step, {"final": 1.0, **final_eval})
            if cfg.checkpoint.save_final and not (
                cfg.checkpoint.save_every and self.step % cfg.checkpoint.save_every == 0
            ):
                self.save()
            self.save_model(self.output_dir / "final")
        finally:
            if tracker is not None:
                tracker.close()
        return metrics

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, prompts: PromptSet | None = None) -> dict[str, float]:
        """Returns held-out metrics (``rl_trainer.evaluation.evaluate``) on ``prompts`` or the
        configured evaluation set."""
        prompts = prompts or self.eval_prompts
        if prompts is None:
            raise ValueError("no evaluation prompts: set data.eval_path")
        return evaluate(self, prompts)

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
        """Writes a full-state checkpoint of the current step (every process must call it)."""
        return ckpt.save_checkpoint(
            self.accelerator,
            self.model,
            self.output_dir,
            self.step,
            self.state_dict(),
            keep_last=self.config.checkpoint.keep_last,
            save_adapter=self.uses_lora,
        )

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


__all__ = ["GRPOTrainer", "NonFiniteLossError", "RewardSpec", "RolloutBatch"]
