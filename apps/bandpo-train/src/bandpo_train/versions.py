"""The versions a run records (``run.json``, the study's results): Python and the stack."""

from __future__ import annotations

import platform
from importlib import metadata

#: Distributions whose versions explain a run's numbers.
STACK = ("torch", "transformers", "accelerate", "band-ops", "rl-trainer", "bandpo-train")


def versions() -> dict[str, str]:
    """``{"python": ..., distribution: version}`` for :data:`STACK` ("not installed" if absent)."""
    out = {"python": platform.python_version()}
    for dist in STACK:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
