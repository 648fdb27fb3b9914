"""``fer-edge serve``: the HTTP service (FastAPI app, served by uvicorn).

Endpoints:

* ``POST /predict`` -- an image as a multipart upload (field ``file``) or as the raw body
  (``Content-Type: image/*``, ``application/octet-stream`` or none); query ``faces=detect|whole``.
  Answers ``{"width", "height", "faces": [Prediction.to_dict()...], "latency_ms", "model",
  "provider"}``.
* ``GET /health`` -- ``{"status": "ok", "provider", "model", ...}``; never needs the API key.
* ``GET /metadata`` -- the model's preprocessing contract (labels, input size, precision...).
* ``GET /metrics`` -- Prometheus text (:mod:`fer_edge.metrics`).
* ``GET /`` -- the demo page (``fer_edge/static``: upload a photo or use the webcam, see each
  face's box, label and probabilities and the model's metadata); its files ship in the wheel and
  it loads nothing from elsewhere. ``demo=False``: 404.
* ``/docs``, ``/redoc``, ``/openapi.json`` -- the OpenAPI description (``docs=False``: 404).

Errors are JSON ``{"error": <short code>, "detail": <what was wrong>}``: 400 empty body /
malformed multipart / bad ``Content-Length``, 401 missing or wrong API key (with
``WWW-Authenticate``), 408 body not received within ``body_timeout_s``, 413 body over
``max_body_bytes`` or image over ``max_pixels``, 415 unsupported ``Content-Type``, 422
undecodable image / missing ``file`` field / bad query, 499 client gone before its body was read
(nobody receives it; it is what the request metrics count), 503 queue full, 504 no answer within
``request_timeout_s``, 500 anything unexpected (the server keeps serving). Every one of these is
counted in ``fer_edge_errors_total`` by its code; only the 500 logs a traceback. (Unknown paths
and methods get FastAPI's own 404/405 ``{"detail": ...}``, counted in the request metrics only.)

Uploads: the body is read once (within ``max_body_bytes`` and ``body_timeout_s``); a multipart
body is parsed from those bytes by python-multipart's parser (only the ``file`` part's bytes are
kept), and the image is decoded once, in the worker, from its header first (``max_pixels``).

Concurrency: at most ``max_concurrency`` predictions run at once, each in a worker thread of a
pool of that size (ONNX Runtime and OpenCV release the GIL), so the event loop keeps answering
``/health`` and ``/metrics``. Up to ``max_queue`` further requests wait for a worker; beyond that
a request is refused at once with 503 and ``Retry-After: 1`` (a bounded queue keeps latency
bounded and lets a load balancer go elsewhere instead of piling up timeouts). A request that
waits and runs longer than ``request_timeout_s`` gets 504, but its worker thread cannot be
stopped: it keeps its slot until it really ends, so timed-out work never piles up beyond
``max_concurrency`` threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from fer_edge import __version__
from fer_edge.metrics import CONTENT_TYPE, Metrics
from fer_export.detectors import detector_name
from fer_export.faces import (
    DEFAULT_MAX_PIXELS,
    Detector,
    ImageDecodeError,
    ImageTooLargeError,
    ThreadLocalDetector,
    decode_image,
)
from fer_export.runtime import FERSession, Prediction

try:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ModuleNotFoundError:  # pragma: no cover - python-multipart < 0.0.13 (import name multipart)
    from multipart.exceptions import FormParserError  # type: ignore[no-redef]
    from multipart.multipart import (  # type: ignore[no-redef]
        MultipartParser,
        parse_options_header,
    )

__all__ = [
    "API_KEY_ENV",
    "CLIENT_CLOSED",
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "ApiError",
    "ThreadLocalDetector",
    "create_app",
    "metadata_dict",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The demo page's files (in ``fer_edge/static``): path -> (file name, media type).
DEMO_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
#: The demo page may talk to this server only, and run no inline script (it draws what the
#: server answers with textContent and canvas calls; this keeps it that way).
DEMO_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics", *DEMO_FILES)
#: Paths answered without the API key: liveness probes cannot be given secrets everywhere, and
#: the demo page's files hold no data (the page asks for the key before it calls the API).
OPEN_PATHS = frozenset({"/health", *DEMO_FILES})
_RAW_TYPES = ("image/", "application/octet-stream")
#: Seconds allowed for a whole request body to arrive.
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Seconds allowed from a read body to the answer (waiting for a worker plus predicting).
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: Status recorded for a request whose client left before its body was read (nginx's "client
#: closed request"); the answer reaches nobody, but the request metrics must not call it a 500.
CLIENT_CLOSED = 499
#: Environment variable ``fer-edge serve`` reads the API key from.
API_KEY_ENV = "FER_EDGE_API_KEY"


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def metadata_dict(session: FERSession) -> dict[str, Any]:
    """What ``GET /metadata`` answers: the contract's JSON form
    (:meth:`fer_export.contract.ModelContract.to_dict`: data set, provenance, calibration,
    abstention...) plus the file name, provider, face detector, the abstention threshold in use
    (``abstain_threshold``, None: never "unknown"), the AU map in use (``au_map``), the one-line
    ``provenance_line`` and ``synthetic``, less
    ``extra`` (the exporter's model arguments and the checkpoint's training details, which may
    name paths on the training machine: not for clients)."""
    contract = session.contract.to_dict()
    contract.pop("extra", None)
    return {
        **contract,
        "file": session.path.name,
        "provider": session.provider,
        "detector": detector_name(session.detector),
        "abstain_threshold": session.abstain_threshold,
        "au_map": session.au_source,
        "provenance_line": session.contract.provenance_line(),
        "synthetic": session.contract.is_synthetic,
    }


class _Observe:
    """ASGI middleware: counts every HTTP request by endpoint, method and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.request_started()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.request_finished(endpoint, scope.get("method", ""), status)


