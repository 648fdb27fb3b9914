"""fer_export.bench and ``fer-export bench``: MAC counting, the CPU fp32 peak, the timing
loop, the command line and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fer_export.bench import benchmark, count_macs, fp32_peak, time_call
from fer_export.cli import main

# -- count_macs ---------------------------------------------------------------------------------


def _graph_model() -> onnx.ModelProto:
    """x (N,4,8,8) -> Conv 3x3 (8 out) -> grouped Conv 3x3 (groups 2) -> ConvTranspose 2x2
    stride 2 (4 out) -> Flatten -> MatMul (1024, 6) -> Gemm transA on a constant -> Einsum with
    a (6, 5) weight, plus a one-operand Einsum (a sum: no MACs)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        init("w1", 8, 4, 3, 3),
        init("w2", 8, 4, 3, 3),  # groups 2: 8 in, 4 per group
        init("wt", 8, 4, 2, 2),  # ConvTranspose weight (C_in, M/group, kh, kw)
        init("m", 1024, 6),
        init("ga", 3, 7),  # Gemm A (transposed): (K=3, M=7)
        init("gb", 3, 2),
        init("e", 6, 5),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("ConvTranspose", ["c2", "wt"], ["c3"], strides=[2, 2]),
        helper.make_node("Flatten", ["c3"], ["f"], axis=1),
        helper.make_node("Slice", ["f", "s0", "s1", "s2"], ["fs"]),
        helper.make_node("MatMul", ["fs", "m"], ["mm"]),
        helper.make_node("Einsum", ["mm", "e"], ["es"], equation="bi,ij->bj"),
        helper.make_node("Einsum", ["es"], ["scores"], equation="bj->b"),
        helper.make_node("Gemm", ["ga", "gb"], ["g"], transA=1),
    ]
    slices = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1024], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "s2"),
    ]
    graph = helper.make_graph(
        nodes,
        "macs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, [7, 2]),
        ],
        inits + slices,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_count_macs_by_op() -> None:
    compute = count_macs(_graph_model())
    conv = 8 * 8 * 8 * (4 * 3 * 3) + 8 * 8 * 8 * (4 * 3 * 3)  # out elements x (C/g * kh * kw)
    transpose = (8 * 8 * 8) * (4 * 2 * 2)  # input elements x (M/g * kh * kw)
    assert compute.by_op == {
        "Conv": conv,
        "ConvTranspose": transpose,
        "MatMul": 6 * 1024,
        "Einsum": 6 * 5,
        "Gemm": 7 * 2 * 3,
    }
    assert compute.macs == sum(compute.by_op.values())
    assert compute.uncounted == ()
    assert compute.gmacs == pytest.approx(compute.macs / 1e9)


def test_count_macs_reports_unresolved_shapes() -> None:
    model = _graph_model()
    # An Einsum with an ellipsis is not counted: reported, not guessed.
    model.graph.node[6].attribute[0].s = b"...i,ij->...j"
    compute = count_macs(model)
    assert compute.by_op.get("Einsum", 0) == 0  # the one-operand sum stays 0
    assert compute.uncounted == ("Einsum (node 6)",)


