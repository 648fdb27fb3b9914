"""Toy verifiable tasks shipped with the app: data, warm-start targets and their rewards.

- ``addition``: "37+45=" -> "82". One correct answer; the embedded default.
- ``rare``: "k?" -> any digit d with (d + index(k)) % 3 == 0: three or four correct answers per
  prompt. The warm start says "0" most of the time, which is right for a third of the prompts;
  elsewhere the correct digits are rare under the warm-started policy, so the reward can only
  rise if low-probability tokens are allowed to grow (what Band changes).
- ``trap``: "k?" -> one correct digit worth 1 and a decoy digit worth 0.5. The warm start says
  the decoy 97% of the time and a uniformly random digit otherwise, so the correct answer
  starts near p = 0.003: whenever it is sampled it has a positive advantage and an old
  probability below 0.01, the regime where PPO's clip caps its rise at (1 + eps) p and Band's
  upper bound is far wider. The study's main task.

Also two rewards the tasks need, registered in rl-trainer's reward registry on import:
``one_of`` (the completion is one of the ``|``-separated answers), ``answer_or_decoy`` (1 for
the answer, a partial reward for the decoy) and ``random_coin`` (a reward that ignores the
completion: the study's control).
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rl_trainer.rewards import RewardSpec, normalize_answer, register_reward

LETTERS = string.ascii_lowercase[:20]


@register_reward("one_of")
def one_of(prompts: list[str], completions: list[str], *, column: str = "answer", **columns: Any):
    """Reward 1.0 when the stripped completion is one of the ``|``-separated answers."""
    answers = columns[column]
    return [
        1.0 if normalize_answer(c) in {normalize_answer(a) for a in str(gold).split("|")} else 0.0
        for c, gold in zip(completions, answers, strict=True)
    ]


@register_reward("answer_or_decoy")
def answer_or_decoy(
    prompts: list[str],
    completions: list[str],
    *,
    column: str = "answer",
    decoy_column: str = "decoy",
    decoy_reward: float = 0.5,
    **columns: Any,
):
    """Reward 1.0 for the answer, ``decoy_reward`` for the decoy, 0.0 for anything else."""
    answers, decoys = columns[column], columns[decoy_column]
    out = []
    for c, answer, decoy in zip(completions, answers, decoys, strict=True):
        said = normalize_answer(c)
        out.append(
            1.0
            if said == normalize_answer(str(answer))
            else decoy_reward
            if said == normalize_answer(str(decoy))
            else 0.0
        )
    return out


@register_reward("random_coin")
def random_coin(prompts: list[str], completions: list[str], *, seed: int = 0, **_: Any):
    """Reward 0 or 1 from a hash of (seed, prompt, completion): independent of correctness,
    deterministic, so a run with it is the study's "does the rule learn noise" control."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        digest = hashlib.blake2b(f"{seed}|{p}|{c}".encode(), digest_size=2).digest()
        out.append(float(digest[0] & 1))
    return out


@dataclass(frozen=True)
class Task:
    """A toy task: how to make rows, what the warm start teaches, how completions are scored."""

    name: str
    characters: str
    max_new_tokens: int
    make_row: Callable[[random.Random], dict[str, str]]
    warm_start_target: Callable[[dict[str, str], random.Random], str]
    rewards: tuple[RewardSpec, ...]

    def rows(self, n: int, seed: int) -> list[dict[str, str]]:
        """Returns ``n`` rows (prompt, answer) drawn with ``seed``."""
        rng = random.Random(seed)
        return [self.make_row(rng) for _ in range(n)]


def _addition_row(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def _rare_row(rng: random.Random) -> dict[str, str]:
    letter = rng.choice(LETTERS)
    shift = LETTERS.index(letter)
    valid = [str(d) for d in range(10) if (d + shift) % 3 == 0]
    return {"prompt": f"{letter}?", "answer": "|".join(valid)}


def _rare_target(row: dict[str, str], rng: random.Random) -> str:
    # The warm start prefers "0" (70%), else any digit: the favoured answer is right for a third
    # of the prompts, the other correct answers each start near 3%.
    return "0" if rng.random() < 0.7 else str(rng.randint(0, 9))


#: The warm start's share of the decoy on the trap task; the rest is spread over the ten
#: digits, so the correct answer starts near (1 - TRAP_DECOY_SHARE) / 10 = 0.003.
TRAP_DECOY_SHARE = 0.97


def _trap_row(rng: random.Random) -> dict[str, str]:
    index = LETTERS.index(rng.choice(LETTERS))
    correct = (7 * index + 3) % 10
    decoy = (correct + 5) % 10
    return {"prompt": f"{LETTERS[index]}?", "answer": str(correct), "decoy": str(decoy)}


def _trap_target(row: dict[str, str], rng: random.Random) -> str:
    return row["decoy"] if rng.random() < TRAP_DECOY_SHARE else str(rng.randint(0, 9))


TASKS: dict[str, Task] = {
    "addition": Task(
        name="addition",
        characters="0123456789+=",
        max_new_tokens=4,
        make_row=_addition_row,
        warm_start_target=lambda row, rng: row["answer"],
        rewards=(RewardSpec(name="exact_match"),),
    ),
    "rare": Task(
        name="rare",
        characters="0123456789?" + LETTERS,
        max_new_tokens=2,
        make_row=_rare_row,
        warm_start_target=_rare_target,
        rewards=(RewardSpec(name="one_of"),),
    ),
    "trap": Task(
        name="trap",
        characters="0123456789?" + LETTERS,
        max_new_tokens=2,
        make_row=_trap_row,
        warm_start_target=_trap_target,
        rewards=(RewardSpec(name="answer_or_decoy"),),
    ),
}


def get_task(name: str) -> Task:
    """Returns the task registered as ``name``."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}") from None
