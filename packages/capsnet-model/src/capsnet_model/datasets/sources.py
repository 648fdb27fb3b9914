"""The registry of data sources: each one registered once with its loader and its split layout.

A :class:`DatasetSource` says how to load one split from a data set's ``root`` and how a
training run uses its splits (:class:`SplitLayout`: which split trains, which tests, whether
validation is a split of its own or carved from the training split) and what ``root`` must
be or hold. Applications build their train / validation / test sets from it without knowing
the data sets by name; :func:`register_dataset` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from capsnet_model.datasets.samples import DatasetError


class UnknownDatasetError(ValueError):
    """A data set name that is not registered (the message lists the registered ones)."""


class DatasetLayoutError(DatasetError):
    """``root`` does not hold what its data source needs (a file or folder is missing)."""


@dataclass(frozen=True)
class SplitLayout:
    """Which of a source's splits a training run uses for what."""

    #: The split to train on.
    train: str = "train"
    #: The split to report test results on.
    test: str = "test"
    #: The split for model selection; None: carved from ``train`` by the trainer.
    val: str | None = None
    #: The ``val`` split is used only when ``root`` has it (else it is carved from ``train``).
    val_optional: bool = False
    #: How reports name the validation set when it is the ``val`` split.
    val_name: str = ""


#: A source's loader: ``(root, split, *, on_error=..., verify_images=..., progress=...,
#: **options) -> data set``; ``root`` is None for sources that need none.
SourceLoader = Callable[..., Dataset[Any]]


@dataclass(frozen=True)
class DatasetSource:
    """One registered data source."""

    #: Registry key (lower case, no ``-`` or ``_``).
    name: str
    load: SourceLoader
    layout: SplitLayout = field(default_factory=SplitLayout)
    #: Human name for reports; ``str.format`` fields: ``root`` and the loader's options.
    title: str = ""
    #: What ``root`` must be or hold, for help texts; empty: the source needs no root.
    root: str = ""
    #: An example ``root`` for error messages (``/path/to/RAF-DB``).
    root_example: str = "/path/to/data"
    #: ``root`` must be a directory (else it may also be the one file the splits come from).
    root_is_dir: bool = True
    #: Per split, the candidate paths (relative to ``root``) of the file holding it; a
    #: ``root`` that is a file is taken as that file. Empty: the loader reads ``root`` itself.
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Keyword options of ``load`` that name folders, with an example path each.
    path_options: Mapping[str, str] = field(default_factory=dict)
    #: Other keyword options of ``load``.
    options: tuple[str, ...] = ()
    #: Whether ``root`` has ``split`` (used for an optional validation split).
    has_split: Callable[[Path, str], bool] | None = None
    #: The split :func:`load_dataset` loads when none is given.
    default_split: str | None = "train"

    @property
    def needs_root(self) -> bool:
        return bool(self.root)

    def splits(self, root: Path | None) -> dict[str, str]:
        """Returns the role (``train``, ``val``, ``test``) -> split name map of a run on
        ``root``; without ``val`` the validation set is carved from the training split."""
        layout = self.layout
        roles = {"train": layout.train}
        if layout.val is not None:
            present = True
            if layout.val_optional:
                present = (
                    root is not None
                    and self.has_split is not None
                    and self.has_split(root, layout.val)
                )
            if present:
                roles["val"] = layout.val
        roles["test"] = layout.test
        return roles

    def locate(self, root: Path, split: str | None) -> Path:
        """Returns the path ``load`` reads ``split`` from: ``root`` itself, or the first of the
        split's candidate files under it; DatasetLayoutError when none exists."""
        if not self.files or root.is_file():
            return root
        if split is None or split not in self.files:
            valid = ", ".join(self.files)
            raise ValueError(f"unknown {self.name} split {split!r}; valid: {valid}")
        names = self.files[split]
        for name in names:
            if (root / name).is_file():
                return root / name
        raise DatasetLayoutError(
            f"{Path(names[0]).name} not found under {root} (looked for {', '.join(names)})"
        )

    def describe(self, root: Path | None, options: Mapping[str, Any]) -> str:
        """Returns the title with ``root`` and the options filled in."""
        return self.title.format(root=root, **options) if self.title else self.name


_SOURCES: dict[str, DatasetSource] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_dataset(source: DatasetSource) -> DatasetSource:
    """Returns ``source`` after registering it under its name (ValueError when taken)."""
    key = _key(source.name)
    if key != source.name:
        raise ValueError(
            f"data set name {source.name!r} must be lower case without '-' or '_' ({key!r})"
        )
    if key in _SOURCES:
        raise ValueError(f"data set {source.name!r} is already registered")
    _SOURCES[key] = source
    return source


def list_datasets() -> list[str]:
    """Returns the registered names, in registration order."""
    return list(_SOURCES)


def get_dataset(name: str) -> DatasetSource:
    """Returns the source registered as ``name`` (case, ``-`` and ``_`` ignored);
    UnknownDatasetError listing the registered names otherwise."""
    source = _SOURCES.get(_key(name))
    if source is None:
        raise UnknownDatasetError(
            f"unknown data set kind {name!r}; valid: {', '.join(list_datasets())}"
        )
    return source


def load_dataset(kind: str, path: str | Path, split: str | None = None, **kwargs: Any) -> Any:
    """Returns split ``split`` (default: the source's ``default_split``) of the registered
    data set ``kind`` at ``path``: its root directory, or for FER2013 and AffectNet also the
    CSV file itself. Keyword arguments go to the source's loader (``on_error``,
    ``verify_images``, ``transform``, ``image_size``, AffectNet's ``image_root``...)."""
    source = get_dataset(kind)
    return source.load(Path(path), split if split is not None else source.default_split, **kwargs)
