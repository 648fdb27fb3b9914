"""band_ops: BandPO's Band operator, clipping rules and policy losses for LLM RL (torch only).

Main entry points:

- ``ratio_bounds(old_logprobs, divergence="kl", delta=0.05, max_ratio=None)``: per-token
  ratio bounds from an f-divergence trust region (BandPO, arXiv 2603.04918).
- ``policy_loss(logprobs, old_logprobs, advantages, mask, rule=...)``: the clipped surrogate with
  any clipping rule (``ppo``, ``clip_higher``, ``band``, ``band_upper``, ``band_lower``,
  ``dcpo``), aggregation and metrics.
"""

from importlib import metadata as _metadata

from band_ops import (
    _builtin,  # noqa: F401  (registers the built-in divergences)
    rules,
)
from band_ops.aggregation import aggregate, available_aggregations, register_aggregation
from band_ops.bounds import ratio_bounds
from band_ops.divergences import (
    Divergence,
    available_divergences,
    binary_divergence,
    get_divergence,
    register_divergence,
)
from band_ops.loss import (
    ADVANTAGE_SIGNS,
    CLIP_SIDES,
    COUNT_METRICS,
    PROBABILITY_BUCKETS,
    policy_loss,
)
from band_ops.rules import (
    DCPO,
    PPO,
    Band,
    BandLower,
    BandUpper,
    ClipHigher,
    ClippingRule,
    available_rules,
    get_rule,
    register_rule,
    rule_class,
)

__version__ = _metadata.version("band-ops")

__all__ = [
    "ADVANTAGE_SIGNS",
    "CLIP_SIDES",
    "COUNT_METRICS",
    "DCPO",
    "PPO",
    "PROBABILITY_BUCKETS",
    "Band",
    "BandLower",
    "BandUpper",
    "ClipHigher",
    "ClippingRule",
    "Divergence",
    "aggregate",
    "available_aggregations",
    "available_divergences",
    "available_rules",
    "binary_divergence",
    "get_divergence",
    "get_rule",
    "policy_loss",
    "ratio_bounds",
    "register_aggregation",
    "register_divergence",
    "register_rule",
    "rule_class",
    "rules",
]
