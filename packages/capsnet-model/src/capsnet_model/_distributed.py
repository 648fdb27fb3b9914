"""Data parallelism for :func:`capsnet_model.training.train`: the process group from the
environment (``torchrun`` / ``accelerate launch``), the rank's device, sums over ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's rank among ``world`` processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Returns whether this is rank 0, the rank that writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float] | np.ndarray, device: torch.device) -> np.ndarray:
        """Returns ``values`` summed over the ranks (float64)."""
        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.cpu().numpy()


def setup_distributed() -> Dist:
    """Returns this process's rank, creating the process group when ``WORLD_SIZE > 1``
    (NCCL with CUDA, else gloo) and none exists yet."""
    if not dist.is_available():
        return Dist()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def pick_device(name: str) -> torch.device:
    """Returns the device ``name``; ``auto``: this rank's CUDA device when there is one, else
    the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
