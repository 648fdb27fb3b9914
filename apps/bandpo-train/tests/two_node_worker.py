"""Run by test_two_nodes.py under a two-"node" ``accelerate launch`` on localhost.

``python two_node_worker.py RECORD_DIR key=value ...`` is ``bandpo-train key=value ...`` (the
same configuration loading, the same exit status 2 for a bad one) plus a callback that, after
every optimiser step, appends this process's parameter checksum to
``RECORD_DIR/rank-<process index>.jsonl``: the test compares the ranks' lines step by step.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bandpo_train.cli import end_process_group
from bandpo_train.config import load_app_config
from bandpo_train.run import train
from config_layers import parse_command_line
from rl_trainer.callbacks import TrainerCallback, TrainerControl, TrainerState


def parameter_checksum(model: Any) -> str:
    """Returns the SHA-256 of every parameter's bytes, in the model's own order."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ChecksumLines(TrainerCallback):
    """Appends ``{"rl_step", "update", "checksum", "node"}`` after every optimiser step (and
    one line with ``update`` 0 when training begins: the weights it starts or resumes from)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _write(self, trainer: Any, rl_step: int, update: int) -> None:
        acc = trainer.accelerator
        record = {
            "rl_step": rl_step,
            "update": update,
            "checksum": parameter_checksum(acc.unwrap_model(trainer.model)),
            "process": acc.process_index,
            "local_process": acc.local_process_index,
        }
        path = self.directory / f"rank-{acc.process_index}.jsonl"
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_begin(self, trainer: Any, state: TrainerState, control: TrainerControl) -> None:
        self._write(trainer, state.step, 0)

    def on_step_end(
        self,
        trainer: Any,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, float],
    ) -> None:
        # state.step counts finished RL steps: this update belongs to the next one.
        self._write(trainer, state.step + 1, state.update)


def main(argv: list[str]) -> int:
    """Runs bandpo-train with the checksum callback; returns the exit status."""
    records = Path(argv[0])
    records.mkdir(parents=True, exist_ok=True)
    try:
        line = parse_command_line(argv[1:])
        config = load_app_config(line.config, line.overrides, preset=line.preset)
        train(config, callbacks=[ChecksumLines(records)])
    except (ValueError, FileNotFoundError) as err:
        print(f"bandpo-train: {err}", file=sys.stderr)
        return 2
    finally:
        end_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
