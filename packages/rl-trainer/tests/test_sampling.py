"""The lean KV-cache sampler: truncation, log-probs equal to a full forward pass, prompt-major
groups from one encoding, and the trainer's choice between reused and recomputed old log-probs."""

from __future__ import annotations

import pytest
import torch
from conftest import DIGITS_REWARD, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl_trainer.logprobs import completion_logits, token_logprobs_and_entropy
from rl_trainer.rollout import left_pad
from rl_trainer.sampling import sample, truncate_logits
from rl_trainer.trainer import GRPOTrainer


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    texts = ["<s>user: say 3\nassistant: ", "<s>hi", "<s>user: add 12 and 30\nassistant: "]
    return left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in texts], 0)


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    out = truncate_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.8, 0.95, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 11)
    out = truncate_logits(logits, top_p=top_p)
    probs = torch.softmax(logits, dim=-1)
    for row in range(6):
        order = probs[row].argsort(descending=True).tolist()
        kept, mass = [], 0.0
        for i in order:  # brute force: add tokens by probability until the mass reaches top_p
            kept.append(i)
            mass += float(probs[row, i])
            if mass >= top_p:
                break
        assert sorted(torch.isfinite(out[row]).nonzero().flatten().tolist()) == sorted(kept)


def test_no_truncation_is_the_identity() -> None:
    logits = torch.randn(3, 7)
    assert torch.equal(truncate_logits(logits), logits)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_full_forward_pass(model, batch, temperature) -> None:
    ids, mask = batch
    torch.manual_seed(3)
    out = sample(
        model,
        ids,
        mask,
        num_samples=4,
        max_new_tokens=6,
        eos_ids=torch.tensor([2]),
        pad_id=0,
        temperature=temperature,
    )
    n, t = out.tokens.shape
    assert n == 12 and t <= 6
    full_ids = torch.cat([ids.repeat_interleave(4, 0), out.tokens], dim=1)
    completion_mask = (torch.arange(t)[None] < out.lengths[:, None]).long()
    full_mask = torch.cat([mask.repeat_interleave(4, 0), completion_mask], dim=1)
    with torch.no_grad():
        logits = completion_logits(model, full_ids, full_mask, t)
        reference, _ = token_logprobs_and_entropy(
            logits, out.tokens, temperature=temperature, with_entropy=False
        )
    real = completion_mask.bool()
    assert torch.allclose(out.logprobs[real], reference[real], atol=1e-5)
    assert (out.logprobs[~real] == 0).all()


def test_samples_are_prompt_major_and_greedy_copies_agree(model, batch) -> None:
    ids, mask = batch
    out = sample(
        model,
        ids,
        mask,
        num_samples=3,
        max_new_tokens=5,
        eos_ids=torch.tensor([2]),
        pad_id=0,
        temperature=0.0,
    )
    single = sample(
        model,
        ids,
        mask,
        num_samples=1,
        max_new_tokens=5,
        eos_ids=torch.tensor([2]),
        pad_id=0,
        temperature=0.0,
    )
    for u in range(3):
        for j in range(3):
            assert torch.equal(out.tokens[3 * u + j], single.tokens[u])


def make(tmp_path, model_dir, data, **overrides) -> GRPOTrainer:
    return GRPOTrainer(
        tiny_config(model_dir, data, tmp_path / "out", **overrides), reward_functions=DIGITS_REWARD
    )


def test_auto_reuses_rollout_logprobs_only_when_they_are_exact(
    tmp_path, tiny_model_dir, digit_data
) -> None:
    assert make(tmp_path, tiny_model_dir, digit_data).reuse_rollout_logprobs
    assert not make(
        tmp_path, tiny_model_dir, digit_data, **{"rollout.top_p": 0.9}
    ).reuse_rollout_logprobs
    assert not make(
        tmp_path, tiny_model_dir, digit_data, **{"rollout.sampler": "generate"}
    ).reuse_rollout_logprobs
    assert not make(
        tmp_path, tiny_model_dir, digit_data, **{"algorithm.old_logprobs": "recompute"}
    ).reuse_rollout_logprobs
    with pytest.raises(ValueError, match="rollout.sampler=loop"):
        make(
            tmp_path,
            tiny_model_dir,
            digit_data,
            **{"rollout.sampler": "generate", "algorithm.old_logprobs": "rollout"},
        )


def test_reused_and_recomputed_old_logprobs_agree(tmp_path, tiny_model_dir, digit_data) -> None:
    trainer = make(tmp_path, tiny_model_dir, digit_data, **{"rollout.temperature": 0.8})
    torch.manual_seed(11)
    batch, _, _ = trainer.rollout()
    assert batch is not None and trainer.reuse_rollout_logprobs
    recomputed = trainer._score(trainer.model, batch)
    real = batch.completion_mask.bool()
    assert torch.allclose(batch.old_logprobs[real], recomputed[real], atol=1e-5)
