"""The train / validation / test sets of a run, from ``data.*`` and the data source registry.

``data.kind`` names a source registered in ``capsnet_model.datasets`` (``rafdb``, ``fer2013``,
``affectnet``, ``emotionet``, ``folder``) or here (``synthetic``); the source's split layout
says which split trains, which tests and whether validation is a split of its own (FER2013's
PublicTest, a ``val`` folder when there is one) or carved from the training split by
``train.val_fraction``.
Nothing here depends on which data set it is.

- ``synthetic``: ``SyntheticFaces(synthetic_train, seed)`` to train and
  ``SyntheticFaces(synthetic_test, test seed)`` to test.
- ``rafdb``: the ``train`` split and the ``test`` split.
- ``fer2013``: Training, PublicTest as the validation set, PrivateTest as the test set.
- ``affectnet``: ``training.csv`` and ``validation.csv`` as the test set (AffectNet's own test
  set is not public).
- ``emotionet``: the AU lists' ``train`` and ``test`` splits (a hash of each image path);
  ``data.emotionet.*`` are its loader's options.
- ``folder``: ``root/train``, ``root/val`` when it exists, ``root/test``.

Image files are decoded once at load time (``data.verify_images``) so that a bad one is
raised (``data.on_error=raise``) or left out (``skip``) before training, never mid-epoch;
what was left out is gathered in ``Splits.skipped``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from capsnet_model.datasets import (
    DatasetLayoutError,
    DatasetSource,
    SplitLayout,
    get_dataset,
    list_datasets,
    register_dataset,
)
from capsnet_model.synthetic import SyntheticFaces
from fer_train.config import DataConfig

#: How the report names a validation set carved from the training split.
CARVED = "carved from train"


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
    val_source: str = CARVED
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


def _load_synthetic(
    root: Path | None,
    split: str,
    *,
    synthetic_train: int,
    synthetic_test: int,
    synthetic_seed: int,
    synthetic_test_seed: int,
    synthetic_size: int,
    **_checks: Any,
) -> SyntheticFaces:
    """Returns the embedded default's faces for ``split`` (``train`` or ``test``); the image
    checks of the other sources have nothing to check here."""
    if split == "train":
        return SyntheticFaces(synthetic_train, seed=synthetic_seed, size=synthetic_size)
    return SyntheticFaces(synthetic_test, seed=synthetic_test_seed, size=synthetic_size)


register_dataset(
    DatasetSource(
        name="synthetic",
        load=_load_synthetic,
        layout=SplitLayout(train="train", test="test"),
        title="synthetic faces ({synthetic_size} px)",
        options=(
            "synthetic_train",
            "synthetic_test",
            "synthetic_seed",
            "synthetic_test_seed",
            "synthetic_size",
        ),
    )
)


def data_kinds() -> tuple[str, ...]:
    """Returns the valid ``data.kind`` values: every registered data source."""
    return tuple(list_datasets())


def _root(cfg: DataConfig, source: DatasetSource) -> Path:
    """Returns ``data.root`` checked against what ``source`` needs (DataRootError if not)."""
    hint = source.root_example
    if not cfg.root:
        raise DataRootError(f"data.root is not set: set data.root={hint}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataRootError(f"data.root {cfg.root} does not exist: set data.root={hint}")
    if source.root_is_dir and not root.is_dir():
        raise DataRootError(f"data.root {root} is not a directory: set data.root={hint}")
    return root


def _options(cfg: DataConfig, source: DatasetSource) -> dict[str, Any]:
    """Returns the ``data.*`` values of the source's options, with the fields of the
    ``data.<source name>`` group when ``DataConfig`` has one (``data.emotionet.*``); a folder
    option that is set must exist (DataRootError)."""
    options: dict[str, Any] = {name: getattr(cfg, name) for name in source.options}
    group = getattr(cfg, source.name, None)
    if dataclasses.is_dataclass(group) and not isinstance(group, type):
        options.update(dataclasses.asdict(group))
    for name, example in source.path_options.items():
        value = getattr(cfg, name)
        if not value:
            continue
        path = Path(value).expanduser()
        if not path.is_dir():
            raise DataRootError(f"data.{name} {value} does not exist: set data.{name}={example}")
        options[name] = path
    return options


def load_splits(cfg: DataConfig, *, progress: bool = False) -> Splits:
    """The train / val / test sets described by ``cfg`` (with ``progress``, a bar on stderr
    while a large set's images are checked)."""
    splits = _load(cfg, progress)
    splits.skipped = gather_skipped({"train": splits.train, "val": splits.val, "test": splits.test})
    return splits


def _load(cfg: DataConfig, progress: bool) -> Splits:
    source = get_dataset(cfg.kind)
    root = _root(cfg, source) if source.needs_root else None
    options = _options(cfg, source)
    roles = source.splits(root)
    if root is not None:
        try:  # every split's files are found before any is loaded
            for split in roles.values():
                source.locate(root, split)
        except DatasetLayoutError as err:
            raise DataRootError(f"data.root: {err}: set data.root={source.root_example}") from err
    kw: dict[str, Any] = {
        "on_error": cfg.on_error,
        "verify_images": cfg.verify_images,
        "progress": progress,
        **options,
    }
    sets = {role: source.load(root, split, **kw) for role, split in roles.items()}
    val = sets.get("val")
    return Splits(
        name=source.describe(root, options),
        train=sets["train"],
        test=sets["test"],
        val=val,
        val_source=source.layout.val_name if val is not None else CARVED,
    )
