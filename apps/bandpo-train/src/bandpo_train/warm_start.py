"""Supervised warm start: teach a freshly initialised tiny model the task's answer format so that
RL starts with signal (a random model almost never produces a correct answer)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase


def warm_start(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, str]],
    target: Callable[[dict[str, str], random.Random], str],
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Trains ``model`` in place on (prompt -> target) pairs; returns the loss of every step.

    The prompt is encoded exactly as the RL trainer encodes it without a chat template
    (BOS + text); the loss covers the target and the EOS that ends it.
    """
    if not rows:
        raise ValueError("warm start needs at least one row")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    device = next(model.parameters()).device
    losses: list[float] = []
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    for _ in range(steps):
        ids, labels = [], []
        for row in rng.choices(rows, k=batch_size):
            prompt = [bos, *tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]]
            answer = [*tokenizer(target(row, rng), add_special_tokens=False)["input_ids"], eos]
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in ids], device=device)
        label_ids = torch.tensor([r + [-100] * (width - len(r)) for r in labels], device=device)
        attention = (
            torch.arange(width, device=device)[None]
            < torch.tensor([len(r) for r in ids], device=device)[:, None]
        ).long()
        loss = model(input_ids=input_ids, attention_mask=attention, labels=label_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses
