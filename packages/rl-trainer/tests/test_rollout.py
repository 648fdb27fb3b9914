"""Tests for rl_trainer.rollout: padding, completion stripping, the hf backend, the registry."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl_trainer import rollout
from rl_trainer.rollout import (
    HFRolloutBackend,
    RolloutOutput,
    SamplingParams,
    available_rollout_backends,
    create_rollout_backend,
    left_pad,
    register_rollout_backend,
    strip_completion,
)


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def model(tiny_model_dir):
    """A fresh copy per test: some tests change its generation_config."""
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))


@pytest.fixture(params=["loop", "generate"])
def sampler(request) -> str:
    """The hf backend's two samplers: every sampling test runs against both."""
    return request.param


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    """Three prompts of different lengths, so that left padding is exercised."""
    texts = ["<s>user: say 3\nassistant: ", "<s>hi", "<s>user: add 12 and 30\nassistant: "]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def greedy_loop(model, prompts, max_new_tokens: int, eos_id: int, pad_id: int) -> list[list[int]]:
    """Batched argmax decoding without a KV cache: the full left-padded sequence is re-run at
    every step with position ids counted from the attention mask; finished rows get pads."""
    ids, mask = left_pad(prompts, pad_id)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    new: list[list[int]] = [[] for _ in prompts]
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            token = logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            for i, t in enumerate(token.tolist()):
                if not done[i]:
                    new[i].append(t)
            done |= token == eos_id
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if done.all():
                break
    return new


# ----------------------------------------------------------------------------- helpers


def test_left_pad_shapes_and_values() -> None:
    ids, mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.shape == mask.shape == (3, 3)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_left_pad_with_pad_id_that_is_a_real_token() -> None:
    ids, mask = left_pad([[2, 2], [7]], pad_id=2)
    assert ids.tolist() == [[2, 2], [2, 7]]
    assert mask.tolist() == [[1, 1], [0, 1]]  # the mask, not the id, tells pads apart


def test_left_pad_empty_row_and_device() -> None:
    ids, mask = left_pad([[4, 5], []], pad_id=1, device="cpu")
    assert ids.tolist() == [[4, 5], [1, 1]]
    assert mask.tolist() == [[1, 1], [0, 0]]
    assert ids.device.type == "cpu"


@pytest.mark.parametrize(
    ("row", "eos", "pad", "expected"),
    [
        ([5, 6, 2, 7, 0], {2}, 0, [5, 6, 2]),  # up to and including the first EOS
        ([2, 5], {2}, 0, [2]),
        ([5, 6, 9, 2], {2, 9}, 0, [5, 6, 9]),  # any of several EOS ids
        ([5, 6, 7], {2}, 0, [5, 6, 7]),  # truncated: no EOS, nothing removed
        ([5, 6, 0, 0], {2}, 0, [5, 6]),  # trailing pads removed (pad != eos)
        ([5, 0, 6, 0], {2}, 0, [5, 0, 6]),  # only trailing ones
        ([0, 0], {2}, 0, []),
        ([5, 6, 2, 2], {2}, 2, [5, 6, 2]),  # pad == eos: the EOS ends the row, kept once
        ([5, 6], {2}, 2, [5, 6]),
    ],
)
def test_strip_completion(row, eos, pad, expected) -> None:
    assert strip_completion(row, eos, pad) == expected


def test_rollout_output_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="same length"):
        RolloutOutput(prompt_index=[0, 0], completion_ids=[[1]])


# ----------------------------------------------------------------------------- hf backend


def test_num_samples_per_prompt_prompt_major(
    sampler, model, tokenizer, accelerator, prompts
) -> None:
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
    torch.manual_seed(0)
    out = backend.generate(prompts, 3, SamplingParams(max_new_tokens=5))
    assert out.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(out.completion_ids) == 9
    for completion in out.completion_ids:
        assert len(completion) <= 5
        assert all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in completion)
    assert max(len(c) for c in out.completion_ids) == 5


def test_greedy_equals_manual_argmax_loop(sampler, model, tokenizer, accelerator, prompts) -> None:
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    out = backend.generate(prompts, 2, params)
    expected = greedy_loop(model, prompts, 6, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert out.completion_ids == [c for c in expected for _ in range(2)]
    assert backend.generate(prompts, 2, params).completion_ids == out.completion_ids
    # Chunked generation (one sequence per generate call: no padding at all) agrees.
    chunked = HFRolloutBackend(
        model, tokenizer, accelerator, generation_batch_size=1, sampler=sampler
    )
    assert chunked.generate(prompts, 2, params).completion_ids == out.completion_ids


def test_model_generation_config_does_not_leak(
    sampler, model, tokenizer, accelerator, prompts
) -> None:
    """Options shipped in the checkpoint's generation_config.json must not change decoding."""
    shipped = model.generation_config
    shipped.repetition_penalty = 2.0
    shipped.top_k = 1
    shipped.no_repeat_ngram_size = 1
    shipped.min_new_tokens = 3
    shipped.num_beams = 2
    shipped.temperature = 0.01
    before = shipped.to_dict()
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)

    greedy = backend.generate(prompts, 1, SamplingParams(max_new_tokens=6, temperature=0.0))
    expected = greedy_loop(model, prompts, 6, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert greedy.completion_ids == expected

    # With the shipped top_k=1 (or temperature 0.01) every sample would be the greedy one.
    torch.manual_seed(0)
    sampled = backend.generate(prompts[:1], 8, SamplingParams(max_new_tokens=6))
    assert len({tuple(c) for c in sampled.completion_ids}) > 1
    # The model's own config is back in place, unchanged.
    assert model.generation_config is shipped
    assert model.generation_config.to_dict() == before


def _next_token_frequencies(backend, prompt: list[int], n: int, params: SamplingParams):
    out = backend.generate([prompt], n, params)
    # A sampled pad at the end is stripped, leaving an empty completion: count it as the pad.
    tokens = torch.tensor([c[0] if c else 0 for c in out.completion_ids])
    return torch.bincount(tokens, minlength=len(backend.tokenizer)).double() / n


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampling_follows_softmax_of_logits_over_temperature(
    sampler, model, tokenizer, accelerator, prompts, temperature
) -> None:
    """No hidden truncation (transformers' default top_k=50 would drop the least likely tokens
    of this 54-token vocabulary) and the temperature is the given one."""
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, dim=-1)
    torch.manual_seed(0)
    freq = _next_token_frequencies(backend, prompts[0], 4000, SamplingParams(1, temperature))
    assert (freq > 0).all(), "some tokens were never sampled"
    assert float((freq - probs).abs().max()) < 0.015


