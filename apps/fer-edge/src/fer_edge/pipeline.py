"""``fer-edge run``: classify the faces of every image or frame of a source.

:func:`run_source` reads a :class:`fer_edge.sources.Source`, groups up to ``batch`` decoded
images/frames into one :meth:`FERSession.predict_decoded` call (all their faces in one ONNX
Runtime run), writes one JSON line per image/frame and, on request, annotated output; it
returns a :class:`Summary`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from fer_edge.annotate import draw_predictions
from fer_edge.progress import Progress
from fer_edge.sources import Item, Skipped, Source
from fer_export.detectors import detector_name
from fer_export.runtime import FERSession, Prediction

__all__ = ["Summary", "face_record", "run_source"]


@dataclass
class Summary:
    """Counts and timings of one run (``latencies_ms``: one entry per processed image/frame)."""

    source: str
    kind: str
    provider: str
    items: int = 0
    faces: int = 0
    errors: int = 0
    skipped_entries: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def skipped(self) -> int:
        """Folder entries not processed (hidden, not images, folders, broken links...)."""
        return len(self.skipped_entries)

    @property
    def mean_ms(self) -> float:
        """Mean latency per image/frame (ms), 0 when nothing ran."""
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else 0.0

    @property
    def p95_ms(self) -> float:
        """95th percentile latency (ms, nearest rank), 0 when nothing ran."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def throughput(self) -> float:
        """Images/frames processed per second of wall time (bad files included)."""
        return self.items / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "source": self.source,
            "kind": self.kind,
            "provider": self.provider,
            "items": self.items,
            "faces": self.faces,
            "errors": self.errors,
            "skipped": self.skipped,
            "skipped_entries": [{"file": e.name, "reason": e.reason} for e in self.skipped_entries],
            "warnings": list(self.warnings),
            "mean_latency_ms": self.mean_ms,
            "p95_latency_ms": self.p95_ms,
            "wall_s": self.wall_s,
            "throughput": self.throughput,
            "interrupted": self.interrupted,
        }

    def format(self) -> str:
        """The human-readable summary printed to stderr."""
        unit = "frames" if self.kind in ("video", "camera") else "images"
        reasons = Counter(e.reason for e in self.skipped_entries)
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        lines = [
            f"fer-edge run: {self.items} {unit}, {self.faces} faces, {self.errors} errors"
            + (f", {self.skipped} entries skipped ({skipped})" if self.skipped else "")
            + (" (interrupted)" if self.interrupted else ""),
            f"  latency: mean {self.mean_ms:.2f} ms, p95 {self.p95_ms:.2f} ms per {unit[:-1]}",
            f"  provider: {self.provider}; throughput {self.throughput:.1f} {unit}/s "
            f"({self.wall_s:.2f} s)",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def face_record(p: Prediction) -> dict[str, Any]:
    """One face in the JSON lines: ``box``, ``label`` (``"unknown"`` when the model abstained),
    ``score`` (the top probability), ``probabilities`` (every label, summing to 1),
    ``raw_scores`` (the model's own output: capsule lengths or logits), ``abstained``,
    ``top_label`` (the most probable class, also when abstained) and ``au_map``."""
    return {
        "box": list(p.box),
        "label": p.label,
        "score": p.score,
        "probabilities": dict(p.probabilities),
        "raw_scores": dict(p.raw_scores),
        "abstained": p.abstained,
        "top_label": p.top_label,
        "au_map": p.au_map,
    }


def _selected(items: Iterator[Item], every: int, max_frames: int | None) -> Iterator[Item]:
    """Every ``every``-th item (by index), at most ``max_frames`` of them."""
    taken = 0
    for item in items:
        if max_frames is not None and taken >= max_frames:
            return
        if item.index % every:
            continue
        taken += 1
        yield item


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Annotator:
    """Writes annotated images (image: a file; folder: a tree) or a video (video/camera)."""

    def __init__(self, out: Path, source: Source, every: int) -> None:
        self.out = out
        self.source = source
        self.every = every
        self._writer: cv2.VideoWriter | None = None

    def write(self, item: Item, rgb: np.ndarray, predictions: Sequence[Prediction]) -> None:
        bgr = cv2.cvtColor(draw_predictions(rgb, predictions), cv2.COLOR_RGB2BGR)
        kind = self.source.kind
        if kind in ("video", "camera"):
            self._write_frame(bgr)
            return
        target = self.out if kind == "image" else self.out / (item.name or f"{item.index}.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), bgr):
            target = target.with_suffix(target.suffix + ".png")  # a suffix OpenCV cannot write
            cv2.imwrite(str(target), bgr)

    def _write_frame(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fourcc = "MJPG" if self.out.suffix.lower() == ".avi" else "mp4v"
            fps = self.source.fps / self.every if self.source.fps > 0 else 30.0 / self.every
            height, width = bgr.shape[:2]
            self._writer = cv2.VideoWriter(
                str(self.out), cv2.VideoWriter.fourcc(*fourcc), max(fps, 1.0), (width, height)
            )
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.out} (fourcc {fourcc})")
        self._writer.write(bgr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def run_source(
    session: FERSession,
    source: Source,
    out: TextIO,
    *,
    faces: str = "detect",
    batch: int = 1,
    every: int = 1,
    max_frames: int | None = None,
    annotate: str | Path | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Run ``session`` over ``source``, write JSON lines to ``out``; returns the summary.

    One line per image/frame: ``source``, ``kind``, ``file`` (folder/image runs) or None,
    ``frame`` (index), ``detector`` (the face detector's name; None for ``faces="whole"``),
    ``width``, ``height``, ``faces`` (:func:`face_record` each),
    ``latency_ms`` (decode excluded; detection, preprocessing and inference of the call that
    produced it -- with ``batch`` > 1 that is the whole batch's time) and ``error`` (None, or
    why the file could not be decoded; such lines have no size and no faces).

    ``every``: only every ``every``-th frame/image; ``max_frames``: stop after that many;
    ``annotate``: where annotated output goes (see :class:`_Annotator`). A
    ``KeyboardInterrupt`` ends the run cleanly (``summary.interrupted``). ``progress``: told
    after every batch (:class:`fer_edge.progress.Progress`, on stderr) and closed at the end.
    """
    if batch < 1 or every < 1:
        raise ValueError(f"batch and every must be >= 1, got {batch} and {every}")
    summary = Summary(
        source.spec, source.kind, session.provider, skipped_entries=source.skipped_entries
    )
    annotator = _Annotator(Path(annotate), source, every) if annotate is not None else None
    # Who found the boxes (None when the whole image is the face).
    detector = detector_name(session.detector) if faces == "detect" else None
    start = time.perf_counter()
    try:
        for group in _batches(_selected(iter(source), every, max_frames), batch):
            good = [item for item in group if item.rgb is not None]
            frames = [item.rgb for item in good if item.rgb is not None]
            results: list[list[Prediction]] = []
            elapsed_ms = 0.0
            if good:
                t0 = time.perf_counter()
                try:
                    # Decoded by the source, which applied the pixel limit.
                    results = session.predict_decoded(frames, faces)
                except ValueError as exc:
                    # One bad image must not end the run: its group gets the error instead.
                    for item in good:
                        item.rgb, item.error = None, f"prediction failed: {exc}"
                    good, results = [], []
                elapsed_ms = (time.perf_counter() - t0) * 1000.0
            by_id = {id(item): preds for item, preds in zip(good, results, strict=True)}
            for item in group:
                record: dict[str, Any] = {
                    "source": source.spec,
                    "kind": source.kind,
                    "file": item.name,
                    "frame": item.index,
                    "detector": detector,
                }
                summary.items += 1
                if item.rgb is None:
                    summary.errors += 1
                    record.update(width=None, height=None, faces=[], latency_ms=None)
                    record["error"] = item.error or "cannot decode"
                else:
                    preds = by_id[id(item)]
                    height, width = item.rgb.shape[:2]
                    summary.faces += len(preds)
                    summary.latencies_ms.append(elapsed_ms)
                    record.update(
                        width=width,
                        height=height,
                        faces=[face_record(p) for p in preds],
                        latency_ms=round(elapsed_ms, 3),
                        error=None,
                    )
                    if annotator is not None:
                        annotator.write(item, item.rgb, preds)
                out.write(json.dumps(record) + "\n")
            out.flush()
            if progress is not None:
                progress.update(len(group), sum(len(preds) for preds in results))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.wall_s = time.perf_counter() - start
        summary.warnings.extend(source.warnings)
        if progress is not None:
            progress.close()
        if annotator is not None:
            annotator.close()
        source.close()
    return summary
