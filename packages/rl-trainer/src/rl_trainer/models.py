"""Loading the policy (and its reference): any AutoModelForCausalLM, optional PEFT LoRA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from rl_trainer.config import LoraConfig, ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Returns the torch dtype for ``name``; "auto" is bfloat16 on a CUDA device that supports
    it and float32 elsewhere (CPU training in half precision is slow and lossy)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: auto, {', '.join(_DTYPES)}") from None


def _check_local(path: str) -> None:
    local = Path(path)
    looks_local = path.startswith((".", "/", "~")) or local.exists()
    if looks_local and not (local.expanduser() / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path {path!r} is not a model directory (no config.json there); give a "
            f"directory saved with save_pretrained, or a hub id when the hub is reachable"
        )


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """Returns the model's tokenizer, left-padding, with a pad token (EOS when it had none)."""
    _check_local(config.path)
    tokenizer = AutoTokenizer.from_pretrained(
        config.path, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(config: ModelConfig, device: torch.device) -> nn.Module:
    """Returns the trainable policy: the causal LM, with LoRA adapters when enabled."""
    _check_local(config.path)
    kwargs: dict[str, object] = {
        "dtype": resolve_dtype(config.dtype, device),
        "trust_remote_code": config.trust_remote_code,
    }
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    model: Any = AutoModelForCausalLM.from_pretrained(config.path, **kwargs)
    if config.gradient_checkpointing:
        # transformers 5.x renamed gradient checkpointing to activation checkpointing.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.config.use_cache = False
    if config.lora.enabled:
        model = apply_lora(model, config.lora)
        if config.gradient_checkpointing:
            # Frozen embeddings would give checkpointed blocks inputs without grad.
            model.enable_input_require_grads()
    return model


def load_reference(config: ModelConfig, device: torch.device) -> nn.Module:
    """Returns a frozen copy of the initial policy (only needed without LoRA)."""
    kwargs: dict[str, object] = {
        "dtype": resolve_dtype(config.dtype, device),
        "trust_remote_code": config.trust_remote_code,
    }
    if config.attn_implementation:  # as the policy, so both compute the same function
        kwargs["attn_implementation"] = config.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(config.path, **kwargs)
    model.requires_grad_(False)
    model.eval()
    return model


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Returns ``model`` wrapped with PEFT LoRA adapters; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: str | list[str] = (
        "all-linear" if config.target_modules == ["all-linear"] else list(config.target_modules)
    )
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"model.lora.target_modules={config.target_modules}: {err}. Linear layers of this "
            f"model: {names}"
        ) from None


def is_peft_model(model: nn.Module) -> bool:
    """Returns True for a PEFT-wrapped model (it can disable its adapters)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Within the block the PEFT model computes with its base weights (the reference policy)."""
    with model.disable_adapter():  # type: ignore[operator]
        yield
