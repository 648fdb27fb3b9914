"""``fer-export``: export a capsnet-model checkpoint to ONNX, verify it, show its contract,
benchmark it, write a Triton model repository for it.

    fer-export export CHECKPOINT -o model.onnx [--attention auto|baked|input] [--opset 18]
                      [--fp16] [--int8 --calib DIR|synthetic] [--check DIR] [--calib-count N]
                      [--no-verify] [--no-progress]
    fer-export verify model.onnx CHECKPOINT [--atol 1e-4] [--json] [--no-progress]
    fer-export info model.onnx [--json]
    fer-export bench model.onnx [more.onnx ...] [--providers auto|tensorrt|cuda|cpu ...]
                     [--batches 1 8 32] [--warmup 3] [--runs 20] [--max-seconds 10]
                     [--threads N] [--trt-fp16] [--trt-batch MIN OPT MAX] [--trt-cache DIR]
                     [--no-floor] [--json FILE]
    fer-export triton model.onnx --out DIR [--name NAME] [--max-batch 32]
                      [--preferred-batch N ...] [--queue-delay-us 500] [--kind gpu|cpu]
                      [--instances 1] [--gpus N ...] [--tensorrt] [--fp16]
                      [--trt-workspace-mb 1024] [--trt-cache DIR]
                      [--backend onnxruntime|python] [--no-warmup] [--force]

``export`` and ``verify`` show their progress on stderr (``--no-progress``: none): each
phase -- loading, tracing, exporting, checking, verifying, making or reading the calibration
and check images, fp16 conversion, int8 preparing/calibrating/quantising, the agreement check
-- with its duration, and counts of calibration and check batches; one line redrawn on a
terminal, plain lines otherwise. Stdout carries only the results (``verify --json``: only the
JSON).

``info`` shows the contract and what the model can be trusted with: the data set and its
provenance line, the calibration (temperature, ECE before/after), the abstention threshold and
its coverage, the AU-map source, and a warning for a model trained on synthetic faces.
``export --fp16/--int8`` calibrates and checks the variants' agreement on disjoint images, and
says which. ``info`` and ``bench`` need neither torch nor capsnet-model (they run on the edge box);
``export`` and ``verify`` import them only when they run. Bad input -- a missing file, a
directory, an empty or non-ONNX file, a model without or with invalid ``fer.*`` metadata, a
model the checkpoint cannot be compared with -- is one line ``fer-export: error: ...`` on
stderr and exit code 2; a failed verification is exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fer_export import triton
from fer_export.contract import ContractError, ModelLoadError, read_model
from fer_export.progress import ProgressPrinter, Reporter

__all__ = ["main"]


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fer-export",
        description=(
            "Export FER models to ONNX, verify, inspect and benchmark them, and write Triton "
            "model repositories."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    exp = sub.add_parser("export", help="export a capsnet-model checkpoint to ONNX")
    exp.add_argument("checkpoint", type=Path, help="capsnet-model .safetensors checkpoint")
    exp.add_argument("-o", "--output", type=Path, required=True, help="destination .onnx")
    exp.add_argument(
        "--attention", choices=("auto", "baked", "input"), default="auto",
        help="auto (default): input for checkpoints trained with landmark AU maps, else baked",
    )  # fmt: skip
    exp.add_argument("--opset", type=int, default=18)
    exp.add_argument("--fp16", action="store_true", help="also write <output>.fp16.onnx")
    exp.add_argument("--int8", action="store_true", help="also write <output>.int8.onnx")
    exp.add_argument(
        "--calib",
        default="synthetic",
        help="int8 calibration: a folder of face crops or 'synthetic' (default); a folder is "
        "split by image content into a calibration part (3 in 4) and a disjoint check part",
    )
    exp.add_argument(
        "--check", type=Path, default=None,
        help="folder of face crops to check the fp16/int8 agreement on (default: the check "
        "part of --calib DIR, or other synthetic faces); images also in --calib are left out",
    )  # fmt: skip
    exp.add_argument(
        "--calib-count", type=int, default=256, help="calibration faces (and check faces, most)"
    )
    exp.add_argument("--no-verify", action="store_true", help="skip the PyTorch/ORT check")
    exp.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")

    ver = sub.add_parser("verify", help="compare an ONNX file with its checkpoint")
    ver.add_argument("onnx", type=Path)
    ver.add_argument("checkpoint", type=Path)
    ver.add_argument("--atol", type=float, default=1e-4)
    ver.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ver.add_argument("--json", action="store_true")
    ver.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")

    inf = sub.add_parser("info", help="print the FER contract stored in an ONNX file")
    inf.add_argument("onnx", type=Path)
    inf.add_argument("--json", action="store_true")

    ben = sub.add_parser(
        "bench",
        help="time ONNX files with ONNX Runtime: latency, throughput, compute (no torch)",
        description=(
            "Time FERSession.run (host array in, scores out) for every model x provider x "
            "batch size; the first model on the first provider is the baseline of 'vs base'. "
            "CPU rows also show the model's multiply-accumulate rate as a share of the best "
            "fp32 rate ONNX Runtime reaches on this CPU (its fp32 peak)."
        ),
    )
    ben.add_argument("onnx", type=Path, nargs="+", help="one or more exported .onnx files")
    ben.add_argument(
        "--providers", nargs="+", default=["auto"],
        help="auto (default), tensorrt, cuda, cpu or ORT provider names: each is benchmarked",
    )  # fmt: skip
    ben.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ben.add_argument("--warmup", type=int, default=3, help="untimed calls per batch size")
    ben.add_argument("--runs", type=int, default=20, help="timed calls per batch size (most)")
    ben.add_argument(
        "--max-seconds", type=float, default=10.0,
        help="stop timing a batch size after this long (at least one call)",
    )  # fmt: skip
    ben.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    ben.add_argument("--trt-fp16", action="store_true", help="let TensorRT use fp16 kernels")
    ben.add_argument(
        "--trt-batch", type=int, nargs=3, default=[1, 8, 32], metavar=("MIN", "OPT", "MAX"),
        help="TensorRT engine batch profile (default 1 8 32, fer-edge's); larger batches split",
    )  # fmt: skip
    ben.add_argument(
        "--trt-cache", type=Path, default=None,
        help="TensorRT engine + timing cache folder (default <model>.trt_cache, fer-edge's)",
    )  # fmt: skip
    ben.add_argument("--no-floor", action="store_true", help="skip measuring the CPU fp32 peak")
    ben.add_argument("--json", type=Path, default=None, help="also write the rows here")
    triton.add_parser(sub)
    return parser


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory, expected a file")
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")


def _variant(path: Path, tag: str) -> Path:
    """``model.onnx`` -> ``model.<tag>.onnx`` next to it."""
    return path.with_name(f"{path.stem}.{tag}{path.suffix or '.onnx'}")


def _quiet_exporter() -> None:
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


def _printer(args: argparse.Namespace) -> ProgressPrinter | None:
    """The progress printer on stderr, or None with ``--no-progress``; a failed phase's line
    says only that it failed: the error follows in its own line."""
    return None if args.no_progress else ProgressPrinter(sys.stderr, details=False)


def _gather(
    batches: Iterable[Any], printer: ProgressPrinter | None, phase: str, total: int
) -> list[Any]:
    """``batches`` as a list, made under a counted progress ``phase`` of the task
    ``images``."""
    reporter = Reporter(printer, "images")
    out: list[Any] = []
    with reporter.phase(phase, total=total, unit="batches"):
        for batch in batches:
            out.append(batch)
            reporter.advance()
    return out


def _with_progress(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, ProgressPrinter | None], int],
) -> int:
    """Returns ``run(args, printer)``, closing the progress printer (if any) afterwards."""
    printer = _printer(args)
    try:
        return run(args, printer)
    finally:
        if printer is not None:
            printer.close()


def _cmd_export(args: argparse.Namespace) -> int:
    return _with_progress(args, _export)


def _export(args: argparse.Namespace, printer: ProgressPrinter | None) -> int:
    _require_file(args.checkpoint, "checkpoint")
    if args.output.is_dir():
        raise UsageError(f"-o {args.output} is a folder; give the .onnx file to write")
    variants = args.fp16 or args.int8
    if variants and args.calib != "synthetic" and not Path(args.calib).is_dir():
        raise UsageError(f"calibration folder not found: {args.calib}")
    if args.check is not None and not args.check.is_dir():
        raise UsageError(f"check folder not found: {args.check}")
    if args.calib_count <= 0:
        raise UsageError(f"--calib-count must be positive, got {args.calib_count}")
    _quiet_exporter()
    import time

    loading = Reporter(printer, "export")
    with loading.phase("loading"):  # importing torch takes seconds too
        from fer_export.export import (
            VerificationError,
            export_onnx,
            load_checkpoint,
            read_contract,
        )

        try:
            model, info = load_checkpoint(args.checkpoint)
        except ValueError as exc:
            raise UsageError(str(exc).splitlines()[0]) from exc
    attention = args.attention
    if attention == "auto":
        trained = str(getattr(info, "attention", "template"))
        attention = "input" if trained == "landmarks" else "baked"
    if not getattr(model, "use_attention", False):
        if attention == "input" and args.attention == "input":
            raise UsageError(f"{args.checkpoint} holds a model without attention: no 'input'")
        attention = "none"
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, or no permission
        raise UsageError(f"cannot create the folder of -o {args.output}: {exc}") from exc
    start = time.perf_counter()
    try:
        out = export_onnx(
            model, args.output, info=info, attention=attention, opset=args.opset,
            verify=not args.no_verify, progress=printer,
        )  # fmt: skip
    except VerificationError as exc:
        print(f"fer-export: verification failed, nothing written: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(f"wrote {out} ({_size(out)}, {time.perf_counter() - start:.1f} s)", flush=True)
    if not (args.fp16 or args.int8):
        return 0
    from fer_export.quantize import agreement, to_fp16, to_int8

    contract = read_contract(out)
    calib, check = _variant_images(args, contract, printer)
    if args.fp16:
        half = to_fp16(out, _variant(out, "fp16"), progress=printer)
        task = None if printer is None else printer.for_task("fp16", "checking agreement")
        _report(half, agreement(out, half, check, progress=task))
    if args.int8:
        q = to_int8(out, _variant(out, "int8"), calib, progress=printer)
        task = None if printer is None else printer.for_task("int8", "checking agreement")
        _report(q, agreement(out, q, check, progress=task))
    return 0


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "-"


def _variant_images(
    args: argparse.Namespace, contract: Any, printer: ProgressPrinter | None
) -> tuple[list[Any], list[Any]]:
    """The int8 calibration batches and the agreement-check batches, from disjoint images;
    prints which images went where (progress on ``printer``)."""
    from fer_export.quantize import (
        CALIBRATION_SEED,
        CHECK_SEED,
        FER_TRAIN_SEEDS,
        face_batches,
        read_faces,
        split_image_dir,
        synthetic_batches,
    )

    count, size = args.calib_count, contract.input_size
    batches = -(-count // 32)
    reading = Reporter(printer, "images")
    calib: list[Any] = []
    if args.calib == "synthetic":
        if args.int8:
            calib = _gather(
                synthetic_batches(contract, count, 32, seed=CALIBRATION_SEED),
                printer, "making calibration faces", batches,
            )  # fmt: skip
            print(
                f"int8 calibration: {count} synthetic faces (seed {CALIBRATION_SEED}; "
                f"fer-train's synthetic sets are seeds {FER_TRAIN_SEEDS[0]} (train) and "
                f"{FER_TRAIN_SEEDS[1]} (test))",
                flush=True,
            )
        digests: list[str] = []
    else:
        try:
            with reading.phase("reading calibration images"):
                if args.check is None:
                    calib_set, check_set = split_image_dir(args.calib, size, count, count)
                else:
                    calib_set = read_faces(args.calib, size, count)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        digests = calib_set.digests
        if args.int8:
            calib = list(face_batches(calib_set.faces, contract))
            how = "its calibration part, by image content" if args.check is None else "all"
            print(
                f"int8 calibration: {len(calib_set)} images from {args.calib} ({how}): "
                f"{_names(calib_set.names)}",
                flush=True,
            )
    if args.check is not None:
        try:
            with reading.phase("reading check images"):
                check_set = read_faces(args.check, size, count, exclude=digests, what="check")
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        where = f"{args.check} (images also in {args.calib} left out)"
    elif args.calib == "synthetic":
        check = _gather(
            synthetic_batches(contract, count, 32, seed=CHECK_SEED),
            printer, "making check faces", batches,
        )  # fmt: skip
        print(
            f"agreement check: {count} other synthetic faces (seed {CHECK_SEED}), none of them "
            "used for calibration",
            flush=True,
        )
        return calib, check
    else:
        where = f"{args.calib} (its check part, none of them used for calibration)"
    print(
        f"agreement check: {len(check_set)} images from {where}: {_names(check_set.names)}",
        flush=True,
    )
    return calib, list(face_batches(check_set.faces, contract))


def _report(path: Path, stats: dict[str, float]) -> None:
    print(
        f"wrote {path} ({_size(path)}, {stats['size_ratio']:.2f} x fp32): top-1 agreement "
        f"{stats['top1_agreement']:.2%} on {int(stats['count'])} faces, max |diff| "
        f"{stats['max_abs_diff']:.3g}",
        flush=True,
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    return _with_progress(args, _verify)


def _verify(args: argparse.Namespace, printer: ProgressPrinter | None) -> int:
    # A file without (valid) FER metadata fails here, before torch is imported; a model the
    # checkpoint cannot be compared with fails in verify_onnx with a ContractError.
    read_model(args.onnx)
    _require_file(args.checkpoint, "checkpoint")
    _quiet_exporter()
    with Reporter(printer, "verify").phase("loading"):
        from fer_export.export import VerificationError, load_checkpoint, verify_onnx

        try:
            model, _ = load_checkpoint(args.checkpoint)
        except ValueError as exc:
            raise UsageError(str(exc).splitlines()[0]) from exc
    try:
        report = verify_onnx(
            args.onnx, model, batch_sizes=args.batch_sizes, atol=args.atol, progress=printer
        )
    except VerificationError as exc:
        if exc.report is None:
            print(f"fer-export: {exc}", file=sys.stderr)
        else:
            print(json.dumps(exc.report.to_dict()) if args.json else exc.report.summary())
        return 1
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0


def _shape(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]


def contract_summary(path: Path) -> dict[str, Any]:
    """Everything ``fer-export info`` prints, as a JSON-able dict."""
    import onnx

    loaded = read_model(path)
    proto, contract = loaded.proto, loaded.contract

    def io(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
                "shape": _shape(v),
            }
            for v in values
        ]

    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        **contract.to_dict(),  # the one JSON form of the contract (GET /metadata's too)
        "model": contract.model_name,  # the name this command used before "model_name"
        "opset": {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import},
        "inputs": io(proto.graph.input),
        "outputs": io(proto.graph.output),
        # What the stored keys mean for a user, resolved (absent keys: their defaults).
        "au_map_source": contract.au_map_source,
        "calibrated": contract.calibrated,
        "temperature": contract.temperature,
        "score_transform": contract.score_transform,
        "abstain_threshold": contract.abstain_threshold,
        "synthetic": contract.is_synthetic,
        "provenance_line": contract.provenance_line(),
        "warnings": _warnings(contract),
    }


def _warnings(contract: Any) -> list[str]:
    """What a user must know before deploying the model, one sentence each."""
    from fer_export.contract import SYNTHETIC_NOTE

    out = []
    if contract.is_synthetic:
        out.append(SYNTHETIC_NOTE)
    if contract.au_map_source == "landmarks":
        out.append(
            "trained with landmark AU maps: FERSession needs a 68-point landmark finder "
            "(dlib with $CAPSNET_DLIB_LANDMARKS, or face_alignment), or au_source='template'"
        )
    return out


def _figure(value: Any, digits: int = 3) -> str:
    return "?" if value is None else f"{float(value):.{digits}f}"


def _trust_lines(info: dict[str, Any]) -> dict[str, str]:
    """``info``'s issue-18 keys as the text lines ``fer-export info`` prints."""
    lines: dict[str, str] = {}
    lines["dataset"] = info["dataset"] or "not recorded"
    source = info["au_map_source"]
    lines["au_source"] = source + ("" if info["au_source"] else " (not recorded: implied)")
    rule = info["au_rule"]
    lines["au_rule"] = f"{len(rule)} AU centres from 68 landmarks" if rule else "-"
    lines["provenance"] = info["provenance_line"]
    c = info["calibration"]
    if c:
        text = f"temperature {info['temperature']:.4g} on {info['score_transform']} scores"
        if "fitted_on" in c:
            text += f", fitted on {c['fitted_on']}"
            text += f" ({c['samples']} faces)" if "samples" in c else ""
        if "ece_before" in c or "ece_after" in c:
            before, after = _figure(c.get("ece_before")), _figure(c.get("ece_after"))
            text += f"; ECE {before} before, {after} after"
        lines["calibration"] = text
    else:
        lines["calibration"] = (
            "none: probabilities are the raw scores normalised (T = 1), not calibrated"
        )
    a = info["abstention"]
    if a:
        text = f"below {a['threshold']:.4g} the label is 'unknown'"
        text += f"; coverage target {_figure(a['coverage_target'], 2)}"
        if "val_coverage" in a:
            text += f", on {a.get('fitted_on', 'val')}: coverage {_figure(a['val_coverage'])}"
            if a.get("val_accuracy_covered") is not None:
                text += f", accuracy on answered faces {_figure(a['val_accuracy_covered'])}"
        lines["abstention"] = text
    else:
        lines["abstention"] = "none: every face gets its most probable label"
    return lines


