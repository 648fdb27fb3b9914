"""``fer-edge serve``: a real uvicorn server on a free loopback port, concurrent clients,
malformed uploads, limits, /metrics, /metadata and /health."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from edge_asgi import Answer, call, running
from edge_helpers import LABELS, encode, scene, serving

from fer_edge.server import CLIENT_CLOSED, create_app
from fer_images.testing import png_bomb

MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def server(model_path: Path, session) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app on a real uvicorn server in a background thread; yields its base URL."""
    app = create_app(session, max_body_bytes=MAX_BODY, max_concurrency=3, max_queue=64)
    with serving(app) as url:
        yield url


def healthy(url: str) -> bool:
    r = httpx.get(f"{url}/health", timeout=10)
    return r.status_code == 200 and r.json()["status"] == "ok"


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a Prometheus text exposition (strict enough to catch format mistakes)."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    typed: set[str] = set()
    sample_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            typed.add(name)
            continue
        if line.startswith("#") or not line:
            continue
        m = sample_re.match(line)
        assert m, f"bad sample line {line!r}"
        name, _, body, value = m.groups()
        labels = frozenset(label_re.findall(body or ""))
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"{name} has no TYPE line"
        samples[(name, labels)] = float(value)
    return samples


def test_concurrent_predictions_match_session(server: str, session) -> None:  # type: ignore[no-untyped-def]
    images = [encode(scene(1 + i % 2, 8 * i), ".png" if i % 2 else ".jpg") for i in range(8)]
    expected = [[p.to_dict() for p in session.predict(data)] for data in images]
    assert all(expected)

    def call(i: int) -> tuple[int, dict]:
        data = images[i % len(images)]
        with httpx.Client(timeout=30) as client:
            if i % 2:
                r = client.post(f"{server}/predict", files={"file": ("x.png", data, "image/png")})
            else:
                r = client.post(
                    f"{server}/predict", content=data, headers={"content-type": "image/jpeg"}
                )
        return i, r.status_code, r.json()  # type: ignore[return-value]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(32)))
    for i, status, body in results:  # type: ignore[misc]
        assert status == 200, body
        assert body["faces"] == expected[i % len(images)]
        assert body["provider"] == "cpu" and body["model"] == "edge-tiny"
        assert body["latency_ms"] > 0


def test_faces_whole_query(server: str, session) -> None:  # type: ignore[no-untyped-def]
    data = encode(np.full((30, 50, 3), 77, np.uint8))
    r = httpx.post(f"{server}/predict?faces=whole", content=data, timeout=30)
    assert r.status_code == 200
    (face,) = r.json()["faces"]
    assert face == session.predict(data, faces="whole")[0].to_dict()
    assert face["box"] == [0, 0, 50, 30]


