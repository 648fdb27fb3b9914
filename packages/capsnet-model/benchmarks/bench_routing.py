"""Routing benchmark: ``DynamicRouting`` (fast) against ``ReferenceRouting`` (baseline).

Run::

    uv run python packages/capsnet-model/benchmarks/bench_routing.py
    uv run python packages/capsnet-model/benchmarks/bench_routing.py --batch 1 8 32 128 \\
        --repeats 30 --device cuda --json routing.json

Sizes are E2-Capsnet's: I=1152 input capsules of 8-D routed to J=7 output capsules of 16-D
with 3 routing iterations (all configurable). Both layers share one state dict, so they compute
the same function. The baseline is ``ReferenceRouting`` (gram-ai style, (B, J, I, D) logits),
measured in the same run; every ratio is ``reference / fast`` (> 1: the fast layer wins).

For each batch size and each mode -- ``fwd`` (inference under ``torch.no_grad``) and
``fwd+bwd`` (forward, then backward of ``(v * g).sum()`` for a fixed random ``g``, gradients
w.r.t. the weight and the input) -- it reports:

* time: median over ``--repeats`` timed repeats (after ``--warmup`` untimed ones), the two
  layers alternating within each repeat so that drift in machine load hits both alike;
* equality: max abs difference of the outputs and of the gradients w.r.t. weight and input;
* memory, on CUDA: peak allocated (``torch.cuda.max_memory_allocated``) during one step, above
  what was allocated before it;
* memory, on CPU:

  - ``saved``: bytes of the tensors autograd saves for backward (``fwd+bwd`` only), recorded
    with ``torch.autograd.graph.saved_tensors_hooks`` and deduplicated by storage
    ``data_ptr``. The weight and the input are left out (they exist anyway).
  - ``peak``: peak CPU memory of one step above the start, from
    ``torch.profiler.profile(activities=[ProfilerActivity.CPU], profile_memory=True)``: the
    raw allocation/free records (``prof.profiler.kineto_results``, each with a timestamp and a
    signed byte count) are replayed in time order, tracking the max of the running sum. This
    sees every allocation through the c10 CPU allocator, including temporaries allocated and
    freed inside one op. ``kineto_results`` is not a documented API: if it is missing, the
    script falls back to the documented ``prof.events()``, where allocations are only
    attributed to the op that made them (net per op, start time of the op), which misses
    temporaries inside an op; the table then marks the peak ``~`` (approximate).
    Memory not obtained through the c10 allocator (e.g. oneDNN/BLAS scratch) is not seen.
    Checked by hand: at batch 32 the fast forward's peak (19.71 MiB) is exactly ``u_hat``
    (15.75 MiB) plus the (I, K, J*D) contiguous copy of the weight that its first einsum
    makes (3.94 MiB); the reference's 150 MiB is dominated by the weight broadcast to the
    batch by its ``@`` (126 MiB).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from _common import cpu_snapshot, load_before, load_during, others_busy, pct, sync, time_steps
from torch import nn
from torch.profiler import ProfilerActivity, profile

from capsnet_model.capsules import DynamicRouting, ReferenceRouting, squash

MiB = float(2**20)


@dataclass
class ImplResult:
    """Measurements of one layer in one mode at one batch size."""

    median_ms: float
    times_ms: list[float]
    peak_bytes: int | None = None
    peak_exact: bool = True
    saved_bytes: int | None = None


@dataclass
class CaseResult:
    """Fast vs reference at one batch size and one mode."""

    batch: int
    mode: str
    fast: ImplResult
    reference: ImplResult
    time_ratio: float
    peak_ratio: float | None
    saved_ratio: float | None
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_abs_ref: dict[str, float] = field(default_factory=dict)
    others_busy: float | None = None  # other processes' CPU share while timing


def _clear_grads(layer: nn.Module, u: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    u.grad = None


def make_step(
    layer: nn.Module, u: torch.Tensor, g: torch.Tensor, train: bool
) -> Callable[[], None]:
    """One forward (no_grad) or forward+backward of ``layer`` on ``u``."""

    def step() -> None:
        if train:
            _clear_grads(layer, u)
            (layer(u) * g).sum().backward()
        else:
            with torch.no_grad():
                layer(u)

    return step


def saved_tensor_bytes(step: Callable[[], None], exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``step``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip:
            seen[ptr] = storage.nbytes()
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        step()
    return sum(seen.values())


def _replay_peak(records: list[tuple[int | float, int]]) -> int:
    """Max of the running sum of signed byte counts, replayed in time order."""
    cur = peak = 0
    for _, nbytes in sorted(records, key=lambda r: r[0]):
        cur += nbytes
        peak = max(peak, cur)
    return peak


def cpu_peak_bytes(step: Callable[[], None]) -> tuple[int, bool]:
    """Peak CPU bytes above the start of ``step``; (bytes, exact) -- see the docstring."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    results: Any = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is not None and hasattr(results, "events"):
        raw = [
            (e.start_ns(), int(e.nbytes()))
            for e in results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
        if raw:
            return _replay_peak(raw), True
    # Fallback: memory attributed per op (net of the op's own frees).
    approx = [
        (e.time_range.start, int(e.self_cpu_memory_usage))
        for e in prof.events()
        if e.self_cpu_memory_usage
    ]
    return _replay_peak(approx), False


def cuda_peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak allocated CUDA bytes during ``step`` above what was allocated before it."""
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def equality(
    fast: nn.Module, ref: nn.Module, u: torch.Tensor, g: torch.Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """Max abs differences (and reference magnitudes) of output, d/dweight, d/dinput."""
    vals: dict[str, list[torch.Tensor]] = {"out": [], "grad_weight": [], "grad_input": []}
    for layer in (fast, ref):
        _clear_grads(layer, u)
        v = layer(u)
        gw, gu = torch.autograd.grad((v * g).sum(), (layer.get_parameter("weight"), u))
        vals["out"].append(v.detach())
        vals["grad_weight"].append(gw)
        vals["grad_input"].append(gu)
    diff = {k: (a - b).abs().max().item() for k, (a, b) in vals.items()}
    scale = {k: b.abs().max().item() for k, (_, b) in vals.items()}
    return diff, scale


def _ratio(ref: float | None, fast: float | None) -> float | None:
    if ref is None or fast is None or fast == 0:
        return None
    return ref / fast


def run_batch(args: argparse.Namespace, device: torch.device, batch: int) -> list[CaseResult]:
    fast = DynamicRouting(
        args.in_caps, args.in_dim, args.out_caps, args.out_dim, args.iterations, args.softmax_over
    ).to(device)
    ref = ReferenceRouting(
        args.in_caps, args.in_dim, args.out_caps, args.out_dim, args.iterations, args.softmax_over
    ).to(device)
    ref.load_state_dict(fast.state_dict())
    u = squash(torch.randn(batch, args.in_caps, args.in_dim, device=device)).requires_grad_()
    g = torch.randn(batch, args.out_caps, args.out_dim, device=device)
    diff, scale = equality(fast, ref, u, g)
    layers: dict[str, nn.Module] = {"fast": fast, "reference": ref}

    cases: list[CaseResult] = []
    for mode, train in (("fwd", False), ("fwd+bwd", True)):
        steps = {name: make_step(layer, u, g, train) for name, layer in layers.items()}
        snap = cpu_snapshot()
        times = time_steps(steps, device, args.warmup, args.repeats, scale=1e3)
        busy = others_busy(snap, cpu_snapshot())
        impl: dict[str, ImplResult] = {}
        for name, layer in layers.items():
            res = ImplResult(statistics.median(times[name]), times[name])
            if device.type == "cuda":
                res.peak_bytes = cuda_peak_bytes(steps[name], device)
            else:
                res.peak_bytes, res.peak_exact = cpu_peak_bytes(steps[name])
            if train:
                res.saved_bytes = saved_tensor_bytes(
                    steps[name], [u, layer.get_parameter("weight")]
                )
            impl[name] = res
        f, r = impl["fast"], impl["reference"]
        cases.append(
            CaseResult(
                batch=batch,
                mode=mode,
                fast=f,
                reference=r,
                time_ratio=r.median_ms / f.median_ms,
                peak_ratio=_ratio(r.peak_bytes, f.peak_bytes),
                saved_ratio=_ratio(r.saved_bytes, f.saved_bytes),
                max_abs_diff=diff,
                max_abs_ref=scale,
                others_busy=busy,
            )
        )
    return cases


def _mib(res: ImplResult, attr: str) -> str:
    val = getattr(res, attr)
    if val is None:
        return "-"
    mark = "" if attr != "peak_bytes" or res.peak_exact else "~"
    return f"{mark}{val / MiB:.2f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def print_report(cases: list[CaseResult], device: torch.device) -> None:
    peak_kind = "CUDA max allocated" if device.type == "cuda" else "CPU, profiler replay"
    print(f"\ntime: median ms; peak ({peak_kind}) and saved-for-backward in MiB")
    head = (
        f"{'batch':>5} {'mode':8} {'fast ms':>9} {'ref ms':>9} {'fast pk':>8} "
        f"{'ref pk':>8} {'fast sv':>8} {'ref sv':>8}"
    )
    print(head)
    print("-" * len(head))
    for c in cases:
        f, r = c.fast, c.reference
        print(
            f"{c.batch:>5} {c.mode:8} {f.median_ms:9.3f} {r.median_ms:9.3f} "
            f"{_mib(f, 'peak_bytes'):>8} {_mib(r, 'peak_bytes'):>8} "
            f"{_mib(f, 'saved_bytes'):>8} {_mib(r, 'saved_bytes'):>8}"
        )
    print(
        "\nratios reference/fast (> 1: fast is better); other CPU: other processes' share"
        " while timing"
    )
    head = f"{'batch':>5} {'mode':8} {'time':>8} {'peak mem':>9} {'saved mem':>10} {'other CPU':>9}"
    print(head)
    print("-" * len(head))
    for c in cases:
        print(
            f"{c.batch:>5} {c.mode:8} {_x(c.time_ratio):>8} {_x(c.peak_ratio):>9} "
            f"{_x(c.saved_ratio):>10} {pct(c.others_busy):>9}"
        )
    print("\nequality: max |fast - reference| (max |reference| in brackets)")
    for c in cases:
        if c.mode != "fwd":
            continue
        parts = [f"{k} {c.max_abs_diff[k]:.2e} [{c.max_abs_ref[k]:.2e}]" for k in c.max_abs_diff]
        print(f"  batch {c.batch:>4}: " + ", ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes")
    ap.add_argument("--in-caps", type=int, default=1152)
    ap.add_argument("--in-dim", type=int, default=8)
    ap.add_argument("--out-caps", type=int, default=7)
    ap.add_argument("--out-dim", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--softmax-over", choices=("output", "input"), default="output")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    print(
        f"routing I={args.in_caps}x{args.in_dim}D -> J={args.out_caps}x{args.out_dim}D, "
        f"{args.iterations} iterations, softmax over {args.softmax_over}; device {device}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"warmup {args.warmup}, repeats {args.repeats}"
    )
    snap1, busy = load_before()
    u_hat = args.in_caps * args.out_caps * args.out_dim * 4
    print(f"u_hat per sample: {u_hat / MiB:.3f} MiB (fp32); baseline: ReferenceRouting")
    cases: list[CaseResult] = []
    for batch in args.batch:
        cases += run_batch(args, device, batch)
    print_report(cases, device)
    busy_during = load_during(snap1)
    if args.json:
        payload = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "others_cpu_busy_before": busy,
            "others_cpu_busy_during": busy_during,
            "baseline": "ReferenceRouting",
            "results": [asdict(c) for c in cases],
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
