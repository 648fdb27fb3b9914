"""From run folders to the study's numbers: one row per run, the regime precondition, the
per-arm summaries and the paired comparisons with PPO (Holm-corrected)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bandpo_train.probe import PROBE_FILE, read_probe
from bandpo_train.records import read_metrics
from bandpo_train.study.design import (
    ALPHA,
    ARMS,
    LOW_BUCKET,
    PASS_K,
    REFERENCE_ARM,
    REGIME_SHARE,
    SUCCESS_P,
    Settings,
)
from bandpo_train.study.runner import run_dir
from bandpo_train.study_stats import (
    Interval,
    auc_per_step,
    clopper_pearson,
    holm,
    paired_permutation_p,
    t_interval,
)

#: band-ops' signed clip counts (``policy_loss`` metrics) that the precondition pools.
ACTIVE_UPPER = f"clipped_upper/pos/{LOW_BUCKET}"
ACTIVE_LOWER = f"clipped_lower/neg/{LOW_BUCKET}"
POSITIVE_LOW = f"count/pos/{LOW_BUCKET}"
NEGATIVE_LOW = f"count/neg/{LOW_BUCKET}"

RESULT_FIELDS = [
    "lr",
    "arm",
    "seed",
    "status",
    "rule",
    "rule_params",
    "rl_steps",
    "wall_s",
    "p_correct_first",
    "p_correct_final",
    "success",
    f"pass@{PASS_K}_final",
    "p_decoy_final",
    "answer_entropy_first",
    "answer_entropy_auc",
    "answer_entropy_final",
    "reward_auc",
    "pos_low_tokens",
    "pos_low_clipped_upper",
    "neg_low_tokens",
    "neg_low_clipped_lower",
    "error",
    "output_dir",
]

#: (column, label, binary, family): the outcomes compared with PPO. Holm's adjustment runs
#: within each family: the primary outcomes carry the verdict; the secondary ones (pass@16 is a
#: function of P(correct) per prompt; the entropy is the mechanism) are reported beside them.
OUTCOMES: list[tuple[str, str, bool, str]] = [
    ("p_correct_final", "final P(correct)", False, "primary"),
    ("success", f"success (P(correct) > {SUCCESS_P})", True, "primary"),
    (f"pass@{PASS_K}_final", f"final pass@{PASS_K}", False, "secondary"),
    ("answer_entropy_auc", "answer entropy AUC (nats)", False, "secondary"),
]
FAMILIES = ("primary", "secondary")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _sum(records: Sequence[dict[str, Any]], key: str) -> float:
    return math.fsum(float(r[key]) for r in records if isinstance(r.get(key), int | float))


def analyse_run(directory: Path) -> dict[str, Any]:
    """Returns the numbers of one finished run (probe curves under ``_``-prefixed keys)."""
    records = read_metrics(directory / "metrics.jsonl")
    probe = read_probe(directory / PROBE_FILE)
    if not probe:
        raise ValueError(f"{directory / PROBE_FILE} is missing or empty")
    summary = _read_json(directory / "run.json") or {}

    def curve(key: str) -> list[float]:
        return [float(p[key]) if p.get(key) is not None else math.nan for p in probe]

    p_correct, entropy = curve("p_correct"), curve("answer_entropy")
    first, last = probe[0], probe[-1]
    rewards = [float(r["reward_mean"]) for r in records if isinstance(r.get("reward_mean"), float)]
    return {
        "rl_steps": summary.get("rl_steps"),
        "wall_s": summary.get("wall_s"),
        "p_correct_first": first.get("p_correct"),
        "p_correct_final": last.get("p_correct"),
        "success": float((last.get("p_correct") or 0.0) > SUCCESS_P),
        f"pass@{PASS_K}_final": last.get(f"pass@{PASS_K}"),
        "p_decoy_final": last.get("p_decoy"),
        "answer_entropy_first": first.get("answer_entropy"),
        "answer_entropy_auc": auc_per_step(entropy),
        "answer_entropy_final": last.get("answer_entropy"),
        "reward_auc": auc_per_step(rewards),
        "pos_low_tokens": _sum(records, POSITIVE_LOW),
        "pos_low_clipped_upper": _sum(records, ACTIVE_UPPER),
        "neg_low_tokens": _sum(records, NEGATIVE_LOW),
        "neg_low_clipped_lower": _sum(records, ACTIVE_LOWER),
        "_probe_steps": [int(p["rl_step"]) for p in probe],
        "_p_correct": p_correct,
        "_answer_entropy": entropy,
    }


def collect(settings: Settings, statuses: dict[tuple[str, str, int], str]) -> list[dict[str, Any]]:
    """Returns one row per planned (lr, arm, seed); a failed or damaged run is a row too."""
    rows = []
    for lr, arm_name, seed in sorted(settings.plan()):
        arm = ARMS[arm_name]
        directory = run_dir(settings.out, lr, arm_name, seed)
        row: dict[str, Any] = {
            "lr": lr,
            "arm": arm_name,
            "seed": seed,
            "rule": arm.rule,
            "rule_params": json.dumps(arm.params, sort_keys=True),
            "output_dir": str(directory),
        }
        if (directory / "run.json").is_file() and statuses.get((lr, arm_name, seed)) != "error":
            row["status"] = "ok"
            try:
                row.update(analyse_run(directory))
            except Exception as exc:  # a damaged output is a row, not a crash
                row["status"] = "error"
                row["error"] = f"analysis: {type(exc).__name__}: {exc}"
        else:
            row["status"] = "error"
            error = directory / "error.txt"
            text = error.read_text(encoding="utf-8").strip() if error.is_file() else "no run.json"
            row["error"] = text.splitlines()[-1] if text else "unknown"
        rows.append(row)
    return rows


@dataclass
class Regime:
    """PPO's upper clip on rare positive tokens at one learning rate, pooled over its runs."""

    lr: str
    tokens: float  # A > 0, p < 0.01 token-updates (band-ops counts, summed over updates)
    clipped: float  # of those, the ratio above PPO's upper bound
    runs: int

    @property
    def share(self) -> float:
        return self.clipped / self.tokens if self.tokens > 0 else math.nan

    @property
    def reached(self) -> bool:
        return self.tokens > 0 and self.share >= REGIME_SHARE