def test_malformed_requests_get_4xx(server: str) -> None:
    good = encode(scene(1), ".jpg")
    png = encode(scene(1), ".png")
    rng = np.random.default_rng(3)
    cases: list[tuple[str, dict, int, str]] = [
        (
            "empty body",
            {"content": b"", "headers": {"content-type": "image/png"}},
            400,
            "empty_body",
        ),
        ("random bytes", {"content": rng.bytes(5000)}, 422, "bad_image"),
        (
            "truncated png",
            {"content": png[: len(png) // 2], "headers": {"content-type": "image/png"}},
            422,
            "bad_image",
        ),
        (
            "truncated jpeg upload",
            {"files": {"file": ("t.jpg", good[:200], "image/jpeg")}},
            422,
            "bad_image",
        ),
        (
            "text upload",
            {"files": {"file": ("a.txt", b"hello world\n", "text/plain")}},
            422,
            "bad_image",
        ),
        (
            "text body",
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("json body", {"json": {"image": "x"}}, 415, "unsupported_media_type"),
        ("missing field", {"files": {"other": ("x.png", png, "image/png")}}, 422, "missing_file"),
        (
            "text field",
            {"data": {"file": "not a file"}, "files": {"x": ("x", b"1")}},
            422,
            "missing_file",
        ),
        ("empty upload", {"files": {"file": ("e.png", b"", "image/png")}}, 400, "empty_body"),
        (
            "oversize",
            {"content": b"\x89PNG" + bytes(MAX_BODY), "headers": {"content-type": "image/png"}},
            413,
            "too_large",
        ),
        ("bad faces query", {"content": png, "params": {"faces": "nose"}}, 422, "invalid_request"),
    ]
    for what, kwargs, status, code in cases:
        r = httpx.post(f"{server}/predict", timeout=30, **kwargs)
        assert r.status_code == status, (what, r.status_code, r.text)
        body = r.json()
        assert body["error"] == code and body["detail"], (what, body)
        assert healthy(server), what
    chunks = iter([b"\x89PNG", bytes(MAX_BODY)])  # no Content-Length: chunked upload
    r = httpx.post(f"{server}/predict", content=chunks, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert healthy(server)


def test_health_and_metadata(server: str, session) -> None:  # type: ignore[no-untyped-def]
    health = httpx.get(f"{server}/health", timeout=10).json()
    assert health == {
        "status": "ok",
        "provider": "cpu",
        "model": "edge-tiny",
        "model_version": "0.0.1",
        "precision": "fp32",
        "file": "edge_tiny.onnx",
    }
    meta = httpx.get(f"{server}/metadata", timeout=10).json()
    assert meta["labels"] == list(LABELS) and meta["num_classes"] == 5
    assert meta["input_size"] == 24 and meta["input_shape"] == ["N", 3, 24, 24]
    assert meta["precision"] == "fp32" and meta["model_name"] == "edge-tiny"
    assert meta["mean"] == [0.45] * 3 and meta["std"] == [0.25] * 3
    assert meta["score_kind"] == "logit" and meta["channel_order"] == "RGB"
    # The contract's one JSON form (fer-export info --json answers it too), file and provider.
    public = {k: v for k, v in session.contract.to_dict().items() if k != "extra"}
    assert meta == {
        **public,
        "file": "edge_tiny.onnx",
        "provider": "cpu",
        "detector": "haar",
        "abstain_threshold": None,
        "au_map": "template",
        "provenance_line": session.contract.provenance_line(),
        "synthetic": False,
    }
    assert "provenance unknown" in meta["provenance_line"]
    assert "extra" not in meta  # may name paths on the training machine
    documented = {"labels", "num_classes", "input_size", "input_shape", "layout"}
    documented |= {"channel_order", "pixel_scale", "mean", "std", "attention", "score_kind"}
    documented |= {"face_margin", "precision", "model_name", "model_version", "exporter"}
    assert documented <= set(meta)


def test_metrics_count_requests(server: str) -> None:
    def scrape() -> dict:
        r = httpx.get(f"{server}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return parse_prometheus(r.text)

    def value(samples: dict, name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    before = scrape()
    png = encode(scene(2), ".png")
    for _ in range(3):
        assert httpx.post(f"{server}/predict", content=png, timeout=30).status_code == 200
    assert httpx.post(f"{server}/predict", content=b"junk", timeout=30).status_code == 422
    assert httpx.get(f"{server}/nowhere", timeout=10).status_code == 404
    after = scrape()

    ok = {"endpoint": "/predict", "method": "POST", "code": "200"}
    assert (
        value(after, "fer_edge_requests_total", **ok)
        - value(before, "fer_edge_requests_total", **ok)
        == 3
    )
    bad = {"endpoint": "/predict", "method": "POST", "code": "422"}
    assert (
        value(after, "fer_edge_requests_total", **bad)
        - value(before, "fer_edge_requests_total", **bad)
        == 1
    )
    assert value(after, "fer_edge_requests_total", endpoint="other", method="GET", code="404") >= 1
    assert (
        value(after, "fer_edge_requests_total", endpoint="/metrics", method="GET", code="200") >= 1
    )
    count = "fer_edge_predict_latency_seconds_count"
    assert value(after, count) - value(before, count) == 3
    assert value(after, "fer_edge_predict_latency_seconds_bucket", le="+Inf") == value(after, count)
    assert value(after, "fer_edge_predict_latency_seconds_sum") > 0
    faces = "fer_edge_faces_detected_total"
    assert value(after, faces) - value(before, faces) == 6
    errors = "fer_edge_errors_total"
    assert value(after, errors, reason="bad_image") - value(before, errors, reason="bad_image") == 1
    assert value(after, "fer_edge_requests_in_flight") == 1  # the scrape itself
    assert value(after, "fer_edge_inferences_running") == 0
    info = [k for k in after if k[0] == "fer_edge_model_info"]
    assert (
        len(info) == 1
        and ("model", "edge-tiny") in info[0][1]
        and ("provider", "cpu") in info[0][1]
    )
    buckets = sorted(
        (float(dict(k[1])["le"]), v) for k, v in after.items() if k[0].endswith("_bucket")
    )
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))


def test_queue_full_gives_503(model_path: Path, session) -> None:  # type: ignore[no-untyped-def]
    """With 1 worker and no queue, requests beyond the running one are refused with 503."""
    from fastapi.testclient import TestClient

    gate = threading.Event()

    def slow_detector(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        gate.wait(10)
        return []

    app = create_app(session, max_concurrency=1, max_queue=0, detector=slow_detector)
    png = encode(scene(1))
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        first = pool.submit(client.post, "/predict", content=png)
        time.sleep(0.3)
        refused = client.post("/predict", content=png)
        gate.set()
        assert first.result().status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"] == "queue_full" and refused.headers["retry-after"] == "1"


def test_create_app_from_path(model_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = create_app(model_path, providers="cpu", max_concurrency=1)
    with TestClient(app) as client:
        assert client.get("/health").json()["provider"] == "cpu"
    with pytest.raises(ValueError, match="max_concurrency"):
        create_app(model_path, max_concurrency=0)
    assert os.path.exists(model_path)


# --- hostile and broken clients -------------------------------------------------------------


def metric(app, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """One sample of the app's /metrics (0 when absent), read without HTTP."""
    samples = parse_prometheus(app.state.metrics.render())
    return samples.get((name, frozenset(labels.items())), 0.0)


class LogRecords(logging.Handler):
    """Collects the records of the loggers it is attached to (uvicorn's do not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self) -> list[str]:
        return [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            for r in self.records
            if r.exc_info or r.levelno >= logging.ERROR
        ]


@pytest.fixture
def server_logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "fastapi", "")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def test_client_disconnect_mid_body_is_not_an_internal_error(
    session, server_logs: LogRecords
) -> None:  # type: ignore[no-untyped-def]
    app = create_app(session, max_concurrency=1)
    png = encode(scene(1))
    sent = []

    async def receive() -> dict:
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": png[:100], "more_body": True}
        return {"type": "http.disconnect"}

    async def go() -> Answer:
        async with running(app):
            return await call(app, headers=[(b"content-type", b"image/png")], receive=receive)

    answer = asyncio.run(go())
    assert answer.status == CLIENT_CLOSED == 499
    assert answer.json()["error"] == "client_disconnect"
    assert metric(app, "fer_edge_errors_total", reason="client_disconnect") == 1
    assert metric(app, "fer_edge_errors_total", reason="internal") == 0
    predict = {"endpoint": "/predict", "method": "POST"}
    assert metric(app, "fer_edge_requests_total", code="499", **predict) == 1
    assert metric(app, "fer_edge_requests_total", code="500", **predict) == 0
    assert server_logs.problems() == []


def test_client_disconnect_on_a_real_server_logs_no_traceback(
    session, server_logs: LogRecords
) -> None:  # type: ignore[no-untyped-def]
    app = create_app(session, max_concurrency=1)
    with serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 100000\r\n\r\n" + bytes(1000)
            )
        deadline = time.monotonic() + 20  # a wait for the server, not a timed assertion
        while metric(app, "fer_edge_errors_total", reason="client_disconnect") < 1:
            assert time.monotonic() < deadline, app.state.metrics.render()
            time.sleep(0.02)
        assert healthy(url)
    assert metric(app, "fer_edge_errors_total", reason="internal") == 0
    assert metric(app, "fer_edge_requests_total", endpoint="/predict", method="POST", code="499")
    assert server_logs.problems() == []


def test_stalled_body_gets_408(session) -> None:  # type: ignore[no-untyped-def]
    app = create_app(session, max_concurrency=1, body_timeout_s=0.05)
    sent = []

    async def receive() -> dict:
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b"\x89PNG", "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    async def go() -> Answer:
        async with running(app):
            request = call(app, headers=[(b"content-type", b"image/png")], receive=receive)
            # A guard against hanging forever if the limit does not work, not a timing check.
            return await asyncio.wait_for(request, 60)

    answer = asyncio.run(go())
    assert answer.status == 408
    body = answer.json()
    assert body["error"] == "body_timeout" and "0.05 s" in body["detail"]
    assert answer.headers["connection"] == "close"
    assert metric(app, "fer_edge_errors_total", reason="body_timeout") == 1
    with pytest.raises(ValueError, match="body_timeout_s"):
        create_app(session, body_timeout_s=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        create_app(session, request_timeout_s=float("nan"))


def test_slow_prediction_gets_504_and_keeps_its_slot(session) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    gate = threading.Event()
    calls: list[int] = []

    def stuck_detector(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        calls.append(1)
        gate.wait(30)
        return []

    app = create_app(
        session, max_concurrency=1, max_queue=4, detector=stuck_detector, request_timeout_s=0.2
    )
    png = encode(scene(1))
    try:
        with TestClient(app) as client:
            first = client.post("/predict", content=png)
            assert first.status_code == 504, first.text
            assert first.json()["error"] == "timeout"
            assert "did not finish" in first.json()["detail"]
            # The timed-out prediction still runs: it holds the only slot, so the next request
            # waits for it and times out without starting a second one.
            assert metric(app, "fer_edge_inferences_running") == 1
            assert metric(app, "fer_edge_inferences_abandoned") == 1
            second = client.post("/predict", content=png)
            assert second.status_code == 504 and "no worker" in second.json()["detail"]
            assert len(calls) == 1
            gate.set()
            deadline = time.monotonic() + 20  # a wait for the thread, not a timed assertion
            while metric(app, "fer_edge_inferences_running"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert metric(app, "fer_edge_inferences_abandoned") == 0
            third = client.post("/predict", content=png)
            assert third.status_code == 200, third.text
            assert len(calls) == 2
    finally:
        gate.set()
    assert metric(app, "fer_edge_errors_total", reason="timeout") == 2


def test_invalid_query_is_counted(session) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    app = create_app(session, max_concurrency=1)
    with TestClient(app) as client:
        r = client.post("/predict?faces=bogus", content=encode(scene(1)))
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert metric(app, "fer_edge_errors_total", reason="invalid_request") == 1


def test_api_key(session, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import hmac

    from fastapi.testclient import TestClient

    compared: list[int] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(1)
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = "k3y-With.Punct~9"
    app = create_app(session, max_concurrency=1, api_key=key)
    png = encode(scene(1))
    guarded = ["/metadata", "/metrics", "/docs", "/redoc", "/openapi.json"]
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200  # liveness probes need no key
        refused = 0
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {key}"}):
            for path in guarded:
                r = client.get(path, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert r.json()["error"] == "unauthorized" and key not in r.text
                refused += 1
            r = client.post("/predict", content=png, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            refused += 1
        for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
            for path in guarded:
                assert client.get(path, headers=headers).status_code == 200, (path, headers)
            r = client.post("/predict", content=png, headers=headers)
            assert r.status_code == 200 and len(r.json()["faces"]) == 1
        assert compared, "the key must be compared with hmac.compare_digest"
    assert metric(app, "fer_edge_errors_total", reason="unauthorized") == refused
    assert (
        metric(app, "fer_edge_requests_total", endpoint="/predict", method="POST", code="401") == 3
    )
    for bad in ("", "two words", "tab\there", "caf\u00e9"):
        with pytest.raises(ValueError, match="API key") as info:
            create_app(session, api_key=bad)
        assert not bad or bad not in str(info.value)


def test_docs_on_by_default_and_off_on_request(session) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(create_app(session, max_concurrency=1)) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert "/predict" in client.get("/openapi.json").json()["paths"]
    with TestClient(create_app(session, max_concurrency=1, docs=False)) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404, path
        assert client.get("/health").status_code == 200


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fer-edge: error: "), err
    assert "Traceback" not in err and "serving" not in err
    return lines[0]


@pytest.mark.parametrize("option", ["0", "-2", "nan"])
def test_serve_bad_max_megapixels(model_path: Path, option: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from fer_edge.cli import main

    assert main(["serve", "--model", str(model_path), "--max-megapixels", option]) == 2
    assert "--max-megapixels" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_port_out_of_range(model_path: Path, port: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from fer_edge.cli import main

    assert main(["serve", "--model", str(model_path), "--port", port]) == 2
    assert port in one_error_line(capsys.readouterr().err)


def test_serve_busy_port(model_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fer_edge.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["serve", "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port)])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_serve_bad_api_key_sources(model_path: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fer_edge.cli import main

    serve = ["serve", "--model", str(model_path), "--port", "0"]
    assert main([*serve, "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "not found" in one_error_line(capsys.readouterr().err)
    (tmp_path / "blank").write_text("\n  \n")
    assert main([*serve, "--api-key-file", str(tmp_path / "blank")]) == 2
    assert "empty" in one_error_line(capsys.readouterr().err)
    monkeypatch.setenv("FER_EDGE_API_KEY", "")
    assert main(serve) == 2
    assert "FER_EDGE_API_KEY" in one_error_line(capsys.readouterr().err)
    monkeypatch.setenv("FER_EDGE_API_KEY", "has space")
    assert main(serve) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "FER_EDGE_API_KEY" in line and "has space" not in line


def test_serve_port_0_prints_the_real_port_and_takes_the_key_file(
    model_path: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    env = {k: v for k, v in os.environ.items() if k != "FER_EDGE_API_KEY"}
    cmd = [sys.executable, "-m", "fer_edge", "serve", "--model", str(model_path)]
    cmd += ["--providers", "cpu", "--port", "0", "--api-key-file", str(key_file), "--no-docs"]
    cmd += ["--max-megapixels", "0.05"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        # The model's description comes first (what it was trained on, detector, threshold).
        described = [proc.stderr.readline() for _ in range(3)]
        assert described[0].startswith("fer-edge: model edge_tiny.onnx: provenance unknown")
        assert described[1].startswith("fer-edge: detector ")
        assert "does not say what it was trained on" in described[2]
        first = proc.stderr.readline()
        match = re.search(
            r"serving .* on http://127\.0\.0\.1:(\d+) \(API key from --api-key", first
        )
        assert match, first + proc.stderr.read() if proc.poll() is not None else first
        url = f"http://127.0.0.1:{match.group(1)}"
        assert int(match.group(1)) > 0
        assert healthy(url)  # listening as soon as the line is out: no retry needed
        assert httpx.get(f"{url}/metadata", timeout=10).status_code == 401
        r = httpx.get(f"{url}/metadata", headers={"X-API-Key": "s3cret-key"}, timeout=10)
        assert r.status_code == 200
        docs = httpx.get(f"{url}/docs", headers={"X-API-Key": "s3cret-key"}, timeout=10)
        assert docs.status_code == 404
        big = encode(scene(1))  # 240 x 240 = 57 600 pixels, over --max-megapixels 0.05
        r = httpx.post(
            f"{url}/predict", content=big, headers={"X-API-Key": "s3cret-key"}, timeout=30
        )
        assert r.status_code == 413 and r.json()["error"] == "image_too_large", r.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stderr is not None:
                proc.stderr.close()


def test_image_over_max_pixels_is_refused_before_decoding(
    session, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import resource

    import cv2
    from fastapi.testclient import TestClient

    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 1024 * 1024
    decoded: list[int] = []
    real_imdecode = cv2.imdecode

    def spy(buf, flags):  # type: ignore[no-untyped-def]
        decoded.append(len(buf))
        return real_imdecode(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    app = create_app(session, max_concurrency=1)  # the default limit, 40 megapixels
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with TestClient(app) as client:
        r = client.post("/predict", content=bomb, headers={"content-type": "image/png"})
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["error"] == "image_too_large"
        assert "20000x20000" in body["detail"] and "40000000" in body["detail"]
        r = client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")})
        assert r.status_code == 413 and r.json()["error"] == "image_too_large"
        assert decoded == []  # refused from the header: never handed to the decoder
        # A decoded copy would be 1.2 GB (RGB); the peak must not have moved by a fraction.
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
        assert grown_mib < 300, grown_mib
        assert client.post("/predict", content=encode(scene(1))).status_code == 200
        assert len(decoded) == 1  # the spy does see real decodes
    assert metric(app, "fer_edge_errors_total", reason="image_too_large") == 2

    small = create_app(session, max_concurrency=1, max_pixels=240 * 240 - 1)
    with TestClient(small) as client:
        r = client.post("/predict", content=encode(scene(1)))
    assert r.status_code == 413 and "240x240" in r.json()["detail"]
    with pytest.raises(ValueError, match="max_pixels"):
        create_app(session, max_pixels=0)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Every ``decode_image`` call (``(type of its input, max_pixels)``) and, as ``("imdecode",
    None)``, every real OpenCV decode, wherever the code under test calls them from."""
    import cv2

    import fer_edge.server
    import fer_export.faces
    import fer_export.predict
    import fer_export.runtime

    calls: list[tuple[str, object]] = []
    real_decode = fer_export.faces.decode_image
    real_imdecode = cv2.imdecode

    def decode_spy(data, *, max_pixels="default"):  # type: ignore[no-untyped-def]
        calls.append((type(data).__name__, max_pixels))
        return real_decode(data, max_pixels=max_pixels)

    def imdecode_spy(buf, flags):  # type: ignore[no-untyped-def]
        calls.append(("imdecode", None))
        return real_imdecode(buf, flags)

    for module in (fer_export.faces, fer_export.predict, fer_export.runtime, fer_edge.server):
        monkeypatch.setattr(module, "decode_image", decode_spy)
    monkeypatch.setattr(cv2, "imdecode", imdecode_spy)
    return calls


def test_larger_max_pixels_than_the_default_is_honoured(
    session, decodes: list[tuple[str, object]]
) -> None:  # type: ignore[no-untyped-def]
    """The app checks the size once, with its own limit: nothing checks it again with the
    session's 40 MP default, or a larger ``max_pixels`` would still refuse 41 MP images. (Seen
    through a spy rather than with a real 41 MP image: decoding one would add ~400 MB to the
    test process's peak memory.)"""
    from fastapi.testclient import TestClient

    app = create_app(session, max_concurrency=1, max_pixels=50_000_000)
    with TestClient(app) as client:
        assert client.post("/predict", content=encode(scene(1))).status_code == 200
        assert client.post("/predict?faces=whole", content=encode(scene(1))).status_code == 200
    limits = [limit for kind, limit in decodes if kind != "imdecode"]
    assert limits == [50_000_000, 50_000_000]


@pytest.mark.parametrize("upload", ["raw", "multipart"])
@pytest.mark.parametrize("faces", ["detect", "whole"])
def test_each_upload_is_decoded_once(
    session, decodes: list[tuple[str, object]], upload: str, faces: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """One decode per request (raw body or multipart upload, both face modes), the multipart
    body parsed without a second request, and the answer still equal to the session's own."""
    from fastapi.testclient import TestClient
    from starlette.requests import Request

    def no_form(*args: object, **kwargs: object) -> None:
        raise AssertionError("the multipart body was handed to starlette's form parser")

    monkeypatch.setattr(Request, "form", no_form)
    data = encode(scene(2), ".png")
    expected = [p.to_dict() for p in session.predict(data, faces)]
    assert expected
    decodes.clear()
    app = create_app(session, max_concurrency=1)
    with TestClient(app) as client:
        for _ in range(2):
            if upload == "raw":
                r = client.post(f"/predict?faces={faces}", content=data)
            else:
                files = {"file": ("x.png", data, "image/png")}
                r = client.post(f"/predict?faces={faces}", files=files, data={"note": "hi"})
            assert r.status_code == 200, r.text
            assert r.json()["faces"] == expected
            assert decodes == [("bytes", 40_000_000), ("imdecode", None)]
            decodes.clear()


def _form(*parts: tuple[bytes, bytes], boundary: bytes = b"bnd") -> bytes:
    """A multipart body of ``(part headers, content)`` parts."""
    body = b""
    for head, content in parts:
        body += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def _file_part(name: bytes, content: bytes, filename: bytes | None = b"x.png") -> tuple:
    head = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        head += b'; filename="' + filename + b'"'
    return head, content


def test_multipart_file_part_is_found_in_one_pass() -> None:
    from fer_edge.server import ApiError, _multipart_file

    ctype = "multipart/form-data; boundary=bnd"
    body = _form(_file_part(b"note", b"hello", None), _file_part(b"file", b"\x00IMAGE\r\n--b"))
    assert _multipart_file(body, ctype) == b"\x00IMAGE\r\n--b"
    assert _multipart_file(body, 'multipart/form-data; boundary="bnd"') == b"\x00IMAGE\r\n--b"
    # As in a form, the last part of a name counts.
    twice = _form(_file_part(b"file", b"first"), _file_part(b"file", b"second"))
    assert _multipart_file(twice, ctype) == b"second"
    cases = [
        (_form(_file_part(b"file", b"text", None)), ctype, 422, "is text"),
        (_form(*(_file_part(b"f%d" % i, b"x") for i in range(50))), ctype, 422, "f0, f1"),
        (_form((b"Content-Type: image/png", b"x")), ctype, 400, "no Content-Disposition"),
        (_form(_file_part(b"file", b"x")), "multipart/form-data", 400, "no boundary"),
        (b"--bnd\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nab",
         ctype, 422, "no 'file' field"),
    ]  # fmt: skip
    for body, content_type, status, words in cases:
        with pytest.raises(ApiError) as info:
            _multipart_file(body, content_type)
        assert info.value.status == status and words in info.value.detail, info.value.detail
    with pytest.raises(ApiError) as info:
        _multipart_file(_form(*(_file_part(b"f%03d" % i, b"x") for i in range(500))), ctype)
    assert info.value.detail.count(",") < 20  # the field list in the message stays short
