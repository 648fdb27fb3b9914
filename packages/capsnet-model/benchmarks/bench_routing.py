"""Time and peak-memory comparison: DynamicRouting vs ReferenceRouting (E2-Capsnet sizes).

Run: ``python packages/capsnet-model/benchmarks/routing_benchmark.py [--batch 32] [--device cpu]``
"""

from __future__ import annotations

import argparse
import time

import torch

from capsnet_model.capsules import DynamicRouting, ReferenceRouting, squash


def bench(layer: torch.nn.Module, u: torch.Tensor, repeats: int, train: bool) -> float:
    def step() -> None:
        out = layer(u)
        if train:
            out.norm(dim=-1).sum().backward()

    step()
    if u.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if u.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--in-caps", type=int, default=1152)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    fast = DynamicRouting(args.in_caps, 8, 7, 16).to(dev)
    ref = ReferenceRouting(args.in_caps, 8, 7, 16).to(dev)
    ref.load_state_dict(fast.state_dict())
    u = squash(torch.randn(args.batch, args.in_caps, 8, device=dev))
    with torch.no_grad():
        diff = (fast(u) - ref(u)).abs().max().item()
    print(f"max |fast - reference| = {diff:.2e}")
    for train in (False, True):
        for name, layer in (("DynamicRouting", fast), ("ReferenceRouting", ref)):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            with torch.set_grad_enabled(train):
                sec = bench(layer, u, args.repeats, train)
            mem = ""
            if dev.type == "cuda":
                mem = f", peak {torch.cuda.max_memory_allocated(dev) / 2**20:.1f} MiB"
            mode = "fwd+bwd" if train else "fwd"
            print(f"{name:17s} {mode:7s} batch {args.batch}: {sec * 1e3:8.2f} ms{mem}")


if __name__ == "__main__":
    main()
