"""Full-state checkpoints: written to a temporary directory, then renamed, so a kill mid-save
never leaves a checkpoint that looks complete.

Layout of ``<output_dir>/checkpoints/step-000012/``: accelerate's state (model safetensors,
optimizer, registered scheduler, per-process RNG states), ``trainer_state.json`` (step, sampler
position, counters) and, for LoRA runs, ``adapter/`` (the adapters alone, safetensors).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """Returns the directory of the checkpoint taken after ``step``."""
    return checkpoints_root(output_dir) / f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Returns complete checkpoints under ``output_dir``, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Returns the newest complete checkpoint, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """Returns the checkpoint directory that ``checkpoint.resume`` asks for (None: start fresh).

    "latest" resumes from the newest checkpoint in output_dir when there is one and starts fresh
    otherwise, so the same command both starts and restarts a run.
    """
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"checkpoint.resume={resume!r}: no {STATE_FILE} there; expected a directory like "
            f"{checkpoint_path(output_dir, 100)}"
        )
    return path


def save_checkpoint(
    accelerator: Accelerator,
    model: nn.Module,
    output_dir: str | Path,
    step: int,
    trainer_state: dict[str, Any],
    *,
    keep_last: int = 0,
    save_adapter: bool = False,
) -> Path:
    """Writes the checkpoint of ``step`` on every process (collective); returns its path."""
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every process's files are in tmp before it is renamed
    if save_adapter:
        unwrapped = accelerator.unwrap_model(model)
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(
                str(tmp / "adapter"), state_dict=state, safe_serialization=True
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if keep_last > 0:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, directory: str | Path) -> dict[str, Any]:
    """Restores accelerate's state from ``directory`` (collective); returns the trainer state."""
    directory = Path(directory)
    accelerator.load_state(str(directory))
    state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    return state