def test_count_macs_tiny_model_and_errors(model_path: Path, tmp_path: Path) -> None:
    # GlobalAveragePool -> Flatten -> MatMul (3, 4): 12 multiply-accumulates per image.
    assert count_macs(model_path).macs == 12
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        count_macs(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all" * 10)
    with pytest.raises(ValueError, match="not an ONNX file"):
        count_macs(junk)


def test_count_macs_matches_torch_hooks(tmp_path: Path) -> None:
    """Conv MACs of an exported E2-Capsnet equal a count from forward hooks on the module."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("capsnet_model")
    from capsnet_model import create_model
    from fer_export import export_onnx
    from fer_export.quantize import synthetic_batches, to_int8

    torch.manual_seed(0)
    model = create_model("e2capsnet", width=1 / 16, image_size=64, primary_channels=4).eval()
    hooked = 0

    def hook(module: torch.nn.Conv2d, _: object, out: torch.Tensor) -> None:
        nonlocal hooked
        kh, kw = module.kernel_size
        hooked += out.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if type(m).__name__ == "Conv2d"
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    path = export_onnx(model, tmp_path / "m.onnx", verify=False)
    compute = count_macs(path)
    assert hooked > 0
    assert compute.by_op["Conv"] == hooked
    assert compute.macs > hooked  # the routing's products come on top
    assert compute.uncounted == ()
    # A QDQ int8 file does the same multiplications.
    contract_batches = synthetic_batches(_contract(path), 16, 8)
    q = to_int8(path, tmp_path / "m.int8.onnx", contract_batches)
    assert count_macs(q).by_op["Conv"] == hooked


def _contract(path: Path):  # type: ignore[no-untyped-def]
    from fer_export.export import read_contract

    return read_contract(path)


# -- peak and timing ----------------------------------------------------------------------------


def test_fp32_peak_is_a_rate() -> None:
    peak = fp32_peak(threads=1, repeats=2, size=256)
    # One core of anything that runs this test does between 0.1 and 1000 GMAC/s in fp32.
    assert 1e8 < peak < 1e12
    with pytest.raises(ValueError, match="repeats"):
        fp32_peak(repeats=0)
    with pytest.raises(ValueError, match="size"):
        fp32_peak(size=8)


def test_time_call_counts_and_stops_early() -> None:
    calls: list[int] = []
    assert len(time_call(lambda: calls.append(1), 5)) == 5
    assert len(calls) == 5
    assert len(time_call(lambda: calls.append(1), 100, max_seconds=0.0)) == 1


# -- benchmark ----------------------------------------------------------------------------------


def test_benchmark_rows_and_baseline(model_path: Path, attention_model_path: Path) -> None:
    seen: list[str] = []
    rows = benchmark(
        [model_path, attention_model_path],
        ["cpu"],
        [1, 4],
        warmup=1,
        runs=3,
        peak=1e9,
        on_result=lambda row: seen.append(f"{Path(row.model).name}:{row.batch}"),
    )
    assert seen == ["tiny.onnx:1", "tiny.onnx:4", "attention.onnx:1", "attention.onnx:4"]
    assert [r.batch for r in rows] == [1, 4, 1, 4]
    base = {r.batch: r for r in rows[:2]}
    for row in rows:
        assert row.provider == "cpu" and 1 <= row.runs <= 3
        assert row.min_ms <= row.p50_ms <= row.p90_ms
        assert row.images_per_s == pytest.approx(row.batch / (row.p50_ms / 1e3))
        assert row.vs_baseline == pytest.approx(row.p50_ms / base[row.batch].p50_ms)
        assert row.macs_per_image == 12
        assert row.floor_ms == pytest.approx(1e3 * row.batch * 12 / 1e9)
        assert row.percent_of_peak == pytest.approx(100 * row.floor_ms / row.p50_ms)
    assert rows[0].vs_baseline == 1.0 and rows[1].vs_baseline == 1.0
    assert set(rows[0].to_dict()) >= {"p50_ms", "images_per_s", "vs_baseline", "floor_ms"}


def test_benchmark_rejects_bad_arguments(model_path: Path) -> None:
    with pytest.raises(ValueError, match="no model"):
        benchmark([])
    with pytest.raises(ValueError, match="batch sizes"):
        benchmark([model_path], ["cpu"], [0])
    with pytest.raises(ValueError, match="runs"):
        benchmark([model_path], ["cpu"], [1], runs=0)
    with pytest.raises(ValueError, match="provider"):
        benchmark([model_path], ["warp-drive"], [1])


# -- command line -------------------------------------------------------------------------------


def test_cli_bench_table_and_json(
    model_path: Path, attention_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", str(model_path), str(attention_model_path), "--providers", "cpu",
            "--batches", "1", "2", "--runs", "2", "--warmup", "0", "--threads", "1",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "fp32 peak on this CPU" in text and "% peak" in text
    lines = [line for line in text.splitlines() if line.startswith(("tiny.onnx", "attention"))]
    assert len(lines) == 4 and all("cpu" in line for line in lines)
    assert "1.00x" in lines[0] and "1.00x" in lines[1]
    assert "baseline (vs base 1.00x): tiny.onnx on cpu" in text
    payload = json.loads(out.read_text())
    assert payload["threads"] == 1 and payload["cpu_fp32_peak_gmac_s"] > 0
    assert [(Path(r["model"]).name, r["batch"]) for r in payload["rows"]] == [
        ("tiny.onnx", 1), ("tiny.onnx", 2), ("attention.onnx", 1), ("attention.onnx", 2),
    ]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_bench_no_floor(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(model_path), "--batches", "1", "--runs", "1", "--no-floor"]) == 0
    text = capsys.readouterr().out
    assert "fp32 peak" not in text
    row = next(line for line in text.splitlines() if line.startswith("tiny.onnx"))
    assert row.rstrip().endswith("-")  # no % peak without a peak


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["MISSING"], "ONNX file not found"),
        (["MODEL", "--batches", "0"], "--batches must be >= 1"),
        (["MODEL", "--runs", "0"], "--runs must be >= 1"),
        (["MODEL", "--threads", "0"], "--threads must be >= 1"),
        (["MODEL", "--providers", "warp-drive"], "warp-drive"),
        (["MODEL", "--trt-batch", "8", "1", "32"], "trt_batch must be (min, opt, max)"),
        (["MODEL", "--json", "NOFOLDER/out.json"], "folder for --json not found"),
        (["JUNK"], "JUNK"),
    ],
)
def test_cli_bench_errors(
    argv: list[str],
    message: str,
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    junk = tmp_path / "JUNK.onnx"
    junk.write_bytes(b"definitely not protobuf" * 4)
    names = {
        "MODEL": str(model_path),
        "MISSING": str(tmp_path / "MISSING.onnx"),
        "JUNK": str(junk),
        "NOFOLDER/out.json": str(tmp_path / "NOFOLDER" / "out.json"),
    }
    code = main(["bench", "--no-floor", "--runs", "1", *(names.get(a, a) for a in argv)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_bench_explicit_gpu_without_one(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fer_export.runtime import gpu_status

    if gpu_status()[0] > 0:
        pytest.skip("this machine has a GPU: asking for CUDA would succeed")
    code = main(["bench", str(model_path), "--providers", "cuda", "--runs", "1"])
    assert code == 2
    assert "cuda" in capsys.readouterr().err.lower()


def test_cli_bench_needs_no_torch(model_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["capsnet_model"] = None
        from fer_export.cli import main
        assert main(["bench", sys.argv[1], "--batches", "1", "--runs", "1"]) == 0
        bad = [m for m in ("torch", "capsnet_model") if sys.modules.get(m) is not None]
        assert not bad, bad
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny.onnx" in result.stdout
