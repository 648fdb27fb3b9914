"""Progress of long work (issue 19): the events the library sends to a ``progress`` callback
(export, verification, fp16, int8 calibration, the agreement check), the printer the command
line uses (redrawn on a terminal, plain lines otherwise), and ``fer-export export``/``verify``
showing it on stderr while stdout keeps only the results (``verify --json``: only JSON)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fer_export.contract import read_model
from fer_export.progress import ProgressEvent, ProgressPrinter, Reporter
from fer_export.quantize import agreement, to_fp16, to_int8

#: A progress line: ``fer-export TASK: PHASE ...``.
PROGRESS_LINE = re.compile(r"fer-export [a-z0-9]+: \S.*")


class Recorder:
    """A progress callback keeping every event."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def steps(self) -> list[tuple[str, str, str]]:
        """``(task, phase, state)`` of the start, end and fail events, in order."""
        return [(e.task, e.phase, e.state) for e in self.events if e.state != "advance"]

    def counts(self, phase: str) -> list[tuple[int | None, int | None]]:
        """``(done, total)`` of every event of ``phase``."""
        return [(e.done, e.total) for e in self.events if e.phase == phase]


def _batches(contract: Any, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (count, 4, contract.input_size, contract.input_size, 3))
    return [contract.preprocess(f.astype(np.uint8)) for f in faces]


# -- the printer and the reporter ------------------------------------------------------------


def _events() -> list[ProgressEvent]:
    return [
        ProgressEvent("export", "tracing", "start"),
        ProgressEvent("export", "tracing", "end", seconds=1.25),
        ProgressEvent("int8", "calibrating", "start", 0, 3, "batches"),
        *(ProgressEvent("int8", "calibrating", "advance", k, 3, "batches", k) for k in (1, 2, 3)),
        ProgressEvent("int8", "calibrating", "end", 3, 3, "batches", 3.0),
        ProgressEvent("agreement", "comparing", "start", 0, None, "batches"),
        ProgressEvent("agreement", "comparing", "advance", 5, None, "batches", 0.5),
        ProgressEvent("agreement", "comparing", "fail", 5, None, "batches", 0.6, "ValueError: x"),
    ]


def test_printer_plain_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, interval_s=0.0)
    assert not printer.tty  # a StringIO is no terminal
    for event in _events():
        printer(event)
    printer.close()
    assert stream.getvalue().splitlines() == [
        "fer-export export: tracing ...",
        "fer-export export: tracing done (1.2 s)",
        "fer-export int8: calibrating 0/3 batches ...",
        "fer-export int8: calibrating 1/3 batches (33%), 1.0 s",
        "fer-export int8: calibrating 2/3 batches (67%), 2.0 s",
        "fer-export int8: calibrating 3/3 batches (100%), 3.0 s",
        "fer-export int8: calibrating 3/3 batches done (3.0 s)",
        "fer-export agreement: comparing 0 batches ...",
        "fer-export agreement: comparing 5 batches, 0.5 s",
        "fer-export agreement: comparing 5 batches failed after 0.6 s: ValueError: x",
    ]
    assert "\r" not in stream.getvalue()


def test_printer_plain_count_lines_are_spaced_out() -> None:
    """Off a terminal a count line is written at most every ``interval_s``: with a long one,
    only the phases' start and end lines (logs do not fill up)."""
    stream = io.StringIO()
    printer = ProgressPrinter(stream, interval_s=1e9, details=False)
    for event in _events():
        printer(event)
    lines = stream.getvalue().splitlines()
    assert [line for line in lines if "%" in line or ", 0.5 s" in line] == []
    assert "fer-export int8: calibrating 3/3 batches done (3.0 s)" in lines
    assert lines[-1] == "fer-export agreement: comparing 5 batches failed after 0.6 s"