def _check_api_key(key: str) -> bytes:
    """The SHA-256 digest of a valid API key; :class:`ValueError` (without the key) if the key
    could not travel in an HTTP header."""
    if not key:
        raise ValueError("the API key is empty")
    bad = [c for c in key if not "!" <= c <= "~"]
    if bad:
        raise ValueError(
            f"the API key ({len(key)} characters) has {len(bad)} character(s) that cannot be "
            "sent in an HTTP header: use printable ASCII without spaces"
        )
    return hashlib.sha256(key.encode("ascii")).digest()


def _presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request presents: ``X-API-Key``, else an ``Authorization: Bearer`` token."""
    bearer: bytes | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-api-key":
            return value.strip()
        if lowered == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = token.strip()
    return bearer


class _RequireKey:
    """ASGI middleware: HTTP requests outside :data:`OPEN_PATHS` need the API key, checked
    before the body is read (an unauthenticated upload costs no more than its headers)."""

    def __init__(self, app: ASGIApp, digest: bytes, metrics: Metrics) -> None:
        self.app = app
        self.digest = digest
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = _presented_key(scope.get("headers") or ())
        # Digests of equal length, compared in constant time: neither the key's content nor its
        # length leaks through the answer's timing.
        if given is not None and hmac.compare_digest(hashlib.sha256(given).digest(), self.digest):
            await self.app(scope, receive, send)
            return
        detail = (
            "this server needs an API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
            if given is None
            else "the API key is not valid"
        )
        self.metrics.error("unauthorized")
        response = _error_response(
            ApiError(401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="fer-edge"'})
        )
        await response(scope, receive, send)


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers
    )


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value}")


async def _read_body(request: Request, limit: int, timeout: float | None) -> bytes:
    """The request body; :class:`ApiError` 413 once it is known to exceed ``limit``, 408 if it
    has not fully arrived within ``timeout`` seconds, 499 if the client went away."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            size = -1
        if size < 0:
            raise ApiError(
                400, "bad_request", f"Content-Length must be a byte count, got {declared[:40]!r}"
            )
        if size > limit:
            raise ApiError(
                413, "too_large", f"request body is {size} bytes; the limit is {limit} bytes"
            )

    async def read() -> bytes:
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        # One deadline for the whole body, not per chunk: a client trickling a byte at a time
        # must not hold the connection (and memory) for long either.
        return await asyncio.wait_for(read(), timeout)
    # Python 3.10 (JetPack 6) still raises asyncio's own TimeoutError, not the builtin.
    except asyncio.TimeoutError:  # noqa: UP041
        raise ApiError(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout:g} s",
            # The rest of the body may still be on its way: this connection cannot be reused.
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ApiError(
            CLIENT_CLOSED,
            "client_disconnect",
            "the client closed the connection before sending the whole body",
        ) from None


