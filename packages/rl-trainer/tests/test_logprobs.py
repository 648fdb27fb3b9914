"""Tests for rl_trainer.logprobs: token log-probs/entropy, completion logits, KL estimators."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from rl_trainer.logprobs import (
    completion_logits,
    kl_penalty,
    position_ids_from_mask,
    token_logprobs_and_entropy,
)
from rl_trainer.rollout import left_pad

PROMPTS = [[1, 20, 21], [1, 22, 23, 24, 25, 26, 27], [1, 5], [1, 30, 31, 32]]
COMPLETIONS = [[7, 8, 2], [9, 9, 9], [10, 11, 12], [40, 2, 0]]


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_logprobs_and_entropy_match_naive(temperature) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64) * 3
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    logprobs, entropy = token_logprobs_and_entropy(logits, tokens, temperature=temperature)

    log_p = torch.log_softmax(logits / temperature, dim=-1)
    naive_logprobs = log_p.gather(-1, tokens[..., None]).squeeze(-1)
    naive_entropy = -(log_p.exp() * log_p).sum(-1)
    assert logprobs.shape == entropy.shape == (3, 5)
    assert logprobs.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logprobs, naive_logprobs.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, naive_entropy.float(), rtol=0, atol=1e-5)


def test_entropy_extremes_and_without_entropy() -> None:
    uniform = torch.zeros(1, 1, 8)
    logprobs, entropy = token_logprobs_and_entropy(uniform, torch.tensor([[3]]))
    assert logprobs.item() == pytest.approx(-math.log(8))
    assert entropy.item() == pytest.approx(math.log(8))
    peaked = torch.tensor([[[50.0, 0.0, 0.0]]])
    logprobs, entropy = token_logprobs_and_entropy(peaked, torch.tensor([[0]]))
    assert logprobs.item() == pytest.approx(0.0, abs=1e-6)
    assert entropy.item() == pytest.approx(0.0, abs=1e-6)
    _, none = token_logprobs_and_entropy(peaked, torch.tensor([[0]]), with_entropy=False)
    assert none is None


def test_half_precision_logits_give_float32() -> None:
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[0, 1, 2], [3, 4, 5]])
    ref, _ = token_logprobs_and_entropy(logits.bfloat16().float(), tokens)
    out, entropy = token_logprobs_and_entropy(logits.bfloat16(), tokens)
    assert out.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_logprobs_gradient_flows_to_logits() -> None:
    logits = torch.randn(1, 2, 5, requires_grad=True)
    logprobs, _ = token_logprobs_and_entropy(logits, torch.tensor([[1, 4]]), temperature=0.5)
    logprobs.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- logits


def test_position_ids_from_mask() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 4],
        [0, 0, 1, 2, 2],  # right padding after the completion: masked anyway
    ]


def _batched_vs_alone(model) -> tuple[torch.Tensor, list[torch.Tensor]]:
    prompts, prompt_mask = left_pad(PROMPTS, pad_id=0)
    completions = torch.tensor(COMPLETIONS)
    ids = torch.cat([prompts, completions], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(completions)], dim=1)
    with torch.no_grad():
        batched = completion_logits(model, ids, mask, completions.shape[1])
        alone = []
        for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
            row = torch.tensor([prompt + completion])
            alone.append(completion_logits(model, row, torch.ones_like(row), len(completion))[0])
    return batched, alone


@pytest.fixture(scope="module")
def gpt2():
    """A tiny GPT-2: learned absolute positions, so wrong position ids change the logits (RoPE
    models such as the tiny Llama are invariant to the constant shift that left padding adds)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=54, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("which", ["tiny-llama", "gpt2"])
def test_left_padded_rows_equal_the_unpadded_sequence(tiny_model_dir, gpt2, which) -> None:
    model = gpt2 if which == "gpt2" else AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.eval()
    batched, alone = _batched_vs_alone(model)
    assert batched.shape == (len(PROMPTS), 3, model.config.vocab_size)
    for i, expected in enumerate(alone):
        torch.testing.assert_close(batched[i], expected, rtol=0, atol=1e-5, msg=f"row {i}")


def test_gpt2_check_is_sensitive_to_position_ids(gpt2) -> None:
    """Guards the test above: with plain arange positions the padded rows would differ."""
    prompts, prompt_mask = left_pad(PROMPTS, pad_id=0)
    completions = torch.tensor(COMPLETIONS)
    ids = torch.cat([prompts, completions], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(completions)], dim=1)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        wrong = gpt2(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -4:-1]
    _, alone = _batched_vs_alone(gpt2)
    assert float((wrong[0] - alone[0]).abs().max()) > 1e-2  # row 0 is padded by 4


def test_completion_logits_predict_the_completion_tokens(tiny_model_dir) -> None:
    """Logit t predicts completion token t: it comes from the position just before it."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    row = torch.tensor([PROMPTS[0] + COMPLETIONS[0]])
    with torch.no_grad():
        full = model(input_ids=row).logits
        logits = completion_logits(model, row, torch.ones_like(row), 3)
    torch.testing.assert_close(logits, full[:, -4:-1], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_on_hand_examples() -> None:
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.3]]))
    ln2 = math.log(2)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([[ln2, -ln2, 0.0]]))
    torch.testing.assert_close(
        kl_penalty(logprobs, ref, "k2"), torch.tensor([[ln2**2 / 2, ln2**2 / 2, 0.0]])
    )
    # k3 = ref/p - 1 - log(ref/p)
    torch.testing.assert_close(
        kl_penalty(logprobs, ref, "k3"), torch.tensor([[0.5 - 1 + ln2, 2 - 1 - ln2, 0.0]])
    )
    assert torch.equal(kl_penalty(logprobs, ref), kl_penalty(logprobs, ref, "k3"))


def test_k3_is_non_negative_and_finite_even_for_huge_ratios() -> None:
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.randn(64, 32, generator=gen) * 5
    ref = torch.randn(64, 32, generator=gen) * 5
    k3 = kl_penalty(logprobs, ref, "k3")
    assert (k3 >= 0).all()
    extreme = kl_penalty(torch.tensor([[0.0, -500.0]]), torch.tensor([[-500.0, 0.0]]), "k3")
    assert torch.isfinite(extreme).all() and (extreme >= 0).all()


def test_k1_and_k3_are_unbiased_estimates_of_kl() -> None:
    """Averaged over tokens sampled from p, k1 and k3 estimate KL(p || q)."""
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.3, 0.2], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    tokens = torch.multinomial(
        p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    logprobs, ref = p.log()[tokens][None], q.log()[tokens][None]
    for estimator in ("k1", "k3"):
        assert float(kl_penalty(logprobs, ref, estimator).mean()) == pytest.approx(exact, abs=5e-3)


def test_unknown_estimator_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'; valid: k1, k2, k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")  # type: ignore[arg-type]
