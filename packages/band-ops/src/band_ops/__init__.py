"""band_ops: BandPO's Band operator, clipping rules and policy losses for LLM RL (torch only)."""

from band_ops import _builtin  # noqa: F401  (registers the built-in divergences)
from band_ops.bounds import ratio_bounds
from band_ops.divergences import (
    Divergence,
    available_divergences,
    binary_divergence,
    get_divergence,
    register_divergence,
)

__version__ = "0.1.0"

__all__ = [
    "Divergence",
    "available_divergences",
    "binary_divergence",
    "get_divergence",
    "ratio_bounds",
    "register_divergence",
]
