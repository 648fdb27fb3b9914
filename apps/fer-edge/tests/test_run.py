"""``fer-edge run`` on an image, a folder and a video; summaries, annotations, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from edge_helpers import LABELS, encode, scene

from fer_edge.cli import main
from fer_edge.pipeline import face_record
from fer_images.testing import png_bomb


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict], str]:
    code = main(args)
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return code, lines, captured.err


def test_single_image_matches_session(
    tmp_path: Path, model_path: Path, session, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "two.png"
    image.write_bytes(encode(scene(2)))
    annotated = tmp_path / "out" / "two_annotated.png"
    code, lines, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--source",
            str(image),
            "--providers",
            "cpu",
            "--annotate",
            str(annotated),
        ],
        capsys,
    )
    assert code == 0
    assert len(lines) == 1
    (record,) = lines
    assert record["file"] == "two.png" and record["frame"] == 0 and record["error"] is None
    assert (record["width"], record["height"]) == (480, 240)
    expected = session.predict(str(image))
    assert len(expected) == 2
    assert record["faces"] == [face_record(p) for p in expected]
    face = record["faces"][0]
    assert set(face["probabilities"]) == set(face["raw_scores"]) == set(LABELS)
    assert abs(sum(face["probabilities"].values()) - 1.0) < 1e-5
    assert face["label"] == face["top_label"] and face["abstained"] is False
    assert record["detector"] in ("haar", "mediapipe")
    assert record["latency_ms"] > 0
    assert "1 images, 2 faces, 0 errors" in err
    assert "provider: cpu" in err and "p95" in err and "images/s" in err
    picture = cv2.imread(str(annotated))
    assert picture is not None and picture.shape == (240, 480, 3)


@pytest.mark.parametrize("batch", [1, 3])
def test_folder_with_bad_files(
    tmp_path: Path,
    model_path: Path,
    session,
    image_folder: Path,
    batch: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "results.jsonl"
    annotated = tmp_path / "annotated"
    summary_file = tmp_path / "summary.json"
    code, stdout_lines, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--source",
            str(image_folder),
            "--out",
            str(out),
            "--annotate",
            str(annotated),
            "--batch",
            str(batch),
            "--recursive",
            "--providers",
            "cpu",
            "--summary-json",
            str(summary_file),
        ],
        capsys,
    )
    assert code == 0 and stdout_lines == []
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in records] == [
        "a_one.png",
        "b_two.jpg",
        "bad.jpg",
        "c_none.png",
        "sub/d_sub.png",
    ]
    by_name = {r["file"]: r for r in records}
    bad = by_name["bad.jpg"]
    assert bad["error"] and "bad.jpg" in bad["error"] and bad["faces"] == []
    assert [len(by_name[n]["faces"]) for n in ("a_one.png", "b_two.jpg", "c_none.png")] == [1, 2, 0]
    for name in ("a_one.png", "b_two.jpg", "sub/d_sub.png"):
        expected = session.predict(str(image_folder / name))
        got = by_name[name]["faces"]
        assert [f["box"] for f in got] == [list(p.box) for p in expected]
        assert [f["label"] for f in got] == [p.label for p in expected]
        for f, p in zip(got, expected, strict=True):
            assert f["score"] == pytest.approx(p.score, abs=1e-5)
    assert "5 images, 4 faces, 1 errors, 1 entries skipped (1 not an image suffix (.txt))" in err
    summary = json.loads(summary_file.read_text())
    assert summary["items"] == 5 and summary["errors"] == 1 and summary["skipped"] == 1
    assert summary["skipped_entries"] == [
        {"file": "notes.txt", "reason": "not an image suffix (.txt)"}
    ]
    for name in ("a_one.png", "b_two.jpg", "c_none.png", "sub/d_sub.png"):
        assert cv2.imread(str(annotated / name)) is not None
    assert not (annotated / "bad.jpg").exists()


def test_folder_without_recursion_skips_subfolders(
    model_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run_cli(
        ["run", "--model", str(model_path), "--source", str(image_folder), "--max-frames", "2"],
        capsys,
    )
    assert code == 0
    assert [r["file"] for r in lines] == ["a_one.png", "b_two.jpg"]


def test_video_with_annotation(
    tmp_path: Path, model_path: Path, video_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotated = tmp_path / "annotated.mp4"
    code, lines, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--source",
            str(video_path),
            "--annotate",
            str(annotated),
            "--batch",
            "2",
        ],
        capsys,
    )
    assert code == 0
    assert [r["frame"] for r in lines] == [0, 1, 2, 3, 4, 5]
    assert all(r["kind"] == "video" and r["file"] is None for r in lines)
    assert [len(r["faces"]) for r in lines] == [1, 1, 1, 1, 0, 0]
    assert all((r["width"], r["height"]) == (240, 240) for r in lines)
    assert "6 frames, 4 faces, 0 errors" in err and "frames/s" in err
    capture = cv2.VideoCapture(str(annotated))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 6


def test_video_every_and_max_frames(
    model_path: Path, video_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--source",
            str(video_path),
            "--every",
            "2",
            "--max-frames",
            "2",
            "--faces",
            "whole",
        ],
        capsys,
    )
    assert code == 0
    assert [r["frame"] for r in lines] == [0, 2]
    assert [r["faces"][0]["box"] for r in lines] == [[0, 0, 240, 240]] * 2
    assert "2 frames, 2 faces" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{tmp}/missing.onnx", "--source", "{tmp}"], "model file not found"),
        (["--model", "{tmp}/junk.onnx", "--source", "{tmp}"], "not a readable ONNX model"),
        (["--model", "{model}", "--source", "{tmp}/nothing_here"], "source not found"),
        (["--model", "{model}", "--source", "{tmp}/broken.mp4"], "cannot open video file"),
    ],
)
def test_errors_exit_2_with_one_line(
    tmp_path: Path,
    model_path: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"this is not onnx")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    argv = ["run"] + [a.format(tmp=tmp_path, model=model_path) for a in args]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fer-edge: error: ") and message in err


def test_missing_model_subprocess_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_edge",
            "run",
            "--model",
            str(tmp_path / "none.onnx"),
            "--source",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"fer-edge: error: model file not found: {tmp_path / 'none.onnx'}"
    ]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--model", "m.onnx", "--source", "x", "--batch", "0"])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_keyboard_interrupt_still_summarises(
    model_path: Path, session, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A camera run stopped with Ctrl-C prints its summary and exits 0."""
    import io

    from fer_edge.pipeline import run_source
    from fer_edge.sources import Item, Source

    class FakeCamera(Source):
        kind = "camera"

        def __iter__(self):  # type: ignore[no-untyped-def]
            yield Item(0, None, rgb=scene(1))
            yield Item(1, None, rgb=scene(1))
            raise KeyboardInterrupt

    out = io.StringIO()
    summary = run_source(session, FakeCamera("0"), out)
    assert summary.interrupted and summary.items == 2 and summary.faces == 2
    assert len(out.getvalue().splitlines()) == 2
    assert "(interrupted)" in summary.format()


