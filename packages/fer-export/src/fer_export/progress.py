"""Progress of long work -- export, verification, fp16/int8 conversion, int8 calibration, the
agreement check -- as events for a callback, and the printer the command line uses.

The library functions that take a while (:func:`fer_export.export.export_onnx`,
:func:`~fer_export.export.verify_onnx`, :func:`fer_export.quantize.to_fp16`,
:func:`~fer_export.quantize.to_int8`, :func:`~fer_export.quantize.agreement`) take
``progress=None``: silent by default; given a callable, they call it with a
:class:`ProgressEvent` when a phase starts, advances (counted phases: calibration and check
batches) and ends or fails. A callback that raises stops the work with its exception.

:class:`ProgressPrinter` is such a callable writing to a stream (stderr on the command line,
so stdout stays what the command prints): one line redrawn in place on a terminal, plain lines
otherwise (a log, a CI job), so logs do not fill with carriage returns::

    fer-export export: tracing done (1.9 s)
    fer-export int8: calibrating 3/8 batches (38%), 1.2 s
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO, TypeAlias

__all__ = ["STATES", "ProgressCallback", "ProgressEvent", "ProgressPrinter", "Reporter"]

#: ``start``: a phase begins; ``advance``: a counted phase did more; ``end``: it finished;
#: ``fail``: it stopped with an exception (raised on after the event).
STATES = ("start", "advance", "end", "fail")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of long work.

    ``task``: what runs (``"export"``, ``"verify"``, ``"fp16"``, ``"int8"``,
    ``"agreement"``); ``phase``: the part of it (export: ``tracing``, ``exporting``,
    ``checking``, ``verifying``; int8: ``preparing``, ``calibrating``, ``quantising``;
    agreement: ``comparing``...); ``state``: one of :data:`STATES`. Counted phases have
    ``done`` (units so far) and ``total`` (None when unknown) in ``unit`` (``"batches"``);
    others have ``done`` None. ``seconds``: time since the phase started. ``detail``: why a
    phase failed (the exception's type and first line).
    """

    task: str
    phase: str
    state: str
    done: int | None = None
    total: int | None = None
    unit: str = ""
    seconds: float = 0.0
    detail: str = ""

    @property
    def counted(self) -> bool:
        """Whether the phase counts units (``done`` is not None)."""
        return self.done is not None


#: What the library functions call: ``progress(event)``.
ProgressCallback: TypeAlias = Callable[[ProgressEvent], None]


#: Longest ``detail`` (a failed phase's exception): the full message is raised anyway.
MAX_DETAIL = 200


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return why if len(why) <= MAX_DETAIL else why[: MAX_DETAIL - 3] + "..."


class Reporter:
    """Sends one task's :class:`ProgressEvent`\\ s to ``callback`` (nothing when it is None):
    one phase open at a time, started, advanced and ended explicitly or with :meth:`phase`.
    """

    def __init__(self, callback: ProgressCallback | None, task: str) -> None:
        if callback is not None and not callable(callback):
            raise ValueError(
                f"progress must be a callable taking a ProgressEvent, or None, got "
                f"{type(callback).__name__}"
            )
        self.callback = callback
        self.task = task
        self._phase: str | None = None
        self._start = 0.0
        self._done: int | None = None
        self._total: int | None = None
        self._unit = ""

    @property
    def open_phase(self) -> str | None:
        """The phase now running (None between phases)."""
        return self._phase

    def _send(self, state: str, detail: str = "") -> None:
        if self.callback is None or self._phase is None:
            return
        self.callback(
            ProgressEvent(
                self.task, self._phase, state, self._done, self._total, self._unit,
                time.perf_counter() - self._start, detail,
            )
        )  # fmt: skip

    def start(self, phase: str, *, total: int | None = None, unit: str = "") -> None:
        """Begins ``phase`` (ending the open one); counted when ``unit`` is given."""
        if self._phase is not None:
            self.end()
        self._phase, self._start = phase, time.perf_counter()
        self._done = 0 if unit else None
        self._total, self._unit = total, unit
        self._send("start")

    def advance(self, count: int = 1) -> None:
        """``count`` more units done in the open counted phase."""
        if self._phase is None or self._done is None:
            return
        self._done += count
        self._send("advance")

    def end(self) -> None:
        """Ends the open phase (nothing when none is open)."""
        self._send("end")
        self._phase = None

    def fail(self, exc: BaseException) -> None:
        """Says the open phase stopped with ``exc`` (nothing when none is open)."""
        self._send("fail", _why(exc))
        self._phase = None

    def phase(self, phase: str, *, total: int | None = None, unit: str = "") -> _Phase:
        """A context manager: ``phase`` starts on entry, ends on a clean exit and fails when an
        exception leaves it (which goes on)."""
        return _Phase(self, phase, total, unit)


