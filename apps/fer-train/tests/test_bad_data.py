"""Broken data sets: ``data.on_error=skip`` leaves bad images and rows out and lists them
(console, ``skipped.csv``, ``metrics.json``, ``report.md``) and training goes on;
``data.on_error=raise`` stops before training with one line naming the file (exit status 2).

Every data set is written in its own on-disk layout from synthetic faces (so the tiny model
trains on something with signal), then damaged the ways real downloads are: a PNG or JPEG cut
short, text saved as ``.png``, an empty file, non-UTF-8 bytes and extra fields in a CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY

from capsnet_model.datasets import AFFECTNET_LABELS, EXPRESSIONS, FER2013_LABELS, RAFDB_LABELS
from capsnet_model.synthetic import SyntheticFaces
from fer_train.cli import main
from fer_train.config import DataConfig
from fer_train.data import load_splits

RAF_ID = {name: k for k, name in RAFDB_LABELS.items()}
FER_ID = {name: k for k, name in FER2013_LABELS.items()}
AFFECTNET_ID = {name: k for k, name in AFFECTNET_LABELS.items()}
AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,"
    "facial_landmarks,expression,valence,arousal"
)


def faces(count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """``count`` synthetic faces (RGB, 64 px) with their expression names."""
    data = SyntheticFaces(count, seed=seed, size=64)
    return [(image, EXPRESSIONS[label]) for image, label in (data[i] for i in range(count))]


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def cut_short(path: Path) -> None:
    """The file's first half, as a download that stopped."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------- the layouts, then damage


def folder_tree(root: Path) -> dict[str, str]:
    """``root/{train,test}/<class>/*.png|jpg`` (140 and 35 good faces) plus four bad train
    images and one bad test image; returns {bad file: the start of its reason}, the first
    one the loader meets first.

    140, not fewer: on 70 faces the tiny model's two batches leave its scores near 1e-7,
    where fer-export's relative parity check fails on float noise (exit status 1)."""
    for split, count, seed in (("train", 140, 0), ("test", 35, 1)):
        for i, (image, name) in enumerate(faces(count, seed)):
            write(root / split / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}", image)
    face = faces(1, 2)[0][0]
    text = root / "train" / "anger" / "text.png"
    empty = root / "train" / "fear" / "empty.png"
    for path in (text, empty):
        path.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("this is a text file, not a PNG\n")
    empty.write_bytes(b"")
    short_jpg = write(root / "train" / "happiness" / "short.jpg", face)
    short_png = write(root / "train" / "happiness" / "short.png", face)
    short_test = write(root / "test" / "neutral" / "short.png", face)
    for path in (short_jpg, short_png, short_test):
        cut_short(path)
    return {
        str(text): "bad image: unreadable or corrupt image",
        str(empty): "bad image: unreadable or corrupt image",
        str(short_jpg): "bad image: truncated JPEG",
        str(short_png): "bad image: truncated PNG",
        str(short_test): "bad image: truncated PNG",
    }


def rafdb_tree(root: Path) -> dict[str, str]:
    """RAF-DB basic (label file + ``Image/aligned``) with a bad train and a bad test image."""
    basic = root / "basic"
    lines = []
    for split, count, seed in (("train", 40, 0), ("test", 14, 1)):
        for i, (image, name) in enumerate(faces(count, seed)):
            stem = f"{split}_{i + 1:05d}"
            write(basic / "Image" / "aligned" / f"{stem}_aligned.jpg", image)
            lines.append(f"{stem}.jpg {RAF_ID[name]}\n")
    labels = basic / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text("".join(lines))
    aligned = basic / "Image" / "aligned"
    cut_short(aligned / "train_00003_aligned.jpg")
    (aligned / "test_00002_aligned.jpg").write_text("not a JPEG")
    return {f"{labels}, line 3": "train_00003_aligned.jpg", f"{labels}, line 42": "test_00002"}


def affectnet_tree(root: Path) -> dict[str, str]:
    """AffectNet (``training.csv``, ``validation.csv``, ``Manually_Annotated_Images``) with
    an empty image in training.csv and a truncated PNG in validation.csv."""
    images = root / "Manually_Annotated_Images"
    for csv_name, count, seed in (("training.csv", 40, 0), ("validation.csv", 14, 1)):
        rows = [AFFECTNET_HEADER]
        for i, (image, name) in enumerate(faces(count, seed)):
            rel = f"{seed}/{i}.png"
            write(images / rel, image)
            rows.append(f"{rel},4,4,56,56,,{AFFECTNET_ID[name]},0.1,0.2")
        (root / csv_name).write_text("\n".join(rows) + "\n")
    (images / "0" / "5.png").write_bytes(b"")
    cut_short(images / "1" / "2.png")
    return {
        f"{root / 'training.csv'}, line 7": "0/5.png",
        f"{root / 'validation.csv'}, line 4": "1/2.png",
    }


