"""Calling an ASGI app directly, without a server or an HTTP client in between, so that a test
controls every ``receive`` message (a client that disconnects mid-body, one that stalls) and
sees any exception that escapes the app (a uniquely named module, like ``edge_helpers``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


@dataclass
class Answer:
    """A response as the app sent it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def body_chunks(chunks: Iterable[bytes]) -> Receive:
    """A ``receive`` that sends ``chunks`` as the request body, then reports a disconnect (what
    servers send once the response is done)."""
    pending = list(chunks) or [b""]

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    return receive


def http_scope(
    method: str, path: str, query: bytes = b"", headers: Iterable[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """An ASGI 3 HTTP scope (header names lower-cased, as servers deliver them)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def call(
    app: Any,
    method: str = "POST",
    path: str = "/predict",
    *,
    query: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | Iterable[bytes] = b"",
    receive: Receive | None = None,
) -> Answer:
    """The app's answer to one request; exceptions the app lets out propagate."""
    if receive is None:
        receive = body_chunks([body] if isinstance(body, bytes) else body)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope(method, path, query, headers), receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, f"expected one response start, got {sent!r}"
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in starts[0]["headers"]}
    return Answer(int(starts[0]["status"]), hdrs, raw)


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """``app`` with its lifespan entered (its worker pool is shut down on the way out)."""
    async with app.router.lifespan_context(app):
        yield app
