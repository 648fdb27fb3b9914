"""Running the study: one warm start shared by every run, then each (lr, arm, seed) as a
bandpo-train run with the answer probe, in ``--jobs`` worker processes. A run whose
``run.json`` exists with the same settings is kept, so a study resumes where it stopped."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from bandpo_train.study.design import (
    ARMS,
    COMMON_OVERRIDES,
    LEARNING_RATES,
    PROBE_EVERY,
    TASK,
    TASK_SEED,
    Arm,
    Settings,
)


def run_dir(out: Path, lr: str, arm: str, seed: int) -> Path:
    """Returns the folder of one run: ``out/<lr>/<arm>/seed<k>``."""
    return out / lr / arm / f"seed{seed}"


def warm_start_dir(out: Path) -> Path:
    return out / "warm_start" / "embedded"


def run_overrides(
    lr: str, arm: Arm, seed: int, steps: int, output_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """Returns the key=value overrides of one run. ``rule_params:=`` replaces the app
    default's Band parameters whole (a plain ``=`` would merge into them)."""
    return [
        f"output_dir={output_dir}",
        f"optim.lr={LEARNING_RATES[lr].lr}",
        f"optim.seed={seed}",
        f"optim.steps={steps}",
        f"algorithm.rule={arm.rule}",
        f"algorithm.rule_params:={json.dumps(arm.params)}",
        *COMMON_OVERRIDES,
        *extra,
    ]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def ensure_warm_start(out: Path, extra: Sequence[str]) -> Path:
    """Builds (once) the warm-started model and data every run starts from; returns them."""
    from bandpo_train.config import load_app_config
    from bandpo_train.embedded import DONE, prepare_embedded

    root = out / "warm_start"
    spec = {"task": TASK, "task_seed": TASK_SEED, "extra": list(extra)}
    marker = root / "study_warm_start.json"
    if (root / "embedded" / DONE).is_file() and _read_json(marker) == spec:
        return root / "embedded"
    shutil.rmtree(root, ignore_errors=True)
    config = load_app_config(
        None, [f"output_dir={root}", f"task.name={TASK}", f"task.seed={TASK_SEED}", *extra]
    )
    prepare_embedded(config, build=True)
    marker.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return root / "embedded"


def probe_rows(embedded: Path) -> list[dict[str, Any]]:
    """Returns the held-out rows the answer probe scores: each distinct prompt once."""
    rows: dict[str, dict[str, Any]] = {}
    for line in (embedded / "eval.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["prompt"], row)
    return list(rows.values())


def run_one(
    out: Path, lr: str, arm_name: str, seed: int, steps: int, extra: Sequence[str], threads: int
) -> str:
    """Runs one (lr, arm, seed) unless it is done with the same settings; returns the status
    ("ran", "skipped" or "error"; the traceback goes to the run's ``error.txt``)."""
    import torch

    from bandpo_train.config import load_app_config
    from bandpo_train.probe import PROBE_FILE, AnswerProbe
    from bandpo_train.run import train

    torch.set_num_threads(threads)
    arm = ARMS[arm_name]
    target = run_dir(out, lr, arm_name, seed)
    overrides = run_overrides(lr, arm, seed, steps, target, extra)
    spec = {"overrides": overrides}
    if (target / "run.json").is_file() and _read_json(target / "study_run.json") == spec:
        return "skipped"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    (target / "study_run.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    try:
        warm = warm_start_dir(out)
        shutil.copytree(warm, target / "embedded")
        probe = AnswerProbe(target / PROBE_FILE, probe_rows(warm), every=PROBE_EVERY)
        train(load_app_config(None, overrides), callbacks=[probe])
    except Exception as exc:
        (target / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return "error"
    return "ran"


def run_all(settings: Settings) -> Iterator[tuple[tuple[str, str, int], str, float]]:
    """Runs every planned run (``settings.jobs`` at a time); yields ((lr, arm, seed), status,
    seconds) as each finishes. The warm start is built first, once."""
    ensure_warm_start(settings.out, settings.extra)
    plan = settings.plan()
    args = [
        (settings.out, lr, arm, seed, settings.steps, settings.extra, settings.threads)
        for lr, arm, seed in plan
    ]
    if settings.jobs <= 1:
        for key, arg in zip(plan, args, strict=True):
            started = time.time()
            yield key, run_one(*arg), time.time() - started
        return
    # spawn: a fresh interpreter per worker (torch and fork do not mix), imports paid once
    # per worker rather than per run.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=settings.jobs, mp_context=context) as pool:
        submitted: dict[tuple[str, str, int], float] = {}
        futures = {}
        for key, arg in zip(plan, args, strict=True):
            future = pool.submit(run_one, *arg)
            futures[future] = key
            submitted[key] = time.time()
        for future in as_completed(futures):
            key = futures[future]
            try:
                status = future.result()
            except Exception as exc:  # the worker itself died
                print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                status = "error"
            yield key, status, time.time() - submitted[key]