class _Phase:
    def __init__(self, reporter: Reporter, phase: str, total: int | None, unit: str) -> None:
        self.reporter, self.name, self.total, self.unit = reporter, phase, total, unit

    def __enter__(self) -> Reporter:
        self.reporter.start(self.name, total=self.total, unit=self.unit)
        return self.reporter

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if self.reporter.open_phase != self.name:
            return  # ended inside (or another phase took over): nothing left to say
        if exc is None:
            self.reporter.end()
        else:
            self.reporter.fail(exc)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value / 60:.1f} min"


class ProgressPrinter:
    """A progress callback that writes :class:`ProgressEvent`\\ s to ``stream`` (default
    stderr) as ``PREFIX TASK: PHASE ...`` lines.

    ``tty``: redraw one line in place (default: whether ``stream`` is a terminal), at most
    every 0.1 s; otherwise plain lines -- a phase's start and its end with its duration, and
    for counted phases a count line at most every ``interval_s`` seconds. ``details``: say why
    a phase failed (off where the caller reports the error itself, as the command line does).
    Call :meth:`close` before writing anything else to the same terminal after an error (it
    ends a redrawn line).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        prefix: str = "fer-export",
        tty: bool | None = None,
        interval_s: float = 5.0,
        details: bool = True,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else bool(tty)
        self.prefix = prefix
        self.interval_s = 0.1 if self.tty else float(interval_s)
        self.details = details
        self._open = 0  # width of the redrawn line not yet ended (terminal only)
        self._last = -math.inf

    def for_task(self, task: str, phase: str | None = None) -> ProgressCallback:
        """A callback printing every event as if its task were ``task`` (and its phase
        ``phase``, when given): e.g. ``"int8"``, ``"checking agreement"`` for the agreement
        check of the int8 file."""

        def relabelled(event: ProgressEvent) -> None:
            self(replace(event, task=task, phase=event.phase if phase is None else phase))

        return relabelled

    def text(self, event: ProgressEvent) -> str:
        """The line for ``event``."""
        head = f"{self.prefix} {event.task}: {event.phase}".lstrip()
        count = ""
        if event.counted:
            if event.total:
                count = f" {event.done}/{event.total} {event.unit}"
                if event.state == "advance":
                    count += f" ({100.0 * (event.done or 0) / event.total:.0f}%)"
            else:
                count = f" {event.done} {event.unit}"
        if event.state == "start":
            return f"{head}{count} ..."
        if event.state == "advance":
            return f"{head}{count}, {_seconds(event.seconds)}"
        if event.state == "end":
            return f"{head}{count} done ({_seconds(event.seconds)})"
        why = f": {event.detail}" if event.detail and self.details else ""
        return f"{head}{count} failed after {_seconds(event.seconds)}{why}"

    def __call__(self, event: ProgressEvent) -> None:
        now = time.perf_counter()
        if event.state == "advance":
            last = event.total is not None and event.done == event.total
            if now - self._last < self.interval_s and not (last and self.tty):
                return
        self._last = now
        line = self.text(event)
        if self.tty:
            pad = " " * max(0, self._open - len(line))
            done = event.state in ("end", "fail")
            self.stream.write("\r" + line + pad + ("\n" if done else ""))
            self._open = 0 if done else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends a redrawn line left open (a phase that never ended)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = 0
