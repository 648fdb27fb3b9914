"""AffectNet (manual annotations): ``training.csv`` / ``validation.csv`` and an image root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from capsnet_model.datasets.collect import Collector, require_dir, require_file
from capsnet_model.datasets.csvfile import csv_records, parse_int
from capsnet_model.datasets.labels import AFFECTNET_EXCLUDED, AFFECTNET_LABELS, label_index
from capsnet_model.datasets.samples import Box, FERDataset, ImageSize, OnError
from capsnet_model.datasets.sources import DatasetSource, SplitLayout, register_dataset

_LISTS = ("", "Manually_Annotated_file_lists/")
_TRAIN_CSV = tuple(p + "training.csv" for p in _LISTS)
# AffectNet's test set is not public: its validation set is the usual test set.
_VALIDATION_CSV = tuple(p + "validation.csv" for p in _LISTS)
IMAGES_FOLDER = "Manually_Annotated_Images"


def _parse_landmarks(text: str) -> np.ndarray | None:
    """AffectNet ``facial_landmarks``: 136 numbers ``x1;y1;x2;y2;...`` -> (68, 2) or None."""
    try:
        values = [float(v) for v in text.replace(",", ";").split(";") if v.strip()]
    except ValueError:
        return None
    if len(values) != 136 or not np.isfinite(values).all():
        return None
    return np.asarray(values, dtype=np.float32).reshape(68, 2)


def load_affectnet(
    csv_path: str | Path,
    image_root: str | Path,
    split: str | None = None,
    *,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """AffectNet manual-annotation CSV (``training.csv`` / ``validation.csv`` layout).

    Images are ``image_root/<subDirectory_filePath>``, cropped to the ``face_*`` box. The
    optional ``facial_landmarks`` column (68 ``x;y`` pairs in full-image pixels) is kept per
    sample (see :meth:`FERDataset.item_with_landmarks`) for landmark-based AU attention.
    Expressions 0..6 are kept; 7..10 (contempt, none, uncertain, non-face) are left out and
    counted in ``dataset.excluded``. AffectNet ships one CSV per split, so ``split`` only
    labels the result (``None``, ``"train"``, ``"val"`` or ``"test"``).
    """
    if split not in (None, "train", "val", "test"):
        raise ValueError(f"unknown AffectNet split {split!r}; valid: None, train, val, test")
    path = Path(csv_path)
    require_file(path, "AffectNet CSV file")
    root = Path(image_root)
    require_dir(root, "AffectNet image root directory")
    out = Collector(on_error, verify_images, progress)
    columns = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height")
    for where, row in csv_records(path, (*columns, "expression"), out):
        label = parse_int(row.get("expression") or "")
        if label in AFFECTNET_EXCLUDED:
            out.excluded[AFFECTNET_EXCLUDED[label]] += 1
            continue
        if label not in AFFECTNET_LABELS:
            out.error(where, f"label out of range: expression {row.get('expression')!r} (0..10)")
            continue
        raw_box = [(row.get(name) or "").strip() for name in columns[1:]]
        box: Box | None = None
        if any(raw_box):
            coords = [parse_int(text) for text in raw_box]
            x, y, w, h = (-1 if c is None else c for c in coords)
            if None in coords or w <= 0 or h <= 0:
                out.error(where, f"bad face box: (x, y, width, height) = {raw_box}")
                continue
            box = (x, y, w, h)
        rel = (row.get("subDirectory_filePath") or "").strip()
        if not rel:
            out.error(where, "bad row: empty subDirectory_filePath")
            continue
        marks = None
        raw_marks = (row.get("facial_landmarks") or "").strip()
        if raw_marks:
            marks = _parse_landmarks(raw_marks)
            if marks is None:
                out.error(
                    where,
                    "bad landmarks: facial_landmarks must hold 136 numbers "
                    "(68 x;y pairs separated by ';')",
                )
                continue
        out.add_file(root / rel, label_index(AFFECTNET_LABELS[label]), where, box, marks)
    return out.finish("affectnet", split, path, transform=transform, image_size=image_size)


def default_image_root(root: Path) -> Path:
    """Returns where AffectNet's images are by default: ``Manually_Annotated_Images`` next to
    the CSV files when it exists, else the CSV files' folder."""
    base = root if root.is_dir() else root.parent
    candidate = base / IMAGES_FOLDER
    return candidate if candidate.is_dir() else base


def _load_root(
    root: Path, split: str | None, *, image_root: str | Path | None = None, **kwargs: Any
) -> FERDataset:
    """Returns :func:`load_affectnet` of the split's CSV at ``root`` (``train``:
    ``training.csv``; ``val`` and ``test``: ``validation.csv``), images under ``image_root``
    (default :func:`default_image_root`)."""
    images = Path(image_root) if image_root else default_image_root(root)
    return load_affectnet(SOURCE.locate(root, split), images, split, **kwargs)


SOURCE = register_dataset(
    DatasetSource(
        name="affectnet",
        load=_load_root,
        layout=SplitLayout(train="train", test="test"),
        title="AffectNet (manual annotations; validation.csv as test set)",
        root=(
            "a folder holding training.csv and validation.csv (or "
            "Manually_Annotated_file_lists/ with them), or one of the CSV files"
        ),
        root_example="/path/to/AffectNet",
        root_is_dir=False,
        files={"train": _TRAIN_CSV, "val": _VALIDATION_CSV, "test": _VALIDATION_CSV},
        path_options={"image_root": f"/path/to/AffectNet/{IMAGES_FOLDER}"},
        default_split=None,
    )
)
