"""FER2013: one CSV (``emotion,pixels,Usage``) holding all three splits as 48x48 pixel strings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from capsnet_model.datasets.collect import Collector, check_split, require_file
from capsnet_model.datasets.csvfile import csv_records, parse_int
from capsnet_model.datasets.labels import (
    FER2013_LABELS,
    FER2013_PIXELS,
    FER2013_USAGE,
    label_index,
)
from capsnet_model.datasets.samples import FERDataset, FERSample, ImageSize, OnError
from capsnet_model.datasets.sources import DatasetSource, SplitLayout, register_dataset

_CSV_NAMES = ("fer2013.csv", "fer2013/fer2013.csv")


def load_fer2013(
    csv_path: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """FER2013 CSV (``emotion,pixels,Usage``; column names may carry leading spaces).

    ``split``: ``"train"`` (Training), ``"val"`` (PublicTest) or ``"test"`` (PrivateTest).
    Each row's 2304 space-separated pixels become a 48x48 image (replicated to RGB).
    """
    check_split(split, tuple(FER2013_USAGE.values()), "FER2013")
    path = Path(csv_path)
    require_file(path, "FER2013 CSV file")
    out = Collector(on_error, verify_images=False)
    for where, row in csv_records(path, ("emotion", "pixels", "Usage"), out):
        usage = (row.get("Usage") or "").strip()
        if usage not in FER2013_USAGE:
            out.error(where, f"bad row: Usage {usage!r} not one of {', '.join(FER2013_USAGE)}")
            continue
        if FER2013_USAGE[usage] != split:
            continue
        label = parse_int(row.get("emotion") or "")
        if label not in FER2013_LABELS:
            out.error(where, f"label out of range: emotion {row.get('emotion')!r} (valid 0..6)")
            continue
        tokens = (row.get("pixels") or "").split()
        try:
            values = [int(token) for token in tokens]
        except ValueError:
            out.error(where, "bad pixels: not all pixel values are integers")
            continue
        if len(values) != FER2013_PIXELS:
            out.error(where, f"bad pixels: expected {FER2013_PIXELS} integers, got {len(values)}")
            continue
        if min(values) < 0 or max(values) > 255:
            out.error(where, "bad pixels: values outside 0..255")
            continue
        image = np.asarray(values, dtype=np.uint8).reshape(48, 48)
        out.add_sample(FERSample(image, label_index(FER2013_LABELS[label]), None, where))
    return out.finish("fer2013", split, path, transform=transform, image_size=image_size)


def _load_root(
    root: Path,
    split: str,
    *,
    verify_images: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> FERDataset:
    """Returns :func:`load_fer2013` of the CSV found at ``root``; ``verify_images`` and
    ``progress`` are accepted for a uniform call and unused (the pixels are in the CSV, there
    is no image file to check)."""
    del verify_images, progress
    return load_fer2013(SOURCE.locate(root, split), split, **kwargs)


SOURCE = register_dataset(
    DatasetSource(
        name="fer2013",
        load=_load_root,
        layout=SplitLayout(train="train", val="val", test="test", val_name="PublicTest"),
        title="FER2013",
        root="a folder holding fer2013.csv (or fer2013/fer2013.csv), or the CSV file itself",
        root_example="/path/to/FER2013",
        root_is_dir=False,
        files={split: _CSV_NAMES for split in FER2013_USAGE.values()},
    )
)