@pytest.fixture(scope="module")
def bomb_bytes() -> bytes:
    return png_bomb(20000, 20000)


def test_bomb_contract_exit_0_listed_with_error_and_bounded_memory(
    tmp_path: Path, model_path: Path, bomb_bytes: bytes
) -> None:
    """The issue's contract: the 20000x20000 PNG ends with exit 0 (the image listed with an
    error) or 2, never a signal, and the process stays under 1 GB."""
    bomb = tmp_path / "BOMB.png"
    bomb.write_bytes(bomb_bytes)
    out = tmp_path / "F.jsonl"
    # Peak resident size of the child itself (VmHWM): ru_maxrss would start at the pytest
    # parent's peak, which has nothing to do with this run.
    script = (
        "import sys\n"
        "from fer_edge.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('peak_kb', peak.split()[1], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    argv = ["run", "--model", str(model_path), "--source", str(bomb), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["file"] == "BOMB.png" and record["faces"] == []
    assert "20000x20000" in record["error"] and "over the limit" in record["error"]
    peak_kb = int(proc.stderr.split("peak_kb")[1].split()[0])
    assert peak_kb < 1024 * 1024, f"peak RSS {peak_kb} kB"
    assert "1 images, 0 faces, 1 errors" in proc.stderr


def test_every_folder_entry_is_processed_or_skipped_with_a_reason(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    (folder / "m.png").mkdir(parents=True)  # a folder with an image name
    (folder / "m.png" / "inner.png").write_bytes(encode(scene(1)))
    (folder / ".hidden.jpg").write_bytes(encode(scene(1), ".jpg"))
    (folder / ".git").mkdir()
    (folder / ".git" / "x.png").write_bytes(encode(scene(1)))
    (folder / "x.png").symlink_to(folder / "gone.png")  # broken link
    (folder / "linked").symlink_to(folder / "m.png", target_is_directory=True)
    (folder / "ok.png").write_bytes(encode(scene(1)))
    (folder / "readme").write_text("no suffix")
    summary_file = tmp_path / "summary.json"
    base = ["run", "--model", str(model_path), "--source", str(folder)]
    code, lines, err = run_cli([*base, "--summary-json", str(summary_file)], capsys)
    assert code == 0
    assert [r["file"] for r in lines] == ["ok.png"]
    skipped = {
        e["file"]: e["reason"] for e in json.loads(summary_file.read_text())["skipped_entries"]
    }
    assert skipped == {
        ".git": "hidden folder",
        ".hidden.jpg": "hidden file",
        "linked": "link to a folder (not followed)",
        "m.png": "folder (use --recursive to include subfolders)",
        "readme": "not an image suffix (none)",
        "x.png": "broken link",
    }
    assert "1 images" in err and "6 entries skipped" in err and "1 broken link" in err

    code, lines, err = run_cli([*base, "--recursive", "--summary-json", str(summary_file)], capsys)
    assert code == 0
    assert [r["file"] for r in lines] == ["m.png/inner.png", "ok.png"]
    skipped = {
        e["file"]: e["reason"] for e in json.loads(summary_file.read_text())["skipped_entries"]
    }
    assert set(skipped) == {".git", ".hidden.jpg", "linked", "readme", "x.png"}


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_an_image_is_skipped_not_read(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    folder = tmp_path / "fifo"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    summary_file = tmp_path / "summary.json"
    code, lines, _ = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--source",
            str(folder),
            "--summary-json",
            str(summary_file),
        ],
        capsys,
    )
    assert code == 0 and lines == []
    entries = json.loads(summary_file.read_text())["skipped_entries"]
    assert entries == [{"file": "pipe.png", "reason": "not a regular file"}]


def test_truncated_video_says_so(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (96, 96))
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (96, 96, 3)).astype("uint8"))
    writer.release()
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    summary_file = tmp_path / "summary.json"
    code, lines, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--source",
            str(cut),
            "--faces",
            "whole",
            "--summary-json",
            str(summary_file),
        ],
        capsys,
    )
    assert code == 0 and 0 < len(lines) < 20
    assert f"warning: video ended after {len(lines)} of the 20 frames" in err
    assert "truncated or corrupt" in json.loads(summary_file.read_text())["warnings"][0]
    # The whole file: no warning.
    code, lines, err = run_cli(
        ["run", "--model", str(model_path), "--source", str(path), "--faces", "whole"], capsys
    )
    assert code == 0 and len(lines) == 20 and "video ended" not in err


