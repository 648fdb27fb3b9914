"""fer-train's splits come from the data source registry: no data set is known by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capsnet_model.datasets import (
    DatasetError,
    DatasetSource,
    FERDataset,
    FERSample,
    SkippedRow,
    SplitLayout,
    register_dataset,
    sources,
)
from fer_train.config import DataConfig, load_app_config
from fer_train.data import DataRootError, data_kinds, load_splits


@pytest.fixture
def mine() -> Iterator[list[tuple[Path, str, dict[str, Any]]]]:
    """A source ``mine`` registered for the test: validation is its ``dev`` split when the
    root has a ``dev`` folder; each load is recorded."""
    calls: list[tuple[Path, str, dict[str, Any]]] = []

    def load(root: Path, split: str, **kwargs: Any) -> FERDataset:
        calls.append((root, split, kwargs))
        skipped = [SkippedRow(f"{root}/labels.txt, line 9", "bad row: shared")]
        sample = FERSample(np.zeros((4, 4), np.uint8), 2, where=split)
        return FERDataset([sample], split=split, skipped=skipped)

    register_dataset(
        DatasetSource(
            name="mine",
            load=load,
            layout=SplitLayout(
                train="fit", val="dev", test="eval", val_optional=True, val_name="dev folder"
            ),
            title="my faces ({root})",
            root="a folder",
            root_example="/path/to/mine",
            has_split=lambda root, split: (root / split).is_dir(),
        )
    )
    yield calls
    del sources._SOURCES["mine"]


def test_a_registered_source_needs_no_change_here(
    mine: list[tuple[Path, str, dict[str, Any]]], tmp_path: Path
) -> None:
    assert "mine" in data_kinds()
    splits = load_splits(DataConfig(kind="mine", root=str(tmp_path), on_error="skip"))
    assert [(split, kw["on_error"]) for _, split, kw in mine] == [("fit", "skip"), ("eval", "skip")]
    assert splits.name == f"my faces ({tmp_path})" and splits.val is None
    assert splits.val_source == "carved from train"
    # a row of a shared file, reported by both loads, is listed once
    assert [(row.splits, row.reason) for row in splits.skipped] == [
        ("train+test", "bad row: shared")
    ]
    (tmp_path / "dev").mkdir()
    splits = load_splits(DataConfig(kind="mine", root=str(tmp_path)))
    assert [split for _, split, _ in mine[2:]] == ["fit", "dev", "eval"]
    assert splits.val is not None and splits.val_source == "dev folder"


def test_the_kinds_are_the_registry(mine: list[Any]) -> None:
    assert set(data_kinds()) == {
        "synthetic",
        "rafdb",
        "fer2013",
        "affectnet",
        "emotionet",
        "folder",
        "mine",
    }
    assert load_app_config(None, ["data.kind=mine"]).data.kind == "mine"


def test_root_errors_name_the_key_and_an_example(tmp_path: Path) -> None:
    with pytest.raises(DataRootError, match="data.root is not set: set data.root=/path/to/FER2013"):
        load_splits(DataConfig(kind="fer2013"))
    with pytest.raises(DataRootError, match=r"fer2013\.csv not found under .*looked for"):
        load_splits(DataConfig(kind="fer2013", root=str(tmp_path)))
    a_file = tmp_path / "labels.txt"
    a_file.write_text("")
    with pytest.raises(DataRootError, match="is not a directory: set data.root=/path/to/RAF-DB"):
        load_splits(DataConfig(kind="rafdb", root=str(a_file)))
    (tmp_path / "training.csv").write_text("")
    (tmp_path / "validation.csv").write_text("")
    with pytest.raises(DataRootError, match="data.image_root /nowhere does not exist"):
        load_splits(DataConfig(kind="affectnet", root=str(tmp_path), image_root="/nowhere"))


def test_synthetic_is_a_registered_source_too() -> None:
    splits = load_splits(DataConfig(synthetic_train=14, synthetic_test=7, synthetic_size=32))
    assert splits.name == "synthetic faces (32 px)"
    assert len(splits.train) == 14 and len(splits.test) == 7  # type: ignore[arg-type]
    assert splits.val is None and splits.skipped == []


def test_emotionet_splits_from_the_au_lists(tmp_path: Path) -> None:
    """A tiny EmotioNet tree (tab-separated dataFile_*.txt: URL, a second field, AU1..AU60)
    trains and tests through the registry alone; images come from data.image_root."""
    import cv2

    lists = tmp_path / "emotioNet_challenge_files_server_challenge_1.2_aws"
    lists.mkdir()
    images = tmp_path / "downloads"
    lines = []
    for k in range(40):
        present = (12, 25) if k % 2 else (4, 15)  # happy, sad
        codes = ["1" if au in present else "0" for au in range(1, 61)]
        url = f"https://s3.us-east-2.amazonaws.com/emotionet/Images/f/{k}.jpg"
        lines.append("\t".join([url, "0", *codes]) + "\n")
        (images / "f").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(images / "f" / f"{k}.jpg"), np.full((8, 8, 3), k, np.uint8))
    lines.append("\t".join(["https://x/Images/f/40.jpg", "0", *["999"] * 60]) + "\n")
    (lists / "dataFile_1.txt").write_text("".join(lines))
    cfg = DataConfig(kind="emotionet", root=str(tmp_path), image_root=str(images))
    with pytest.raises(DatasetError, match=r"dataFile_1\.txt, line 41: unknown label: AU1"):
        load_splits(cfg)
    cfg.on_error = "skip"
    splits = load_splits(cfg)
    assert splits.name.startswith("EmotioNet") and splits.val is None
    assert len(splits.train) + len(splits.test) == 40  # type: ignore[arg-type]
    # the row no split can take is listed once, for both loads of the shared list
    assert [(row.splits, row.category) for row in splits.skipped] == [
        ("train+test", "unknown label")
    ]
    assert {splits.train[0][1], splits.test[0][1]} <= {1, 2}  # happiness, sadness
    with pytest.raises(DataRootError, match="data.image_root /nowhere does not exist"):
        load_splits(DataConfig(kind="emotionet", root=str(tmp_path), image_root="/nowhere"))


def _emotionet_tree(
    tmp_path: Path, *, name: str = "dataFile_1.txt", category: bool = False
) -> Path:
    """The loader's tiny fixture layout: ``emotioNet_challenge_files*/<name>`` (tab-separated:
    URL, a second field, AU1..AU60; with ``category``, a fourth leading field naming the
    EmotioNet category), 40 images under ``downloads/f/``, and one line whose AUs are all
    999 (not coded). Returns the image folder."""
    import cv2

    lists = tmp_path / "emotioNet_challenge_files_server_challenge_1.2_aws"
    lists.mkdir(exist_ok=True)
    images = tmp_path / "downloads"
    (images / "f").mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(41):
        present = (12, 25) if k % 2 else (4, 15)  # happy, sad
        codes = ["999"] * 60 if k == 40 else ["1" if au in present else "0" for au in range(1, 61)]
        url = f"https://s3.us-east-2.amazonaws.com/emotionet/Images/f/{k}.jpg"
        head = [url, "0"]
        if category:
            head.append("999" if k == 40 else "happy" if k % 2 else "sad")
        lines.append("\t".join([*head, *codes]) + "\n")
        assert cv2.imwrite(str(images / "f" / f"{k}.jpg"), np.full((8, 8, 3), k, np.uint8))
    (lists / name).write_text("".join(lines))
    return images


def test_emotionet_options_reach_the_loader(tmp_path: Path) -> None:
    """data.emotionet.* are the loader's options: the test fraction, 999 read as absent, the
    emotion column and the list pattern change what is loaded."""
    images = _emotionet_tree(tmp_path)
    base = ["data.kind=emotionet", f"data.root={tmp_path}", f"data.image_root={images}"]
    default = load_splits(load_app_config(None, [*base, "data.on_error=skip"]).data)
    # the all-999 line has no usable label by default; read as absent it has no category
    assert [row.category for row in default.skipped] == ["unknown label"]
    absent = load_splits(
        load_app_config(None, [*base, "data.emotionet.unknown_as_absent=true"]).data
    )
    assert absent.skipped == []
    excluded = [absent.train.excluded, absent.test.excluded]  # type: ignore[attr-defined]
    assert sum(sum(counts.values()) for counts in excluded) == 1
    # a larger test fraction moves images from train to test (40 labelled images in all)
    half = load_splits(
        load_app_config(
            None, [*base, "data.on_error=skip", "data.emotionet.test_fraction=0.5"]
        ).data
    )
    n_test = len(half.test)  # type: ignore[arg-type]
    assert n_test > len(default.test)  # type: ignore[arg-type]
    assert len(half.train) + n_test == 40  # type: ignore[arg-type]


def test_emotionet_emotion_column_and_pattern(tmp_path: Path) -> None:
    images = _emotionet_tree(tmp_path, name="labels_a.txt", category=True)
    base = ["data.kind=emotionet", f"data.root={tmp_path}", f"data.image_root={images}"]
    with pytest.raises(DatasetError, match=r"dataFile_\*\.txt"):
        load_splits(load_app_config(None, base).data)
    cfg = load_app_config(
        None,
        [
            *base,
            "data.on_error=skip",
            "data.emotionet.pattern=labels_*.txt",
            "data.emotionet.emotion_column=3",
            "data.emotionet.first_au_column=4",
        ],
    ).data
    splits = load_splits(cfg)
    assert len(splits.train) + len(splits.test) == 40  # type: ignore[arg-type]
    # the category column's 999 is the one unknown label
    assert [row.reason for row in splits.skipped] == [
        "unknown label: emotion column 3 is '999' (not coded)"
    ]
    labels = {splits.train[i][1] for i in range(len(splits.train))}  # type: ignore[arg-type]
    assert labels == {1, 2}  # happiness, sadness


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.emotionet.test_fraction=1.0", "data.emotionet.test_fraction: must be between 0"),
        ("data.emotionet.image_column=0", "data.emotionet.image_column: must be a 1-based"),
        ("data.emotionet.emotion_colum=3", "did you mean 'emotion_column'"),
        ("data.emotionet.unknown_as_absent=maybe", "data.emotionet.unknown_as_absent"),
    ],
)
def test_bad_emotionet_options_name_their_key(override: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        load_app_config(None, ["data.kind=emotionet", override])
    assert needle in str(info.value)