def test_printer_redraws_one_line_on_a_terminal() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True)
    for event in _events()[:7]:
        printer(event)
    text = stream.getvalue()
    # Each phase is one terminal line, redrawn with carriage returns and ended once.
    assert text.count("\n") == 2 and text.endswith("\n")
    tracing, calibrating = text.split("\n")[:2]  # splitlines() would split at \r too
    assert tracing == "\rfer-export export: tracing ...\rfer-export export: tracing done (1.2 s)"
    frames = calibrating.split("\r")[1:]
    assert frames[0] == "fer-export int8: calibrating 0/3 batches ..."
    assert frames[-1].rstrip() == "fer-export int8: calibrating 3/3 batches done (3.0 s)"
    # The last count is always drawn, however soon after the previous one it comes.
    assert any(f.startswith("fer-export int8: calibrating 3/3 batches (100%)") for f in frames)
    # A phase left open (an error) is ended by close(), so the next line starts clean.
    printer(ProgressEvent("export", "exporting", "start"))
    printer.close()
    assert stream.getvalue().endswith("fer-export export: exporting ...\n")


def test_reporter_phases() -> None:
    recorder = Recorder()
    reporter = Reporter(recorder, "work")
    with reporter.phase("one"):
        pass
    with reporter.phase("two", total=2, unit="batches"):
        reporter.advance()
        reporter.advance()
    with pytest.raises(KeyError), reporter.phase("three"):
        raise KeyError("missing")
    assert recorder.steps() == [
        ("work", "one", "start"), ("work", "one", "end"),
        ("work", "two", "start"), ("work", "two", "end"),
        ("work", "three", "start"), ("work", "three", "fail"),
    ]  # fmt: skip
    assert recorder.counts("two") == [(0, 2), (1, 2), (2, 2), (2, 2)]
    assert recorder.counts("one") == [(None, None), (None, None)]
    assert recorder.events[-1].detail == "KeyError: 'missing'"
    silent = Reporter(None, "work")  # no callback: nothing to call, nothing fails
    with silent.phase("one", total=1, unit="batches"):
        silent.advance()
    with pytest.raises(ValueError, match="progress must be a callable"):
        Reporter("stderr", "work")  # type: ignore[arg-type]


# -- the library: fp16, int8, agreement (no torch) -------------------------------------------


def test_int8_calibration_counts_batches(model_path: Path, tmp_path: Path) -> None:
    contract = read_model(model_path).contract
    batches = _batches(contract, 3)
    recorder = Recorder()
    out = to_int8(model_path, tmp_path / "m.int8.onnx", batches, progress=recorder)
    assert read_model(out).contract.precision == "int8"
    assert recorder.steps() == [
        ("int8", "preparing", "start"), ("int8", "preparing", "end"),
        ("int8", "calibrating", "start"), ("int8", "calibrating", "end"),
        ("int8", "quantising", "start"), ("int8", "quantising", "end"),
    ]  # fmt: skip
    # Each batch counted once the calibrator has run it, out of the list's length.
    assert recorder.counts("calibrating") == [(0, 3), (1, 3), (2, 3), (3, 3), (3, 3)]
    assert all(e.unit == "batches" for e in recorder.events if e.phase == "calibrating")
    ends = [e for e in recorder.events if e.state == "end"]
    assert all(e.seconds >= 0 for e in ends)

    # A generator does not know its length: counts without a total.
    recorder = Recorder()
    gen: Iterator[np.ndarray] = iter(_batches(contract, 2))
    to_int8(model_path, tmp_path / "g.int8.onnx", gen, preprocess=False, progress=recorder)
    assert recorder.steps()[0] == ("int8", "calibrating", "start")
    assert recorder.counts("calibrating") == [(0, None), (1, None), (2, None), (2, None)]


def test_int8_failure_is_reported_and_raised(model_path: Path, tmp_path: Path) -> None:
    bad = [np.zeros((2, 3, 8, 8), np.float32)]  # the model takes 16 x 16
    recorder = Recorder()
    with pytest.raises(ValueError, match=r"calibration batch must be \(N, 3, 16, 16\)"):
        to_int8(model_path, tmp_path / "bad.int8.onnx", bad, progress=recorder)
    last = recorder.events[-1]
    assert (last.phase, last.state) == ("calibrating", "fail")
    assert last.detail.startswith("ValueError: calibration batch must be")
    assert not (tmp_path / "bad.int8.onnx").exists()


