"""Benchmark: rl_trainer's GRPOTrainer against TRL's GRPOTrainer, seconds per RL step on equal work.

Run (from the workspace root; TRL comes with rl-trainer's ``bench`` dependency group)::

    HF_HUB_OFFLINE=1 .venv/bin/python packages/rl-trainer/benchmarks/bench_trainer.py
    ... bench_trainer.py --steps 10 --warmup 3 --rounds 3 --threads 2
    ... bench_trainer.py --profile [--profiler cprofile|torch] [--profile-steps 5]

One RL step is one rollout and the updates on it: 4 prompts x 8 completions = 32 completions of
exactly 16 tokens, old log-probs of the 32 once without gradient, then 2 optimiser updates of 16
completions each (one pass, two mini-batches). Both trainers get, in one process:

* the same model: a tiny Llama (hidden 64, 2 layers, character tokenizer) written once with
  ``rl_trainer.tiny.save_tiny_model`` to a temporary directory; each trainer loads it by path.
  Exactly 16 completion tokens: the model is tweaked before saving so that no special token
  (EOS, pad, BOS, unk) can be sampled, on either side, from the same weights. Embedding column 0
  (tied with the output head) is set to +BIAS for every character and to -BIAS for the special
  tokens: the residual stream carries a constant +BIAS channel, so each special token's logit sits
  about 2 * BIAS * sqrt(hidden) = 32 below the characters' (their log-probs are below -35).
  Every completion then runs to max_new_tokens and, since specials are never sampled, decodes to
  16 characters: the reward function records those lengths on both sides, and each trainer's
  own completion-length metric is printed next to them, so equal work is shown, not assumed;
* the same 64 prompts ("say 17", answer "17") through the tokenizer's chat template: ours renders
  them itself (``data.chat_template=true``, its default path, tokenised once at start); TRL gets
  them pre-rendered as standard (text, not conversational) prompts, so both hand plain strings to
  the reward; the prompt ids of both are checked to be identical;
* the same reward, a plain Python callable (share of completion characters found in the answer);
* float32 on CPU, the same ``torch.set_num_threads``, beta = 0 (no reference model), PPO clipping
  0.2 / 0.2, token-mean loss over each mini-batch, GRPO (group-std) advantages, AdamW (torch's,
  not fused) at the same lr, constant schedule, grad-norm clip 1.0, sampling at temperature 1 with
  top-p 1 and no top-k, KV-cached ``generate`` on the training model, no logging, checkpoints,
  evaluation or progress bar.

Settings. Ours: ``rollout.group_size=8, rollout.prompts_per_step=4, rollout.max_new_tokens=16,
algorithm.rule=ppo, algorithm.ppo_epochs=1, algorithm.mini_batches=2, algorithm.kl_coef=0,
optim.micro_batch_size=16`` (so no gradient accumulation). TRL 1.16 ``GRPOConfig``:

* ``num_generations=8, per_device_train_batch_size=16, steps_per_generation=2,
  gradient_accumulation_steps=1, num_iterations=1``: generation_batch_size = 32 (4 prompts),
  one generation feeds 2 optimiser steps of 16; since gradient_accumulation_steps is not a
  multiple of steps_per_generation, TRL computes old log-probs in a no-grad pass, as ours does;
* ``max_completion_length=16, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0``;
* ``beta=0.0, epsilon=0.2`` (epsilon_high defaults to epsilon), ``loss_type="dapo"`` (token sum
  over the generation batch's tokens per optimiser step: ours' token-mean, every completion
  having 16 tokens), ``scale_rewards="group", mask_truncated_completions=False``;
* ``optim="adamw_torch", learning_rate=lr, lr_scheduler_type="constant", weight_decay=0.0,
  max_grad_norm=1.0``;
* ``bf16=False, gradient_checkpointing=False`` (TRL defaults both to True), ``use_cpu=True``,
  ``model_init_kwargs={"dtype": torch.float32}, disable_dropout=True``;
* ``report_to="none", logging_steps=10**9, save_strategy="no", eval_strategy="no",
  disable_tqdm=True, log_completions=False`` (and its PrinterCallback removed).

A TRL ``global_step`` is one optimiser update, so one RL step is 2 of them.

Timing. Ours: the wall time of ``GRPOTrainer.train_step()`` (rollout + updates; what ``train()``
adds around it is a metrics write every ``logging.log_every`` steps, which would be off here
just as TRL's logging is, and the final save).
TRL: its own ``train()`` loop runs all steps, and a callback records the wall time between the
ends of consecutive RL steps (every second ``on_step_end``), so each interval holds everything
TRL's loop does for that step: fetching the batch, generation and scoring, both forward/backward
passes, clipping, optimiser and scheduler steps and its callbacks. The two are interleaved to
even out machine noise: TRL's ``train()`` runs, and after its warm-up steps and after each round of
``--steps`` timed steps its callback runs a round of ``--steps`` of our steps (timed on their
own; TRL's clock is restarted after them), so rounds alternate TRL, ours, TRL, ours, ...
The warm-up steps of each (``--warmup``) are excluded. Each round gives a mean s/step; the table
shows the median and the min over rounds, and the speed-up is TRL's median s/step / ours.
Both run with ``--threads`` torch threads, 1 by default: on a small machine shared with other
work, a multi-threaded team stalls whenever another process takes one of its cores (steps 10x
to 80x slower were seen on 2 cores), while one thread only slows down in proportion.

``--profile`` runs our trainer alone: a per-phase breakdown (generation, no-grad log-prob pass,
training forward + loss, backward, optimiser step) over ``--profile-steps`` steps, then the same
steps under cProfile (top 25 by cumulative time) or ``torch.profiler`` (top 25 by self CPU time).
With ``--profile --trl-phases`` TRL's phases are measured as well, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

GOAL = 1.5  # our steps/s at least 1.5x TRL's
GROUP_SIZE = 8
PROMPTS_PER_STEP = 4
MAX_NEW_TOKENS = 16
# Optimiser updates per rollout (ours: algorithm.mini_batches; TRL: steps_per_generation).
UPDATES_PER_STEP = 2
MICRO_BATCH = 16
NUM_PROMPTS = 64
BIAS = 2.0  # embedding column 0: +BIAS for characters, -BIAS for special tokens


def _set_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# ---------------------------------------------------------------------------------- fixtures


def build_model(directory: Path, seed: int) -> Path:
    """Writes the tiny model + tokenizer, tweaked so that no special token is ever sampled."""
    import torch

    from rl_trainer.tiny import (
        SPECIAL_TOKENS,
        build_char_tokenizer,
        build_tiny_model,
        save_tiny_model,
    )

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, seed=seed)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight  # tied with the output head
        embedding[:, 0] = BIAS
        for token in SPECIAL_TOKENS:
            embedding[tokenizer.convert_tokens_to_ids(token), 0] = -BIAS
    assert model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    return save_tiny_model(directory, model=model, tokenizer=tokenizer)


def build_prompts(model_dir: Path) -> tuple[Any, Any]:
    """Returns the prompt datasets (ours, TRL's): the same 64 prompts and answers.

    Ours gets "say 17" and applies the tokenizer's chat template itself (its default path); TRL
    gets the same prompt already rendered with that template, as standard (text) prompts, so that
    both pass plain strings to the reward; ``check_prompt_ids`` verifies that the ids agree.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ours, theirs = [], []
    for i in range(NUM_PROMPTS):
        prompt = f"say {i}"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ours.append({"prompt": prompt, "answer": str(i)})
        theirs.append({"prompt": text, "answer": str(i)})
    return Dataset.from_list(ours), Dataset.from_list(theirs)


def make_reward(lengths: list[int]) -> Callable[..., list[float]]:
    """The reward both trainers call; it also records each completion's length (characters)."""

    def answer_share(prompts: list[str], completions: list[str], answer: list[str], **_: Any):
        lengths.extend(len(c) for c in completions)
        return [
            sum(ch in a for ch in c) / len(c) if c else 0.0
            for c, a in zip(completions, answer, strict=True)
        ]

    return answer_share


# ---------------------------------------------------------------------------------- trainers


def build_ours(model_dir: Path, dataset: Any, out: Path, args: argparse.Namespace, reward: Any):
    from rl_trainer.config import load_config
    from rl_trainer.trainer import GRPOTrainer

    total = args.warmup + args.rounds * args.steps + args.profile_steps * 2
    overrides = {
        "model.path": str(model_dir),
        "model.dtype": "float32",
        "data.chat_template": True,
        "rollout.group_size": GROUP_SIZE,
        "rollout.prompts_per_step": PROMPTS_PER_STEP,
        "rollout.max_new_tokens": MAX_NEW_TOKENS,
        "rollout.temperature": 1.0,
        "rollout.top_p": 1.0,
        "rollout.top_k": 0,
        "algorithm.rule": "ppo",
        "algorithm.aggregation": "token-mean",
        "algorithm.advantage": "grpo",
        "algorithm.ppo_epochs": 1,
        "algorithm.mini_batches": UPDATES_PER_STEP,
        "algorithm.kl_coef": 0.0,
        "algorithm.entropy_coef": 0.0,
        "optim.lr": args.lr,
        "optim.scheduler": "constant",
        "optim.max_grad_norm": 1.0,
        "optim.micro_batch_size": MICRO_BATCH,
        "optim.steps": total,
        "optim.seed": args.seed,
        "logging.output_dir": str(out),
        "logging.progress_bar": False,
        "logging.tensorboard": False,
        "logging.log_every": 10**9,
        "checkpoint.save_final": False,
    }
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return GRPOTrainer(config, train_dataset=dataset, reward_functions=[("answer", reward, 1.0)])


def build_trl(
    model_dir: Path,
    dataset: Any,
    out: Path,
    args: argparse.Namespace,
    reward: Any,
    rl_steps: int,
    callbacks: list[Any],
):
    import torch
    from transformers import PrinterCallback
    from trl import GRPOConfig
    from trl import GRPOTrainer as TRLGRPOTrainer

    config = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        fp16=False,
        model_init_kwargs={"dtype": torch.float32},
        gradient_checkpointing=False,
        disable_dropout=True,
        seed=args.seed,
        # batch geometry: 32 completions per generation, 2 optimiser steps of 16 on them
        num_generations=GROUP_SIZE,
        per_device_train_batch_size=MICRO_BATCH,
        steps_per_generation=UPDATES_PER_STEP,
        gradient_accumulation_steps=1,
        num_iterations=1,
        max_steps=rl_steps * UPDATES_PER_STEP,
        # sampling
        max_completion_length=MAX_NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        # loss
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        mask_truncated_completions=False,
        # optimiser
        learning_rate=args.lr,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        # no overhead
        report_to="none",
        logging_steps=10**9,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    trainer = TRLGRPOTrainer(
        model=str(model_dir),
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it would print the end-of-training summary
    return trainer


# ---------------------------------------------------------------------------------- timing


class PhaseTimer:
    """Accumulates wall time of wrapped instance methods, labelled by phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, obj: Any, name: str, label: str | Callable[[], str | None]) -> None:
        """Times ``obj.name``; a callable label is asked at each call (None: not timed)."""
        inner = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            key = label() if callable(label) else label
            if key is None:
                return inner(*a, **k)
            start = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def report(self, title: str, steps: int, total: float) -> None:
        print(f"\n{title}: {total / steps:.3f} s/step over {steps} steps")
        print(f"  {'phase':<44} {'s/step':>8} {'share':>7} {'calls/step':>10}")
        for key, value in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            print(
                f"  {key:<44} {value / steps:>8.4f} {value / total:>7.1%} "
                f"{self.calls[key] / steps:>10.1f}"
            )
        other = total - sum(self.seconds.values())
        print(f"  {'(everything else)':<44} {other / steps:>8.4f} {other / total:>7.1%}")


def no_grad_label(label: str) -> Callable[[], str | None]:
    """Times only the calls made without gradient (TRL's old log-prob pass, not its training
    forward, which ``_compute_loss`` times)."""
    import torch

    return lambda: None if torch.is_grad_enabled() else label


def instrument_ours(trainer: Any, timer: PhaseTimer) -> None:
    timer.wrap(trainer.backend, "generate", "generate (HF generate, 32 x 16 tokens)")
    timer.wrap(trainer, "_score", "old log-probs (no-grad forward)")
    timer.wrap(trainer, "_micro_loss", "training forward + loss")
    timer.wrap(trainer.accelerator, "backward", "backward")
    timer.wrap(trainer.optimizer, "step", "optimiser step")
    timer.wrap(trainer.accelerator, "clip_grad_norm_", "grad-norm clip")


def instrument_trl(trainer: Any, timer: PhaseTimer) -> None:
    timer.wrap(trainer.model, "generate", "generate (HF generate, 32 x 16 tokens)")
    timer.wrap(
        trainer,
        "_get_per_token_logps_and_entropies",
        no_grad_label("old log-probs (no-grad forward)"),
    )
    timer.wrap(trainer, "_compute_loss", "training forward + loss")
    timer.wrap(trainer.accelerator, "backward", "backward")
    timer.wrap(trainer.accelerator, "clip_grad_norm_", "grad-norm clip")
    # The optimiser exists once train() has started: StepClock's on_begin wraps it.


def run_ours(trainer: Any, steps: int, record: dict[str, list[float]]) -> list[float]:
    """Runs ``steps`` RL steps; returns each one's wall time."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        metrics = trainer.train_step()
        times.append(time.perf_counter() - start)
        if metrics.get("skipped"):
            raise RuntimeError("our trainer skipped an update: the work would not be equal")
        record["length"].append(metrics["response_length/mean"])
    return times


def make_trl_callback(
    warmup: int,
    steps: int,
    between_rounds: Callable[[int], None],
    record: dict[str, list],
    on_begin: Callable[[Any], None] | None = None,
) -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Wall time between the ends of consecutive RL steps (every UPDATES_PER_STEP updates)."""

        def __init__(self) -> None:
            self.mark = 0.0
            self.times: list[float] = []
            self.trainer: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if on_begin is not None:
                on_begin(kw["optimizer"])
            self.mark = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % UPDATES_PER_STEP:
                return
            self.times.append(time.perf_counter() - self.mark)
            if self.trainer is not None:
                lengths = self.trainer._metrics["train"].get("completions/mean_length", [])
                if lengths:
                    record["length"].append(float(lengths[-1]))
            rl_step = state.global_step // UPDATES_PER_STEP
            if rl_step >= warmup and (rl_step - warmup) % steps == 0:
                between_rounds((rl_step - warmup) // steps)
            self.mark = time.perf_counter()

    return StepClock()


def summarise(times: list[float], warmup: int, steps: int) -> dict[str, Any]:
    timed = times[warmup:]
    rounds = [statistics.fmean(timed[i : i + steps]) for i in range(0, len(timed), steps)]
    return {
        "rounds": rounds,
        "median": statistics.median(rounds),
        "min": min(rounds),
    }


# ---------------------------------------------------------------------------------- modes


def benchmark(args: argparse.Namespace, model_dir: Path, datasets: tuple, tmp: Path) -> None:
    import torch

    ours_lengths: list[int] = []
    trl_lengths: list[int] = []
    ours_record: dict[str, list[float]] = defaultdict(list)
    trl_record: dict[str, list[float]] = defaultdict(list)
    ours_data, trl_data = datasets
    ours = build_ours(model_dir, ours_data, tmp / "ours", args, make_reward(ours_lengths))
    check_prompt_ids(ours, model_dir, trl_data)

    try:
        import trl
    except ImportError:
        trl = None
    torch.set_num_threads(args.threads)
    if trl is None:
        print("TRL is not installed (rl-trainer's `bench` dependency group): timing ours only.")
        run_ours(ours, args.warmup, ours_record)
        times = run_ours(ours, args.rounds * args.steps, ours_record)
        s = summarise(times, 0, args.steps)
        print(f"ours: {s['median']:.3f} s/step (median of rounds), min {s['min']:.3f}")
        return

    ours_times: list[float] = []

    def ours_round(index: int) -> None:
        torch.set_num_threads(args.threads)
        if index == 0:
            return  # TRL's warm-up just ended; its first timed round comes first
        ours_times.extend(run_ours(ours, args.steps, ours_record))

    # Our warm-up, then TRL's train() with our rounds run from its callback.
    run_ours(ours, args.warmup, ours_record)
    ours_lengths.clear()
    ours_record.clear()
    clock = make_trl_callback(args.warmup, args.steps, ours_round, trl_record)
    rl_steps = args.warmup + args.rounds * args.steps
    trl_trainer = build_trl(
        model_dir, trl_data, tmp / "trl", args, make_reward(trl_lengths), rl_steps, [clock]
    )
    clock.trainer = trl_trainer
    torch.set_num_threads(args.threads)
    trl_trainer.train()
    if len(clock.times) != rl_steps:
        raise RuntimeError(f"TRL ran {len(clock.times)} RL steps, expected {rl_steps}")
    trl_timed_lengths = trl_lengths[args.warmup * GROUP_SIZE * PROMPTS_PER_STEP :]

    o = summarise(ours_times, 0, args.steps)
    t = summarise(clock.times, args.warmup, args.steps)
    per_step = GROUP_SIZE * PROMPTS_PER_STEP

    def tokens(lengths: list[int]) -> float:
        return statistics.fmean(lengths) * per_step

    print(
        f"\nRL step = {PROMPTS_PER_STEP} prompts x {GROUP_SIZE} completions x "
        f"{MAX_NEW_TOKENS} new tokens, {UPDATES_PER_STEP} optimiser updates of {MICRO_BATCH}; "
        f"torch threads {args.threads}; {args.warmup} warm-up + {args.rounds} rounds x "
        f"{args.steps} timed steps each, interleaved"
    )
    print(
        "\n| trainer | s/step median | s/step min | completion tokens/step (reward-side) "
        "| mean completion length (trainer metric) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| rl_trainer GRPOTrainer | {o['median']:.3f} | {o['min']:.3f} | "
        f"{tokens(ours_lengths):.1f} | {statistics.fmean(ours_record['length']):.2f} |"
    )
    print(
        f"| TRL {trl.__version__} GRPOTrainer | {t['median']:.3f} | {t['min']:.3f} | "
        f"{tokens(trl_timed_lengths):.1f} | "
        f"{statistics.fmean(trl_record['length'][args.warmup :]):.2f} |"
    )
    print(f"\nper-round s/step: ours {_fmt(o['rounds'])}; TRL {_fmt(t['rounds'])}")
    if args.verbose:
        print(f"per-step s: ours {_fmt(ours_times)}\n            TRL {_fmt(clock.times)}")
    print(
        f"completion lengths (reward-side): ours min {min(ours_lengths)} max {max(ours_lengths)}; "
        f"TRL min {min(trl_timed_lengths)} max {max(trl_timed_lengths)}"
    )
    speedup = t["median"] / o["median"]
    print(f"\nspeed-up vs TRL GRPOTrainer: {speedup:.2f}x steps/s (median of rounds)")
    print(f"  best-of-rounds: {t['min'] / o['min']:.2f}x; goal >= {GOAL:.1f}x: ", end="")
    print("met" if speedup >= GOAL else "NOT met")


def profile(args: argparse.Namespace, model_dir: Path, datasets: tuple, tmp: Path) -> None:
    import torch

    lengths: list[int] = []
    record: dict[str, list[float]] = defaultdict(list)
    ours_data, trl_data = datasets
    ours = build_ours(model_dir, ours_data, tmp / "ours", args, make_reward(lengths))
    torch.set_num_threads(args.threads)
    run_ours(ours, args.warmup, record)

    timer = PhaseTimer()
    instrument_ours(ours, timer)
    total = sum(run_ours(ours, args.profile_steps, record))
    timer.report("ours, phases", args.profile_steps, total)

    if args.trl_phases:
        trl_timer = PhaseTimer()
        trl_lengths: list[int] = []
        trl_record: dict[str, list] = defaultdict(list)

        def after_warmup(index: int) -> None:
            if index == 0:
                trl_timer.reset()

        clock = make_trl_callback(
            args.warmup,
            args.profile_steps,
            after_warmup,
            trl_record,
            on_begin=lambda optimizer: trl_timer.wrap(optimizer, "step", "optimiser step"),
        )
        trainer = build_trl(
            model_dir,
            trl_data,
            tmp / "trl",
            args,
            make_reward(trl_lengths),
            args.warmup + args.profile_steps,
            [clock],
        )
        clock.trainer = trainer
        instrument_trl(trainer, trl_timer)
        torch.set_num_threads(args.threads)
        trainer.train()
        trl_timer.report(
            "TRL, phases",
            args.profile_steps,
            sum(clock.times[args.warmup :]),
        )

    print(f"\nours under {args.profiler}, {args.profile_steps} steps:")
    if args.profiler == "torch":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run_ours(ours, args.profile_steps, record)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    else:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        run_ours(ours, args.profile_steps, record)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(25)


def check_prompt_ids(ours: Any, model_dir: Path, dataset: Any) -> None:
    """Both trainers must see the same prompt token ids (TRL encodes text prompts itself)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    theirs = tokenizer(text=list(dataset["prompt"]))["input_ids"]
    if [list(ids) for ids in theirs] != [list(ids) for ids in ours.train_prompts.prompt_ids]:
        raise RuntimeError("the two trainers would encode the prompts differently")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed RL steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed RL steps first")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per trainer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every step's time too")
    parser.add_argument("--profile", action="store_true", help="profile our trainer instead")
    parser.add_argument("--profiler", choices=["cprofile", "torch"], default="cprofile")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument(
        "--trl-phases", action="store_true", help="with --profile: TRL's phase breakdown too"
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.threads, args.profile_steps) < 1 or args.warmup < 1:
        parser.error("--steps, --rounds, --threads, --profile-steps and --warmup must be >= 1")

    _set_env()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} on {os.cpu_count()} CPUs", end="")
    print(" (recent other work: timings may be noisy)" if load > 0.5 else "")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as name, _quiet_warnings():
        tmp = Path(name)
        model_dir = build_model(tmp / "model", args.seed)
        datasets = build_prompts(model_dir)
        if args.profile:
            profile(args, model_dir, datasets, tmp)
        else:
            benchmark(args, model_dir, datasets, tmp)


if __name__ == "__main__":
    main()