def test_top_k_restricts_sampling(sampler, model, tokenizer, accelerator, prompts) -> None:
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
    top = set(logits.topk(3).indices.tolist())
    torch.manual_seed(0)
    freq = _next_token_frequencies(backend, prompts[0], 300, SamplingParams(1, top_k=3))
    assert set(torch.nonzero(freq).flatten().tolist()) == top


def test_sampling_with_fixed_seed_is_reproducible(
    sampler, model, tokenizer, accelerator, prompts
) -> None:
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    torch.manual_seed(7)
    a = backend.generate(prompts, 4, params)
    torch.manual_seed(7)
    b = backend.generate(prompts, 4, params)
    torch.manual_seed(8)
    c = backend.generate(prompts, 4, params)
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids


def test_training_mode_is_restored(sampler, model, tokenizer, accelerator, prompts) -> None:
    backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
    model.train()
    backend.generate(prompts[:1], 1, SamplingParams(2, temperature=0.0))
    assert model.training
    model.eval()
    backend.generate(prompts[:1], 1, SamplingParams(2, temperature=0.0))
    assert not model.training


def test_stops_at_eos(sampler, model, tokenizer, accelerator, prompts) -> None:
    """With the EOS logit boosted the model stops at once: the completion is just the EOS."""
    eos = tokenizer.eos_token_id

    def boost_eos(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., eos] += 1e4
        return logits

    hook = model.lm_head.register_forward_hook(boost_eos)
    try:
        backend = HFRolloutBackend(model, tokenizer, accelerator, sampler=sampler)
        out = backend.generate(prompts, 2, SamplingParams(max_new_tokens=5))
    finally:
        hook.remove()
    assert out.completion_ids == [[eos]] * 6


def test_eos_ids_include_generation_config_ones(model, tokenizer, accelerator) -> None:
    model.generation_config.eos_token_id = [2, 9]
    backend = HFRolloutBackend(model, tokenizer, accelerator)
    assert backend.eos_ids == {2, 9}


def test_tokenizer_without_pad_token_is_rejected(model, tokenizer, accelerator) -> None:
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        HFRolloutBackend(model, no_pad, accelerator)


# ----------------------------------------------------------------------------- registry


def test_unknown_backend_lists_valid_names(model, tokenizer, accelerator) -> None:
    assert "hf" in available_rollout_backends()
    with pytest.raises(ValueError, match=r"unknown rollout backend 'vllm-nope'.*valid names: .*hf"):
        create_rollout_backend("vllm-nope", model, tokenizer, accelerator)


def test_hf_backend_is_created_by_name(model, tokenizer, accelerator) -> None:
    backend = create_rollout_backend("hf", model, tokenizer, accelerator, generation_batch_size=3)
    assert isinstance(backend, HFRolloutBackend)
    assert backend.generation_batch_size == 3


def test_custom_backend_is_registered_and_created(monkeypatch, model, tokenizer, accelerator):
    monkeypatch.setattr(rollout, "_BACKENDS", dict(rollout._BACKENDS))
    seen = {}

    class Echo:
        def __init__(self, model, tokenizer, accelerator, **options) -> None:
            seen.update(model=model, tokenizer=tokenizer, accelerator=accelerator, **options)

        def generate(self, prompt_ids, num_samples, params):
            index = [p for p in range(len(prompt_ids)) for _ in range(num_samples)]
            return RolloutOutput(index, [list(prompt_ids[p]) for p in index])

        def sync_weights(self) -> None:
            pass

    @register_rollout_backend("echo")
    def make_echo(model, tokenizer, accelerator, **options):
        return Echo(model, tokenizer, accelerator, **options)

    assert "echo" in available_rollout_backends()
    backend = create_rollout_backend("echo", model, tokenizer, accelerator, flavour="x")
    assert isinstance(backend, Echo)
    assert seen == {
        "model": model,
        "tokenizer": tokenizer,
        "accelerator": accelerator,
        "flavour": "x",
    }
    out = backend.generate([[1, 2], [3]], 2, SamplingParams(4))
    assert out.prompt_index == [0, 0, 1, 1]
    assert out.completion_ids == [[1, 2], [1, 2], [3], [3]]
