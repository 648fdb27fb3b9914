"""Full-state checkpoints: written to a temporary directory, then renamed, so a kill mid-save
never leaves a checkpoint that looks complete.

Layout of ``<output_dir>/checkpoints/step-000012/``: accelerate's state (model safetensors,
optimizer, registered scheduler, per-process RNG states), ``trainer_state.json`` (step, sampler
position, counters) and, for LoRA runs, ``adapter/`` (the adapters alone, safetensors).

Across nodes: with ``checkpoint.save_on_each_node=false`` (default) ``output_dir`` is one folder
every node mounts and the main process writes the checkpoint (every process adds its own RNG
file); with ``true`` each node has its own ``output_dir`` and each node's local main process
writes a full checkpoint there. ``check_output_layout`` tests the folders against that setting
when training starts, and ``resolve_resume_everywhere`` makes every process resume from the same
step (or stops all of them with the same error).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType
from torch import nn

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_NODE_MARK = ".rl-trainer-node-{token}-{process}"


class CheckpointLayoutError(ValueError):
    """Raised when ``output_dir`` is not laid out across the nodes as
    ``checkpoint.save_on_each_node`` says, or when the processes would resume from different
    checkpoints."""


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
    on_each_node: bool = False,
) -> Path:
    """Writes the checkpoint of ``step`` on every process (collective); returns its path.

    The main process writes it into ``output_dir``; with ``on_each_node`` (node-local output
    folders) each node's local main process writes a full copy into its own ``output_dir``.
    Every process adds its own RNG state.
    """
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    writer = accelerator.is_local_main_process if on_each_node else accelerator.is_main_process
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # accelerate's own switch between the main process and each node's local main process.
    project = accelerator.project_configuration
    saved_setting = project.save_on_each_node
    project.save_on_each_node = on_each_node
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        project.save_on_each_node = saved_setting
    accelerator.wait_for_everyone()  # every process's files are in tmp before it is renamed
    if save_adapter:
        unwrapped = accelerator.unwrap_model(model)
        state = accelerator.get_state_dict(model)
        if writer:
            unwrapped.save_pretrained(
                str(tmp / "adapter"), state_dict=state, safe_serialization=True
            )
    accelerator.wait_for_everyone()
    if writer:
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


def _gather(obj: Any, state: Accelerator | PartialState) -> list[Any]:
    """Returns every process's ``obj``, in process order (collective)."""
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return list(gather_object([obj]))


def check_output_layout(
    state: Accelerator | PartialState, output_dir: str | Path, *, save_on_each_node: bool
) -> bool:
    """Returns whether ``output_dir`` is one folder shared by all nodes (collective).

    Raises CheckpointLayoutError when that does not match ``save_on_each_node``: a shared
    folder needs ``false`` (with ``true`` every node would write the same checkpoint), and
    node-local folders need ``true`` (with ``false`` only the main process's node would get
    the model and optimiser files). With one node there is nothing to check and nothing is
    written; otherwise each node's local main process leaves a uniquely named file in
    ``output_dir`` (created if missing), reads which of the others' it sees, and removes it.
    """
    processes = _gather((state.process_index, state.local_process_index), state)
    writers = [process for process, local in processes if local == 0]
    if len(writers) <= 1:
        return True
    from accelerate.utils import broadcast_object_list

    token = [uuid.uuid4().hex if state.is_main_process else ""]
    broadcast_object_list(token, from_process=0)
    root = Path(output_dir)
    seen: list[int] | None = None
    mine = root / _NODE_MARK.format(token=token[0], process=state.process_index)
    if state.is_local_main_process:
        root.mkdir(parents=True, exist_ok=True)
        mine.write_text(token[0], encoding="utf-8")
    state.wait_for_everyone()
    if state.is_local_main_process:
        seen = [
            p for p in writers if (root / _NODE_MARK.format(token=token[0], process=p)).is_file()
        ]
    views = {p: v for p, v in _gather((state.process_index, seen), state) if v is not None}
    state.wait_for_everyone()
    if state.is_local_main_process:
        mine.unlink(missing_ok=True)
    shared = all(v == writers for v in views.values())
    separate = all(v == [p] for p, v in views.items())
    nodes = len(writers)
    if save_on_each_node:
        if not separate:
            together = next(v for v in views.values() if len(v) > 1)
            raise CheckpointLayoutError(
                f"checkpoint.save_on_each_node=true, but output_dir {str(root)!r} is one folder "
                f"for the nodes of processes {together}: each would write the same checkpoint "
                f"there; set checkpoint.save_on_each_node=false for a folder shared by the nodes"
            )
        if state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise CheckpointLayoutError(
                f"checkpoint.save_on_each_node=true is not supported with "
                f"{state.distributed_type.value}: its checkpoint is sharded over the processes "
                f"of all nodes; give output_dir a folder every node mounts"
            )
        return False
    if not shared:
        process, view = next((p, v) for p, v in views.items() if v != writers)
        raise CheckpointLayoutError(
            f"output_dir {str(root)!r} is not one folder shared by the {nodes} nodes: the node "
            f"of process {process} sees the files of the nodes of processes {view} only, so the "
            f"checkpoints the main process writes would be missing there; use a folder every "
            f"node mounts, or set checkpoint.save_on_each_node=true to keep a full checkpoint "
            f"in each node's own output_dir"
        )
    return True


def _checkpoint_step(path: Path) -> int:
    """Returns the RL step recorded in a checkpoint's trainer state."""
    try:
        return int(json.loads((path / STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointLayoutError(
            f"checkpoint {str(path)!r}: {STATE_FILE} has no readable step ({exc})"
        ) from None


def resolve_resume_everywhere(
    state: Accelerator | PartialState, resume: str | None, output_dir: str | Path
) -> Path | None:
    """Returns this process's checkpoint to resume from (``resolve_resume``), after checking
    that every process found one of the same step (collective).

    A checkpoint missing or different on some node (node-local output folders, a directory
    that only one node has) raises the same error on every process, naming what each found,
    instead of one node resuming while another starts afresh.
    """
    error: str | None = None
    path: Path | None = None
    step: int | None = None
    try:
        path = resolve_resume(resume, output_dir)
        step = None if path is None else _checkpoint_step(path)
    except (FileNotFoundError, CheckpointLayoutError) as exc:
        if state.num_processes == 1:
            raise
        error = str(exc)
    found = _gather((state.process_index, error, step, None if path is None else str(path)), state)
    failed = [(p, e) for p, e, _, _ in found if e is not None]
    if failed:
        process, message = failed[0]
        raise FileNotFoundError(
            message if process == state.process_index else (f"process {process}: {message}")
        )
    if len({s for _, _, s, _ in found}) > 1:
        views = "; ".join(
            f"process {p}: {where if where else 'no checkpoint'}" for p, _, _, where in found
        )
        raise CheckpointLayoutError(
            f"checkpoint.resume={resume!r}: the processes would resume from different "
            f"checkpoints ({views} in {str(Path(output_dir))!r}); every node must find the same "
            f"one: in the shared output_dir, or with checkpoint.save_on_each_node=true in each "
            f"node's own output_dir"
        )
    return path
