"""End to end on tiny runs: files, metrics, report, ONNX parity, variants, resume, errors and
two data-parallel CPU processes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from conftest import TINY

import fer_train
from fer_train.cli import main
from fer_train.report import fmt
from fer_train.run import SYNTHETIC_NOTE

FILES = (
    "model.onnx",
    "model.fp16.onnx",
    "model.int8.onnx",
    "metrics.json",
    "metrics.jsonl",
    "report.md",
    "model_card.md",
    "best.safetensors",
    "test_confusion.csv",
    "test_confusion.png",
    "learning_curves.png",
    "reliability.png",
    "config.yaml",
    "skipped.csv",
)


def _run(args: list[str]) -> str:
    """Runs ``main(args)`` (exit status 0 expected); returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(args)
    assert code == 0, printed.getvalue()
    return printed.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run with both variants, started the way the outside contract starts it; its
    console output is kept in ``console.txt`` beside the run."""
    out = tmp_path_factory.mktemp("fer") / "run"
    printed = _run([f"output_dir={out}", *TINY, "export.fp16=true", "export.int8=true"])
    (out.parent / "console.txt").write_text(printed)
    return out


def _metrics(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return data


def _onnx_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


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


def test_calibration_and_abstention_are_fitted_on_the_validation_split(tiny_run: Path) -> None:
    m = _metrics(tiny_run)
    cal, ab = m["calibration"], m["abstention"]
    assert cal["method"] == "temperature" and cal["fitted_on"] == "val"
    assert cal["transform"] == "log" and m["onnx_score_kind"] == "capsule_length"
    # the faces training selected the model on: same count, same accuracy
    assert cal["val_samples"] == m["sizes"]["val"] == 14
    assert cal["val_accuracy"] == pytest.approx(m["val_accuracy"])
    assert 0.01 <= cal["temperature"] <= 100.0 and m["temperature"] == cal["temperature"]
    bound = {0.01: "lower", 100.0: "upper"}.get(cal["temperature"])
    assert cal["at_bound"] == bound
    # T minimises the validation NLL, so it cannot be worse there than T = 1
    assert cal["val"]["nll_after"] <= cal["val"]["nll_before"] + 1e-12
    for split in ("val", "test"):
        for key in ("ece_before", "ece_after"):
            assert 0.0 <= cal[split][key] <= 1.0
    assert (m["ece_before"], m["ece_after"]) == (
        cal["test"]["ece_before"],
        cal["test"]["ece_after"],
    )
    # the deployed formula (fer-export on model.onnx) gives fer-train's probabilities
    assert cal["runtime_formula_max_abs_diff"] < 1e-9
    assert cal["onnx_probability_max_abs_diff"] < 1e-3
    # the threshold answers at least the coverage asked for, on the validation split
    assert ab["coverage_target"] == 0.9 and ab["val_coverage"] >= 0.9
    assert 0.0 <= ab["threshold"] <= 1.0 and ab["fitted_on"] == "val"
    assert 0.0 <= ab["test_coverage"] <= 1.0
    assert ab["test_abstained"] == round((1 - ab["test_coverage"]) * m["test_samples"])
    assert m["abstain_threshold"] == ab["threshold"]
    # reliability bins of the test set, before and after
    for when in ("before", "after"):
        assert sum(m["reliability"][when]["counts"]) == m["test_samples"]


def test_model_onnx_says_what_it_was_trained_on(tiny_run: Path) -> None:
    """fer.dataset, fer.calibration, fer.abstention and fer.provenance are written before the
    variants, so all three files carry them."""
    from fer_export import FERSession

    m = _metrics(tiny_run)
    fp32 = _onnx_metadata(tiny_run / "model.onnx")
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        meta = _onnx_metadata(tiny_run / name)
        for key in ("fer.dataset", "fer.calibration", "fer.abstention", "fer.provenance"):
            assert meta[key] == fp32[key], (name, key)
    assert fp32["fer.dataset"] == "synthetic"
    calibration = json.loads(fp32["fer.calibration"])
    assert calibration["temperature"] == m["temperature"]
    assert calibration["samples"] == 14 and calibration["transform"] == "log"
    assert calibration["ece_after"] == m["ece_after"]
    assert json.loads(fp32["fer.abstention"])["threshold"] == m["abstain_threshold"]
    provenance = json.loads(fp32["fer.provenance"])
    assert provenance["synthetic"] is True and provenance["note"] == SYNTHETIC_NOTE
    assert provenance["sizes"] == {"train": 126, "val": 14, "test": 35}
    assert provenance["test_accuracy"] == m["test_accuracy"]
    assert provenance["mean_class_accuracy"] == m["mean_class_accuracy"]
    assert provenance["trained_with"] == f"fer-train {fer_train.__version__}"
    assert provenance["au_source"] == "template" and "seed 1" in provenance["split"]
    session = FERSession(tiny_run / "model.onnx", warmup=False)
    assert any("dataset" in key for key in session.metadata)
    assert session.contract.calibrated and session.contract.is_synthetic
    assert session.contract.abstain_threshold == pytest.approx(m["abstain_threshold"])


def test_variants_are_calibrated_and_checked_on_different_images(tiny_run: Path) -> None:
    m = _metrics(tiny_run)
    int8 = m["variants"]["int8"]
    assert int8["calib"].startswith("32 training images (none of them validation or test")
    for v in m["variants"].values():
        assert v["checked_on"] == "the 35 test images (held out)"
    console = (tiny_run.parent / "console.txt").read_text()
    threads = m["environment"]["torch_threads"]
    assert (
        f"training e2capsnet for up to 1 epochs in {tiny_run} ({threads} torch threads)" in console
    )
    assert "int8 calibrated on 32 training images" in console
    assert "checked on the 35 test images (held out)" in console


def test_environment_is_recorded(tiny_run: Path) -> None:
    import platform

    import torch

    env = _metrics(tiny_run)["environment"]
    assert env["torch_threads"] == torch.get_num_threads() >= 1
    assert env["torch_interop_threads"] >= 1 and env["threads_setting"] is None
    assert env["deterministic"] is False and env["seed"] == 0
    assert env["versions"]["fer-train"] == fer_train.__version__
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["numpy"] == np.__version__
    assert env["versions"]["python"] == platform.python_version()
    assert {"capsnet-model", "fer-export"} <= set(env["versions"])
    assert env["platform"] == platform.platform()


def test_without_a_validation_split_calibration_is_skipped_and_said(tmp_path: Path) -> None:
    out = tmp_path / "noval"
    printed = _run([f"output_dir={out}", *TINY, "train.val_fraction=0", "plots=false"])
    assert "calibrating: skipped (no validation split" in printed
    m = _metrics(out)
    assert m["temperature"] is None and m["ece_after"] is None and m["abstain_threshold"] is None
    assert m["calibration"]["skipped"].startswith("no validation split")
    assert m["abstention"]["skipped"] == m["calibration"]["skipped"]
    assert 0.0 <= m["ece_before"] <= 1.0
    report = (out / "report.md").read_text()
    assert "**skipped**: no validation split" in report and "never abstains" in report
    meta = _onnx_metadata(out / "model.onnx")
    assert "fer.calibration" not in meta and "fer.abstention" not in meta
    assert json.loads(meta["fer.provenance"])["sizes"]["val"] == 0
    assert not (out / "reliability.png").exists()


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
    cal, ab = m["calibration"], m["abstention"]
    assert f"T = {cal['temperature']:.4g}" in text
    assert f"{fmt(m['ece_before'])} before, {fmt(m['ece_after'])} after" in text
    assert f"below **{ab['threshold']:.4f}**" in text
    assert (
        f"coverage {ab['test_coverage']:.1%}, accuracy {fmt(ab['test_accuracy_covered'])}" in text
    )
    assert "measured on the 35 test images (held out)" in text
    assert "int8 calibration: 32 training images" in text
    assert "(reliability.png)" in text and SYNTHETIC_NOTE in text
    env = m["environment"]
    assert f"torch threads {env['torch_threads']}" in text


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


def test_run_writes_the_card(tiny_run: Path) -> None:
    card = (tiny_run / "model_card.md").read_text()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert card.startswith("---\n")
    head = yaml.safe_load(card[4:].partition("\n---\n")[0])
    values = {m["name"]: m["value"] for m in head["model-index"][0]["results"][0]["metrics"]}
    assert values["Test accuracy"] == round(metrics["test_accuracy"], 4)
    assert metrics["model"] in card
