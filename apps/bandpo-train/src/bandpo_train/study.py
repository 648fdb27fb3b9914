"""``bandpo-train study``: PPO vs Clip-Higher vs Band on the toy tasks, over several RL seeds.

The BandPO claim tested at small scale: ratio bounds that widen for low-probability tokens let
rare correct answers grow, so reward rises faster and entropy collapses less than under PPO's
constant clip. The study reports whatever the runs show, including "no significant difference".

Arms (fixed before any run; never tuned on the results):

- ``ppo``: ``PPO(eps=0.2)``, bounds [0.8, 1.2] for every token.
- ``clip_higher``: ``ClipHigher(eps_low=0.2, eps_high=0.28)``, DAPO's [0.8, 1.28].
- ``band_kl``: ``Band(divergence="kl", delta=0.05, max_ratio=10)``: the paper's delta and cap.
  Bounds [0.692, 1.308] at p = 0.5, [0.262, 2.411] at p = 0.08, [0.002, 7.81] at p = 0.01.
- ``band_tv``: ``Band(divergence="tv", delta=0.15, max_ratio=10)``. TV's band is
  r = 1 -/+ delta/p, so delta = 0.15 gives [0.70, 1.30] at p = 0.5, the same width as KL at
  delta 0.05 there ([0.692, 1.308], band-ops README table); it is [0, 2.875] at p = 0.08 and
  [0, 10] (the cap) at p = 0.01. Note its lower bound reaches 0 for p <= 0.15.

Everything else is the app's embedded default (tiny model, rollouts of 32 prompts x 8, lr 1e-4,
dual clip 10, seq-mean-token-mean) with ``algorithm.mini_batches=4`` and
``algorithm.ppo_epochs=2``: 8 optimiser steps per rollout, so the policy moves away from the
sampling policy and the bounds act.

Tasks: ``rare`` (the main one: several correct digits per prompt, the warm start favours "0",
right for a third of the prompts), ``addition`` (one correct answer) and ``control``: the rare
task trained on ``random_coin``, a reward that ignores correctness (a fixed hash of prompt and
completion). In the control the task's own reward ``one_of`` is logged with weight 0 (it does
not enter the advantage) and is what ``eval.correct_reward`` scores: pass@k and greedy accuracy
there measure the task, mean@4 the coin. The control asks whether a rule's advantage is about
the task's rare correct answers or just about fitting any reward faster.

Seeds: ``--seeds N`` runs ``optim.seed = 0 .. N-1`` (data order, sampling, updates). The warm
start is fixed per task (``task.seed=0``), built once and copied into every run, so all arms and
seeds of a task start from the same weights; the same seed gives every arm the same first
rollout, so differences between arms are paired by seed.

Statistics, per task x arm, over seeds:

- final reward: mean ``reward_mean`` over the last 10% of RL steps (at least one);
- reward AUC: mean rollout reward over all RL steps (learning speed, also before saturation);
- held-out ``eval/mean@4``, ``eval/pass@1``, ``eval/pass@4``, ``eval/greedy_accuracy``;
- RL steps to threshold: the first RL step whose trailing 10-step moving average of the rollout
  reward reaches threshold = warm-start reward + 0.1, where the warm-start reward is the mean
  reward of the first rollout (before any update) over all runs of the task. A run that never
  gets there is censored at the number of RL steps ("> N");
- entropy AUC: mean token entropy over all optimiser steps (area under the curve / steps);
- ``clip_frac_low``, ``clip_frac_high``: mean over all optimiser steps; ``clip_frac_p<0.01``:
  the fraction of all tokens with old probability below 0.01 that were clipped (per-step bucket
  fractions weighted by the bucket's token share);
- 95% intervals: Student-t intervals, mean +/- t(0.975, n-1) s / sqrt(n), with the t quantiles
  hard-coded (no scipy); differences to ``ppo`` are paired by seed, same interval. No
  correction for multiple comparisons.

Plots: ``reward_<task>.png`` and ``entropy_<task>.png``, x = optimiser step, each seed smoothed
by a trailing moving average over 10 RL steps (80 optimiser steps), then the mean over seeds
with a shaded 95% t-interval.

Outputs in ``--out`` (default ``runs/bandpo-study``; ``runs/bandpo-study-quick`` with
``--quick``): ``<task>/<arm>/seed<k>/`` per run, ``results.csv``, ``summary.csv``,
``summary.md``, ``differences.csv``, the PNGs and ``study.json`` (exact settings and versions).
A run whose ``run.json`` exists with the same settings is skipped, so a study resumes; a failed
run is reported in the tables and does not stop the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bandpo_train.records import read_metrics
from bandpo_train.study_stats import (  # noqa: F401  (re-exported for callers and tests)
    FINAL_FRACTION,
    LOW_BUCKET,
    SMOOTH_RL_STEPS,
    T_975,
    CensoredSummary,
    Interval,
    auc_per_step,
    censored_summary,
    finite,
    moving_average,
    steps_to_threshold,
    t_interval,
    t_quantile,
    tail_mean,
    weighted_bucket_clip,
)
from bandpo_train.versions import versions

# --------------------------------------------------------------------------------------------
# what is compared


@dataclass(frozen=True)
class Arm:
    """One clipping rule with its parameters."""

    name: str
    rule: str
    params: dict[str, Any]
    why: str


@dataclass(frozen=True)
class StudyTask:
    """One task of the study: the app's task, its correctness reward and extra overrides."""

    name: str
    task: str
    correct_reward: str
    overrides: tuple[str, ...] = ()
    about: str = ""


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("ppo", "ppo", {"eps": 0.2}, "PPO's symmetric clip [0.8, 1.2]"),
        Arm(
            "clip_higher",
            "clip_higher",
            {"eps_low": 0.2, "eps_high": 0.28},
            "DAPO's decoupled clip [0.8, 1.28]",
        ),
        Arm(
            "band_kl",
            "band",
            {"divergence": "kl", "delta": 0.05, "max_ratio": 10.0},
            "the paper's KL delta 0.05 and cap 10",
        ),
        Arm(
            "band_tv",
            "band",
            {"divergence": "tv", "delta": 0.15, "max_ratio": 10.0},
            "TV delta 0.15: [0.70, 1.30] at p=0.5, the width of KL 0.05 there ([0.692, 1.308])",
        ),
    )
}
REFERENCE_ARM = "ppo"

