"""RAF-DB (basic): the label file ``EmoLabel/list_patition_label.txt`` and the aligned images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from capsnet_model.datasets.collect import Collector, check_split, require_dir, require_file
from capsnet_model.datasets.csvfile import not_utf8, parse_int
from capsnet_model.datasets.labels import RAFDB_LABELS, label_index
from capsnet_model.datasets.samples import FERDataset, ImageSize, OnError
from capsnet_model.datasets.sources import DatasetSource, SplitLayout, register_dataset


def load_rafdb(
    root: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
) -> FERDataset:
    """RAF-DB basic: ``root/basic/EmoLabel/list_patition_label.txt`` (``root`` may also be
    the ``basic`` folder itself), split ``"train"`` or ``"test"`` from the file-name prefix,
    aligned images ``basic/Image/aligned/<stem>_aligned.jpg``.

    ``verify_images=True`` decodes every image at load time (so bad ones raise or are
    skipped there instead of in ``__getitem__``), with a progress bar on stderr from
    :data:`VERIFY_PROGRESS_MIN` images on unless ``progress=False``; the same holds for
    :func:`load_affectnet` and :func:`load_folder`.
    """
    check_split(split, ("train", "test"), "RAF-DB")
    root = Path(root)
    require_dir(root, "RAF-DB root directory")
    basic = root if (root / "EmoLabel").is_dir() else root / "basic"
    labels_file = basic / "EmoLabel" / "list_patition_label.txt"
    require_file(labels_file, "RAF-DB label file")
    image_dir = basic / "Image" / "aligned"
    require_dir(image_dir, "RAF-DB aligned image directory")

    out = Collector(on_error, verify_images, progress)
    # surrogateescape keeps a stray byte from ending the whole read: it becomes one bad row.
    with labels_file.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{labels_file}, line {line_no}"
            bad = not_utf8(line)
            if bad is not None:
                out.error(where, f"bad row: not UTF-8 text ({bad})")
                continue
            parts = line.split()
            if len(parts) != 2:
                out.error(where, f"bad row: expected '<file name> <label>', got {line.strip()!r}")
                continue
            file_name, label_text = parts
            prefix = file_name.split("_", 1)[0]
            if prefix not in ("train", "test"):
                out.error(where, f"bad row: file name {file_name!r} has no train_/test_ prefix")
                continue
            label = parse_int(label_text)
            if label not in RAFDB_LABELS:
                out.error(where, f"label out of range: {label_text!r} (valid 1..7)")
                continue
            if prefix != split:
                continue
            stem = Path(file_name).stem
            image_path = image_dir / f"{stem}_aligned.jpg"
            out.add_file(image_path, label_index(RAFDB_LABELS[label]), where)
    return out.finish("rafdb", split, labels_file, transform=transform, image_size=image_size)


register_dataset(
    DatasetSource(
        name="rafdb",
        load=load_rafdb,
        layout=SplitLayout(train="train", test="test"),
        title="RAF-DB (basic)",
        root="the RAF-DB folder holding basic/ (or basic/ itself)",
        root_example="/path/to/RAF-DB",
    )
)