#: Field names listed in a ``missing_file`` error (a body can hold thousands of parts).
_MAX_LISTED_FIELDS = 20


def _field_name(disposition: bytes, charset: str) -> str:
    """The ``name`` of a part's ``Content-Disposition``; 400 :class:`ApiError` without one."""
    _, options = parse_options_header(disposition)
    name = options.get(b"name")
    if name is None:
        raise ApiError(
            400,
            "bad_multipart",
            "malformed multipart body: a part has no Content-Disposition with a name",
        )
    try:
        return name.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return name.decode("latin-1")


def _multipart_file(body: bytes, content_type: str) -> bytes:
    """The bytes of the ``file`` part of a ``multipart/form-data`` body, parsed in one pass.

    Only that part's bytes are kept (other parts are skipped, not stored). The last part named
    ``file`` counts, as in a form. :class:`ApiError` 400 ``bad_multipart`` for a missing
    boundary, a part without a name or framing python-multipart rejects; 422 ``missing_file``
    when no complete part is named ``file`` or it is a text field (no ``filename``).
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "malformed multipart body: no boundary given")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    headers: dict[bytes, bytes] = {}
    header_name = bytearray()
    header_value = bytearray()
    current: list[bytes] = []
    names: set[str] = set()
    found: tuple[bool, list[bytes]] | None = None  # (is an upload, its data) of "file"
    part_name = ""
    keep = False

    def on_part_begin() -> None:
        nonlocal keep
        headers.clear()
        current.clear()
        keep = False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal part_name, keep
        part_name = _field_name(headers.get(b"content-disposition", b""), charset)
        keep = part_name == "file"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if keep:
            current.append(data[start:end])

    def on_part_end() -> None:
        nonlocal found
        if len(names) < _MAX_LISTED_FIELDS:
            names.add(part_name)
        if keep:
            _, options = parse_options_header(headers.get(b"content-disposition", b""))
            found = (b"filename" in options, list(current))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    if found is None:
        listed = ", ".join(sorted(names)) or "none"
        raise ApiError(
            422, "missing_file", f"multipart body has no 'file' field (fields: {listed})"
        )
    is_upload, chunks = found
    if not is_upload:
        raise ApiError(422, "missing_file", "the 'file' field is text, not an uploaded file")
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int, timeout: float | None) -> bytes:
    """The uploaded image's bytes from a multipart ``file`` field or a raw body (the body is
    read once; a multipart one is parsed from those bytes, without a second request)."""
    raw_type = request.headers.get("content-type", "")
    content_type = raw_type.split(";")[0].strip().lower()
    body = await _read_body(request, limit, timeout)
    if content_type == "multipart/form-data":
        data = _multipart_file(body, raw_type)
    elif content_type == "" or content_type.startswith(_RAW_TYPES):
        data = body
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type!r} is not accepted: send multipart/form-data with a "
            "'file' field, or the image itself as image/* or application/octet-stream",
        )
    if not data:
        raise ApiError(400, "empty_body", "no image data (0 bytes)")
    return data


def _demo_pages() -> dict[str, tuple[bytes, str]]:
    """The demo page's files, read once from the package: path -> (bytes, media type)."""
    folder = resources.files("fer_edge") / "static"
    return {
        route: ((folder / name).read_bytes(), media_type)
        for route, (name, media_type) in DEMO_FILES.items()
    }


