"""Every test starts from the same random state, so no test passes or fails by the draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (libraries such as albumentations may still read it)
