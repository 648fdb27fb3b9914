"""Latency, throughput and compute of exported FER models on ONNX Runtime (no torch).

What an engineer runs on the edge box before deploying: ``fer-export bench`` wraps it::

    fer-export bench model.onnx model.int8.onnx --providers tensorrt cuda cpu --batches 1 8 32

* :func:`benchmark` times :meth:`FERSession.run <fer_export.runtime.FERSession.run>` (host
  array in, host scores out: the latency an application sees) for every model x provider x
  batch size, after warm-up runs; the first model/provider pair is the baseline the others are
  compared with, batch size by batch size.
* :func:`count_macs` counts the multiply-accumulates of one image through the graph (Conv,
  MatMul, Gemm, Einsum and their quantised forms) from ONNX shape inference.
* :func:`fp32_peak` measures the best float32 rate ONNX Runtime's CPU kernels reach on this
  machine (a large MatMul and VGG-like 3x3 convolutions). ``count_macs / fp32_peak`` is a
  floor on the CPU latency of a model whose time is in its convolutions.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

try:
    import onnxruntime as ort
except ImportError as _exc:  # left out on linux aarch64: say what to install
    from fer_export._ort import onnxruntime_missing

    raise onnxruntime_missing(_exc) from _exc

__all__ = ["Compute", "Timing", "benchmark", "count_macs", "fp32_peak", "time_call"]

#: Conv-like ops and the input index of their weight (M, C/group, kh, kw).
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
#: MatMul-like ops and the input index of their left operand (..., M, K).
_MATMUL_LEFT = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}


@dataclass(frozen=True)
class Compute:
    """Multiply-accumulates of one image through a graph.

    Attributes:
        macs: total multiply-accumulates per image.
        by_op: MACs per op type (``Conv``, ``MatMul``, ...).
        uncounted: nodes of MAC-bearing types whose shapes shape inference could not resolve
            (their MACs are missing from ``macs``, which is then a lower bound).
    """

    macs: int
    by_op: dict[str, int]
    uncounted: tuple[str, ...] = ()

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose symbolic leading input dimensions are ``batch``, shapes inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    for value in fixed.graph.output:  # stale symbolic shapes would only conflict
        value.type.tensor_type.ClearField("shape")
    del fixed.graph.value_info[:]
    return shape_inference.infer_shapes(fixed, data_prop=True)


def count_macs(model: str | Path | onnx.ModelProto) -> Compute:
    """Multiply-accumulates of one image (batch 1) through ``model``.

    Counts ``Conv`` (and ``ConvInteger`` / ``QLinearConv``), ``ConvTranspose``, ``MatMul`` (and
    its integer / QLinear forms), ``Gemm`` and two-operand ``Einsum``; element-wise ops,
    pooling and reductions are not multiply-accumulates and are left out. A QDQ int8 model
    counts the same as its float original.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX model, or shape inference failed on it.
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf DecodeError and friends
            raise ValueError(f"{path} is not an ONNX file ({type(exc).__name__})") from exc
    try:
        inferred = _with_batch(model, 1)
    except Exception as exc:  # onnx.shape_inference.InferenceError and friends
        raise ValueError(f"shape inference failed: {exc}") from exc

    shapes: dict[str, list[int] | None] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = (
            [int(d.dim_value) for d in dims] if all(d.HasField("dim_value") for d in dims) else None
        )
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = [int(d) for d in tensor.dims]

    shape = shapes.get
    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for index, node in enumerate(inferred.graph.node):
        op = node.op_type
        macs: int | None = None
        if op in _CONV_WEIGHT:
            w, out = shape(node.input[_CONV_WEIGHT[op]]), shape(node.output[0])
            if w is not None and out is not None:
                macs = math.prod(out) * math.prod(w[1:])
        elif op == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])
            if x is not None and w is not None:
                macs = math.prod(x) * math.prod(w[1:])
        elif op in _MATMUL_LEFT:
            a, out = shape(node.input[_MATMUL_LEFT[op]]), shape(node.output[0])
            if a is not None and out is not None and a:
                macs = math.prod(out) * a[-1]
        elif op == "Gemm":
            a, out = shape(node.input[0]), shape(node.output[0])
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            if a is not None and out is not None and len(a) == 2:
                macs = math.prod(out) * (a[0] if trans_a else a[1])
        elif op == "Einsum":
            macs = _einsum_macs(node, shape)
        else:
            continue
        if macs is None:
            uncounted.append(node.name or f"{op} (node {index})")
            continue
        by_op[op] = by_op.get(op, 0) + int(macs)
    return Compute(macs=sum(by_op.values()), by_op=by_op, uncounted=tuple(uncounted))


