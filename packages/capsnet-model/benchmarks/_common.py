"""Helpers shared by the benchmark scripts: step timing and other processes' CPU load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch


def cpu_snapshot() -> tuple[int, int, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat and this process's CPU seconds."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields), time.process_time()


def others_busy(a: tuple[int, int, float] | None, b: tuple[int, int, float] | None) -> float | None:
    """Fraction of all CPUs used by other processes between two snapshots."""
    if a is None or b is None or b[1] == a[1]:
        return None
    own = (b[2] - a[2]) * os.sysconf("SC_CLK_TCK")
    return max(0.0, (b[0] - a[0] - own) / (b[1] - a[1]))


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    steps: dict[str, Callable[[], None]],
    device: torch.device,
    warmup: int,
    repeats: int,
    scale: float = 1.0,
) -> dict[str, list[float]]:
    """Per-step wall times (seconds times ``scale``); the steps alternate within each repeat,
    so a change in machine load hits every variant alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append((time.perf_counter() - t0) * scale)
    return times


def load_before() -> tuple[tuple[int, int, float] | None, float | None]:
    """Print and return other processes' CPU share over the next second (and a snapshot)."""
    snap0 = cpu_snapshot()
    time.sleep(1.0)
    snap1 = cpu_snapshot()
    busy = others_busy(snap0, snap1)
    print(f"other processes' CPU use in the 1 s before the run: {pct(busy)} of {os.cpu_count()}")
    return snap1, busy


def load_during(since: tuple[int, int, float] | None) -> float | None:
    """Print other processes' CPU share since ``since`` and warn when it makes times unreliable."""
    busy = others_busy(since, cpu_snapshot())
    print(f"\nother processes' CPU use during the run: {pct(busy)} of {os.cpu_count()}")
    if busy is not None and busy > 0.1:
        print("WARNING: the CPU was shared during the run; times and ratios are unreliable")
    return busy