STUDY_TASKS: dict[str, StudyTask] = {
    t.name: t
    for t in (
        StudyTask(
            "rare",
            "rare",
            "one_of",
            about="main task: correct answers other than '0' start at low probability",
        ),
        StudyTask(
            "control",
            "rare",
            "one_of",
            (
                "algorithm.rewards=[{name: random_coin}, {name: one_of, weight: 0.0}]",
                "eval.correct_reward=one_of",
            ),
            about="rare prompts, trained on random_coin (ignores correctness); one_of logged "
            "with weight 0 and used by eval pass@k / greedy accuracy; mean@4 is the coin",
        ),
        StudyTask("addition", "addition", "exact_match", about="one correct answer per prompt"),
    )
}

PPO_EPOCHS = 2
MINI_BATCHES = 4
UPDATES_PER_ROLLOUT = PPO_EPOCHS * MINI_BATCHES
EVAL_K = 4
TASK_SEED = 0
DEFAULT_SEEDS = 5
# Chosen from measured run times, not from results: at one torch thread a 300-step run takes
# ~25 s (rare, control) to ~35-45 s (addition) on a shared 2-core CPU, so 3 tasks x 4 arms x 5
# seeds fit ~35 minutes (the measured study took 29.3 minutes).
DEFAULT_STEPS = 300
DEFAULT_OUT = "runs/bandpo-study"
QUICK_OUT = "runs/bandpo-study-quick"
QUICK_STEPS = 6
# --quick: small task, short warm start, small rollouts (CI: well under 2 minutes).
QUICK_OVERRIDES = (
    "task.train_size=128",
    "task.eval_size=16",
    "warm_start.steps=40",
    "rollout.prompts_per_step=8",
    "rollout.group_size=4",
)
COMMON_OVERRIDES = (
    f"algorithm.ppo_epochs={PPO_EPOCHS}",
    f"algorithm.mini_batches={MINI_BATCHES}",
    f"task.seed={TASK_SEED}",
    f"eval.k={EVAL_K}",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "plots=false",
    "checkpoint.save_final=false",
)
THRESHOLD_MARGIN = 0.1  # threshold = warm-start reward + this
QUICK_NOTE = " (--quick: tiny sizes and few steps, a smoke run, not a result)"


