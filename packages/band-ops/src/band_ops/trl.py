"""band_ops.trl: Band and the other band-ops clipping rules inside TRL's ``GRPOTrainer``.

``BandGRPOTrainer`` is TRL's ``GRPOTrainer`` with one method replaced: ``_compute_loss``, the
policy loss of one micro-batch. The clipped surrogate comes from ``band_ops.policy_loss`` with a
band-ops rule (per-token bounds from the old log-probs); everything around it keeps TRL's meaning:
the ``loss_type`` aggregations, the KL penalty against the reference model, the tool / entropy /
off-policy masks, the vLLM importance-sampling weights, the static entropy bonus, the MoE aux loss
and TRL's logged metrics. band-ops' own metrics are logged under ``band_ops/``.

Requires the extra: ``pip install band-ops[trl]``. Written against TRL 1.16.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor

from band_ops.aggregation import aggregate
from band_ops.loss import COUNT_METRICS, policy_loss
from band_ops.rules import ClippingRule, get_rule, resolve_rule

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # trl missing, or an installed trl that cannot be imported
    raise ImportError(
        f"band_ops.trl needs TRL; install it with `pip install band-ops[trl]` (import trl: {exc})"
    ) from exc

__all__ = [
    "LOSS_TYPE_AGGREGATIONS",
    "BandGRPOTrainer",
    "UnsupportedGRPOOptionError",
    "check_grpo_config",
    "rule_from_config",
]

# TRL loss_type -> band-ops aggregation. The divisors are set in BandGRPOTrainer._aggregation
# so that each one equals TRL's own: grpo divides by the number of completions (empty ones
# included), dr_grpo by completions x max_completion_length (band-ops' horizon), bnpo by the local
# token count, dapo by the global token count.
LOSS_TYPE_AGGREGATIONS: dict[str, str] = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
}

# Why the other loss types cannot take a band-ops rule.
_REFUSED_LOSS_TYPES: dict[str, str] = {
    "cispo": "it clips the importance weight (times log-prob), not the ratio of a PPO surrogate",
    "sapo": "it replaces clipping with a soft sigmoid gate",
    "vespo": "it replaces clipping with sequence-level Gamma weights",
    "luspo": "it is a sequence-level loss (importance_sampling_level='sequence')",
}

# Multimodal and token-type inputs that TRL passes from the batch to its log-prob forward.
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class UnsupportedGRPOOptionError(ValueError):
    """A ``GRPOConfig`` option that ``BandGRPOTrainer`` cannot honour with a band-ops rule."""


def check_grpo_config(args: GRPOConfig) -> None:
    """Returns None if ``BandGRPOTrainer`` supports ``args``; raises UnsupportedGRPOOptionError."""
    loss_type = args.loss_type
    if loss_type not in LOSS_TYPE_AGGREGATIONS:
        why = _REFUSED_LOSS_TYPES.get(loss_type, "it is not a TRL loss type BandGRPOTrainer knows")
        raise UnsupportedGRPOOptionError(
            f"loss_type={loss_type!r} is not supported by BandGRPOTrainer ({why}); "
            f"supported: {', '.join(LOSS_TYPE_AGGREGATIONS)}"
        )
    level = args.importance_sampling_level
    if level != "token":
        raise UnsupportedGRPOOptionError(
            f"importance_sampling_level={level!r} is not supported by BandGRPOTrainer: band-ops "
            "bounds are per token (they depend on each token's old probability); use 'token'"
        )
    if getattr(args, "use_adaptive_entropy", False):
        raise UnsupportedGRPOOptionError(
            "use_adaptive_entropy=True is not supported by BandGRPOTrainer; a constant "
            "entropy_coef is"
        )
    if loss_type == "dr_grpo" and args.max_completion_length is None:
        raise UnsupportedGRPOOptionError(
            "loss_type='dr_grpo' divides by max_completion_length, which is None; set it"
        )
    delta = args.delta
    if delta is not None and not (math.isfinite(delta) and delta > 1):
        raise UnsupportedGRPOOptionError(
            f"delta={delta!r}: BandGRPOTrainer uses it as band-ops' dual_clip, which must be > 1"
        )


def rule_from_config(
    rule: str | ClippingRule, rule_kwargs: Mapping[str, Any] | None, args: GRPOConfig
) -> ClippingRule:
    """Returns the clipping rule: ``rule`` built with ``rule_kwargs``, defaults from ``args``.

    ``ppo`` takes ``eps`` from ``args.epsilon`` and ``clip_higher`` takes ``eps_low`` from
    ``args.epsilon`` and ``eps_high`` from ``args.epsilon_high`` (when set), unless
    ``rule_kwargs`` names them. Other rules ignore TRL's epsilons.
    """
    if not isinstance(rule, str):
        if rule_kwargs:
            raise ValueError(
                f"rule_kwargs={dict(rule_kwargs)!r} needs a rule name, got the rule object {rule!r}"
            )
        return resolve_rule(rule)
    params = dict(rule_kwargs or {})
    if rule == "ppo" and "eps" not in params:
        high = args.epsilon_high
        if high is not None and high != args.epsilon:
            raise UnsupportedGRPOOptionError(
                f"rule='ppo' clips symmetrically but epsilon={args.epsilon!r} and "
                f"epsilon_high={high!r} differ; use rule='clip_higher' or pass rule_kwargs"
            )
        params["eps"] = args.epsilon
    elif rule == "clip_higher":
        params.setdefault("eps_low", args.epsilon)
        if args.epsilon_high is not None:
            params.setdefault("eps_high", args.epsilon_high)
    return get_rule(rule, **params)


class BandGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer whose clipped surrogate uses a band-ops rule (default: Band, KL, 0.05).

    Args:
        rule: a registered rule name (``band_ops.available_rules()``) or a rule object.
        rule_kwargs: parameters of the named rule, e.g. ``{"delta": 0.1}`` for ``band``.
        *args, **kwargs: those of ``trl.GRPOTrainer`` (model, reward_funcs, args, ...).

    The attribute ``rule`` holds the rule in use. Options of ``GRPOConfig`` that cannot apply
    raise ``UnsupportedGRPOOptionError`` before the model is loaded (see ``check_grpo_config``).
    """

    def __init__(
        self,
        *args: Any,
        rule: str | ClippingRule = "band",
        rule_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if config is not None:  # else TRL builds its default config, which is supported
            check_grpo_config(config)
            self.rule = rule_from_config(rule, rule_kwargs, config)
        super().__init__(*args, **kwargs)
        if config is None:
            check_grpo_config(self._grpo_args)
            self.rule = rule_from_config(rule, rule_kwargs, self._grpo_args)
        accepted = inspect.signature(self._get_per_token_logps_and_entropies).parameters
        self._band_forward_keys = tuple(k for k in _FORWARD_KEYS if k in accepted)

    @property
    def _grpo_args(self) -> GRPOConfig:
        """Returns ``self.args``, which GRPOTrainer always holds as a GRPOConfig."""
        return cast(GRPOConfig, self.args)

    def _aggregation(
        self, inputs: Mapping[str, Any], batch_size: int, training: bool
    ) -> tuple[str, Tensor | float | None, int | None, bool]:
        """Returns (band-ops aggregation, normalizer, horizon, whether to divide by the gradient
        accumulation steps) for TRL's ``loss_type``."""
        loss_type = self._grpo_args.loss_type
        mode = LOSS_TYPE_AGGREGATIONS[loss_type]
        if loss_type == "dapo":
            # num_items_in_batch counts the tokens of the whole generation batch on all processes:
            # scaled down to this process and this accumulation window, it is the global count.
            count = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if training:
                count = count * self.current_gradient_accumulation_steps
                count = count / self._grpo_args.steps_per_generation
            return mode, count, None, False
        if loss_type == "bnpo":
            return mode, None, None, True
        if loss_type == "dr_grpo":
            # band-ops' seq-mean-token-sum-norm is verl's (token sum / horizon); TRL's dr_grpo
            # also divides by the micro-batch's completions, so they go into the horizon.
            length = self.max_completion_length
            assert length is not None  # check_grpo_config refuses dr_grpo without it
            return mode, None, batch_size * length, True
        return mode, float(batch_size), None, True

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Tensor:
        """Returns this micro-batch's loss: the band-ops clipped surrogate aggregated as TRL's
        ``loss_type``, plus TRL's KL, entropy-bonus and aux terms; logs TRL's and band-ops'
        metrics."""
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        completion_mask = inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = (
            completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        )
        aux_enabled = bool(getattr(self, "aux_loss_enabled", False))
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),  # logits_to_keep: only completion tokens are scored
            compute_entropy=True,
            compute_aux_loss=aux_enabled,
            **{k: inputs.get(k) for k in self._band_forward_keys},
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)  # (B, 1); subclasses may give (B, T)
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is None:  # TRL skips it when the update is on-policy (ratio exactly 1)
            old_logps = logps.detach()

        # TRL multiplies the per-token policy loss by non-negative weights (entropy mask,
        # off-policy mask, vLLM importance ratio). The clipped surrogate is positively homogeneous
        # in the advantage, so the weights go into the advantages and the aggregation keeps
        # TRL's mask and divisors.
        weights: Tensor | None = None
        entropy_mask: Tensor | None = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(
                entropies, mask, 1 - self.top_entropy_quantile
            )
            weights = entropy_mask.to(logps.dtype)
        if self.off_policy_mask_threshold is not None:
            off_policy_mask = self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_logps),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
            weights = off_policy_mask if weights is None else weights * off_policy_mask
        if self.use_vllm and self.vllm_importance_sampling_correction:
            ratio_is = inputs["importance_sampling_ratio"]
            weights = ratio_is if weights is None else weights * ratio_is
        weighted = advantages if weights is None else advantages * weights
        weighted = weighted.expand_as(logps)

        training = self.model is not None and self.model.training
        mode = "train" if training else "eval"
        aggregation, normalizer, horizon, per_step = self._aggregation(
            inputs, logps.size(0), training
        )
        # TRL turns off Trainer's scaling for gradient accumulation: each loss term divides itself.
        accumulation = float(self.current_gradient_accumulation_steps) if training else 1.0
        # Padding positions hold whatever the forward gave them, and a float rounding can leave a
        # log-prob a hair above 0: neither may reach the rule (Band rejects log-probs > 0).
        safe_old = torch.where(mask.bool(), old_logps.clamp(max=0.0), 0.0)
        lower, upper = self.rule.bounds(safe_old)
        loss, band_metrics = policy_loss(
            logps,
            old_logps,
            weighted,
            mask,
            rule=self.rule,
            aggregation=aggregation,
            dual_clip=self._grpo_args.delta,
            bounds=(lower, upper),
            normalizer=normalizer,
            horizon=horizon,
        )
        per_token_kl: Tensor | None = None
        if self.beta != 0.0:
            ref_logps = inputs["ref_per_token_logps"]
            # k3 estimator of KL(pi || ref), >= 0 per token
            per_token_kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
            if self._grpo_args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(logps - old_logps)
            kl_term = aggregate(
                per_token_kl, mask, aggregation, normalizer=normalizer, horizon=horizon
            )
            loss = loss + self.beta * kl_term
        unscaled_loss = loss.detach()
        if per_step:
            loss = loss / accumulation

        if self.entropy_coef != 0.0:
            # The bonus is the mean entropy of the tokens the policy term acts on, scaled only for
            # gradient accumulation (TRL's definition, the same for every loss_type).
            acting = mask if entropy_mask is None else mask * entropy_mask
            mean_entropy = (entropies * acting).sum() / acting.sum().clamp(min=1.0)
            loss = loss - self.entropy_coef * mean_entropy / accumulation
            gathered = self.accelerator.gather(unscaled_loss)
            self._metrics[mode]["policy_loss"].append(gathered.nanmean().item())
            if training and self.accelerator.sync_gradients:  # once per optimizer step
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        if aux_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            gathered_aux = self.accelerator.gather_for_metrics(aux_loss)
            self._metrics[mode]["aux_loss"].append(gathered_aux.mean().item())

        self._log_loss_metrics(mode, mask, logps, old_logps, advantages, lower, upper, entropies)
        if per_token_kl is not None:
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))
        self._log_band_metrics(mode, band_metrics)
        return loss

    @torch.no_grad()
    def _global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        """Returns the mean of ``x`` over the masked tokens of all processes."""
        local = torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]).float()
        total = self.accelerator.reduce(local, reduction="sum")
        return float(total[0] / total[1].clamp(min=1.0))

    @torch.no_grad()
    def _log_loss_metrics(
        self,
        mode: str,
        mask: Tensor,
        logps: Tensor,
        old_logps: Tensor,
        advantages: Tensor,
        lower: Tensor,
        upper: Tensor,
        entropies: Tensor,
    ) -> None:
        """Appends TRL's ``entropy`` and ``clip_ratio/*`` metrics, with the rule's bounds."""
        metrics = self._metrics[mode]
        metrics["entropy"].append(self._global_masked_mean(entropies, mask))
        ratio = torch.exp(logps.detach() - old_logps)
        low = ((ratio < lower) & (advantages < 0)).float()
        high = ((ratio > upper) & (advantages > 0)).float()
        metrics["clip_ratio/low_mean"].append(self._global_masked_mean(low, mask))
        metrics["clip_ratio/high_mean"].append(self._global_masked_mean(high, mask))
        metrics["clip_ratio/region_mean"].append(self._global_masked_mean(low + high, mask))
        per_seq_tokens = mask.sum(-1)  # an empty completion gives NaN, skipped below
        low_seq = self.accelerator.gather((low * mask).sum(-1) / per_seq_tokens)
        high_seq = self.accelerator.gather((high * mask).sum(-1) / per_seq_tokens)
        metrics["clip_ratio/low_min"].append(_nan_reduce(low_seq, torch.min))
        metrics["clip_ratio/high_max"].append(_nan_reduce(high_seq, torch.max))

    @torch.no_grad()
    def _log_band_metrics(self, mode: str, band_metrics: Mapping[str, Tensor]) -> None:
        """Appends band-ops' metrics as ``band_ops/<name>``: mean over processes (max / min for
        ``ratio_max`` / ``ratio_min``, the sum for the counts of ``COUNT_METRICS``)."""
        names = list(band_metrics)
        local = torch.stack([band_metrics[n].float().reshape(()) for n in names])
        gathered = self.accelerator.gather(local).reshape(-1, len(names))  # (processes, metrics)
        for i, name in enumerate(names):
            column = gathered[:, i]
            if name == "ratio_max":
                value = _nan_reduce(column, torch.max)
            elif name == "ratio_min":
                value = _nan_reduce(column, torch.min)
            elif name in COUNT_METRICS:
                value = float(column.sum())
            else:
                value = float(column.nanmean())
            self._metrics[mode][f"band_ops/{name}"].append(value)


def _nan_reduce(x: Tensor, reduce: Any) -> float:
    """Returns ``reduce`` over the non-NaN entries of ``x``, NaN if there are none."""
    x = x[~torch.isnan(x)]
    return float(reduce(x)) if x.numel() else math.nan
