"""Per-token log-probabilities and entropies of completions, and KL-to-reference estimators."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Returns (B, L) positions counting only attended tokens, as ``generate`` numbers them.

    With left padding a plain ``arange`` would shift every prompt by its padding; the model saw
    position 0 at the first real token while sampling, so the loss must too.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def completion_logits(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_length: int
) -> Tensor:
    """Returns (B, T, V) logits predicting the last T = ``completion_length`` tokens.

    Only the last T + 1 positions are projected to the vocabulary (``logits_to_keep``): the
    prompt's logits would cost B * P * V floats and are never used.
    """
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=completion_length + 1,
        use_cache=False,
    )
    logits = outputs.logits  # (B, T + 1, V) or (B, L, V) for models that ignore logits_to_keep
    return logits[:, -(completion_length + 1) : -1, :]  # (B, T, V)


def token_logprobs_and_entropy(
    logits: Tensor, tokens: Tensor, *, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Returns (logprobs, entropy), each (B, T), of ``tokens`` under softmax(logits / temperature).

    Computed in float32 whatever the model's dtype. The temperature is the sampling one, so that
    the log-probabilities are those of the distribution the completions were drawn from.

    Args:
        logits: (B, T, V).
        tokens: (B, T) int64 token ids (any value at padded positions; mask them afterwards).
    """
    scaled = logits.float()  # (B, T, V)
    if temperature != 1.0:
        scaled = scaled / temperature
    log_z = torch.logsumexp(scaled, dim=-1)  # (B, T)
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logprobs = picked - log_z
    entropy = None
    if with_entropy:
        probs = torch.softmax(scaled, dim=-1)  # (B, T, V)
        entropy = log_z - (probs * scaled).sum(dim=-1)  # (B, T)
    return logprobs, entropy


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: Literal["k1", "k2", "k3"] = "k3"
) -> Tensor:
    """Returns (B, T) per-token estimates of KL(pi || pi_ref) from sampled-token log-probs.

    With log-ratio x = log pi - log pi_ref on tokens sampled from pi (Schulman, "Approximating
    KL divergence", 2020): k1 = x (unbiased, high variance, can be negative), k2 = x^2 / 2,
    k3 = exp(-x) - 1 + x (unbiased, always >= 0; the GRPO paper's choice). The log-ratio is
    clamped to +-20 so that exp cannot overflow.
    """
    x = (logprobs - ref_logprobs).clamp(-20.0, 20.0)
    if estimator == "k1":
        return x
    if estimator == "k2":
        return 0.5 * x.square()
    if estimator == "k3":
        return torch.expm1(-x) + x
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: k1, k2, k3")
