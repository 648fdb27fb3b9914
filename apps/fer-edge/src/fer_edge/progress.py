"""Progress of ``fer-edge run`` on stderr (stdout may be the JSON lines: it stays clean).

On a terminal one line is redrawn in place (at most ten times a second); elsewhere (a log file, a
CI job) a plain line is written every ``interval_s`` seconds, so logs do not fill with carriage
returns. The total is known for folders and videos whose container announces its frame count;
cameras and videos without one show a count and a rate only.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

__all__ = ["Progress", "expected_items"]


def expected_items(total: int | None, every: int, max_frames: int | None) -> int | None:
    """How many items a run over ``total`` entries processes with ``every`` and ``max_frames``
    (None when the source does not know its length)."""
    if total is None or total <= 0:
        return max_frames if total is None and max_frames is not None else None
    n = math.ceil(total / every)
    return min(n, max_frames) if max_frames is not None else n


def _clock(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts processed items and shows ``done/total (pct) rate, ETA`` on ``stream``.

    ``unit``: ``images`` or ``frames``; ``total``: None when unknown; ``tty``: redraw one line
    (default: whether ``stream`` is a terminal).
    """

    def __init__(
        self,
        total: int | None,
        unit: str,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.interval_s = 0.1 if self.tty else interval_s
        self.done = 0
        self.faces = 0
        self._start = time.perf_counter()
        self._last = -math.inf
        self._width = 0

    def text(self) -> str:
        """The progress line as it is now."""
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.done}/{self.total}" if self.total else f"{self.done}", self.unit]
        if self.total:
            parts.append(f"({100.0 * self.done / self.total:.0f}%)")
        parts.append(f"{self.faces} faces, {rate:.1f} {self.unit}/s, {_clock(elapsed)}")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        return "fer-edge run: " + " ".join(parts)

    def update(self, items: int, faces: int = 0) -> None:
        """``items`` more processed (with ``faces`` faces); redraws when it is time."""
        self.done += items
        self.faces += faces
        now = time.perf_counter()
        if now - self._last >= self.interval_s:
            self._last = now
            self._show()

    def _show(self) -> None:
        line = self.text()
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """The final state, ending the redrawn line."""
        self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
