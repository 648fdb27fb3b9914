"""fer-edge: facial expression recognition on edge boxes with an exported ONNX model.

Two front ends over :class:`fer_export.runtime.FERSession` (ONNX Runtime only, never torch):

* ``fer-edge run`` (:mod:`fer_edge.pipeline`): an image, a folder of images, a video file or a
  camera -> JSON lines, annotated images/videos and a summary;
* ``fer-edge serve`` (:mod:`fer_edge.server`): an HTTP service (FastAPI + uvicorn) with
  ``/predict``, ``/health``, ``/metadata`` and Prometheus ``/metrics``.
"""

from __future__ import annotations

from importlib import metadata as _metadata

__version__ = _metadata.version("fer-edge")

__all__ = ["__version__"]
