"""Benchmark: Band bounds and the Band policy loss against named baselines, as ratios.

One run measures, on the same machine and inputs:
  1. ``ratio_bounds`` for every divergence on 1,000,000 tokens (log p uniform in [-12, 0]),
     against the paper's approach re-implemented as the baseline: vectorised bisection on KL,
     50 iterations per side, stopping early once every bracket is narrower than 1e-6;
  2. the clipping step (log-probs -> clipped ratio) with Band bounds against plain PPO clipping;
  3. the whole policy loss, forward + backward, on (64, 4096) tokens: Band (KL, bounds computed
     inside the call, and bounds precomputed once per rollout as a trainer does) against PPO.

Timings are medians of repeated runs after a warm-up; only ratios are meant to be compared
across machines. Usage: ``python benchmarks/bench_bounds.py [--tokens N] [--repeats K]
[--dtype float32|float64] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import band_ops


def bisection_kl_bounds(
    old_logprobs: torch.Tensor,
    delta: float,
    iterations: int = 50,
    width: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: bisection on r for KL(old || new) = delta, each side separately."""
    p = old_logprobs.exp()
    p1 = 1 - p

    def kl(r: torch.Tensor) -> torch.Tensor:
        q = (r * p).clamp(max=1 - torch.finfo(p.dtype).eps)
        return p * torch.log(p / q) + p1 * torch.log(p1 / (1 - q))

    def side(lo: torch.Tensor, hi: torch.Tensor, rising: bool) -> torch.Tensor:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            over = kl(mid) > delta
            if rising:
                hi, lo = torch.where(over, mid, hi), torch.where(over, lo, mid)
            else:
                lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
            if (hi - lo).max().item() < width:
                break
        return (lo + hi) / 2

    upper = side(torch.ones_like(p), 1 / p, rising=True)
    lower = side(torch.zeros_like(p), torch.ones_like(p), rising=False)
    return lower, upper


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Returns the median wall time of ``fn`` in milliseconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loss-shape", type=int, nargs=2, default=[64, 4096])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    old = (-12 * torch.rand(args.tokens, generator=gen, dtype=torch.float64)).to(dtype).to(device)
    new = (old + 0.2 * torch.randn(args.tokens, generator=gen, dtype=torch.float64).to(dtype).to(device)).clamp(max=0)
    delta, eps = 0.05, 0.2

    print(f"band-ops {band_ops.__version__}, torch {torch.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}, dtype {args.dtype}")
    print(f"\n1) bounds on {args.tokens:,} tokens, log p ~ U[-12, 0], delta {delta}")
    t_bisect = timed(lambda: bisection_kl_bounds(old, delta), max(1, args.repeats // 2), device)
    t_ppo = timed(lambda: torch.exp(new - old).clamp(1 - eps, 1 + eps), args.repeats, device)
    print(f"   {'method':<34}{'ms':>9}{'vs bisection':>14}{'vs PPO clip':>13}")
    print(f"   {'bisection KL (paper, baseline)':<34}{t_bisect:9.2f}{1.0:13.2f}x{t_bisect / t_ppo:12.2f}x")
    print(f"   {'PPO clip exp(lp-old).clamp':<34}{t_ppo:9.2f}{t_ppo / t_bisect:13.4f}x{1.0:12.2f}x")
    for name in band_ops.available_divergences():
        t = timed(lambda n=name: band_ops.ratio_bounds(old, divergence=n, delta=delta), args.repeats, device)
        label = f"ratio_bounds {name}"
        print(f"   {label:<34}{t:9.2f}{t_bisect / t:13.1f}x faster{t / t_ppo:8.2f}x")

    print("\n2) clipping step, log-probs -> clipped ratio (same tokens)")

    def band_clip(name: str) -> torch.Tensor:
        lower, upper = band_ops.ratio_bounds(old, divergence=name, delta=delta)
        return torch.exp(new - old).clamp(lower, upper)

    for name in band_ops.available_divergences():
        t = timed(lambda n=name: band_clip(n), args.repeats, device)
        print(f"   band clip {name:<24}{t:9.2f} ms {t / t_ppo:6.2f}x PPO clip")

    b, tl = args.loss_shape
    print(f"\n3) policy loss forward + backward on ({b}, {tl}) tokens, token-mean, with metrics")
    g2 = torch.Generator().manual_seed(1)
    old2 = (-12 * torch.rand(b, tl, generator=g2, dtype=torch.float64)).to(dtype).to(device)
    new2 = (old2 + 0.2 * torch.randn(b, tl, generator=g2, dtype=torch.float64).to(dtype).to(device)).clamp(max=0)
    adv = torch.randn(b, generator=g2, dtype=torch.float64).to(dtype).to(device)
    mask = torch.ones(b, tl, dtype=dtype, device=device)

    def run(rule, bounds=None) -> None:
        x = new2.detach().requires_grad_(True)
        loss, _ = band_ops.policy_loss(x, old2, adv, mask, rule=rule, bounds=bounds)
        loss.backward()

    band = band_ops.Band(divergence="kl", delta=delta, max_ratio=10)
    pre = band.bounds(old2)
    t_ppo_loss = timed(lambda: run("ppo"), args.repeats, device)
    t_band = timed(lambda: run(band), args.repeats, device)
    t_band_pre = timed(lambda: run(band, pre), args.repeats, device)
    t_ch = timed(lambda: run("clip_higher"), args.repeats, device)
    print(f"   {'ppo (baseline)':<40}{t_ppo_loss:9.2f} ms {1.0:6.2f}x")
    print(f"   {'clip_higher':<40}{t_ch:9.2f} ms {t_ch / t_ppo_loss:6.2f}x")
    print(f"   {'band kl, bounds inside the call':<40}{t_band:9.2f} ms {t_band / t_ppo_loss:6.2f}x")
    print(f"   {'band kl, bounds once per rollout':<40}{t_band_pre:9.2f} ms {t_band_pre / t_ppo_loss:6.2f}x")


if __name__ == "__main__":
    main()
