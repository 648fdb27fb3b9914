"""The policy's exact answer distribution on held-out prompts, for tasks whose answers are one
token (``rare``, ``trap``): P(correct), P(decoy), the entropy of the answer-token distribution
and pass@k computed from P(correct), with no sampling noise.

:class:`AnswerProbe` is a trainer callback that records them before the first update and every
``every`` RL steps into ``probe.jsonl``; the study reads that file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rl_trainer.callbacks import TrainerCallback, TrainerControl, TrainerState
from rl_trainer.trainer import GRPOTrainer

PROBE_FILE = "probe.jsonl"
#: pass@k reported from P(correct): 1 - (1 - p)^k per prompt, averaged over prompts.
PASS_KS = (1, 16, 64)


def _token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    """Returns the one token id of ``text``, or None when it is not exactly one token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


@torch.no_grad()
def answer_distribution(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    *,
    answer_column: str = "answer",
    decoy_column: str = "decoy",
    ks: Sequence[int] = PASS_KS,
) -> dict[str, float]:
    """Returns the mean over ``rows`` of P(answer), P(decoy) (when rows have one), the entropy
    in nats of the first generated token's distribution, and pass@k from P(answer).

    Each prompt is encoded as the trainer encodes it without a chat template (BOS + text).
    ``|``-separated answers (the ``rare`` task) count together. Raises ValueError when an answer
    is not a single token (the probe is for one-token answers).
    """
    if not rows:
        raise ValueError("the answer probe needs at least one row")
    device = next(model.parameters()).device
    prompts = [
        [
            tokenizer.bos_token_id,
            *tokenizer(str(r["prompt"]), add_special_tokens=False)["input_ids"],
        ]
        for r in rows
    ]
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Left padding, so that the last position is every prompt's next-token position.
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
    )
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, attention_mask=attention).logits[:, -1, :].float()
    finally:
        model.train(was_training)
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(dim=-1)

    def mass(column: str) -> torch.Tensor | None:
        if not all(column in r for r in rows):
            return None
        out = torch.zeros(len(rows), device=device)
        for i, r in enumerate(rows):
            for answer in str(r[column]).split("|"):
                token = _token_id(tokenizer, answer)
                if token is None:
                    raise ValueError(
                        f"the answer probe needs one-token answers; {column} {answer!r} of "
                        f"prompt {r['prompt']!r} is not one token"
                    )
                out[i] += probs[i, token]
        return out

    correct = mass(answer_column)
    if correct is None:
        raise ValueError(f"the rows have no {answer_column!r} column")
    result = {"p_correct": float(correct.mean()), "answer_entropy": float(entropy.mean())}
    decoy = mass(decoy_column)
    if decoy is not None:
        result["p_decoy"] = float(decoy.mean())
    for k in ks:
        result[f"pass@{k}"] = float((1 - (1 - correct).clamp(min=0) ** k).mean())
    return result


class AnswerProbe(TrainerCallback):
    """Writes :func:`answer_distribution` on ``rows`` to ``path`` (one JSON line each): at
    ``rl_step`` 0 before any update, then every ``every`` RL steps and after the last one."""

    def __init__(self, path: Path, rows: Sequence[Mapping[str, Any]], every: int = 5) -> None:
        if every <= 0:
            raise ValueError(f"every must be > 0, got {every}")
        self.path = path
        self.rows = list(rows)
        self.every = every
        self.last_step = -1

    def _record(self, trainer: GRPOTrainer, rl_step: int) -> None:
        if not trainer.accelerator.is_main_process or rl_step == self.last_step:
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        values = answer_distribution(model, trainer.tokenizer, self.rows)
        line = {"rl_step": rl_step, **{k: _finite(v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        self.last_step = rl_step

    def on_train_begin(
        self, trainer: GRPOTrainer, state: TrainerState, control: TrainerControl
    ) -> None:
        if state.step == 0:
            self.path.unlink(missing_ok=True)
        self._record(trainer, state.step)

    def on_rl_step_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
        updates: list[dict[str, float]],
    ) -> None:
        if state.step % self.every == 0 or control.should_training_stop:
            self._record(trainer, state.step)

    def on_train_end(
        self,
        trainer: GRPOTrainer,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
    ) -> None:
        self._record(trainer, state.step)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def read_probe(path: Path) -> list[dict[str, Any]]:
    """Returns the lines of a ``probe.jsonl`` (empty when the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
