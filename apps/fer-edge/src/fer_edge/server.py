"""``fer-edge serve``: the HTTP service (FastAPI app, served by uvicorn).

Endpoints:

* ``POST /predict`` -- an image as a multipart upload (field ``file``) or as the raw body
  (``Content-Type: image/*``, ``application/octet-stream`` or none); query ``faces=detect|whole``.
  Answers ``{"width", "height", "faces": [Prediction.to_dict()...], "latency_ms", "model",
  "provider"}``.
* ``GET /health`` -- ``{"status": "ok", "provider", "model", ...}``.
* ``GET /metadata`` -- the model's preprocessing contract (labels, input size, precision...).
* ``GET /metrics`` -- Prometheus text (:mod:`fer_edge.metrics`).

Errors are JSON ``{"error": <short code>, "detail": <what was wrong>}``: 400 empty body, 413
body over ``max_body_bytes``, 415 unsupported ``Content-Type``, 422 undecodable image / missing
``file`` field / bad query, 503 queue full, 500 anything unexpected (the server keeps serving).

Concurrency: at most ``max_concurrency`` predictions run at once, each in a worker thread of a
pool of that size (ONNX Runtime and OpenCV release the GIL), so the event loop keeps answering
``/health`` and ``/metrics``. Up to ``max_queue`` further requests wait for a worker; beyond that
a request is refused at once with 503 and ``Retry-After: 1`` (a bounded queue keeps latency
bounded and lets a load balancer go elsewhere instead of piling up timeouts).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from fer_edge import __version__
from fer_edge.metrics import CONTENT_TYPE, Metrics
from fer_export.faces import FaceDetector, ImageDecodeError, decode_image
from fer_export.runtime import FERSession, Prediction

__all__ = ["ApiError", "ThreadLocalDetector", "create_app", "metadata_dict"]

Detector = Callable[[np.ndarray], Sequence[Sequence[int]]]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics")
_RAW_TYPES = ("image/", "application/octet-stream")


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


class ThreadLocalDetector:
    """One :class:`fer_export.faces.FaceDetector` per thread (OpenCV's cascade classifier keeps
    scratch state and is not safe to share between threads); same settings as FERSession's
    default detector, so results equal ``FERSession.predict``'s."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, rgb: np.ndarray) -> Sequence[Sequence[int]]:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = FaceDetector()
        return detector(rgb)


def metadata_dict(session: FERSession) -> dict[str, Any]:
    """What ``GET /metadata`` answers: the contract plus the file and provider."""
    c = session.contract
    return {
        "model_name": c.model_name,
        "model_version": c.model_version,
        "precision": c.precision,
        "labels": list(c.labels),
        "num_classes": c.num_classes,
        "input_size": c.input_size,
        "input_shape": ["N", 3, c.input_size, c.input_size],
        "layout": "NCHW",
        "channel_order": c.channel_order,
        "pixel_scale": c.pixel_scale,
        "mean": list(c.mean),
        "std": list(c.std),
        "attention": c.attention,
        "score_kind": c.score_kind,
        "face_margin": c.face_margin,
        "exporter": dict(c.exporter),
        "file": session.path.name,
        "provider": session.provider,
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


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 :class:`ApiError` once it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(
                413, "too_large", f"request body is {size} bytes; the limit is {limit} bytes"
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes from a multipart ``file`` field or a raw body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, limit)
    if content_type == "multipart/form-data":
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as exc:  # python-multipart / starlette parse errors
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
        upload = form.get("file")
        if upload is None:
            fields = ", ".join(sorted(form.keys())) or "none"
            raise ApiError(
                422, "missing_file", f"multipart body has no 'file' field (fields: {fields})"
            )
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_file", "the 'file' field is text, not an uploaded file")
        data = await upload.read()
        await form.close()
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


def create_app(
    session_or_path: FERSession | str | os.PathLike[str],
    *,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_concurrency: int = 4,
    max_queue: int | None = None,
    faces: Literal["detect", "whole"] = "detect",
    detector: Detector | None = None,
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
        detector: face detector for ``faces=detect`` (must be thread-safe); default
            :class:`ThreadLocalDetector`.
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
    if isinstance(session_or_path, FERSession):
        session = session_or_path
    else:
        session = FERSession(Path(session_or_path), providers, **session_kwargs)
    find_faces: Detector = detector if detector is not None else ThreadLocalDetector()
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
    state = {"admitted": 0}  # waiting + running predictions (event-loop thread only)
    slots: asyncio.Semaphore | None = None
    default_faces = faces

    def infer(data: bytes, mode: str) -> tuple[int, int, list[Prediction]]:
        rgb = decode_image(data)
        boxes: str | Sequence[Sequence[int]] = "whole" if mode == "whole" else find_faces(rgb)
        height, width = rgb.shape[:2]
        return width, height, session.predict(rgb, faces=boxes)

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
        data = await _image_bytes(request, max_body_bytes)
        if state["admitted"] >= max_concurrency + queue_limit:
            raise ApiError(
                503,
                "queue_full",
                f"{max_concurrency} predictions running and {queue_limit} waiting; retry later",
                headers={"Retry-After": "1"},
            )
        if slots is None:
            slots = asyncio.Semaphore(max_concurrency)
        state["admitted"] += 1
        try:
            async with slots:
                metrics.inference_started()
                try:
                    loop = asyncio.get_running_loop()
                    width, height, preds = await loop.run_in_executor(
                        executor, infer, data, faces or default_faces
                    )
                finally:
                    metrics.inference_finished()
        except ImageDecodeError as exc:
            raise ApiError(422, "bad_image", str(exc)) from exc
        finally:
            state["admitted"] -= 1
        seconds = time.perf_counter() - start
        metrics.observe_predict(seconds, len(preds))
        return {
            "width": width,
            "height": height,
            "faces": [p.to_dict() for p in preds],
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

    app.add_middleware(_Observe, metrics=metrics)
    return app
