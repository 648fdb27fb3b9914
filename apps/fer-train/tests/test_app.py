"""End to end on tiny runs: files, metrics, report, ONNX parity, variants, resume, errors and
two data-parallel CPU processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY

from fer_train.cli import main
from fer_train.report import fmt

FILES = (
    "model.onnx",
    "model.fp16.onnx",
    "model.int8.onnx",
    "metrics.json",
    "metrics.jsonl",
    "report.md",
    "best.safetensors",
    "test_confusion.csv",
    "test_confusion.png",
    "learning_curves.png",
    "config.yaml",
    "skipped.csv",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run with both variants, started the way the outside contract starts it."""
    out = tmp_path_factory.mktemp("fer") / "run"
    code = main([f"output_dir={out}", *TINY, "export.fp16=true", "export.int8=true"])
    assert code == 0
    return out


def _metrics(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return data


def test_every_file_is_written(tiny_run: Path) -> None:
    for name in FILES:
        assert (tiny_run / name).is_file(), name
        assert (tiny_run / name).stat().st_size > 0, name


def test_metrics_json(tiny_run: Path) -> None:
    m = _metrics(tiny_run)
    for key in (
        "test_accuracy",
        "mean_class_accuracy",
        "val_accuracy",
        "onnx_agreement",
        "onnx_max_abs_diff",
        "best_epoch",
        "epochs_run",
        "timings",
    ):
        assert key in m, key
    assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["mean_class_accuracy"] <= 1.0
    assert m["epochs_run"] == 1 and m["best_epoch"] == 1
    assert m["sizes"] == {"train": 126, "val": 14, "test": 35}
    assert m["test_samples"] == 35 and sum(m["class_counts"].values()) == 35
    assert set(m["timings"]) >= {"training", "evaluating", "exporting", "verifying", "variants"}
    # The exported model gives PyTorch's predictions on every test image.
    assert m["onnx_agreement"] == 1.0
    assert m["onnx_test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert m["onnx_max_abs_diff"] < 1e-4 and m["onnx_verify_passed"]
    assert set(m["variants"]) == {"fp16", "int8"}
    for v in m["variants"].values():
        assert 0.0 < v["size_ratio"] < 1.0 and 0.0 <= v["agreement"] <= 1.0
    # epochs_run agrees with the per-epoch log
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == m["epochs_run"]


def test_report_states_the_numbers(tiny_run: Path) -> None:
    m = _metrics(tiny_run)
    text = (tiny_run / "report.md").read_text()
    for key in ("test_accuracy", "mean_class_accuracy", "val_accuracy", "onnx_agreement"):
        assert fmt(m[key]) in text, key
    assert f"{m['onnx_verify_max_abs_diff']:.3g}" in text
    assert f"{m['parameters']:,}" in text and m["model"] in text
    assert f"epochs run: {m['epochs_run']}, best epoch: {m['best_epoch']}" in text
    for name, acc in m["per_class_accuracy"].items():
        assert f"| {name} | {m['class_counts'][name]} | {fmt(acc)} |" in text
    for v in m["variants"].values():
        assert f"{v['size_ratio']:.2f}x" in text
    assert "(learning_curves.png)" in text and "(test_confusion.png)" in text


def test_clean_data_skips_nothing(tiny_run: Path) -> None:
    """Synthetic faces have nothing to skip: skipped.csv is its header alone, and the
    metrics and the report say none were left out."""
    assert (tiny_run / "skipped.csv").read_text() == "split,where,reason\n"
    skipped = _metrics(tiny_run)["skipped"]
    assert skipped["count"] == 0 and skipped["first"] == [] and skipped["on_error"] == "raise"
    assert "- none (data.on_error=raise)" in (tiny_run / "report.md").read_text()


def test_resume_after_a_finished_run_trains_no_more(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_run, out)
    before = (out / "metrics.jsonl").read_text()
    best = (out / "best.safetensors").read_bytes()
    assert main([f"output_dir={out}", *TINY, "resume=true"]) == 0
    assert (out / "metrics.jsonl").read_text() == before
    assert (out / "best.safetensors").read_bytes() == best
    m = _metrics(out)
    assert m["epochs_run"] == 1 and m["test_accuracy"] == _metrics(tiny_run)["test_accuracy"]


def test_finished_run_without_resume_is_refused(tiny_run: Path, capsys: Any) -> None:
    assert main([f"output_dir={tiny_run}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resume=true" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train.epochs=zero"], "train.epochs: expected int, got 'zero' (str)"),
        (
            ["train.epochs='3'"],
            "override \"train.epochs='3'\": train.epochs: expected int, got '3'",
        ),
        (["train.epoch=2"], "train.epoch: unknown key for TrainConfig (did you mean 'epochs'?)"),
        (["data.kind=rafbd"], "data.kind: expected one of"),
        (["--preset", "rafdb", "preset=fer2013"], "the preset is given twice"),
        (["--preset", "rafdb"], "set data.root=/path/to/RAF-DB"),
        (["preset=fer2013", "data.root=/nonexistent/fer"], "set data.root=/path/to/FER2013"),
        (["--preset", "nope"], "unknown preset"),
        (["export.int8=true", "export.calib=/nonexistent/faces"], "export.calib"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
        (["stray"], "unrecognised argument 'stray'"),
        (["--verbose"], "unrecognised argument '--verbose'"),
        (["--preset"], "--preset needs a preset name"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    args: list[str], needle: str, tmp_path: Path, capsys: Any
) -> None:
    assert main([f"output_dir={tmp_path / 'out'}", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], captured.err
    assert "Traceback" not in captured.err


def test_a_bad_value_in_a_config_file_exits_2_naming_its_line(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\ntrain:\n  epochs: '3'\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"fer-train: {path}, line 3: train.epochs: expected int, got '3' (str)\n"
    assert not (tmp_path / "out").exists()


def test_the_written_config_yaml_reruns_the_same_configuration(tiny_run: Path) -> None:
    """config.yaml is the resolved configuration: ``--config`` reads it back equal."""
    from fer_train.config import load_app_config

    resolved = load_app_config(
        None, [f"output_dir={tiny_run}", *TINY, "export.fp16=true", "export.int8=true"]
    )
    assert load_app_config(tiny_run / "config.yaml") == resolved


def test_help_and_presets(capsys: Any) -> None:
    assert main(["--help"]) == 0
    assert "usage: fer-train" in capsys.readouterr().out
    assert main(["presets"]) == 0
    assert "rafdb" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_two_data_parallel_cpu_processes(tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2 -m fer_train`` on a CPU machine: two
    gloo ranks both train, rank 0 alone evaluates, exports and reports, both exit 0. Without
    accelerate, the same two processes are started with torchrun's variables."""
    out = tmp_path / "ddp"
    port = str(_free_port())
    args = ["-m", "fer_train", f"output_dir={out}", *TINY]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    procs = []
    if accelerate:
        launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2"]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", port]
        procs.append(
            subprocess.Popen(
                [*launch, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    else:
        for rank in range(2):
            env = {
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    m = _metrics(out)
    assert m["num_processes"] == 2 and m["onnx_agreement"] == 1.0
    assert (out / "model.onnx").is_file() and (out / "report.md").is_file()
    assert "".join(logs).count("fer-train: report:") == 1  # rank 0 only
    assert "Traceback" not in "".join(logs)
    # each rank trained on its own shard (63 images, under the 2 x 32 cap), counts summed:
    # one process alone would have seen 64 of the 126
    assert json.loads((out / "metrics.jsonl").read_text())["train_images"] == 126
