"""The train / validation / test sets of a run, from ``data.*``.

- ``synthetic``: ``SyntheticFaces(synthetic_train, seed)`` to train (validation carved from it
  by ``train.val_fraction``) and ``SyntheticFaces(synthetic_test, test seed)`` to test.
- ``rafdb``: the ``train`` split (validation carved from it) and the ``test`` split.
- ``fer2013``: Training, PublicTest as the validation set, PrivateTest as the test set.
- ``affectnet``: ``training.csv`` (validation carved from it) and ``validation.csv`` as the
  test set (AffectNet's own test set is not public).
- ``folder``: ``root/train``, ``root/val`` when it exists (else carved), ``root/test``.

Image files are decoded once at load time (``data.verify_images``) so that a bad one is
raised (``data.on_error=raise``) or left out (``skip``) before training, never mid-epoch;
what was left out is gathered in ``Splits.skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from capsnet_model.datasets import (
    load_affectnet,
    load_fer2013,
    load_folder,
    load_rafdb,
)
from capsnet_model.synthetic import SyntheticFaces
from fer_train.config import DataConfig

#: What ``data.root`` should name, per kind (for the error message).
ROOT_HINT = {
    "rafdb": "/path/to/RAF-DB",
    "fer2013": "/path/to/FER2013",
    "affectnet": "/path/to/AffectNet",
    "folder": "/path/to/faces",
}


class DataRootError(FileNotFoundError):
    """``data.root`` (or ``data.image_root``) is not set or does not exist."""


@dataclass(frozen=True)
class Skipped:
    """A row or image left out under ``data.on_error=skip``."""

    #: The splits whose loading met it, ``+``-joined (``train+test``: a shared label file).
    splits: str
    #: The file (and line) at fault.
    where: str
    #: ``"<category>: <detail>"`` (capsnet-model's ``SkippedRow.reason``).
    reason: str

    @property
    def category(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class Splits:
    """The data sets of a run; ``val`` is None when it is carved from ``train``."""

    name: str
    train: Dataset[Any]
    test: Dataset[Any]
    val: Dataset[Any] | None = None
    #: Where the validation set comes from (for the report).
    val_source: str = "carved from train"
    #: Rows and images left out under ``data.on_error=skip``, in the order they were met.
    skipped: list[Skipped] = field(default_factory=list)


def gather_skipped(sets: dict[str, Dataset[Any] | None]) -> list[Skipped]:
    """The rows the loaders of ``sets`` (split name -> data set) left out, each listed once.

    A file shared by several splits (FER2013's CSV, RAF-DB's label file) reports a row it
    cannot assign to a split to every load of it; those are merged into one entry.
    """
    seen: dict[tuple[str, str], list[str]] = {}
    for split, data in sets.items():
        for row in getattr(data, "skipped", ()):
            splits = seen.setdefault((row.where, row.reason), [])
            if split not in splits:
                splits.append(split)
    return [Skipped("+".join(s), where, reason) for (where, reason), s in seen.items()]


def _size(data: Dataset[Any]) -> int:
    return len(data)  # type: ignore[arg-type]


def _root(cfg: DataConfig) -> Path:
    hint = ROOT_HINT.get(cfg.kind, "/path/to/data")
    if not cfg.root:
        raise DataRootError(f"data.root is not set: set data.root={hint}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataRootError(f"data.root {cfg.root} does not exist: set data.root={hint}")
    return root


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``root/<name>`` (or ``root`` itself when it is that file) that exists."""
    if root.is_file():
        return root
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataRootError(f"{what} not found under data.root {root} (looked for {', '.join(names)})")


def load_splits(cfg: DataConfig, *, progress: bool = False) -> Splits:
    """The train / val / test sets described by ``cfg`` (with ``progress``, a bar on stderr
    while a large set's images are checked)."""
    splits = _load(cfg, progress)
    splits.skipped = gather_skipped({"train": splits.train, "val": splits.val, "test": splits.test})
    return splits


def _load(cfg: DataConfig, progress: bool) -> Splits:
    if cfg.kind == "synthetic":
        return Splits(
            name=f"synthetic faces ({cfg.synthetic_size} px)",
            train=SyntheticFaces(
                cfg.synthetic_train, seed=cfg.synthetic_seed, size=cfg.synthetic_size
            ),
            test=SyntheticFaces(
                cfg.synthetic_test, seed=cfg.synthetic_test_seed, size=cfg.synthetic_size
            ),
        )
    root = _root(cfg)
    on_error: Any = cfg.on_error
    check: dict[str, Any] = {"verify_images": cfg.verify_images, "progress": progress}
    if cfg.kind == "rafdb":
        if not root.is_dir():
            raise DataRootError(
                f"data.root {root} is not a directory: set data.root=/path/to/RAF-DB"
            )
        return Splits(
            name="RAF-DB (basic)",
            train=load_rafdb(root, "train", on_error=on_error, **check),
            test=load_rafdb(root, "test", on_error=on_error, **check),
        )
    if cfg.kind == "fer2013":
        csv_path = _find(root, ("fer2013.csv", "fer2013/fer2013.csv"), "fer2013.csv")
        return Splits(
            name="FER2013",
            train=load_fer2013(csv_path, "train", on_error=on_error),
            val=load_fer2013(csv_path, "val", on_error=on_error),
            test=load_fer2013(csv_path, "test", on_error=on_error),
            val_source="PublicTest",
        )
    if cfg.kind == "affectnet":
        lists = ("", "Manually_Annotated_file_lists/")
        train_csv = _find(root, tuple(p + "training.csv" for p in lists), "training.csv")
        test_csv = _find(root, tuple(p + "validation.csv" for p in lists), "validation.csv")
        if cfg.image_root:
            image_root = Path(cfg.image_root).expanduser()
            if not image_root.is_dir():
                raise DataRootError(
                    f"data.image_root {cfg.image_root} does not exist: set "
                    "data.image_root=/path/to/AffectNet/Manually_Annotated_Images"
                )
        else:
            base = root if root.is_dir() else root.parent
            candidate = base / "Manually_Annotated_Images"
            image_root = candidate if candidate.is_dir() else base
        return Splits(
            name="AffectNet (manual annotations; validation.csv as test set)",
            train=load_affectnet(train_csv, image_root, "train", on_error=on_error, **check),
            test=load_affectnet(test_csv, image_root, "test", on_error=on_error, **check),
        )
    # folder
    val = load_folder(root, "val", on_error=on_error, **check) if (root / "val").is_dir() else None
    return Splits(
        name=f"image folders ({root})",
        train=load_folder(root, "train", on_error=on_error, **check),
        val=val,
        test=load_folder(root, "test", on_error=on_error, **check),
        val_source="val folder" if val is not None else "carved from train",
    )