def fer2013_csv(root: Path) -> dict[str, str]:
    """``fer2013.csv`` (48 px grey faces as pixel strings) with a row holding a byte that is
    not UTF-8 and a row with an extra field."""
    lines = [b"emotion,pixels,Usage"]
    for usage, count, seed in (("Training", 40, 0), ("PublicTest", 14, 1), ("PrivateTest", 14, 2)):
        for image, name in faces(count, seed):
            grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (48, 48))
            pixels = " ".join(str(v) for v in grey.reshape(-1))
            lines.append(f"{FER_ID[name]},{pixels},{usage}".encode())
    lines[5] = lines[5].replace(b",Training", b",Tr\xe4ining")  # latin-1, not UTF-8
    lines[9] = lines[9] + b",extra"
    path = root / "fer2013.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {f"{path}, line 6": "not UTF-8", f"{path}, line 10": "4 fields, expected 3"}


LAYOUTS: dict[str, Callable[[Path], dict[str, str]]] = {
    "folder": folder_tree,
    "rafdb": rafdb_tree,
    "affectnet": affectnet_tree,
    "fer2013": fer2013_csv,
}


def _read_skipped(out: Path) -> list[dict[str, str]]:
    with (out / "skipped.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------- skip: a whole run


def test_skip_lists_bad_images_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "faces"
    bad = folder_tree(root)
    out = tmp_path / "run"
    args = [f"output_dir={out}", *TINY, "data.kind=folder", f"data.root={root}"]
    assert main([*args, "data.on_error=skip"]) == 0
    stdout = capsys.readouterr().out

    # the console: one line per bad file, with its reason, before training starts
    listed = stdout[: stdout.index("fer-train: training")]
    for path, reason in bad.items():
        assert f"{path}: {reason}" in listed, (path, stdout)
    assert "skipped 5 bad rows or images" in listed

    # skipped.csv: every bad file once, with its split and reason
    rows = _read_skipped(out)
    assert {row["where"] for row in rows} == set(bad)
    for row in rows:
        assert row["reason"].startswith(bad[row["where"]])
        assert row["split"] == ("test" if "/test/" in row["where"] else "train")

    # metrics.json: the count and the sizes without the bad files
    m = json.loads((out / "metrics.json").read_text())
    assert m["skipped"]["count"] == 5 and m["skipped"]["by_category"] == {"bad image": 5}
    assert m["skipped"]["file"] == "skipped.csv" and len(m["skipped"]["first"]) == 5
    assert m["sizes"]["train"] + m["sizes"]["val"] == 140
    assert m["sizes"]["test"] == 35 and m["epochs_run"] == 1

    # report.md: the section names every file
    report = (out / "report.md").read_text()
    section = report[report.index("## Skipped data") : report.index("## Timings")]
    assert "5 left out" in section
    for path in bad:
        assert path in section


# ------------------------------------------------------------------- skip: every layout


@pytest.mark.parametrize("kind", ["folder", "rafdb", "affectnet", "fer2013"])
def test_skip_leaves_only_readable_samples(kind: str, tmp_path: Path) -> None:
    """What load_splits keeps can all be read (no bad file is met mid-epoch), and what it
    leaves out is listed once, named by file (and line) with its reason."""
    bad = LAYOUTS[kind](tmp_path)
    splits = load_splits(DataConfig(kind=kind, root=str(tmp_path), on_error="skip"))
    assert {row.where for row in splits.skipped} == set(bad)
    for row in splits.skipped:
        assert bad[row.where] in f"{row.where}: {row.reason}"
    for data in (splits.train, splits.val, splits.test):
        if data is not None:
            for i in range(len(data)):
                image, _ = data[i]
                assert image.ndim == 3 and image.dtype == np.uint8


def test_rows_a_shared_file_reports_to_every_split_are_listed_once(tmp_path: Path) -> None:
    bad = fer2013_csv(tmp_path)
    splits = load_splits(DataConfig(kind="fer2013", root=str(tmp_path), on_error="skip"))
    assert [(row.splits, row.where) for row in splits.skipped] == [
        ("train+val+test", where) for where in bad
    ]


# ------------------------------------------------------------------- raise: before training


@pytest.mark.parametrize("kind", ["folder", "rafdb", "affectnet", "fer2013"])
def test_raise_stops_before_training_with_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    bad = LAYOUTS[kind](root)
    out = tmp_path / "run"
    assert main([f"output_dir={out}", *TINY, f"data.kind={kind}", f"data.root={root}"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    # the first bad one in file order, by file (and line) and reason
    first = next(iter(bad))
    assert lines[0].startswith(f"fer-train: {first}: "), lines[0]
    assert bad[first] in lines[0]
    assert "fer-train: training" not in captured.out
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_verify_images_false_leaves_the_bad_image_to_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the check a bad image is met when training reads it: still exit status 2 and
    one line naming it, but after training started (the documented cost of the opt-out)."""
    root = tmp_path / "data"
    bad = folder_tree(root)
    out = tmp_path / "run"
    args = [f"output_dir={out}", *TINY, "data.kind=folder", f"data.root={root}"]
    code = main([*args, "data.verify_images=false", "train.max_batches_per_epoch=null"])
    captured = capsys.readouterr()
    assert code == 2
    assert "fer-train: training" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and any(path in lines[0] for path in bad), captured.err