# --------------------------------------------------------------------------------------------
# running


@dataclass
class Settings:
    """What a study runs."""

    out: Path
    tasks: list[str]
    arms: list[str]
    seeds: int
    steps: int
    quick: bool = False
    threads: int = 1
    extra: tuple[str, ...] = ()
    argv: list[str] = field(default_factory=list)


def run_dir(out: Path, task: str, arm: str, seed: int) -> Path:
    return out / task / arm / f"seed{seed}"


def run_overrides(
    task: StudyTask, seed: int, steps: int, output_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """Returns the key=value overrides of one run (:func:`build_config` sets the rule)."""
    return [
        f"output_dir={output_dir}",
        f"task.name={task.task}",
        f"optim.seed={seed}",
        f"optim.steps={steps}",
        *COMMON_OVERRIDES,
        *extra,
        *task.overrides,
    ]


def build_config(overrides: Sequence[str], arm: Arm) -> Any:
    """Returns the run's AppConfig with ``arm``'s rule.

    ``rule_params`` is assigned after loading rather than passed as an override: overrides merge
    dicts key by key, so ``algorithm.rule_params={eps: 0.2}`` would keep the app default's Band
    keys (divergence, delta, max_ratio) and PPO would reject them.
    """
    import band_ops
    from bandpo_train.config import load_app_config

    config = load_app_config(None, [*overrides, f"algorithm.rule={arm.rule}"])
    config.algorithm.rule_params = dict(arm.params)
    band_ops.get_rule(arm.rule, **arm.params)  # fail here on a bad arm, not inside the trainer
    return config


def ensure_warm_start(out: Path, task: StudyTask, extra: Sequence[str]) -> Path:
    """Builds (once) the warm-started model and data of ``task.task``; returns its directory."""
    from bandpo_train.config import load_app_config
    from bandpo_train.embedded import DONE, prepare_embedded

    root = out / "warm_start" / task.task
    spec = {"task": task.task, "task_seed": TASK_SEED, "extra": list(extra)}
    marker = root / "study_warm_start.json"
    if (root / "embedded" / DONE).is_file() and _read_json(marker) == spec:
        return root / "embedded"
    shutil.rmtree(root, ignore_errors=True)
    config = load_app_config(
        None, [f"output_dir={root}", f"task.name={task.task}", f"task.seed={TASK_SEED}", *extra]
    )
    prepare_embedded(config, build=True)
    marker.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return root / "embedded"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_one(settings: Settings, task: StudyTask, arm: Arm, seed: int) -> str:
    """Runs one (task, arm, seed) unless done with the same settings; returns the status."""
    from bandpo_train.run import train

    target = run_dir(settings.out, task.name, arm.name, seed)
    overrides = run_overrides(task, seed, settings.steps, target, settings.extra)
    spec = {"overrides": overrides, "rule": arm.rule, "rule_params": arm.params}
    if (target / "run.json").is_file() and _read_json(target / "study_run.json") == spec:
        return "skipped"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    (target / "study_run.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    try:
        warm = ensure_warm_start(settings.out, task, settings.extra)
        shutil.copytree(warm, target / "embedded")
        train(build_config(overrides, arm))
    except Exception as exc:
        (target / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return "error"
    return "ran"


# --------------------------------------------------------------------------------------------
# analysis


def per_rl_step(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Returns the first record's ``key`` of each RL step, in order (rollout metrics repeat
    over the optimiser steps of an RL step); NaN where missing."""
    out: dict[int, float] = {}
    for r in records:
        step = int(r.get("rl_step", 0))
        if step not in out:
            value = r.get(key)
            out[step] = float(value) if isinstance(value, int | float) else math.nan
    return [out[k] for k in sorted(out)]


def series(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Returns ``key`` per optimiser step (NaN where missing)."""
    return [float(r[key]) if isinstance(r.get(key), int | float) else math.nan for r in records]


RESULT_FIELDS = [
    "task",
    "arm",
    "seed",
    "status",
    "rule",
    "rule_params",
    "rl_steps",
    "optimizer_steps",
    "wall_s",
    "reward_first",
    "final_reward",
    "final_correct",
    "reward_auc",
    "eval_mean@4",
    "eval_pass@1",
    "eval_pass@4",
    "eval_greedy_accuracy",
    "threshold",
    "steps_to_threshold",
    "threshold_censored",
    "entropy_auc",
    "entropy_final",
    "clip_frac_low",
    "clip_frac_high",
    "clip_frac_p<0.01",
    "clip_frac_p0.01-0.1",
    "approx_kl",
    "error",
    "output_dir",
]


def analyse_run(directory: Path, task: StudyTask) -> dict[str, Any]:
    """Returns the per-run numbers (without the threshold, which needs every run of the task)."""
    records = read_metrics(directory / "metrics.jsonl")
    summary = _read_json(directory / "run.json") or {}
    evaluation = _read_json(directory / "eval.json") or {}
    rewards = per_rl_step(records, "reward_mean")
    correct = per_rl_step(records, f"reward/{task.correct_reward}")
    entropy = series(records, "entropy")
    row: dict[str, Any] = {
        "rl_steps": summary.get("rl_steps", len(rewards)),
        "optimizer_steps": summary.get("optimizer_steps", len(records)),
        "wall_s": summary.get("wall_s"),
        "reward_first": rewards[0] if rewards else math.nan,
        "final_reward": tail_mean(rewards),
        "final_correct": tail_mean(correct),
        "reward_auc": auc_per_step(rewards),
        "eval_mean@4": evaluation.get(f"eval/mean@{EVAL_K}", math.nan),
        "eval_pass@1": evaluation.get("eval/pass@1", math.nan),
        "eval_pass@4": evaluation.get(f"eval/pass@{EVAL_K}", math.nan),
        "eval_greedy_accuracy": evaluation.get("eval/greedy_accuracy", math.nan),
        "entropy_auc": auc_per_step(entropy),
        "entropy_final": tail_mean(finite(entropy)),
        "clip_frac_low": auc_per_step(series(records, "clip_frac_low")),
        "clip_frac_high": auc_per_step(series(records, "clip_frac_high")),
        "clip_frac_p<0.01": weighted_bucket_clip(records, "p<0.01"),
        "clip_frac_p0.01-0.1": weighted_bucket_clip(records, "p0.01-0.1"),
        "approx_kl": auc_per_step(series(records, "approx_kl")),
        "_rewards": rewards,
        "_reward_curve": series(records, "reward_mean"),
        "_entropy_curve": entropy,
    }
    return row


SUMMARY_METRICS: list[tuple[str, str]] = [
    ("final_reward", "final reward"),
    ("final_correct", "final correct"),
    ("reward_auc", "reward AUC"),
    ("eval_mean@4", "mean@4"),
    ("eval_pass@1", "pass@1"),
    ("eval_pass@4", "pass@4"),
    ("eval_greedy_accuracy", "greedy acc."),
    ("entropy_auc", "entropy AUC"),
    ("clip_frac_low", "clip low"),
    ("clip_frac_high", "clip high"),
    ("clip_frac_p<0.01", "clip p<0.01"),
]
DIFF_METRICS = [
    "final_reward",
    "final_correct",
    "reward_auc",
    "eval_pass@1",
    "eval_pass@4",
    "eval_greedy_accuracy",
    "entropy_auc",
]


def collect(settings: Settings, statuses: dict[tuple[str, str, int], str]) -> list[dict[str, Any]]:
    """Returns one row per (task, arm, seed) of the selection, thresholds filled in."""
    rows: list[dict[str, Any]] = []
    for task_name in settings.tasks:
        task = STUDY_TASKS[task_name]
        task_rows = []
        for arm_name in settings.arms:
            arm = ARMS[arm_name]
            for seed in range(settings.seeds):
                directory = run_dir(settings.out, task_name, arm_name, seed)
                row: dict[str, Any] = {
                    "task": task_name,
                    "arm": arm_name,
                    "seed": seed,
                    "rule": arm.rule,
                    "rule_params": json.dumps(arm.params, sort_keys=True),
                    "output_dir": str(directory),
                }
                status = statuses.get((task_name, arm_name, seed), "skipped")
                if (directory / "run.json").is_file() and status != "error":
                    row["status"] = "ok"
                    try:
                        row.update(analyse_run(directory, task))
                    except Exception as exc:  # a damaged output is a row, not a crash
                        row["status"] = "error"
                        row["error"] = f"analysis: {type(exc).__name__}: {exc}"
                else:
                    row["status"] = "error"
                    error = directory / "error.txt"
                    lines = (
                        error.read_text(encoding="utf-8").strip().splitlines()
                        if (error.is_file())
                        else ["no run.json"]
                    )
                    row["error"] = lines[-1] if lines else "unknown"
                task_rows.append(row)
        ok = [r for r in task_rows if r["status"] == "ok"]
        warm = finite([r["reward_first"] for r in ok])
        threshold = (sum(warm) / len(warm) + THRESHOLD_MARGIN) if warm else math.nan
        for r in ok:
            r["threshold"] = threshold
            steps, censored = steps_to_threshold(r["_rewards"], threshold)
            r["steps_to_threshold"] = steps
            r["threshold_censored"] = censored
        rows.extend(task_rows)
    return rows


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_results(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(r.get(k, "")) for k in RESULT_FIELDS})


def summarise(settings: Settings, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns one summary per (task, arm): intervals of every metric and steps-to-threshold."""
    out = []
    for task in settings.tasks:
        for arm in settings.arms:
            group = [r for r in rows if r["task"] == task and r["arm"] == arm]
            ok = [r for r in group if r["status"] == "ok"]
            entry: dict[str, Any] = {
                "task": task,
                "arm": arm,
                "n_ok": len(ok),
                "n_failed": len(group) - len(ok),
                "intervals": {m: t_interval([r.get(m) for r in ok]) for m, _ in SUMMARY_METRICS},
                "threshold": ok[0]["threshold"] if ok else math.nan,
                "steps": censored_summary(
                    [int(r["steps_to_threshold"]) for r in ok],
                    [bool(r["threshold_censored"]) for r in ok],
                    settings.steps,
                ),
            }
            out.append(entry)
    return out


def paired_differences(settings: Settings, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns arm - ppo per task and metric, paired by seed (seeds where both ran)."""
    out: list[dict[str, Any]] = []
    if REFERENCE_ARM not in settings.arms:
        return out
    index = {(r["task"], r["arm"], r["seed"]): r for r in rows if r["status"] == "ok"}
    for task in settings.tasks:
        for arm in settings.arms:
            if arm == REFERENCE_ARM:
                continue
            for metric in DIFF_METRICS:
                diffs = []
                for seed in range(settings.seeds):
                    a, b = index.get((task, arm, seed)), index.get((task, REFERENCE_ARM, seed))
                    if a is not None and b is not None:
                        diffs.append(float(a[metric]) - float(b[metric]))
                out.append(
                    {"task": task, "arm": arm, "metric": metric, "interval": t_interval(diffs)}
                )
    return out


def write_summary_csv(path: Path, summary: Sequence[dict[str, Any]]) -> None:
    fields = ["task", "arm", "n_ok", "n_failed"]
    for m, _ in SUMMARY_METRICS:
        fields += [f"{m}_mean", f"{m}_lo", f"{m}_hi"]
    fields += [
        "threshold",
        "steps_mean",
        "steps_lo",
        "steps_hi",
        "steps_reached",
        "steps_lower_bound_mean",
        "steps_median",
        "steps_limit",
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for s in summary:
            row: dict[str, Any] = {k: s[k] for k in ("task", "arm", "n_ok", "n_failed")}
            for m, _ in SUMMARY_METRICS:
                iv = s["intervals"][m]
                row.update({f"{m}_mean": iv.mean, f"{m}_lo": iv.lo, f"{m}_hi": iv.hi})
            st: CensoredSummary = s["steps"]
            row.update(
                {
                    "threshold": s["threshold"],
                    "steps_mean": st.interval.mean,
                    "steps_lo": st.interval.lo,
                    "steps_hi": st.interval.hi,
                    "steps_reached": f"{st.reached}/{st.n}",
                    "steps_lower_bound_mean": st.lower_bound_mean,
                    "steps_median": st.median_text,
                    "steps_limit": st.limit,
                }
            )
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def write_differences_csv(path: Path, diffs: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "arm", "vs", "metric", "n", "diff_mean", "diff_lo", "diff_hi"])
        for d in diffs:
            iv: Interval = d["interval"]
            writer.writerow(
                [d["task"], d["arm"], REFERENCE_ARM, d["metric"], iv.n]
                + [_fmt(v) for v in (iv.mean, iv.lo, iv.hi)]
            )


def write_summary_md(
    path: Path,
    settings: Settings,
    summary: Sequence[dict[str, Any]],
    diffs: Sequence[dict[str, Any]],
    wall_s: float,
) -> None:
    lines = [
        "# BandPO clipping study",
        "",
        f"{settings.seeds} seed(s) (optim.seed 0..{settings.seeds - 1}), {settings.steps} RL "
        f"steps per run x {UPDATES_PER_ROLLOUT} optimiser steps (ppo_epochs {PPO_EPOCHS} x "
        f"mini_batches {MINI_BATCHES}); warm start fixed per task (task.seed={TASK_SEED}), "
        f"shared by every arm and seed{QUICK_NOTE if settings.quick else ''}.",
        "",
        "Arms (fixed before the runs):",
        "",
    ]
    for name in settings.arms:
        spec = ARMS[name]
        lines.append(f"- `{name}`: rule `{spec.rule}` {json.dumps(spec.params)}: {spec.why}")
    lines += [
        "",
        "Tasks:",
        "",
        *(f"- `{t}`: {STUDY_TASKS[t].about}" for t in settings.tasks),
        "",
        "Cells: mean [95% Student-t interval] over seeds. Final reward / final correct: mean "
        f"rollout reward / correctness reward over the last {FINAL_FRACTION:.0%} of RL steps. "
        "Reward AUC: mean rollout reward over all RL steps. "
        f"mean@{EVAL_K}, pass@1, pass@{EVAL_K}, greedy acc.: held-out evaluation at the end. "
        "Entropy AUC: mean token entropy over optimiser steps. Clip low/high: mean clip "
        "fractions over optimiser steps; clip p<0.01: fraction of old-p<0.01 tokens clipped. "
        f"Steps to threshold: RL steps until the trailing {SMOOTH_RL_STEPS}-step mean reward "
        f"reaches warm-start reward + {THRESHOLD_MARGIN} (censored runs: '> N'; with some "
        "censored, '>=' a lower-bound mean).",
        "",
    ]
    for task in settings.tasks:
        rows = [s for s in summary if s["task"] == task]
        threshold = next((s["threshold"] for s in rows if math.isfinite(s["threshold"])), math.nan)
        lines += [f"## {task}", "", f"Threshold: reward >= {threshold:.3f}.", ""]
        header = ["arm", "runs", *(label for _, label in SUMMARY_METRICS), "RL steps to thr."]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + " --- |" * len(header))
        for s in rows:
            runs = f"{s['n_ok']}" + (f" ({s['n_failed']} failed)" if s["n_failed"] else "")
            cells = [s["arm"], runs]
            for m, _ in SUMMARY_METRICS:
                cells.append(s["intervals"][m].text(3))
            cells.append(s["steps"].text())
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![reward](reward_{task}.png) ![entropy](entropy_{task}.png)", ""]
    if diffs:
        lines += [
            f"## Differences to `{REFERENCE_ARM}`, paired by seed",
            "",
            "mean [95% t-interval] of (arm - ppo); * where the interval excludes 0 "
            "(no multiple-comparison correction).",
            "",
        ]
        header = ["task", "arm", *DIFF_METRICS]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + " --- |" * len(header))
        for task in settings.tasks:
            for arm in settings.arms:
                if arm == REFERENCE_ARM:
                    continue
                cells = [task, arm]
                for metric in DIFF_METRICS:
                    d = next(
                        x
                        for x in diffs
                        if x["task"] == task and x["arm"] == arm and x["metric"] == metric
                    )
                    iv: Interval = d["interval"]
                    cells.append(iv.text(3) + (" *" if iv.excludes_zero() else ""))
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Study wall time (this invocation): {wall_s / 60:.1f} min.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


ARM_COLOURS = {
    "ppo": "tab:blue",
    "clip_higher": "tab:orange",
    "band_kl": "tab:green",
    "band_tv": "tab:red",
}


def plot_task(
    path: Path,
    settings: Settings,
    rows: Sequence[dict[str, Any]],
    task: str,
    curve: str,
    ylabel: str,
) -> None:
    """Writes one PNG: per arm, the mean over seeds of the smoothed curve and its 95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = SMOOTH_RL_STEPS * UPDATES_PER_ROLLOUT
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    drawn = False
    for arm in settings.arms:
        curves = [
            moving_average(_fill_nan(r[curve]), width)
            for r in rows
            if r["task"] == task and r["arm"] == arm and r["status"] == "ok" and r[curve]
        ]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        xs = list(range(1, length + 1))
        stats = [t_interval([c[i] for c in curves]) for i in range(length)]
        colour = ARM_COLOURS.get(arm)
        ax.plot(xs, [s.mean for s in stats], label=f"{arm} (n={len(curves)})", color=colour)
        if len(curves) > 1:
            ax.fill_between(
                xs, [s.lo for s in stats], [s.hi for s in stats], color=colour, alpha=0.2
            )
        drawn = True
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: mean over seeds, 95% t band, trailing mean of {width} steps", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fill_nan(values: Sequence[float]) -> list[float]:
    """Returns ``values`` with each NaN replaced by the previous finite value (0 at the start)."""
    out, last = [], 0.0
    for v in values:
        last = v if math.isfinite(v) else last
        out.append(last)
    return out


def _band_table(params: dict[str, Any]) -> dict[str, list[float]]:
    import torch

    import band_ops

    ps = [0.001, 0.01, 0.08, 0.2, 0.5, 0.9]
    lower, upper = band_ops.get_rule(**params).bounds(torch.log(torch.tensor(ps)))
    return {
        f"p={p}": [round(float(lo), 4), round(float(hi), 4)]
        for p, lo, hi in zip(ps, lower, upper, strict=True)
    }


def write_study_json(
    path: Path,
    settings: Settings,
    rows: Sequence[dict[str, Any]],
    counts: dict[str, int],
    started: float,
) -> None:
    thresholds = {}
    for task in settings.tasks:
        values = [r["threshold"] for r in rows if r["task"] == task and r["status"] == "ok"]
        thresholds[task] = values[0] if values else None
    data = {
        "command": ["bandpo-train", "study", *settings.argv],
        "out": str(settings.out),
        "quick": settings.quick,
        "seeds": list(range(settings.seeds)),
        "rl_steps_per_run": settings.steps,
        "ppo_epochs": PPO_EPOCHS,
        "mini_batches": MINI_BATCHES,
        "optimizer_steps_per_run": settings.steps * UPDATES_PER_ROLLOUT,
        "task_seed": TASK_SEED,
        "torch_threads": settings.threads,
        "arms": {
            a: {**asdict(ARMS[a]), "bounds": _band_table({"name": ARMS[a].rule, **ARMS[a].params})}
            for a in settings.arms
        },
        "tasks": {t: asdict(STUDY_TASKS[t]) for t in settings.tasks},
        "common_overrides": list(COMMON_OVERRIDES),
        "extra_overrides": list(settings.extra),
        "final_fraction": FINAL_FRACTION,
        "smoothing_rl_steps": SMOOTH_RL_STEPS,
        "smoothing_optimizer_steps": SMOOTH_RL_STEPS * UPDATES_PER_ROLLOUT,
        "threshold_rule": f"mean first-rollout reward of the task's runs + {THRESHOLD_MARGIN}",
        "thresholds": thresholds,
        "interval": "95% Student-t, hard-coded t(0.975, df) quantiles",
        "runs": counts,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": time.time() - started,
        "versions": versions(),
    }
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def aggregate(
    settings: Settings,
    statuses: dict[tuple[str, str, int], str],
    counts: dict[str, int],
    started: float,
) -> list[dict[str, Any]]:
    """Writes results.csv, summary.csv/md, differences.csv, the plots and study.json."""
    out = settings.out
    rows = collect(settings, statuses)
    write_results(out / "results.csv", rows)
    summary = summarise(settings, rows)
    diffs = paired_differences(settings, rows)
    write_summary_csv(out / "summary.csv", summary)
    write_differences_csv(out / "differences.csv", diffs)
    for task in settings.tasks:
        plot_task(out / f"reward_{task}.png", settings, rows, task, "_reward_curve", "reward")
        plot_task(
            out / f"entropy_{task}.png", settings, rows, task, "_entropy_curve", "entropy (nats)"
        )
    write_summary_md(out / "summary.md", settings, summary, diffs, time.time() - started)
    write_study_json(out / "study.json", settings, rows, counts, started)
    return rows


# --------------------------------------------------------------------------------------------
# command line


def _names(valid: dict[str, Any], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or '(none)'}; valid: {', '.join(valid)}"
            )
        return names

    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bandpo-train study",
        description="PPO vs Clip-Higher vs Band (KL, TV) on the toy tasks over several seeds.",
    )
    parser.add_argument("--seeds", type=_positive_int, help=f"RL seeds (default {DEFAULT_SEEDS})")
    parser.add_argument(
        "--steps", type=_positive_int, help=f"RL steps per run (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--out", help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--tasks",
        type=_names(STUDY_TASKS, "task"),
        default=list(STUDY_TASKS),
        help=f"comma-separated, run in this order (default {','.join(STUDY_TASKS)})",
    )
    parser.add_argument(
        "--arms",
        type=_names(ARMS, "arm"),
        default=list(ARMS),
        help=f"comma-separated (default {','.join(ARMS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 seed, {QUICK_STEPS} RL steps, tiny task sizes (CI smoke run, not a result)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads per run (default 1: on a shared 2-core machine more threads "
        "oversubscribe the cores and run many times slower)",
    )
    args = parser.parse_args(list(argv))
    quick = bool(args.quick)
    return Settings(
        out=Path(args.out or (QUICK_OUT if quick else DEFAULT_OUT)),
        tasks=args.tasks,
        arms=args.arms,
        seeds=args.seeds or (1 if quick else DEFAULT_SEEDS),
        steps=args.steps or (QUICK_STEPS if quick else DEFAULT_STEPS),
        quick=quick,
        threads=args.threads,
        extra=QUICK_OVERRIDES if quick else (),
        argv=list(argv),
    )


def run_study(settings: Settings) -> list[dict[str, Any]]:
    """Runs every missing (task, arm, seed) of ``settings`` one after another, then aggregates."""
    import torch

    started = time.time()
    settings.out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    print(
        f"study: tasks {','.join(settings.tasks)}; arms "
        + "; ".join(f"{a}={ARMS[a].rule}{json.dumps(ARMS[a].params)}" for a in settings.arms)
        + f"; {settings.seeds} seed(s); {settings.steps} RL steps x {UPDATES_PER_ROLLOUT} "
        f"updates; out {settings.out}",
        flush=True,
    )
    statuses: dict[tuple[str, str, int], str] = {}
    plan = [
        (t, a, s)
        for t in settings.tasks
        for s in range(settings.seeds)  # seeds outer: a cut-short study keeps paired seeds
        for a in settings.arms
    ]
    try:
        for i, (task, arm, seed) in enumerate(plan, 1):
            t0 = time.time()
            status = run_one(settings, STUDY_TASKS[task], ARMS[arm], seed)
            statuses[(task, arm, seed)] = status
            print(
                f"[{i}/{len(plan)}] {task} {arm} seed{seed}: {status} ({time.time() - t0:.0f} s)",
                flush=True,
            )
    finally:
        torch.set_num_threads(previous_threads)
    counts = {k: sum(1 for v in statuses.values() if v == k) for k in ("ran", "skipped", "error")}
    rows = aggregate(settings, statuses, counts, started)
    print(
        f"study: {counts} in {(time.time() - started) / 60:.1f} min; {settings.out / 'summary.md'}",
        flush=True,
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``bandpo-train study ...``; returns the exit status (1 when a run failed)."""
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run_study(settings)
    print((settings.out / "summary.md").read_text(encoding="utf-8"))
    return 1 if any(r["status"] != "ok" for r in rows) else 0
