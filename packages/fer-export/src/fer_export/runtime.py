"""ONNX Runtime inference for exported FER models: TensorRT, CUDA or CPU (no torch).

:class:`FERSession` loads an ONNX file written by :func:`fer_export.export_onnx`, reads the
preprocessing contract from its metadata (:class:`fer_export.contract.ModelContract`), checks
the graph against it, picks an execution provider and runs it::

    session = FERSession("fer.onnx")               # TensorRT > CUDA > CPU, whichever works
    for p in session.predict("photo.jpg"):          # detect faces, crop, preprocess, run
        print(p.box, p.label, p.score)              # label may be "unknown" (abstained)
    scores = session.run(batch)                     # (N, 3, S, S) float32 -> (N, C) float32
    probs = session.contract.probabilities(scores)  # calibrated, rows sum to 1

Provider choice (``providers=``):

* ``"auto"``: TensorRT, then CUDA, then CPU; a GPU provider is only tried when the ORT build has
  it *and* an NVIDIA driver with a device is present (``libcuda`` loads and ``cuInit`` succeeds;
  TensorRT also needs ``libnvinfer``), so a machine without a GPU never sees CUDA loader errors.
  A provider ORT silently replaced by CPU is detected and skipped.
* ``"tensorrt"``, ``"cuda"``, ``"cpu"``, an ORT provider name or a list of them: exactly that
  (the first of a list must become the session's main provider), or
  :class:`ProviderUnavailableError` -- never a silent CPU fallback.

TensorRT builds an engine for the model on the first run (:meth:`FERSession.warmup`, called
from ``__init__`` by default). That can take minutes on an edge board; the engine and the
timing cache are stored in ``trt_cache_dir`` (default ``<model stem>.trt_cache`` next to the
model) and loaded in seconds afterwards. The engine covers batches from ``trt_batch[0]`` to
``trt_batch[2]`` (tuned for ``trt_batch[1]``); larger batches are split.

This module gathers the runtime's public names; the code lives in single-purpose modules:

* :mod:`fer_export.providers` -- GPU/TensorRT probing, provider options, choice and fallback;
* :mod:`fer_export.session` -- :class:`FERSession` (ORT session, ``run``, batching, IO binding,
  warm-up);
* :mod:`fer_export.predict` -- faces -> crops -> preprocessing -> :class:`Prediction`
  (calibrated probabilities, abstention, per-face landmark AU maps);
* :mod:`fer_export.landmarks` -- landmark finders for models trained with landmark AU maps;
* :mod:`fer_export.faces` -- decoding, face detection (:class:`ThreadLocalDetector`), cropping.
"""

from __future__ import annotations

from fer_export.contract import ContractError, ModelContract, ModelLoadError
from fer_export.faces import (
    DEFAULT_MAX_PIXELS,
    Box,
    Detector,
    FaceDetector,
    ImageDecodeError,
    ImageInput,
    ImageTooLargeError,
    ThreadLocalDetector,
    decode_image,
)
from fer_export.landmarks import LandmarksUnavailableError, find_landmarks
from fer_export.predict import FacesArg, LandmarkFinder, Prediction
from fer_export.providers import PROVIDER_NAMES, ProviderUnavailableError, gpu_status
from fer_export.session import FERSession

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PROVIDER_NAMES",
    "Box",
    "ContractError",
    "Detector",
    "FERSession",
    "FaceDetector",
    "FacesArg",
    "ImageDecodeError",
    "ImageInput",
    "ImageTooLargeError",
    "LandmarkFinder",
    "LandmarksUnavailableError",
    "ModelContract",
    "ModelLoadError",
    "Prediction",
    "ProviderUnavailableError",
    "ThreadLocalDetector",
    "decode_image",
    "find_landmarks",
    "gpu_status",
]
