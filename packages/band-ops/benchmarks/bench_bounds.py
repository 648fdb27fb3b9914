"""Benchmark: Band bounds and the Band policy loss against named baselines, as ratios.

One run measures, on the same machine and inputs:
  1. ``ratio_bounds`` for every divergence on 1,000,000 tokens (log p uniform in [-12, 0])
     against two baselines: the paper's approach re-implemented (vectorised bisection on KL,
     50 iterations per side, stopping once every bracket is narrower than 1e-6) and plain PPO
     clipping of the same tokens (``exp(logp - old).clamp(1 - eps, 1 + eps)``);
  2. the whole clipping step (bounds + clamp) against plain PPO clipping;
  3. the policy loss, forward + backward with metrics, on (64, 4096) tokens: Band (KL, max ratio
     10) with bounds computed inside the call, and precomputed once per rollout as a trainer
     does, against the PPO-clip policy loss.

Each timing is the best of several runs after a warm-up (the least disturbed by other work on
the machine); only the ratios are meant to be compared across machines.

Usage: python benchmarks/bench_bounds.py [--tokens N] [--repeats K] [--dtype float32|float64]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import band_ops

GOALS = {
    "kl_vs_bisection": 25.0,  # KL bounds at least 25x faster than the bisection baseline
    "closed_vs_clip": 5.0,  # closed forms within 5x of plain clipping
    "loss_vs_ppo": 1.5,  # Band policy loss fwd+bwd within 1.5x of the PPO-clip policy loss
}
CLOSED_FORMS = ("tv", "chi2", "neyman_chi2", "hellinger")


def bisection_kl_bounds(
    old_logprobs: torch.Tensor, delta: float, iterations: int = 50, width: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's approach: bisection on r for KL(old || new) = delta, each side separately."""
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


