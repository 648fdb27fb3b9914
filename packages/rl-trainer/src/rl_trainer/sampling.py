"""A lean autoregressive sampler over the KV cache that also returns each token's log-prob.

``transformers``' ``generate`` is general (beam search, streamers, dozens of processors) and pays
for it in Python on every token. RL rollouts need one thing: sample, with temperature and
optional top-k/top-p, until EOS or a length limit. Doing only that is faster, and the
log-probability of every sampled token falls out for free, so the trainer need not recompute the
sampling policy's log-probs with another forward pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rl_trainer.logprobs import position_ids_from_mask


@dataclass
class SampledBatch:
    """Completions of a left-padded batch.

    tokens: (N, T) sampled ids, ``pad_id`` after a row's EOS; T <= max_new_tokens.
    logprobs: (N, T) log-probs of ``tokens`` under softmax(logits / temperature) (the
        untruncated distribution), 0 after EOS; for greedy decoding, under softmax(logits).
    lengths: (N,) tokens per row, EOS included.
    """

    tokens: Tensor
    logprobs: Tensor
    lengths: Tensor


def truncate_logits(scaled: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Returns (N, V) logits with everything outside the top-k / nucleus set to -inf.

    top_k = 0 and top_p = 1 leave the logits unchanged. The nucleus keeps the smallest set of
    most likely tokens whose probability reaches top_p (always at least one token).
    """
    out = scaled
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]  # (N, 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)  # (N, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def _cache_keyword(model: nn.Module) -> str:
    # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated).
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def sample(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    num_samples: int = 1,
    max_new_tokens: int,
    eos_ids: Tensor,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> SampledBatch:
    """Returns ``num_samples`` sampled continuations of every row of a left-padded batch.

    Each prompt is encoded once; its KV cache is then repeated ``num_samples`` times, so the
    output rows are prompt-major: row ``u * num_samples + j`` is sample j of prompt u.
    Runs under ``torch.inference_mode`` (the results are plain numbers for the trainer).

    Args:
        model: a causal LM accepting a KV cache, ``position_ids`` and ``logits_to_keep``
            (every ``transformers`` decoder-only model does).
        input_ids, attention_mask: (U, P) prompts, left-padded.
        eos_ids: (E,) token ids that end a row (the EOS is kept in the completion).
        temperature: 0 decodes greedily.
    """
    cache_kw = _cache_keyword(model)
    device = input_ids.device
    positions = position_ids_from_mask(attention_mask)  # (U, P)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = _returned_cache(out)
    logits = out.logits[:, -1, :].float()  # (U, V)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)  # (N, V), N = U * num_samples
        positions = positions.repeat_interleave(num_samples, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
    n = logits.shape[0]
    next_position = positions[:, -1:] + 1  # (N, 1)
    prompt_length = attention_mask.shape[1]
    # The mask grows by one column per token: allocate it once, hand out growing views.
    full_mask = torch.ones(
        (n, prompt_length + max_new_tokens), dtype=attention_mask.dtype, device=device
    )
    full_mask[:, :prompt_length] = attention_mask
    eos_ids = eos_ids.to(device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    tokens: list[Tensor] = []
    logprobs: list[Tensor] = []
    for step in range(max_new_tokens):
        scaled = logits / temperature if temperature > 0 else logits
        log_probs = torch.log_softmax(scaled, dim=-1)  # (N, V)
        if temperature > 0:
            truncated = truncate_logits(scaled, top_k, top_p)
            token = torch.multinomial(torch.softmax(truncated, dim=-1), 1).squeeze(-1)  # (N,)
        else:
            token = log_probs.argmax(dim=-1)
        token_logprob = log_probs.gather(-1, token.unsqueeze(-1)).squeeze(-1)  # (N,)
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        logprobs.append(token_logprob.masked_fill(finished, 0.0))
        lengths += (~finished).long()
        finished |= torch.isin(token, eos_ids)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        out = model(
            input_ids=token.unsqueeze(-1),
            attention_mask=full_mask[:, : prompt_length + step + 1],
            position_ids=next_position,
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = _returned_cache(out)
        logits = out.logits[:, -1, :].float()
        next_position = next_position + 1
    return SampledBatch(
        tokens=torch.stack(tokens, dim=1), logprobs=torch.stack(logprobs, dim=1), lengths=lengths
    )