def test_a_failing_prediction_becomes_an_error_line_not_a_crash(
    model_path: Path, session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from fer_edge.pipeline import run_source
    from fer_edge.sources import Item, Source

    class TwoFrames(Source):
        kind = "video"

        def __iter__(self):  # type: ignore[no-untyped-def]
            yield Item(0, None, rgb=scene(1))
            yield Item(1, None, rgb=scene(1))

    calls = []

    def flaky(frames, faces):  # type: ignore[no-untyped-def]
        calls.append(len(frames))
        if len(calls) == 1:
            raise ValueError("box (3, 3, 0, 0) is empty")
        return [[] for _ in frames]

    monkeypatch.setattr(session, "predict_decoded", flaky)
    out = io.StringIO()
    summary = run_source(session, TwoFrames("clip"), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["error"] for r in records] == ["prediction failed: box (3, 3, 0, 0) is empty", None]
    assert summary.items == 2 and summary.errors == 1


def test_max_megapixels_sets_the_limit_for_run(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "two.png"
    image.write_bytes(encode(scene(2)))  # 480 x 240 = 115200 pixels
    base = ["run", "--model", str(model_path), "--source", str(image), "--faces", "whole"]
    code, lines, _ = run_cli([*base, "--max-megapixels", "0.1"], capsys)
    assert code == 0 and "480x240" in lines[0]["error"] and "over the limit" in lines[0]["error"]
    code, lines, _ = run_cli([*base, "--max-megapixels", "0.2"], capsys)
    assert code == 0 and lines[0]["error"] is None and len(lines[0]["faces"]) == 1
    assert main([*base, "--max-megapixels", "0"]) == 2
    assert "--max-megapixels must be a positive number" in capsys.readouterr().err
