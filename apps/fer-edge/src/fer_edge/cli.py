"""The ``fer-edge`` command: ``run`` (images, folders, videos, cameras) and ``serve`` (HTTP).

fer-edge run --model model.onnx --source photo.jpg
fer-edge run --model model.onnx --source faces/ --out results.jsonl --annotate annotated/ --batch 8
fer-edge run --model model.onnx --source clip.mp4 --annotate clip_annotated.mp4 --every 2
fer-edge run --model model.onnx --source 0 --providers tensorrt --trt-fp16     # camera 0
fer-edge serve --model model.onnx --host 0.0.0.0 --port 8000 --api-key-file /etc/fer-edge/key

Exit status: 0 done (undecodable images are counted, not fatal), 2 bad arguments, a model that
cannot be loaded (missing, corrupt, no FER metadata), an unavailable provider, a source that
cannot be opened, or (``serve``) a port out of range, busy or not allowed, or an unreadable API
key file -- with one ``fer-edge: error: ...`` line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from fer_edge import __version__

__all__ = ["build_parser", "main"]

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")


class UsageError(Exception):
    """A problem reported as one line with exit status 2."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported .onnx file (with fer.* metadata)")
    p.add_argument(
        "--providers",
        default="auto",
        choices=PROVIDER_CHOICES,
        help="execution provider: auto = TensorRT > CUDA > CPU, the first that works "
        "(default); an explicit one that cannot be used is an error",
    )
    p.add_argument(
        "--faces",
        default="detect",
        choices=("detect", "whole"),
        help="detect faces (see --detector) or treat the whole image as one face",
    )
    p.add_argument(
        "--detector",
        default="auto",
        choices=("auto", "haar", "mediapipe"),
        help="face detector for --faces detect: mediapipe = MediaPipe's BlazeFace (pip install "
        "mediapipe==0.10.18), haar = OpenCV's cascade (needs nothing), auto = mediapipe when "
        "installed, else haar (default); the one used is recorded in the output",
    )
    p.add_argument(
        "--mediapipe-model",
        default="short",
        choices=("short", "full"),
        help="BlazeFace model: short range (faces within ~2 m, default) or full range",
    )
    p.add_argument(
        "--abstain",
        default="model",
        metavar="T",
        help="answer 'unknown' when the top probability is below T: 'model' = the threshold "
        "stored in the model (chosen on its validation split; none if it has none, default), "
        "'off', or a number in [0, 1]",
    )
    p.add_argument(
        "--template-au-map",
        action="store_true",
        help="for a model trained with landmark AU maps: use the mean-face template map instead "
        "of each face's landmarks (knowingly; predictions may differ from the trained model's)",
    )
    p.add_argument("--trt-fp16", action="store_true", help="let TensorRT use fp16 kernels")
    p.add_argument(
        "--trt-cache",
        metavar="DIR",
        help="TensorRT engine/timing cache folder (default <model>.trt_cache)",
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        metavar="MP",
        help="largest image in millions of pixels, read from its header before decoding "
        "(default 40); a larger one is refused (run: an error line; serve: 413)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="ONNX Runtime CPU threads (default: ORT's choice)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``run`` and ``serve`` subcommands)."""
    parser = argparse.ArgumentParser(
        prog="fer-edge",
        description="Facial expression recognition with an exported ONNX model (no torch).",
    )
    parser.add_argument("--version", action="version", version=f"fer-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,serve}")

    run = sub.add_parser(
        "run",
        help="classify faces in an image, folder, video or camera",
        description="Classify the faces of an image, a folder of images, a "
        "video file or a camera; one JSON line per image/frame.",
    )
    _add_model_options(run)
    run.add_argument(
        "--source",
        required=True,
        metavar="PATH",
        help="image, folder of images, video file, or camera index (0, 1...)",
    )
    run.add_argument("--out", metavar="FILE", help="JSON lines file (default: stdout)")
    run.add_argument(
        "--annotate",
        metavar="OUT",
        help="annotated output: an image file (image), a folder (folder) or a "
        ".mp4/.avi video (video, camera)",
    )
    run.add_argument(
        "--batch",
        type=_positive,
        default=1,
        metavar="N",
        help="images/frames whose faces go to the model in one call (default 1)",
    )
    run.add_argument("--max-frames", type=_positive, metavar="N", help="stop after N images/frames")
    run.add_argument(
        "--every",
        type=_positive,
        default=1,
        metavar="N",
        help="process every N-th image/frame only (default 1)",
    )
    run.add_argument("--recursive", action="store_true", help="include subfolders")
    run.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress on stderr (stdout stays the JSON lines): auto = on for folders, videos "
        "and cameras when stderr is a terminal (default); on = also in logs, a line every 5 s",
    )
    run.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")

    serve = sub.add_parser(
        "serve",
        help="serve the model over HTTP",
        description="HTTP service: POST /predict, GET /health, /metadata, /metrics.",
    )
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port, 1..65535 (default 8000); 0 picks a free one and prints it",
    )
    serve.add_argument(
        "--max-body-mb",
        type=float,
        default=8.0,
        metavar="MB",
        help="largest request body in MiB (default 8; larger: 413)",
    )
    serve.add_argument(
        "--max-concurrency",
        type=_positive,
        default=4,
        metavar="N",
        help="predictions running at once (default 4)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="requests waiting for a worker before 503 (default 4 x concurrency)",
    )
    serve.add_argument(
        "--body-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds for a whole request body to arrive (default 30; slower: 408)",
    )
    serve.add_argument(
        "--request-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds from the received body to the answer, waiting for a worker included "
        "(default 30; longer: 504)",
    )
    serve.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require the API key in FILE (surrounding whitespace ignored) as X-API-Key or "
        "'Authorization: Bearer' on every endpoint but /health; default: the FER_EDGE_API_KEY "
        "environment variable if set, else no key",
    )
    serve.add_argument(
        "--no-docs",
        action="store_true",
        help="do not serve /docs, /redoc and /openapi.json",
    )
    serve.add_argument(
        "--no-demo",
        action="store_true",
        help="do not serve the demo page at / (upload a photo or use the webcam in a browser)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    return parser


def _max_pixels(args: argparse.Namespace) -> int:
    """``--max-megapixels`` as a pixel count, or :class:`UsageError`."""
    mp = args.max_megapixels
    pixels = int(mp * 1_000_000) if math.isfinite(mp) else 0
    if pixels < 1:
        raise UsageError(
            f"--max-megapixels must be a positive number (at least 0.000001), got {mp}"
        )
    return pixels


def _abstain(text: str) -> str | float | None:
    """``--abstain`` as FERSession takes it, or :class:`UsageError`."""
    if text in ("model", "off"):
        return None if text == "off" else "model"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--abstain must be 'model', 'off' or a number in [0, 1], got {text!r}")
    return value


def describe_model(session: Any) -> list[str]:
    """What the model is, for the start-up lines on stderr: what it was trained on and how it
    measured, which detector and threshold this run uses; a plain warning for a model trained
    on synthetic faces or one that does not say."""
    from fer_export.detectors import detector_name

    contract = session.contract
    threshold = session.abstain_threshold
    lines = [
        f"fer-edge: model {session.path.name}: {contract.provenance_line()}",
        f"fer-edge: detector {detector_name(session.detector)}; "
        + ("no abstention" if threshold is None else f"'unknown' below {threshold:.3g}")
        + f"; AU map {session.au_source}",
    ]
    if contract.is_synthetic:
        lines.append(
            "fer-edge: warning: this model was trained on synthetic faces: a pipeline check, "
            "not a real-face model; do not act on its answers"
        )
    elif not contract.dataset and not contract.provenance:
        lines.append(
            "fer-edge: warning: this model does not say what it was trained on "
            "(no fer.dataset / fer.provenance in its metadata)"
        )
    return lines


def _load_session(args: argparse.Namespace) -> Any:
    """The FERSession for ``args``, or :class:`UsageError` with a one-line reason."""
    from fer_export.contract import ContractError
    from fer_export.detectors import make_detector
    from fer_export.runtime import FERSession, ModelLoadError, ProviderUnavailableError

    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"model file not found: {model}")
    abstain = _abstain(args.abstain)
    try:
        detector = make_detector(args.detector, model=args.mediapipe_model)
    except (ValueError, ImportError, RuntimeError) as exc:
        raise UsageError(f"--detector {args.detector}: {exc}") from exc
    try:
        return FERSession(
            model,
            args.providers,
            trt_fp16=args.trt_fp16,
            trt_cache_dir=args.trt_cache,
            intra_op_threads=args.threads,
            detector=detector,
            abstain=abstain,
            au_source="template" if args.template_au_map else None,
        )
    except (FileNotFoundError, ModelLoadError, ContractError, ProviderUnavailableError) as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:
        raise UsageError(f"cannot load {model}: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    from fer_edge.pipeline import run_source
    from fer_edge.progress import Progress, expected_items
    from fer_edge.sources import SourceError, open_source

    max_pixels = _max_pixels(args)
    session = _load_session(args)
    try:
        source = open_source(args.source, recursive=args.recursive, max_pixels=max_pixels)
    except SourceError as exc:
        raise UsageError(str(exc)) from exc
    if args.annotate and source.kind == "folder" and Path(args.annotate).is_file():
        raise UsageError(f"--annotate for a folder source must be a folder: {args.annotate}")
    print("\n".join(describe_model(session)), file=sys.stderr, flush=True)
    with ExitStack() as stack:
        out: TextIO = sys.stdout
        if args.out:
            try:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(open(args.out, "w", encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot write {args.out}: {exc}") from exc
        progress = None
        wanted = args.progress == "on" or (
            args.progress == "auto" and source.kind != "image" and sys.stderr.isatty()
        )
        if wanted:
            progress = Progress(
                expected_items(source.total, args.every, args.max_frames),
                "frames" if source.kind in ("video", "camera") else "images",
            )
        try:
            summary = run_source(
                session,
                source,
                out,
                faces=args.faces,
                batch=args.batch,
                every=args.every,
                max_frames=args.max_frames,
                annotate=args.annotate,
                progress=progress,
            )
        except OSError as exc:
            raise UsageError(str(exc)) from exc
    print(summary.format(), file=sys.stderr)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return 0


def _api_key(args: argparse.Namespace) -> tuple[str | None, str]:
    """The API key to require and where it came from (``--api-key-file``, else the environment
    variable); ``(None, "")`` for none. A file given but unusable, or the variable set but
    empty, is a :class:`UsageError`: better than serving without the key by mistake."""
    from fer_edge.server import API_KEY_ENV

    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise UsageError(f"--api-key-file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --api-key-file {path}: {exc}") from exc
        if not key:
            raise UsageError(f"--api-key-file {path} is empty")
        return key, f"--api-key-file {path}"
    from_env = os.environ.get(API_KEY_ENV)
    if from_env is None:
        return None, ""
    if not from_env.strip():
        raise UsageError(f"{API_KEY_ENV} is set but empty: unset it to serve without a key")
    return from_env.strip(), API_KEY_ENV


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound (not yet listening) to ``host:port``; :class:`UsageError` for a port
    out of range, a host that does not resolve, or an address that is busy or not allowed."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 1..65535 (or 0 for a free port), got {port}")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host!r}: {exc.strerror}") from exc
    # "localhost" may resolve to ::1 first; clients mostly try 127.0.0.1, as uvicorn's own
    # binding (IPv4 unless the host has a colon) does.
    infos.sort(key=lambda info: info[0] != (socket.AF_INET6 if ":" in host else socket.AF_INET))
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Like uvicorn: a restart may rebind while old connections sit in TIME_WAIT; a port
        # another process listens on still fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fer_edge.server import create_app

    if args.max_body_mb <= 0:
        raise UsageError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    if args.max_queue is not None and args.max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {args.max_queue}")
    max_pixels = _max_pixels(args)
    api_key, key_source = _api_key(args)
    # Bound before the model loads (a TensorRT build can take minutes) so that a busy port fails
    # at once; listening only starts once the app is ready to answer.
    sock = _bind(args.host, args.port)
    with sock:
        session = _load_session(args)
        try:
            app = create_app(
                session,
                max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                max_concurrency=args.max_concurrency,
                max_queue=args.max_queue,
                faces=args.faces,
                body_timeout_s=args.body_timeout,
                request_timeout_s=args.request_timeout,
                api_key=api_key,
                docs=not args.no_docs,
                demo=not args.no_demo,
                max_pixels=int(max_pixels),
            )
        except ValueError as exc:  # an API key that cannot travel in a header
            where = f" ({key_source})" if key_source else ""
            raise UsageError(f"{exc}{where}") from exc
        try:
            sock.listen(2048)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host
        extras = [f"API key from {key_source}" if api_key else "no API key"]
        extras.append("no /docs" if args.no_docs else "docs at /docs")
        extras.append("no demo page" if args.no_demo else f"demo page at http://{host}:{port}/")
        print("\n".join(describe_model(session)), file=sys.stderr, flush=True)
        print(
            f"fer-edge: serving {session.path.name} ({session.contract.model_name or 'model'}, "
            f"provider {session.provider}) on http://{host}:{port} ({'; '.join(extras)})",
            file=sys.stderr,
            flush=True,
        )
        config = uvicorn.Config(app, log_level=args.log_level)
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fer-edge`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _serve(args)
    except UsageError as exc:
        print(f"fer-edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fer-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