def _einsum_macs(node: onnx.NodeProto, shape: Callable[[str], list[int] | None]) -> int | None:
    """Two operands: the product of every index's size (one multiply-add per combination)."""
    equation = next(
        (attr.s.decode() for attr in node.attribute if attr.name == "equation"), ""
    ).replace(" ", "")
    if "..." in equation or "->" not in equation:
        return None
    terms = equation.split("->")[0].split(",")
    if len(terms) == 1:
        return 0  # a sum or a transpose: no multiplications
    if len(terms) != 2 or len(node.input) != 2:
        return None
    sizes: dict[str, int] = {}
    for term, name in zip(terms, node.input, strict=True):
        dims = shape(name)
        if dims is None or len(dims) != len(term):
            return None
        for letter, size in zip(term, dims, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return math.prod(sizes.values())


def _peak_kernels(size: int) -> list[tuple[onnx.ModelProto, dict[str, np.ndarray], int]]:
    """(model, feeds, MACs per call): a square MatMul and two VGG-like 3x3 convolutions."""
    rng = np.random.default_rng(0)

    def model(node: onnx.NodeProto, inputs: list[Any], output: Any, inits: list[Any]) -> Any:
        graph = helper.make_graph([node], "fp32_peak", inputs, [output], inits)
        # IR 8 / opset 17: accepted by every onnxruntime this package supports.
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    kernels = []
    matmul = model(
        helper.make_node("MatMul", ["a", "b"], ["c"]),
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size]),
        ],
        helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size]),
        [],
    )
    feeds = {n: rng.standard_normal((size, size), dtype=np.float32) for n in ("a", "b")}
    kernels.append((matmul, feeds, size**3))
    for channels, side in ((256, 56), (512, 28)):
        weight = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) * 0.01
        conv = model(
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, side, side])],
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, side, side]),
            [onnx.numpy_helper.from_array(weight, "w")],
        )
        x = rng.standard_normal((1, channels, side, side), dtype=np.float32)
        kernels.append((conv, {"x": x}, channels * channels * 9 * side * side))
    return kernels


def fp32_peak(*, threads: int | None = None, repeats: int = 20, size: int = 1024) -> float:
    """The best float32 multiply-accumulates per second ONNX Runtime's CPU provider reaches on
    this machine: the fastest of a ``size`` x ``size`` MatMul and two VGG-like 3x3
    convolutions (256 channels at 56 x 56, 512 at 28 x 28), each the best of ``repeats``
    calls after a warm-up, with ``threads`` intra-op threads (None: ORT's default).

    ``count_macs(model).macs / fp32_peak()`` is then a floor on the CPU latency of a model
    whose time is in its convolutions, for any kernel that does every multiplication (MLAS
    runs ORT's MatMul and Conv; fast-convolution algorithms such as Winograd, which it does
    not use, do fewer).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    best = 0.0
    for proto, feeds, macs in _peak_kernels(size):
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        session.run(None, feeds)
        seconds = min(time_call(functools.partial(session.run, None, feeds), repeats))
        best = max(best, macs / seconds)
    return best


def time_call(fn: Callable[[], Any], runs: int, max_seconds: float = math.inf) -> list[float]:
    """Seconds of each of up to ``runs`` calls of ``fn``; stops early once ``max_seconds`` have
    passed (after at least one call)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= max_seconds:
            break
    return times


