"""Cross-process reductions of named scalars and gathers of tensors (every process must call).

``reduce_scalars({"reward_sum": r, "count": n}, accelerator)`` returns the same names with
their sums over all processes; the trainer, evaluation and apps that log their own metrics use
it, so no caller depends on the position of a value in a list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from accelerate import Accelerator, PartialState

ReduceOp = Literal["sum", "mean", "max", "min"]
REDUCE_OPS: tuple[str, ...] = ("sum", "mean", "max", "min")


def reduce_scalars(
    values: Mapping[str, float],
    accelerator: Accelerator | PartialState | None = None,
    *,
    op: ReduceOp = "sum",
) -> dict[str, float]:
    """Returns ``values`` reduced over all processes with ``op``, under the same names.

    Every process must call it with the same names in the same order (the values travel in one
    float64 tensor, one collective per call). With one process, or ``accelerator=None`` outside
    a distributed launch, the values come back unchanged (as floats).
    """
    if op not in REDUCE_OPS:
        raise ValueError(f"reduce_scalars: unknown op {op!r}; valid: {', '.join(REDUCE_OPS)}")
    names = list(values)
    if accelerator is None:
        from accelerate import PartialState

        accelerator = PartialState()
    t = torch.tensor(
        [float(values[n]) for n in names], dtype=torch.float64, device=accelerator.device
    )  # (K,)
    if accelerator.num_processes > 1 and names:
        t = _reduce(t, op)
    return dict(zip(names, t.tolist(), strict=True))


def _reduce(t: Tensor, op: str) -> Tensor:
    from accelerate.utils import gather, reduce

    if op in ("sum", "mean"):
        return reduce(t, reduction=op)
    every = gather(t.unsqueeze(0))  # (W, K)
    return every.amax(0) if op == "max" else every.amin(0)


def gather_tensor(t: Tensor, accelerator: Accelerator | PartialState | None = None) -> Tensor:
    """Returns ``t`` concatenated along dim 0 over all processes (``t`` itself with one)."""
    if accelerator is None:
        from accelerate import PartialState

        accelerator = PartialState()
    t = t.to(accelerator.device)
    if accelerator.num_processes == 1:
        return t
    from accelerate.utils import gather

    return gather(t)


def end_process_group(settle_s: float = 0.2) -> bool:
    """Destroys torch.distributed's process group, if one was started; returns whether it was.

    Call it last, on every process, once no collective is left to run. Destroying the group
    is not enough for gloo: a model wrapped in DistributedDataParallel keeps the group's worker
    threads alive, and a worker thread still releasing the tensors of its last collective
    needs the GIL. If the interpreter is already shutting down by then, the thread is stopped
    in the middle of a C++ destructor and the process aborts ("terminate called without an
    active exception", exit status -6) after a good run. So the main thread then sleeps
    ``settle_s`` seconds, which hands the GIL to those threads while Python is still alive
    (they need microseconds once scheduled; the default leaves room for a loaded machine).
    Does nothing (and does not import torch.distributed) when no group was started.
    """
    import sys
    import time

    if not settle_s >= 0:
        raise ValueError(f"end_process_group: settle_s must be >= 0 seconds, got {settle_s!r}")
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return False
    distributed.destroy_process_group()
    time.sleep(settle_s)
    return True


__all__ = ["REDUCE_OPS", "ReduceOp", "end_process_group", "gather_tensor", "reduce_scalars"]
