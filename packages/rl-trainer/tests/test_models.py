"""Tests for rl_trainer.models: dtype resolution, loading policy/reference/tokenizer, LoRA."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from rl_trainer.config import load_config
from rl_trainer.models import (
    adapters_disabled,
    is_peft_model,
    load_policy,
    load_reference,
    load_tokenizer,
    resolve_dtype,
)

CPU = torch.device("cpu")
IDS = torch.tensor([[1, 20, 21, 40, 7, 8], [1, 30, 31, 32, 33, 34]])


def model_config(path, *overrides: str):
    return load_config(None, [f"model.path={path}", *overrides]).model


def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ----------------------------------------------------------------------------- dtype


def test_resolve_dtype() -> None:
    assert resolve_dtype("auto", CPU) is torch.float32
    assert resolve_dtype("float32", CPU) is torch.float32
    assert resolve_dtype("bfloat16", CPU) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda")) is torch.float16


def test_resolve_dtype_auto_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float32


def test_resolve_dtype_bad_name() -> None:
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; valid: auto, float32, bfloat16"):
        resolve_dtype("fp8", CPU)


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("loader", [load_policy, load_tokenizer])
def test_non_model_directory_is_file_not_found(tmp_path, loader) -> None:
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    args = (model_config(tmp_path),) if loader is load_tokenizer else (model_config(tmp_path), CPU)
    with pytest.raises(FileNotFoundError, match=r"config\.json") as info:
        loader(*args)
    assert str(tmp_path) in str(info.value)


def test_missing_local_directory_is_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_policy(model_config(tmp_path / "nope"), CPU)


def test_load_tokenizer(tiny_model_dir) -> None:
    tok = load_tokenizer(model_config(tiny_model_dir))
    assert tok.padding_side == "left"
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2
    assert tok.decode(tok.encode("say 3 + 4")) == "say 3 + 4"


def test_load_policy_plain(tiny_model_dir) -> None:
    model = load_policy(model_config(tiny_model_dir), CPU)
    assert isinstance(model, LlamaForCausalLM) and not is_peft_model(model)
    assert model.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())


def test_load_policy_dtype_and_gradient_checkpointing(tiny_model_dir) -> None:
    config = model_config(
        tiny_model_dir, "model.dtype=bfloat16", "model.gradient_checkpointing=true"
    )
    model = load_policy(config, CPU)
    assert model.dtype == torch.bfloat16
    assert model.is_gradient_checkpointing and model.config.use_cache is False


def test_load_reference_is_frozen_and_equal_to_the_policy(tiny_model_dir) -> None:
    config = model_config(tiny_model_dir, "model.attn_implementation=eager")
    reference = load_reference(config, CPU)
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    # Loaded like the policy, attention implementation included.
    assert reference.config._attn_implementation == "eager"
    policy = load_policy(config, CPU).eval()
    assert policy.config._attn_implementation == "eager"
    assert torch.equal(logits(reference), logits(policy))


# ----------------------------------------------------------------------------- LoRA


def _lora_policy(tiny_model_dir, *overrides: str):
    return load_policy(model_config(tiny_model_dir, "model.lora.enabled=true", *overrides), CPU)


def test_lora_only_adapters_train(tiny_model_dir) -> None:
    model = _lora_policy(tiny_model_dir)
    assert is_peft_model(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n for n in trainable)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_lora_all_linear_leaves_the_head_alone(tiny_model_dir) -> None:
    model = _lora_policy(tiny_model_dir, "model.lora.target_modules=[all-linear]", "model.lora.r=4")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 4


def test_adapters_disabled_gives_the_base_model(tiny_model_dir) -> None:
    base = load_policy(model_config(tiny_model_dir), CPU).eval()
    model = _lora_policy(tiny_model_dir).eval()
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapters change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    expected = logits(base)
    adapted = logits(model)
    assert (adapted - expected).abs().max() > 1e-3
    with adapters_disabled(model):
        assert torch.equal(logits(model), expected)
    assert torch.equal(logits(model), adapted)  # adapters back on after the block


def test_lora_with_gradient_checkpointing_gets_gradients(tiny_model_dir) -> None:
    model = _lora_policy(tiny_model_dir, "model.gradient_checkpointing=true")
    model.train()
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    # B starts at zero, so A's first gradient is zero too: B's is the one that must flow.
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_bad_lora_target_lists_linear_layers(tiny_model_dir) -> None:
    with pytest.raises(ValueError) as info:
        _lora_policy(tiny_model_dir, "model.lora.target_modules=[qkv_proj]")
    message = str(info.value)
    assert "model.lora.target_modules=['qkv_proj']" in message
    expected = (
        "['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"
    )
    assert expected in message