def _static_endpoint(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve() -> Response:
        return Response(
            body,
            media_type=media_type,
            headers={
                "Content-Security-Policy": DEMO_CSP,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )

    return serve


def _give_up(task: asyncio.Future[Any], release: Callable[[], None]) -> None:
    """Cancel a pending semaphore acquisition; a permit it obtained anyway goes back."""
    task.add_done_callback(
        lambda t: release() if not t.cancelled() and t.exception() is None else None
    )
    task.cancel()


def create_app(
    session_or_path: FERSession | str | os.PathLike[str],
    *,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_concurrency: int = 4,
    max_queue: int | None = None,
    faces: Literal["detect", "whole"] = "detect",
    detector: Detector | None = None,
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    api_key: str | None = None,
    docs: bool = True,
    demo: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    providers: str | Sequence[str] = "auto",
    **session_kwargs: Any,
) -> FastAPI:
    """The FastAPI application serving one model (see the module docstring for the API).

    Args:
        session_or_path: a loaded :class:`FERSession`, or the ``.onnx`` path to load (with
            ``providers`` and ``session_kwargs`` such as ``trt_fp16=True``).
        max_body_bytes: largest accepted request body (413 above).
        max_concurrency: predictions running at once (worker threads).
        max_queue: requests allowed to wait for a worker (default ``4 * max_concurrency``);
            more get 503.
        faces: default for the ``faces`` query parameter.
        detector: face detector for ``faces=detect`` (must be thread-safe); default: the
            session's (:attr:`FERSession.detector`, a thread-safe
            :class:`fer_export.faces.ThreadLocalDetector` unless the session was given another).
        body_timeout_s: seconds for a request body to arrive in full (408 after); ``None``: no
            limit.
        request_timeout_s: seconds from the read body to the answer, waiting for a worker
            included (504 after; the worker keeps its slot until its prediction ends);
            ``None``: no limit.
        api_key: if given, every request but ``GET /health`` must send it as ``X-API-Key`` or
            ``Authorization: Bearer`` (401 otherwise). Printable ASCII, no spaces.
        docs: serve ``/docs``, ``/redoc`` and ``/openapi.json``.
        demo: serve the demo page at ``/`` (and its ``/static/`` files).
        max_pixels: largest image (width x height) decoded; a larger one is refused with 413
            from its header alone, before any decoding (decompression bombs: a few hundred KB
            of PNG can claim gigabytes of pixels). ``None``: no limit.

    Raises :class:`ValueError` for a limit out of range or an unusable API key, and
    :class:`TypeError` for ``session_kwargs`` given with an already loaded session.
    """
    if max_body_bytes < 1 or max_concurrency < 1:
        raise ValueError(
            f"max_body_bytes and max_concurrency must be >= 1, got {max_body_bytes}, "
            f"{max_concurrency}"
        )
    if faces not in ("detect", "whole"):
        raise ValueError(f"faces must be 'detect' or 'whole', got {faces!r}")
    queue_limit = 4 * max_concurrency if max_queue is None else max_queue
    if queue_limit < 0:
        raise ValueError(f"max_queue must be >= 0, got {max_queue}")
    _check_timeout("body_timeout_s", body_timeout_s)
    _check_timeout("request_timeout_s", request_timeout_s)
    if max_pixels is not None and (isinstance(max_pixels, bool) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    key_digest = None if api_key is None else _check_api_key(api_key)
    if isinstance(session_or_path, FERSession):
        if session_kwargs:
            # They only apply to loading a model; silently dropping them would hide a typo.
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(sorted(session_kwargs))} for an "
                "already loaded FERSession"
            )
        session = session_or_path
    else:
        session = FERSession(Path(session_or_path), providers, **session_kwargs)
    find_faces: Detector = detector if detector is not None else session.detector
    contract = session.contract
    metrics = Metrics(
        {
            "model": contract.model_name,
            "version": contract.model_version,
            "precision": contract.precision,
            "provider": session.provider,
            "file": session.path.name,
            "fer_edge_version": __version__,
        }
    )
    executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="fer-infer")
    # Waiting + running predictions, timed-out ones still running included (event-loop thread
    # only).
    state = {"admitted": 0}
    slots: asyncio.Semaphore | None = None
    default_faces = faces

    def infer(data: bytes, mode: str) -> tuple[int, int, list[Prediction]]:
        # The one decode of this request (the pixel limit is checked from the header first);
        # the pipeline takes the array as it is.
        rgb = decode_image(data, max_pixels=max_pixels)
        height, width = rgb.shape[:2]
        (preds,) = session.predict_decoded([rgb], mode, detector=find_faces)
        return width, height, preds

    async def run_prediction(
        sem: asyncio.Semaphore, data: bytes, mode: str
    ) -> tuple[int, int, list[Prediction]]:
        """``infer`` in a worker within ``request_timeout_s``; 504 :class:`ApiError` after."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        state["admitted"] += 1
        acquire = asyncio.ensure_future(sem.acquire())
        try:
            done, _ = await asyncio.wait({acquire}, timeout=request_timeout_s)
        except BaseException:  # cancelled while waiting (server shutting down)
            state["admitted"] -= 1
            _give_up(acquire, sem.release)
            raise
        if not done:
            state["admitted"] -= 1
            _give_up(acquire, sem.release)
            raise ApiError(
                504,
                "timeout",
                f"no worker became free within {request_timeout_s:g} s "
                f"({max_concurrency} predictions running)",
            )
        abandoned = False

        def finished(future: asyncio.Future[Any]) -> None:
            # Runs when the worker thread really ends, answered or not: only then is its slot
            # free again.
            metrics.inference_finished(abandoned=abandoned)
            sem.release()
            state["admitted"] -= 1
            if abandoned and not future.cancelled():
                future.exception()  # nobody awaits it any more: do not log it as unretrieved

        metrics.inference_started()
        try:
            future = loop.run_in_executor(executor, infer, data, mode)
        except BaseException:  # the executor is shut down: the server is stopping
            metrics.inference_finished()
            sem.release()
            state["admitted"] -= 1
            raise
        future.add_done_callback(finished)
        remaining = None
        if request_timeout_s is not None:
            remaining = max(0.0, request_timeout_s - (loop.time() - started))
        try:
            answered, _ = await asyncio.wait({future}, timeout=remaining)
        except BaseException:  # cancelled (server shutting down): the thread runs on regardless
            abandoned = True
            metrics.inference_abandoned()
            raise
        if not answered:
            abandoned = True
            metrics.inference_abandoned()
            raise ApiError(
                504, "timeout", f"the prediction did not finish within {request_timeout_s:g} s"
            )
        return future.result()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="fer-edge",
        version=__version__,
        description="Facial expression recognition with an exported ONNX model.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.session = session
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        metrics.error(exc.code)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        metrics.error("invalid_request")
        return _error_response(ApiError(422, "invalid_request", problems))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        metrics.error("internal")
        return _error_response(ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))

    @app.post("/predict")
    async def predict(
        request: Request,
        faces: Literal["detect", "whole"] | None = Query(default=None),
    ) -> dict[str, Any]:
        """Classify the faces of one uploaded image."""
        nonlocal slots
        start = time.perf_counter()
        data = await _image_bytes(request, max_body_bytes, body_timeout_s)
        if state["admitted"] >= max_concurrency + queue_limit:
            raise ApiError(
                503,
                "queue_full",
                f"{max_concurrency} predictions running and {queue_limit} waiting; retry later",
                headers={"Retry-After": "1"},
            )
        if slots is None:
            slots = asyncio.Semaphore(max_concurrency)
        try:
            width, height, preds = await run_prediction(slots, data, faces or default_faces)
        except ImageTooLargeError as exc:
            raise ApiError(
                413,
                "image_too_large",
                f"the image is {exc.width}x{exc.height} = {exc.pixels} pixels; the limit is "
                f"{exc.limit} pixels",
            ) from exc
        except ImageDecodeError as exc:
            raise ApiError(422, "bad_image", str(exc)) from exc
        seconds = time.perf_counter() - start
        metrics.observe_predict(seconds, len(preds))
        return {
            "width": width,
            "height": height,
            "faces": [p.to_dict() for p in preds],
            "detector": detector_name(find_faces) if (faces or default_faces) == "detect" else None,
            "latency_ms": round(seconds * 1000.0, 3),
            "model": contract.model_name,
            "provider": session.provider,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness/readiness: the model is loaded and the provider known."""
        return {
            "status": "ok",
            "provider": session.provider,
            "model": contract.model_name,
            "model_version": contract.model_version,
            "precision": contract.precision,
            "file": session.path.name,
        }

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """The model's preprocessing contract."""
        return metadata_dict(session)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if demo:
        pages = _demo_pages()
        for route, (body, media_type) in pages.items():
            app.add_api_route(
                route,
                _static_endpoint(body, media_type),
                methods=["GET"],
                include_in_schema=False,
            )

    if key_digest is not None:
        app.add_middleware(_RequireKey, digest=key_digest, metrics=metrics)
    # Added last, so outermost: it also counts the 401s of the key check.
    app.add_middleware(_Observe, metrics=metrics)
    return app