#: Keys ``fer-export info`` prints in its own words (:func:`_trust_lines`), or not at all
#: (the resolved values those words already say).
_TRUST_KEYS = (
    "dataset", "au_source", "au_rule", "provenance", "calibration", "abstention",
)  # fmt: skip
_RESOLVED_KEYS = (
    "au_map_source", "calibrated", "temperature", "score_transform", "abstain_threshold",
    "synthetic", "provenance_line", "warnings",
)  # fmt: skip


def _cmd_info(args: argparse.Namespace) -> int:
    info = contract_summary(args.onnx)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    for warning in info["warnings"]:
        print(f"warning: {warning}")
    trust = _trust_lines(info)
    shown = {k: v for k, v in info.items() if k not in _TRUST_KEYS + _RESOLVED_KEYS}
    width = max(len(k) for k in [*shown, *trust])
    for key, value in shown.items():
        if key in ("inputs", "outputs"):
            text = ", ".join(f"{v['name']} {v['dtype']} {v['shape']}" for v in value)
        elif key == "size_bytes":
            text = f"{value} ({value / 1e6:.2f} MB)"
        elif isinstance(value, dict):
            text = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        else:
            text = str(value)
        print(f"{key:<{width}}  {text}")
    for key, text in trust.items():
        print(f"{key:<{width}}  {text}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import platform

    import onnxruntime as ort

    from fer_export._io import atomic_write_bytes
    from fer_export.bench import benchmark, format_row, fp32_peak, table_header
    from fer_export.runtime import ProviderUnavailableError

    for path in args.onnx:
        read_model(path)  # a bad file fails before any output
    if min(args.batches) < 1:
        raise UsageError(f"--batches must be >= 1, got {args.batches}")
    if args.runs < 1 or args.warmup < 0 or args.max_seconds <= 0:
        raise UsageError("--runs must be >= 1, --warmup >= 0 and --max-seconds > 0")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(f"folder for --json not found: {args.json.parent}")
    print(
        f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}), "
        f"{platform.machine()}, threads {args.threads or 'default'}"
    )
    peak = None
    if not args.no_floor and _may_use_cpu(args.providers):
        peak = fp32_peak(threads=args.threads)
        print(
            f"fp32 peak on this CPU: {peak / 1e9:.1f} GMAC/s (best of ONNX Runtime's MatMul "
            "and 3x3 Conv)"
        )
    width = max(24, *(len(p.name) for p in args.onnx))
    print(table_header(width), flush=True)

    def status(message: str) -> None:
        print(f"  ({message})", file=sys.stderr, flush=True)

    try:
        rows = benchmark(
            [str(p) for p in args.onnx],
            args.providers,
            args.batches,
            warmup=args.warmup,
            runs=args.runs,
            max_seconds=args.max_seconds,
            threads=args.threads,
            trt_fp16=args.trt_fp16,
            trt_batch=tuple(args.trt_batch),
            trt_cache_dir=args.trt_cache,
            peak=peak,
            on_result=lambda row: print(format_row(row, width), flush=True),
            on_status=status,
        )
    except (ProviderUnavailableError, ValueError) as exc:  # ModelLoadError is a ValueError
        raise UsageError(str(exc).splitlines()[0]) from exc
    print(f"baseline (vs base 1.00x): {args.onnx[0].name} on {rows[0].provider}")
    if args.json is not None:
        payload = {
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
            "threads": args.threads,
            "cpu_fp32_peak_gmac_s": None if peak is None else peak / 1e9,
            "rows": [row.to_dict() for row in rows],
        }
        atomic_write_bytes(args.json, (json.dumps(payload, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


def _may_use_cpu(providers: Sequence[str]) -> bool:
    """Whether any of the requested providers can end up on the CPU."""
    return any(p.lower() in ("auto", "cpu", "cpuexecutionprovider") for p in providers)


def _one_line(message: str) -> str:
    """``message`` with its lines joined (a file name or ORT text may hold newlines)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 verification failed, 2 bad
    input)."""
    args = _parser().parse_args(argv)
    handlers = {
        "export": _cmd_export,
        "verify": _cmd_verify,
        "info": _cmd_info,
        "bench": _cmd_bench,
        "triton": triton.command,
    }
    try:
        return handlers[args.command](args)
    except (UsageError, FileNotFoundError, ModelLoadError, ContractError) as exc:
        # One line: ONNX Runtime's messages can span several.
        print(f"fer-export: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(
            f"fer-export: error: {args.command} needs the export extra ({exc.name} missing): "
            'pip install "fer-export[export]"',
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
