"""Where metrics go: metrics.jsonl always, a console progress bar, TensorBoard when installed."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Shown in the progress bar's postfix, in this order, when present.
POSTFIX_KEYS = (
    ("reward/total", "reward"),
    ("entropy", "ent"),
    ("clip_frac", "clip"),
    ("kl_ref", "kl"),
    ("tokens_per_s", "tok/s"),
)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable rather than invalid
    return value


class MetricsTracker:
    """Writes one JSON line per logged step; only the main process should own one.

    ``metrics.jsonl`` is opened in append mode so that a resumed run continues the same file;
    lines from steps after the resume point are dropped first, so the file never holds a step
    twice.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        total_steps: int,
        start_step: int = 0,
        progress_bar: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._bar = (
            tqdm(
                total=total_steps,
                initial=start_step,
                desc="rl-trainer",
                unit="step",
                dynamic_ncols=True,
            )
            if progress_bar
            else None
        )
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed: metrics go to metrics.jsonl only")
            else:
                self._writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if int(record.get("step", 0)) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        tmp.replace(self.path)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records ``metrics`` for ``step`` in every sink."""
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(key, value, step)
        if self._bar is not None:
            postfix = {
                short: f"{metrics[key]:.3g}" for key, short in POSTFIX_KEYS if key in metrics
            }
            self._bar.set_postfix(postfix, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, message: str) -> None:
        """Prints a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