def test_fp16_and_agreement_progress(model_path: Path, tmp_path: Path) -> None:
    contract = read_model(model_path).contract
    recorder = Recorder()
    half = to_fp16(model_path, tmp_path / "m.fp16.onnx", progress=recorder)
    assert recorder.steps() == [("fp16", "converting", "start"), ("fp16", "converting", "end")]
    recorder = Recorder()
    stats = agreement(model_path, half, _batches(contract, 4), progress=recorder)
    assert stats["count"] == 16
    assert recorder.counts("comparing") == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4), (4, 4)]
    assert recorder.steps() == [
        ("agreement", "comparing", "start"),
        ("agreement", "comparing", "end"),
    ]


def test_library_is_silent_by_default(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contract = read_model(model_path).contract
    q = to_int8(model_path, tmp_path / "m.int8.onnx", _batches(contract, 2))
    agreement(model_path, q, _batches(contract, 2))
    captured = capsys.readouterr()
    assert not PROGRESS_LINE.search(captured.out + captured.err), captured


# -- export and the command line (torch) -----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="exporting needs the export extra")
    pytest.importorskip("capsnet_model", reason="exporting needs the export extra")
    import torch

    from capsnet_model import create_model
    from capsnet_model.checkpoint import ModelInfo, save_model
    from capsnet_model.data import Preprocess

    tiny: dict[str, Any] = {"width": 1 / 16, "image_size": 32, "hidden": 16}
    torch.manual_seed(0)
    model = create_model("vgg16_bn", **tiny)
    info = ModelInfo(name="vgg16_bn", kwargs=tiny, preprocess=Preprocess(image_size=32))
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "vgg.safetensors", info)


def test_export_and_verify_phases(checkpoint: Path, tmp_path: Path) -> None:
    from fer_export.export import export_onnx, verify_onnx

    recorder = Recorder()
    path = export_onnx(checkpoint, tmp_path / "m.onnx", progress=recorder)
    assert recorder.steps() == [
        ("export", phase, state)
        for phase in ("tracing", "exporting", "checking", "verifying")
        for state in ("start", "end")
    ]
    recorder = Recorder()
    export_onnx(checkpoint, tmp_path / "unverified.onnx", verify=False, progress=recorder)
    assert [p for _, p, s in recorder.steps() if s == "end"] == ["tracing", "exporting"]
    recorder = Recorder()
    assert verify_onnx(path, checkpoint, progress=recorder).passed
    assert recorder.steps() == [
        ("verify", "checking", "start"), ("verify", "checking", "end"),
        ("verify", "verifying", "start"), ("verify", "verifying", "end"),
    ]  # fmt: skip


def _done_lines(err: str) -> list[str]:
    """The progress lines of finished phases, durations left out."""
    return [
        re.sub(r" done \(.*\)$", " done", line) for line in err.splitlines() if " done (" in line
    ]


def test_cli_export_progress_on_stderr_only(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fer_export.cli import main

    out = tmp_path / "m.onnx"
    argv = ["export", str(checkpoint), "-o", str(out), "--fp16", "--int8", "--calib-count", "40"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err and all(PROGRESS_LINE.fullmatch(line) for line in err), captured.err
    assert "\r" not in captured.err  # not a terminal: plain lines
    assert _done_lines(captured.err) == [
        "fer-export export: loading done",
        "fer-export export: tracing done",
        "fer-export export: exporting done",
        "fer-export export: checking done",
        "fer-export export: verifying done",
        "fer-export images: making calibration faces 2/2 batches done",
        "fer-export images: making check faces 2/2 batches done",
        "fer-export fp16: converting done",
        "fer-export fp16: checking agreement 2/2 batches done",
        "fer-export int8: preparing done",
        "fer-export int8: calibrating 2/2 batches done",
        "fer-export int8: quantising done",
        "fer-export int8: checking agreement 2/2 batches done",
    ]
    # Stdout keeps the results, and nothing of the progress.
    lines = captured.out.splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "wrote",
        "int8",
        "agreement",
        "wrote",
        "wrote",
    ]
    assert not any(PROGRESS_LINE.fullmatch(line) for line in lines), captured.out

    assert main([*argv, "--no-progress"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.splitlines()[0].startswith(f"wrote {out}")


def test_cli_verify_json_stays_json(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fer_export.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), str(checkpoint), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the JSON and nothing else
    assert report["passed"] is True
    assert _done_lines(captured.err) == [
        "fer-export verify: loading done",
        "fer-export verify: checking done",
        "fer-export verify: verifying done",
    ]
    assert main(["verify", str(out), str(checkpoint), "--json", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
