"""rl_trainer.collectives.end_process_group: destroys the group when one exists, else nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rl_trainer.collectives import end_process_group

SCRIPT = """
import sys
import torch.distributed as dist
from rl_trainer.collectives import end_process_group
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
assert dist.is_initialized()
print(end_process_group(), dist.is_initialized(), end_process_group())
"""


def test_without_a_group_it_does_nothing() -> None:
    assert end_process_group() is False


def test_it_destroys_a_started_group_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "False"]


def test_a_negative_settle_time_is_refused() -> None:
    with pytest.raises(ValueError, match="settle_s"):
        end_process_group(settle_s=-1)
