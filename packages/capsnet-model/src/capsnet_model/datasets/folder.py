"""Class-per-folder trees: ``root/<split>/<class>/*.jpg|*.jpeg|*.png``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from capsnet_model.datasets.collect import Collector, require_dir
from capsnet_model.datasets.labels import FOLDER_ALIASES, label_index
from capsnet_model.datasets.samples import (
    IMAGE_SUFFIXES,
    DatasetError,
    FERDataset,
    ImageSize,
    OnError,
)
from capsnet_model.datasets.sources import DatasetSource, SplitLayout, register_dataset


def load_folder(
    root: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """Class-per-folder tree ``root/<split>/<class>/*.jpg|*.jpeg|*.png``.

    Class folder names are matched case-insensitively against :data:`FOLDER_ALIASES`; an
    unknown folder raises (listing the accepted names) regardless of ``on_error``.
    """
    root = Path(root)
    require_dir(root, "data set root directory")
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"split directory not found: {split_dir}; available: {', '.join(available) or 'none'}"
        )
    out = Collector(on_error, verify_images, progress)
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        canonical = FOLDER_ALIASES.get(class_dir.name.strip().lower())
        if canonical is None:
            raise DatasetError(
                f"unknown expression folder {class_dir}; accepted names (any case): "
                f"{', '.join(sorted(FOLDER_ALIASES))}"
            )
        label = label_index(canonical)
        for image_path in sorted(class_dir.iterdir()):
            if image_path.is_file() and image_path.suffix.lower() in IMAGE_SUFFIXES:
                out.add_file(image_path, label, str(image_path))
    return out.finish("folder", split, split_dir, transform=transform, image_size=image_size)


def _has_split(root: Path, split: str) -> bool:
    return (root / split).is_dir()


SOURCE = register_dataset(
    DatasetSource(
        name="folder",
        load=load_folder,
        layout=SplitLayout(
            train="train", val="val", test="test", val_optional=True, val_name="val folder"
        ),
        title="image folders ({root})",
        root="a folder holding train/, test/ and optionally val/, each with one folder per class",
        root_example="/path/to/faces",
        has_split=_has_split,
    )
)
