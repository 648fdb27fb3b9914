"""Progress of ``fer-edge run``: on stderr only, counts and totals right, stdout untouched."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fer_edge.cli import main
from fer_edge.progress import Progress, expected_items


@pytest.mark.parametrize(
    ("total", "every", "max_frames", "expected"),
    [(10, 1, None, 10), (10, 3, None, 4), (10, 1, 4, 4), (None, 1, None, None), (None, 1, 5, 5),
     (0, 1, None, None)],
)  # fmt: skip
def test_expected_items(
    total: int | None, every: int, max_frames: int | None, expected: int | None
) -> None:
    assert expected_items(total, every, max_frames) == expected


def test_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(4, "images", stream=stream, tty=False, interval_s=0.0)
    progress.update(1, faces=2)
    progress.update(3, faces=1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("fer-edge run: 1/4 images (25%) 2 faces")
    assert lines[-1].startswith("fer-edge run: 4/4 images (100%) 3 faces")
    assert "ETA" not in lines[-1]


def test_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    progress = Progress(None, "frames", stream=stream, tty=True)
    progress.update(5)
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\rfer-edge run: 5 frames") and text.endswith("\n")
    assert text.count("\n") == 1  # one line, redrawn in place


def test_run_folder_progress_on_stderr_jsonl_on_stdout(
    model_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["run", "--model", str(model_path), "--providers", "cpu", "--source",
         str(image_folder), "--recursive", "--progress", "on"]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert len(records) == 5  # 4 good images and a corrupt one; stdout is JSON lines only
    progress = [line for line in captured.err.splitlines() if "/5 images" in line]
    assert progress and progress[-1].startswith("fer-edge run: 5/5 images (100%)")


def test_run_progress_off_by_default_when_not_a_terminal(
    model_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--model", str(model_path), "--providers", "cpu", "--source",
                 str(image_folder)]) == 0  # fmt: skip
    assert "images (" not in capsys.readouterr().err
