"""Gathering a split's samples: raise-or-skip of bad rows, the optional threaded image check,
the checks of files and folders a loader needs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from capsnet_model.datasets.samples import (
    ON_ERROR,
    Box,
    DatasetError,
    FERDataset,
    FERSample,
    SkippedRow,
    _box_outside,
    _clip_box,
    read_image,
)

#: Image checks (``verify_images=True``) show a progress bar from this many images on.
VERIFY_PROGRESS_MIN = 1000
# Decoding releases the GIL, so a few threads check images in parallel; more rarely helps
# because reading the files becomes the bottleneck.
_VERIFY_THREADS = max(1, min(8, os.cpu_count() or 1))


def _image_problem(sample: FERSample) -> str | None:
    """Why the sample's image file cannot be used (``"<category>: <detail>"``), or None."""
    path = sample.image
    if not isinstance(path, Path):
        return None
    try:
        image = read_image(path)
    except Exception as exc:  # read_image alone decides what a bad image is, whatever it raises
        detail = str(exc) if isinstance(exc, DatasetError) else f"{type(exc).__name__}: {exc}"
        # The folder loader's `where` is the path already: do not repeat it.
        suffix = f": {path}"
        if str(path) in sample.where and detail.endswith(suffix):
            detail = detail[: -len(suffix)]
        return f"bad image: {detail}"
    if sample.box is not None and _clip_box(image.shape, sample.box) is None:
        return f"bad face box: {_box_outside(image.shape, sample.box)}"
    return None


class Collector:
    """Gathers samples; routes row errors to raise or skip per ``on_error``.

    With ``verify_images`` the image files are decoded in :meth:`finish`, after every row has
    been read; skipped rows and images are then listed in file order all the same.
    """

    def __init__(self, on_error: str, verify_images: bool, progress: bool = True) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.verify_images = verify_images
        self.progress = progress
        self.samples: list[FERSample] = []
        self.skipped: list[SkippedRow] = []
        self.excluded: Counter[str] = Counter()
        # Position of each sample and skipped row among the rows read, to merge the image
        # checks' skips back into file order.
        self._sample_order: list[int] = []
        self._skip_order: list[int] = []
        self._rows = 0

    def error(self, where: str, reason: str, order: int | None = None) -> None:
        if self.on_error == "raise":
            raise DatasetError(f"{where}: {reason}")
        self.skipped.append(SkippedRow(where, reason))
        if order is None:
            order, self._rows = self._rows, self._rows + 1
        self._skip_order.append(order)

    def add_sample(self, sample: FERSample) -> None:
        self.samples.append(sample)
        self._sample_order.append(self._rows)
        self._rows += 1

    def add_file(
        self,
        path: Path,
        label: int,
        where: str,
        box: Box | None = None,
        landmarks: np.ndarray | None = None,
    ) -> None:
        if not path.is_file():
            self.error(where, f"missing image file: {path}")
            return
        self.add_sample(FERSample(path, label, box, where, landmarks))

    def _check_images(self, what: str) -> None:
        """Decodes every sample's image; drops (or raises on) the bad ones."""
        samples, order = self.samples, self._sample_order
        kept: list[int] = []
        show = self.progress and len(samples) >= VERIFY_PROGRESS_MIN
        chunk = 32 * _VERIFY_THREADS  # bounded, so a raise does not wait for the whole set
        bar = tqdm(
            total=len(samples),
            desc=f"checking {what} images",
            unit="image",
            disable=None if show else True,
            leave=False,
            dynamic_ncols=True,
        )
        with bar, ThreadPoolExecutor(_VERIFY_THREADS) as pool:
            for start in range(0, len(samples), chunk):
                part = samples[start : start + chunk]
                for i, problem in enumerate(pool.map(_image_problem, part), start=start):
                    bar.update()
                    if problem is None:
                        kept.append(i)
                    else:
                        self.error(samples[i].where, problem, order[i])
        self.samples = [samples[i] for i in kept]
        self._sample_order = [order[i] for i in kept]
        ranked = sorted(zip(self._skip_order, range(len(self.skipped)), strict=True))
        self.skipped = [self.skipped[k] for _, k in ranked]
        self._skip_order = [rank for rank, _ in ranked]

    def finish(self, name: str, split: str | None, source: Path, **kw: Any) -> FERDataset:
        if self.verify_images and self.samples:
            self._check_images(f"{name} {split}" if split else name)
        if not self.samples:
            raise DatasetError(
                f"empty split {split!r} in {name} data at {source}"
                + (f" ({len(self.skipped)} rows skipped)" if self.skipped else "")
            )
        return FERDataset(
            self.samples,
            name=name,
            split=split,
            skipped=self.skipped,
            excluded=self.excluded,
            **kw,
        )


def require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}")


def require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a directory: {path}")


def check_split(split: str, valid: Sequence[str], name: str) -> None:
    if split not in valid:
        raise ValueError(f"unknown {name} split {split!r}; valid: {', '.join(valid)}")