def regime(rows: Sequence[dict[str, Any]], lr: str) -> Regime:
    """Returns the precondition at ``lr``: the share of A>0, p<0.01 token-updates that PPO
    clips above, pooled over PPO's finished runs there."""
    ppo = [r for r in rows if r["lr"] == lr and r["arm"] == REFERENCE_ARM and r["status"] == "ok"]
    return Regime(
        lr,
        math.fsum(float(r["pos_low_tokens"]) for r in ppo),
        math.fsum(float(r["pos_low_clipped_upper"]) for r in ppo),
        len(ppo),
    )


@dataclass
class ArmSummary:
    lr: str
    arm: str
    n_ok: int
    n_failed: int
    success: Interval  # share of successful runs, exact Clopper-Pearson interval
    intervals: dict[str, Interval]  # t-intervals of the continuous outcomes


def summarise(settings: Settings, rows: Sequence[dict[str, Any]]) -> list[ArmSummary]:
    """Returns one summary per (lr, arm) of the selection."""
    out = []
    for lr in settings.lrs:
        for arm in settings.arms:
            group = [r for r in rows if r["lr"] == lr and r["arm"] == arm]
            ok = [r for r in group if r["status"] == "ok"]
            wins = sum(int(r["success"]) for r in ok)
            success = (
                clopper_pearson(wins, len(ok)) if ok else Interval(math.nan, math.nan, math.nan, 0)
            )
            intervals = {
                column: t_interval([r.get(column) for r in ok])
                for column, _, binary, _ in OUTCOMES
                if not binary
            }
            intervals["p_correct_first"] = t_interval([r.get("p_correct_first") for r in ok])
            out.append(ArmSummary(lr, arm, len(ok), len(group) - len(ok), success, intervals))
    return out


@dataclass
class Comparison:
    """One arm minus PPO on one outcome at one learning rate, paired by seed."""

    lr: str
    arm: str
    outcome: str
    label: str
    difference: Interval
    p_value: float
    family: str = "primary"
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_holm) and self.p_holm < ALPHA

    def direction(self) -> str:
        """Returns "higher", "lower" or "no significant difference" (after Holm)."""
        if not self.significant:
            return "no significant difference"
        return "higher" if self.difference.mean > 0 else "lower"


def compare(settings: Settings, rows: Sequence[dict[str, Any]]) -> list[Comparison]:
    """Returns every arm-vs-PPO comparison, with Holm's adjustment within each family."""
    if REFERENCE_ARM not in settings.arms:
        return []
    index = {(r["lr"], r["arm"], r["seed"]): r for r in rows if r["status"] == "ok"}
    out = []
    for lr in settings.lrs:
        for arm in settings.arms:
            if arm == REFERENCE_ARM:
                continue
            for column, label, _, family in OUTCOMES:
                diffs: list[float | None] = []
                for seed in range(settings.seeds):
                    a, b = index.get((lr, arm, seed)), index.get((lr, REFERENCE_ARM, seed))
                    if a is None or b is None or a.get(column) is None or b.get(column) is None:
                        continue
                    diffs.append(float(a[column]) - float(b[column]))
                difference, p = t_interval(diffs), paired_permutation_p(diffs)
                out.append(Comparison(lr, arm, column, label, difference, p, family))
    for family in FAMILIES:
        members = [c for c in out if c.family == family]
        for comparison, adjusted in zip(members, holm([c.p_value for c in members]), strict=True):
            comparison.p_holm = adjusted
    return out
