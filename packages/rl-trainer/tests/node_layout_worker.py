"""Run twice by test_node_layout.py: two processes of one gloo group, each the only process of
its "node" (LOCAL_RANK=0 in both), so each is its node's local main process.

``python node_layout_worker.py BASE`` uses ``BASE/shared`` (one folder for both nodes) and
``BASE/node<rank>`` (each node's own folder), and writes what the test checks to
``BASE/result-<rank>.json``: the layout checks, the files each node's checkpoint holds, and the
resume each process resolves (or the error it raises).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from rl_trainer.checkpoint import (
    CheckpointLayoutError,
    check_output_layout,
    load_checkpoint,
    resolve_resume_everywhere,
    save_checkpoint,
)
from rl_trainer.collectives import end_process_group


def outcome(call: Any) -> dict[str, Any]:
    """Returns {"value": result} or {"error": class name, "message": text}."""
    try:
        value = call()
    except (CheckpointLayoutError, FileNotFoundError) as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"value": str(value) if isinstance(value, Path) else value}


def main() -> None:
    base = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    shared, own = base / "shared", base / f"node{rank}"
    result: dict[str, Any] = {
        "rank": rank,
        "local_rank": acc.local_process_index,
        "world": acc.num_processes,
    }
    for name, folder in (("shared", shared), ("own", own)):
        for flag in (False, True):
            key = f"layout/{name}/save_on_each_node={flag}"
            result[key] = outcome(
                lambda f=folder, s=flag: check_output_layout(acc, f, save_on_each_node=s)
            )
            acc.wait_for_everyone()
            result[f"{key}/left"] = sorted(p.name for p in folder.iterdir())

    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    model, _ = acc.prepare(layer, torch.optim.AdamW(layer.parameters()))
    save_checkpoint(acc, model, shared, 1, {"step": 1})
    save_checkpoint(acc, model, own, 1, {"step": 1}, on_each_node=True)
    for name, folder in (("shared", shared), ("own", own)):
        step_dir = folder / "checkpoints" / "step-000001"
        result[f"files/{name}"] = sorted(p.name for p in step_dir.iterdir())
        result[f"resume/{name}"] = outcome(
            lambda f=folder: resolve_resume_everywhere(acc, "latest", f)
        )
    # Each node restores its own copy (model, optimiser, its processes' RNG states).
    with torch.no_grad():
        acc.unwrap_model(model).weight.zero_()
    state = load_checkpoint(acc, own / "checkpoints" / "step-000001")
    result["loaded_step"] = state["step"]
    result["loaded_weight_sum"] = float(acc.unwrap_model(model).weight.detach().abs().sum())

    # Node 1 loses its copy: "latest" finds step 1 on node 0 and nothing on node 1.
    acc.wait_for_everyone()
    if rank == 1:
        shutil.rmtree(own / "checkpoints")
    acc.wait_for_everyone()
    result["resume/own/node1_lost"] = outcome(lambda: resolve_resume_everywhere(acc, "latest", own))
    explicit = str(own / "checkpoints" / "step-000001")
    result["resume/explicit/node1_lost"] = outcome(
        lambda: resolve_resume_everywhere(acc, explicit, own)
    )
    (base / f"result-{rank}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    acc.wait_for_everyone()
    end_process_group()  # see its docstring: gloo can abort at exit without it


if __name__ == "__main__":
    main()
