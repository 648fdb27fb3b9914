"""The README's figures of a finished run, read from its files: ``bandpo-train report DIR``.

Reads ``run.json`` (steps, wall time, processes, device), ``metrics.jsonl`` (the rollout reward
of every RL step) and ``eval.json`` (held-out evaluation) from a run's output folder and prints
a Markdown table, so the figures quoted in the READMEs come from a command anyone can rerun.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunFilesError", "main", "render", "summarize"]

RUN_FILE, METRICS_FILE, EVAL_FILE = "run.json", "metrics.jsonl", "eval.json"
USAGE = "usage: bandpo-train report DIR [--json]   (DIR: a finished run's output_dir)\n"


class RunFilesError(FileNotFoundError):
    """The folder is not a finished bandpo-train run (a file is missing or unreadable)."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunFilesError(f"{path}: not found; is {path.parent} a finished bandpo-train run?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFilesError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RunFilesError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _rewards(path: Path) -> list[float]:
    """Returns the rollout reward of each RL step, in step order (one per RL step)."""
    if not path.is_file():
        raise RunFilesError(f"{path}: not found; is {path.parent} a finished bandpo-train run?")
    by_step: dict[int, float] = {}
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_step[int(row["rl_step"])] = float(row["reward_mean"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise RunFilesError(
                    f"{path}:{number}: expected a JSON object with rl_step and reward_mean ({exc})"
                ) from exc
    if not by_step:
        raise RunFilesError(f"{path}: no metrics lines")
    return [by_step[k] for k in sorted(by_step)]


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """Returns the run's figures: steps, wall time, reward over the first and last tenth, eval.

    Raises :class:`RunFilesError` naming the missing or bad file.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RunFilesError(f"{root}: no such folder (give a bandpo-train output_dir)")
    run = _read_json(root / RUN_FILE)
    rewards = _rewards(root / METRICS_FILE)
    evaluation = _read_json(root / EVAL_FILE) if (root / EVAL_FILE).is_file() else run.get("eval")
    tenth = max(1, len(rewards) // 10)
    return {
        "run_dir": str(root),
        "rl_steps": len(rewards),
        "optimizer_steps": run.get("optimizer_steps"),
        "wall_s": run.get("wall_s"),
        "num_processes": run.get("num_processes"),
        "device": run.get("device"),
        "rule": run.get("rule"),
        "reward_first_tenth": sum(rewards[:tenth]) / tenth,
        "reward_last_tenth": sum(rewards[-tenth:]) / tenth,
        "eval": {
            k.removeprefix("eval/"): v
            for k, v in (evaluation or {}).items()
            if isinstance(v, int | float)
        },
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def render(figures: dict[str, Any]) -> str:
    """Returns ``figures`` (from :func:`summarize`) as the README's Markdown table."""
    rows = [
        ("rule", figures["rule"]),
        ("processes, device", f"{figures['num_processes']}, {figures['device']}"),
        ("RL steps / optimiser steps", f"{figures['rl_steps']} / {figures['optimizer_steps']}"),
        ("wall time (s)", _fmt(figures["wall_s"], 0)),
        ("rollout reward, first tenth of the RL steps", _fmt(figures["reward_first_tenth"])),
        ("rollout reward, last tenth of the RL steps", _fmt(figures["reward_last_tenth"])),
    ]
    evaluation = figures["eval"]
    names = {"greedy_accuracy": "held-out greedy accuracy"}
    at_k = sorted(k for k in evaluation if k.startswith(("pass@", "mean@")) and k != "pass@1")
    for key in ("greedy_accuracy", "pass@1", *at_k):
        if key in evaluation:
            rows.append((names.get(key, f"held-out {key}"), _fmt(evaluation[key])))
    lines = [f"bandpo-train run {figures['run_dir']}", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``bandpo-train report DIR [--json]``; returns the exit status (2 for a bad folder)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return 0
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    if len(args) != 1 or args[0].startswith("-"):
        print(
            f"bandpo-train report: expected one run folder, got {args}; {USAGE}",
            end="",
            file=sys.stderr,
        )
        return 2
    try:
        figures = summarize(args[0])
    except RunFilesError as exc:
        print(f"bandpo-train report: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(figures, indent=2) if as_json else render(figures), end="\n" if as_json else ""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
