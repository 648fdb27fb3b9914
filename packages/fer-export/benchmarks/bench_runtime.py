"""Inference benchmark: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, same run.

Run::

    uv run python packages/fer-export/benchmarks/bench_runtime.py
    uv run python packages/fer-export/benchmarks/bench_runtime.py --models e2capsnet_small \\
        --batches 1 32 256 --device cuda --json runtime.json

For each model (default: ``e2capsnet_small`` at 64 px and the full ``e2capsnet`` at 224 px,
seeded random weights, template attention baked into the graph) it exports the fp32 ONNX file
and an int8 (static QDQ) variant calibrated on synthetic faces, then times, at each batch size,
``warmup`` untimed and ``repeats`` timed calls of:

* ``torch``: the PyTorch model in eval mode under ``torch.inference_mode()`` (the baseline);
* ``ort-fp32``: ``FERSession.run`` on the fp32 file;
* ``ort-int8``: ``FERSession.run`` on the int8 file.

It prints the median latency (ms per call) and throughput (images/s), the ratios
``ort-fp32 / torch`` and ``ort-int8 / ort-fp32`` of latency, and the int8 / fp32 file size
ratio. On a CPU it then prints the fp32 floor: the model's multiply-accumulates
(``count_macs``) at the best fp32 rate seen in the run (ONNX Runtime's MatMul / 3x3 Conv,
``fp32_peak``, measured before and after the models, or a model's own ORT fp32 rate), the
share of that peak ORT fp32 reaches, and floor / torch: the lowest fp32 / torch latency ratio
any kernel that does every multiplication could reach on this CPU.
Goals (issue 6): ort-fp32 latency at batch 1 at most 0.5x PyTorch eager's; int8 file
at most 0.3x the fp32 file. Every variant runs with the same thread count (torch's default,
printed). With ``--device cuda`` the torch path runs on the GPU and the sessions ask for the
CUDA provider (``--providers tensorrt`` for TensorRT).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsnet_model import create_model
from capsnet_model.synthetic import SyntheticFaces
from fer_export import FERSession, export_onnx
from fer_export.bench import count_macs, fp32_peak
from fer_export.quantize import to_int8

DEFAULT_REPEATS = {"e2capsnet_small": 30, "e2capsnet": 8}
PAUSE_S = 1.0


def timed(fn: Callable[[], Any], warmup: int, repeats: int, sync: bool) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibration(size: int, count: int, session: FERSession) -> list[np.ndarray]:
    faces = SyntheticFaces(count, seed=123, size=size)
    images = np.stack([faces[i][0] for i in range(count)])
    x = session.contract.preprocess(images)
    return [x[i : i + 16] for i in range(0, count, 16)]


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = int(model.image_size)
    dev = torch.device(args.device)
    model.to(dev)
    fp32 = export_onnx(model.cpu(), workdir / f"{name}.onnx", verify=False)
    model.to(dev)
    providers = args.providers or ("cuda" if dev.type == "cuda" else "cpu")
    threads = torch.get_num_threads()
    s32 = FERSession(fp32, providers=providers, intra_op_threads=threads)
    int8 = to_int8(fp32, workdir / f"{name}.int8.onnx", calibration(size, 64, s32))
    s8 = FERSession(int8, providers=providers, intra_op_threads=threads)
    size_ratio = int8.stat().st_size / fp32.stat().st_size
    macs = count_macs(fp32).macs
    rows = []
    repeats = args.repeats or DEFAULT_REPEATS.get(name, 10)
    for batch in args.batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
        xt = torch.from_numpy(x).to(dev)

        def run_torch(xt: torch.Tensor = xt) -> None:
            with torch.inference_mode():
                model(xt)

        sync = dev.type == "cuda"
        reps = max(2, repeats // max(1, batch // 8)) if batch > 8 else repeats
        # One variant at a time, with a pause between: torch's OpenMP threads keep spinning
        # for a while after a call and would slow an ONNX Runtime call made right after it.
        t_fp32 = timed(lambda x=x: s32.run(x), args.warmup, reps, False)
        time.sleep(PAUSE_S)
        t_int8 = timed(lambda x=x: s8.run(x), args.warmup, reps, False)
        time.sleep(PAUSE_S)
        t_torch = timed(run_torch, args.warmup, reps, sync)
        time.sleep(PAUSE_S)
        row = {
            "model": name,
            "px": size,
            "batch": batch,
            "provider": s32.provider,
            "torch_ms": 1e3 * t_torch,
            "ort_fp32_ms": 1e3 * t_fp32,
            "ort_int8_ms": 1e3 * t_int8,
            "torch_img_s": batch / t_torch,
            "ort_fp32_img_s": batch / t_fp32,
            "ort_int8_img_s": batch / t_int8,
            "fp32_over_torch": t_fp32 / t_torch,
            "int8_over_fp32": t_int8 / t_fp32,
            "int8_size_ratio": size_ratio,
            "fp32_mb": fp32.stat().st_size / 2**20,
            "int8_mb": int8.stat().st_size / 2**20,
            "repeats": reps,
            "gmac_per_image": macs / 1e9,
        }

        rows.append(row)
        print(
            f"{name:16s} {size:4d} {batch:5d} {row['torch_ms']:10.2f} {row['ort_fp32_ms']:10.2f}"
            f" {row['ort_int8_ms']:10.2f} {row['torch_img_s']:9.1f} {row['ort_fp32_img_s']:9.1f}"
            f" {row['ort_int8_img_s']:9.1f} {row['fp32_over_torch']:9.2f}x"
            f" {row['int8_over_fp32']:8.2f}x",
            flush=True,
        )
    return rows


def print_floor(rows: list[dict[str, Any]], peaks: list[float]) -> None:
    """The fp32 floor of every row: its multiply-accumulates at the best fp32 rate measured in
    this run -- ONNX Runtime's MatMul / 3x3 Conv (before and after the models) or a model's own
    ORT fp32 rate, whichever is highest. Adds the floor keys to the rows."""
    rates = [r["batch"] * r["gmac_per_image"] * 1e9 / (r["ort_fp32_ms"] / 1e3) for r in rows]
    peak = max(*peaks, *rates)
    print(
        "\nfp32 floor: ONNX Runtime's MatMul / 3x3 Conv reached "
        + " and ".join(f"{p / 1e9:.1f}" for p in peaks)
        + f" GMAC/s (before, after), the models' ORT fp32 up to {max(rates) / 1e9:.1f}; "
        f"peak = {peak / 1e9:.1f} GMAC/s.\nfloor ms = multiply-accumulates at the peak; "
        "floor/torch = the lowest fp32/torch latency ratio any kernel that does every "
        "multiplication could reach here."
    )
    print(
        f"{'model':16s} {'batch':>5s} {'GMAC/img':>9s} {'floor ms':>10s} {'fp32 ms':>10s} "
        f"{'% peak':>7s} {'floor/torch':>11s} {'fp32/torch':>10s}"
    )
    for row, rate in zip(rows, rates, strict=True):
        floor_s = row["batch"] * row["gmac_per_image"] * 1e9 / peak
        row["fp32_peak_gmac_s"] = peak / 1e9
        row["fp32_floor_ms"] = 1e3 * floor_s
        row["fp32_percent_of_peak"] = 100 * rate / peak
        row["floor_over_torch"] = 1e3 * floor_s / row["torch_ms"]
        print(
            f"{row['model']:16s} {row['batch']:5d} {row['gmac_per_image']:9.3f} "
            f"{row['fp32_floor_ms']:10.2f} {row['ort_fp32_ms']:10.2f} "
            f"{row['fp32_percent_of_peak']:6.0f}% {row['floor_over_torch']:10.2f}x "
            f"{row['fp32_over_torch']:9.2f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["e2capsnet_small", "e2capsnet"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--providers", default=None, help="FERSession providers (default: device)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}; "
        "baseline: PyTorch eager"
    )
    cpu = args.device == "cpu"
    peaks = [fp32_peak(threads=torch.get_num_threads(), repeats=20)] if cpu else []
    print(
        f"{'model':16s} {'px':>4s} {'batch':>5s} {'torch ms':>10s} {'fp32 ms':>10s} "
        f"{'int8 ms':>10s} {'torch/s':>9s} {'fp32/s':>9s} {'int8/s':>9s} {'fp32/torch':>10s} "
        f"{'int8/fp32':>9s}"
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(name, args, Path(tmp))
    print(
        "\nfile sizes: "
        + ", ".join(
            f"{r['model']} fp32 {r['fp32_mb']:.2f} MiB, int8 {r['int8_mb']:.2f} MiB "
            f"({r['int8_size_ratio']:.2f}x)"
            for r in rows
            if r["batch"] == args.batches[0]
        )
    )
    if cpu:
        peaks.append(fp32_peak(threads=torch.get_num_threads(), repeats=20))
        print_floor(rows, peaks)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
