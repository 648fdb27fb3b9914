"""Prometheus metrics for ``fer-edge serve``, kept in memory and written as text by hand.

Exposition format 0.0.4 (``text/plain; version=0.0.4``): ``# HELP`` / ``# TYPE`` lines, then
samples; counters end in ``_total``; the latency histogram has cumulative ``_bucket{le=...}``
samples plus ``_sum`` and ``_count``. All updates take one lock (cheap next to inference).
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Mapping

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upper bounds (seconds) of the predict latency histogram buckets (+Inf is added).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Metrics:
    """The service's counters, gauges and histogram.

    ``model_info``: labels of the constant ``fer_edge_model_info`` gauge (model name, version,
    precision, provider...).
    """

    def __init__(self, model_info: Mapping[str, str]) -> None:
        self._lock = threading.Lock()
        self.model_info = dict(model_info)
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)
        self.faces_total = 0
        self.images_total = 0
        self.rejected_total = 0
        self.in_flight = 0
        self.inferences_running = 0
        self.inferences_abandoned = 0
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, endpoint: str, method: str, code: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, method, code)] += 1

    def inference_started(self) -> None:
        with self._lock:
            self.inferences_running += 1

    def inference_finished(self, abandoned: bool = False) -> None:
        """A worker thread ended; ``abandoned``: its request had already timed out."""
        with self._lock:
            self.inferences_running -= 1
            if abandoned:
                self.inferences_abandoned -= 1

    def inference_abandoned(self) -> None:
        """A request timed out while its prediction goes on running in a worker."""
        with self._lock:
            self.inferences_abandoned += 1

    def observe_predict(self, seconds: float, faces: int) -> None:
        """A successful prediction: its latency and the faces it found."""
        with self._lock:
            self.latency_sum += seconds
            self.latency_count += 1
            self.faces_total += faces
            self.images_total += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1
                    break
            else:
                self.bucket_counts[-1] += 1

    def error(self, reason: str) -> None:
        """A failed request, by reason: the error code it was answered with (``too_large``,
        ``bad_image``, ``queue_full``, ``timeout``, ``client_disconnect``, ``internal``...)."""
        with self._lock:
            self.errors[reason] += 1
            if reason == "queue_full":
                self.rejected_total += 1

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            out: list[str] = []

            def family(name: str, kind: str, doc: str) -> None:
                out.append(f"# HELP {name} {doc}")
                out.append(f"# TYPE {name} {kind}")

            family("fer_edge_requests_total", "counter", "HTTP requests by endpoint and status.")
            for (endpoint, method, code), n in sorted(self.requests.items()):
                labels = {"endpoint": endpoint, "method": method, "code": str(code)}
                out.append(f"fer_edge_requests_total{_labels(labels)} {n}")
            family(
                "fer_edge_predict_latency_seconds",
                "histogram",
                "Time to answer a successful /predict (decode, detect, infer).",
            )
            cumulative = 0
            bounds = [*LATENCY_BUCKETS, math.inf]
            for bound, n in zip(bounds, self.bucket_counts, strict=True):
                cumulative += n
                le = _labels({"le": _number(bound)})
                out.append(f"fer_edge_predict_latency_seconds_bucket{le} {cumulative}")
            out.append(f"fer_edge_predict_latency_seconds_sum {_number(self.latency_sum)}")
            out.append(f"fer_edge_predict_latency_seconds_count {self.latency_count}")
            family("fer_edge_images_total", "counter", "Images classified successfully.")
            out.append(f"fer_edge_images_total {self.images_total}")
            family("fer_edge_faces_detected_total", "counter", "Faces found and classified.")
            out.append(f"fer_edge_faces_detected_total {self.faces_total}")
            family("fer_edge_errors_total", "counter", "Failed requests by reason.")
            for reason, n in sorted(self.errors.items()):
                out.append(f"fer_edge_errors_total{_labels({'reason': reason})} {n}")
            family("fer_edge_requests_in_flight", "gauge", "HTTP requests being handled now.")
            out.append(f"fer_edge_requests_in_flight {self.in_flight}")
            family("fer_edge_inferences_running", "gauge", "Predictions running in workers now.")
            out.append(f"fer_edge_inferences_running {self.inferences_running}")
            family(
                "fer_edge_inferences_abandoned",
                "gauge",
                "Predictions still running after their request timed out (each holds a slot).",
            )
            out.append(f"fer_edge_inferences_abandoned {self.inferences_abandoned}")
            family("fer_edge_model_info", "gauge", "The served model (value always 1).")
            out.append(f"fer_edge_model_info{_labels(self.model_info)} 1")
            return "\n".join(out) + "\n"