def best_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Returns the fastest of ``repeats`` timed calls of ``fn`` in ms, after one warm-up call."""
    return best_of_rounds({"fn": fn}, repeats, device)["fn"]


def best_of_rounds(
    fns: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, float]:
    """Returns each function's fastest time in ms, timing them in turn, round after round.

    Interleaving spreads slow phases of the machine (other processes, memory state) over all
    methods instead of charging them to whichever happened to run then.
    """
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def _row(label: str, ms: float, *ratios: str) -> None:
    print(f"| {label} | {ms:.2f} | " + " | ".join(ratios) + " |")


def _verdict(value: float, goal: float, higher_is_better: bool) -> str:
    met = value >= goal if higher_is_better else value <= goal
    sign = ">=" if higher_is_better else "<="
    return f"{value:.2f}x (goal {sign} {goal:g}x: {'met' if met else 'MISSED'})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Band bounds and policy-loss benchmark")
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loss-shape", type=int, nargs=2, default=[64, 4096])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    delta, eps = 0.05, 0.2

    def tensors(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        old = -12 * torch.rand(shape, generator=gen, dtype=torch.float64)
        new = (old + 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(max=0)
        return old.to(device, dtype), new.to(device, dtype)

    old, new = tensors((args.tokens,), 0)
    print(
        f"band-ops {band_ops.__version__}, torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, {args.dtype}; best of {args.repeats} runs"
    )

    print(f"\n1) bounds on {args.tokens:,} tokens, log p ~ U[-12, 0], delta {delta}\n")
    fast = {
        "clip": lambda: torch.exp(new - old).clamp(1 - eps, 1 + eps),
        **{
            name: (lambda n=name: band_ops.ratio_bounds(old, divergence=n, delta=delta))
            for name in band_ops.available_divergences()
            if name not in ("js", "reverse_kl")
        },
    }
    slow = {
        "bisection": lambda: bisection_kl_bounds(old, delta),
        "js": lambda: band_ops.ratio_bounds(old, divergence="js", delta=delta),
        "reverse_kl": lambda: band_ops.ratio_bounds(old, divergence="reverse_kl", delta=delta),
    }
    times = best_of_rounds(fast, args.repeats, device)
    times.update(best_of_rounds(slow, max(2, args.repeats // 5), device))
    t_bisect, t_clip = times["bisection"], times["clip"]
    print("| method | ms | speed-up vs bisection | time vs PPO clip |")
    print("| --- | ---: | ---: | ---: |")
    _row("bisection on KL (paper; baseline)", t_bisect, "1.0x", f"{t_bisect / t_clip:.0f}x")
    _row("PPO clip (baseline)", t_clip, f"{t_bisect / t_clip:.0f}x", "1.00x")
    for name in band_ops.available_divergences():
        _row(
            f"ratio_bounds {name}",
            times[name],
            f"{t_bisect / times[name]:.1f}x",
            f"{times[name] / t_clip:.2f}x",
        )

    print("\n2) clipping step, log-probs -> clipped ratio (bounds + clamp) vs PPO clip\n")

    def band_clip(n: str) -> torch.Tensor:
        lower, upper = band_ops.ratio_bounds(old, divergence=n, delta=delta)
        return torch.exp(new - old).clamp(lower, upper)

    step = {"clip": fast["clip"]}
    step.update({name: (lambda n=name: band_clip(n)) for name in (*CLOSED_FORMS, "kl")})
    clip_step = best_of_rounds(step, args.repeats, device)
    print("| method | ms | time vs PPO clip |")
    print("| --- | ---: | ---: |")
    _row("PPO clip (baseline)", clip_step["clip"], "1.00x")
    for name in (*CLOSED_FORMS, "kl"):
        ratio = clip_step[name] / clip_step["clip"]
        _row(f"band clip {name}", clip_step[name], f"{ratio:.2f}x")

    b, t = args.loss_shape
    print(f"\n3) policy loss forward + backward on ({b}, {t}) tokens, token-mean, with metrics\n")
    old2, new2 = tensors((b, t), 1)
    adv = torch.randn(b, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    mask = torch.ones(b, t, dtype=dtype, device=device)
    band = band_ops.Band(divergence="kl", delta=delta, max_ratio=10)
    precomputed = band.bounds(old2)

    def loss_step(rule: object, bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        x = new2.detach().requires_grad_(True)
        loss, _ = band_ops.policy_loss(x, old2, adv, mask, rule=rule, bounds=bounds)
        loss.backward()

    losses = best_of_rounds(
        {
            "ppo": lambda: loss_step("ppo"),
            "clip_higher": lambda: loss_step("clip_higher"),
            "band": lambda: loss_step(band),
            "band_pre": lambda: loss_step(band, precomputed),
        },
        args.repeats,
        device,
    )
    t_ppo, t_ch, t_band, t_pre = (losses[k] for k in ("ppo", "clip_higher", "band", "band_pre"))
    print("| policy loss | ms | time vs PPO |")
    print("| --- | ---: | ---: |")
    _row("ppo 0.2 (baseline)", t_ppo, "1.00x")
    _row("clip_higher 0.2/0.28", t_ch, f"{t_ch / t_ppo:.2f}x")
    _row("band kl, bounds computed in the call", t_band, f"{t_band / t_ppo:.2f}x")
    _row("band kl, bounds precomputed per rollout", t_pre, f"{t_pre / t_ppo:.2f}x")

    print("\nGoals")
    print(
        "- KL bounds vs bisection:",
        _verdict(t_bisect / times["kl"], GOALS["kl_vs_bisection"], True),
    )
    worst = max(CLOSED_FORMS, key=lambda n: times[n])
    print(
        f"- closed forms vs PPO clip (slowest, {worst}):",
        _verdict(times[worst] / t_clip, GOALS["closed_vs_clip"], False),
    )
    print(
        "- Band policy loss vs PPO policy loss (bounds in the call):",
        _verdict(t_band / t_ppo, GOALS["loss_vs_ppo"], False),
    )


if __name__ == "__main__":
    main()
