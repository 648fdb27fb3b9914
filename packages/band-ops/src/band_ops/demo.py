"""``band-ops-demo``: prints the Band bounds table (the README's table) for every divergence."""

from __future__ import annotations

import argparse
import math
import sys

import torch

from band_ops.bounds import ratio_bounds
from band_ops.divergences import available_divergences

DEFAULT_PROBS = (0.001, 0.01, 0.08, 0.2, 0.5, 0.9, 0.99)


def bounds_table(
    probs: tuple[float, ...] = DEFAULT_PROBS,
    delta: float = 0.05,
    max_ratio: float | None = None,
    divergences: list[str] | None = None,
) -> str:
    """Returns a markdown table of [lower, upper] per divergence (rows) and old probability p."""
    names = divergences or ["kl", *(n for n in available_divergences() if n != "kl")]
    logp = torch.tensor([math.log(p) for p in probs], dtype=torch.float64)
    header = "| divergence | " + " | ".join(f"p={p:g}" for p in probs) + " |"
    rule = "| --- |" + " --- |" * len(probs)
    lines = [header, rule]
    ppo = " | ".join("[0.800, 1.200]" for _ in probs)
    for name in names:
        lower, upper = ratio_bounds(logp, divergence=name, delta=delta, max_ratio=max_ratio)
        cells = [
            f"[{_fmt(lo)}, {_fmt(hi)}]"
            for lo, hi in zip(lower.tolist(), upper.tolist(), strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| ppo (eps 0.2), for reference | {ppo} |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    """Three decimals, or scientific notation where that would hide the value."""
    return f"{x:.3f}" if x == 0 or 1e-3 <= x < 1000 else f"{x:.2e}"


def main(argv: list[str] | None = None) -> int:
    """Prints the bounds table; ``--delta``, ``--max-ratio`` and ``--p`` change it."""
    parser = argparse.ArgumentParser(
        prog="band-ops-demo",
        description="Print BandPO ratio bounds [lower, upper] per divergence and old probability.",
    )
    parser.add_argument("--delta", type=float, default=0.05, help="trust-region radius (0.05)")
    parser.add_argument("--max-ratio", type=float, default=None, help="cap on the upper bound")
    parser.add_argument(
        "--p", type=float, nargs="+", default=list(DEFAULT_PROBS), help="old probabilities"
    )
    parser.add_argument(
        "--divergence", nargs="+", default=None, help="divergences to show (default: all)"
    )
    args = parser.parse_args(argv)
    bad = [p for p in args.p if not 0 < p <= 1]
    if bad:
        parser.error(f"--p values must be probabilities in (0, 1], got {bad}")
    try:
        table = bounds_table(tuple(args.p), args.delta, args.max_ratio, args.divergence)
    except ValueError as exc:
        print(f"band-ops-demo: error: {exc}", file=sys.stderr)
        return 2
    cap = "none" if args.max_ratio is None else f"{args.max_ratio:g}"
    print(f"BandPO ratio bounds [lower, upper] at delta={args.delta:g}, max_ratio={cap}")
    print("(r = pi/pi_old; p = old probability of the sampled token)\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
