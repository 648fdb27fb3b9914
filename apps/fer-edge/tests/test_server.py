"""``fer-edge serve``: a real uvicorn server on a free loopback port, concurrent clients,
malformed uploads, limits, /metrics, /metadata and /health."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from edge_helpers import LABELS, encode, scene, serving

from fer_edge.server import create_app

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


def test_health_and_metadata(server: str) -> None:
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
