"""Shared settings: runs are kept tiny (a 1/16-width E2-Capsnet at 64 px, two batches)."""

from __future__ import annotations

import pytest

# About 10 s per run on 2 CPU cores, export and checks included.
TINY = [
    "data.synthetic_train=140",
    "data.synthetic_test=35",
    "train.epochs=1",
    "train.max_batches_per_epoch=2",
    "train.model=e2capsnet",
    # The default (before-pool) placement: this 2-batch model scores ~5e-7 on random inputs, which
    # the export check's noise floor (differences against max(|score|, 1e-5)) must let through.
    "train.model_kwargs={width: 0.0625, primary_channels: 4}",
    "train.image_size=64",
    "train.progress=false",
    "export.calib_count=32",
]


@pytest.fixture
def tiny() -> list[str]:
    """The tiny-run overrides (a fresh list per test)."""
    return list(TINY)