@dataclass
class Timing:
    """One model x provider x batch size measurement (times in milliseconds per call)."""

    model: str
    provider: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    images_per_s: float
    #: ``p50_ms`` over the baseline's ``p50_ms`` at the same batch size (1.0 for the baseline).
    vs_baseline: float | None = None
    #: Multiply-accumulates per image (:func:`count_macs`), if counted.
    macs_per_image: int | None = None
    #: Achieved multiply-accumulates per second at the median latency.
    gmac_per_s: float | None = None
    #: ``batch * macs_per_image / peak``: the time at this CPU's fp32 peak (CPU rows with one).
    floor_ms: float | None = None
    #: ``gmac_per_s`` over the peak, in percent (CPU rows with a peak).
    percent_of_peak: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def benchmark(
    models: Sequence[str | Path],
    providers: Sequence[str] = ("auto",),
    batches: Sequence[int] = (1, 8, 32),
    *,
    warmup: int = 3,
    runs: int = 20,
    max_seconds: float = 10.0,
    threads: int | None = None,
    trt_fp16: bool = False,
    trt_batch: tuple[int, int, int] = (1, 8, 32),
    trt_cache_dir: str | Path | None = None,
    peak: float | None = None,
    seed: int = 0,
    on_result: Callable[[Timing], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> list[Timing]:
    """Time :meth:`FERSession.run` for every model x provider x batch size.

    Each session is created once per model and provider with ``max_batch`` = the largest batch
    size, warmed up (on TensorRT: ``trt_batch`` is the engine's min/opt/max profile, larger
    batches are split as in deployment; the engine cache is ``trt_cache_dir``, by default the
    one :class:`FERSession` and fer-edge use, so a warm cache is reused), then each batch size
    gets ``warmup`` untimed and up to ``runs`` timed calls (fewer once ``max_seconds`` have
    passed, at least one) on seeded random inputs. The first model/provider pair is the baseline of
    :attr:`Timing.vs_baseline`. ``peak`` (MAC/s, :func:`fp32_peak`) adds the fp32 floor to
    CPU rows.

    Raises:
        ValueError: empty model list, batch sizes < 1, ``runs`` < 1 or ``warmup`` < 0; and
            whatever :class:`FERSession` raises for a bad file or an unusable provider.
    """
    from fer_export.runtime import FERSession

    if not models:
        raise ValueError("no model to benchmark")
    if not providers:
        raise ValueError("no provider to benchmark")
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batches)}")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    largest = max(batches)
    rng = np.random.default_rng(seed)
    baseline: dict[int, float] = {}
    results: list[Timing] = []
    for model in models:
        macs = count_macs(model).macs
        for provider in providers:
            if on_status is not None:
                on_status(f"loading {Path(model).name} on {provider}")
            session = FERSession(
                model,
                providers=provider,
                intra_op_threads=threads,
                max_batch=largest,
                trt_batch=trt_batch,
                trt_fp16=trt_fp16,
                trt_cache_dir=trt_cache_dir,
            )
            size = session.input_size
            for batch in batches:
                x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
                for _ in range(warmup):
                    session.run(x)
                times = time_call(functools.partial(session.run, x), runs, max_seconds)
                p50 = statistics.median(times)
                if batch not in baseline:
                    baseline[batch] = p50
                cpu = session.provider == "cpu"
                timing = Timing(
                    model=str(model),
                    provider=session.provider,
                    batch=batch,
                    runs=len(times),
                    p50_ms=1e3 * p50,
                    p90_ms=1e3 * _quantile(times, 0.9),
                    mean_ms=1e3 * statistics.fmean(times),
                    min_ms=1e3 * min(times),
                    images_per_s=batch / p50,
                    vs_baseline=p50 / baseline[batch],
                    macs_per_image=macs,
                    gmac_per_s=batch * macs / p50 / 1e9,
                    floor_ms=1e3 * batch * macs / peak if peak and cpu else None,
                    percent_of_peak=100 * batch * macs / p50 / peak if peak and cpu else None,
                )
                results.append(timing)
                if on_result is not None:
                    on_result(timing)
    return results


def format_row(t: Timing, name_width: int = 24) -> str:
    """One line of ``fer-export bench``'s table."""
    name = Path(t.model).name
    share = f"{t.percent_of_peak:6.0f}%" if t.percent_of_peak is not None else f"{'-':>7s}"
    ratio = f"{t.vs_baseline:8.2f}x" if t.vs_baseline is not None else f"{'-':>9s}"
    rate = f"{t.gmac_per_s:8.1f}" if t.gmac_per_s is not None else f"{'-':>8s}"
    return (
        f"{name:<{name_width}s} {t.provider:>8s} {t.batch:6d} {t.p50_ms:10.2f} {t.p90_ms:10.2f} "
        f"{t.images_per_s:10.1f} {ratio} {rate} {share}"
    )


def table_header(name_width: int = 24) -> str:
    return (
        f"{'model':<{name_width}s} {'provider':>8s} {'batch':>6s} {'p50 ms':>10s} "
        f"{'p90 ms':>10s} {'images/s':>10s} {'vs base':>9s} {'GMAC/s':>8s} {'% peak':>7s}"
    )
