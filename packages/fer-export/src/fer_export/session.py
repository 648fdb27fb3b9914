"""The ONNX Runtime session of one exported FER model: :class:`FERSession` (no torch).

It reads the model's contract (:func:`fer_export.contract.read_model`), opens an ORT session on
the chosen execution provider (:mod:`fer_export.providers`) and runs preprocessed batches
(:meth:`FERSession.run`: checks, batch splitting, static-batch padding, IO binding on GPUs,
warm-up). Its ``predict*`` methods decode images (:func:`fer_export.faces.decode_image`) and
hand them to the face pipeline (:func:`fer_export.predict.predict_images`) with the session's
detector -- a :class:`fer_export.faces.ThreadLocalDetector` unless another is given, so a
session can serve several threads at once -- its abstention threshold (the model's, from
``fer.abstention``, unless overridden) and, for models trained with landmark AU maps, its
landmark finder (given, or found installed by :func:`fer_export.landmarks.find_landmarks`; the
session refuses to start without one unless told to use the template map).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import onnxruntime as ort
except ImportError as _exc:  # left out on linux aarch64: say what to install
    from fer_export._ort import onnxruntime_missing

    raise onnxruntime_missing(_exc) from _exc

from fer_export.contract import (
    ATTENTION_INPUT,
    IMAGE_INPUT,
    SCORES_OUTPUT,
    ContractError,
    ModelContract,
    read_model,
)
from fer_export.faces import (
    Detector,
    ThreadLocalDetector,
)
from fer_export.predict import (
    FacePredictor,
    LandmarkFinder,
    resolve_abstain,
    resolve_au_source,
)
from fer_export.providers import (
    PROVIDER_NAMES,
    ProviderSettings,
    normalise_providers,
    open_session,
    short_name,
)

__all__ = ["FERSession"]


class FERSession(FacePredictor):
    """An ONNX Runtime session for one exported FER model.

    Args:
        path: the ``.onnx`` file (with ``fer.*`` metadata).
        providers: ``"auto"`` (TensorRT > CUDA > CPU, first that works), ``"tensorrt"``,
            ``"cuda"``, ``"cpu"``, an ORT provider name or a list of them (see
            :mod:`fer_export.runtime`).
        device_id: CUDA device for the CUDA/TensorRT providers.
        trt_cache_dir: TensorRT engine + timing cache folder (default
            ``<model stem>.trt_cache`` next to the model).
        trt_fp16: let TensorRT use fp16 kernels.
        trt_batch: ``(min, opt, max)`` batch sizes of TensorRT's optimisation profile.
        intra_op_threads, inter_op_threads: ORT thread pools (None: ORT's default).
        warmup: run dummy batches now (builds/loads the TensorRT engine).
        max_batch: largest batch sent to ORT in one call; larger ones are split.
        detector: face detector for ``faces="detect"`` -- any callable
            ``rgb -> [(x, y, w, h)]`` (default: a :class:`fer_export.faces.ThreadLocalDetector`,
            one :class:`~fer_export.faces.FaceDetector` per thread, made on first use). Give a
            thread-safe one if the session serves several threads.
        abstain: the top probability below which ``predict*`` label a face ``"unknown"``:
            ``"model"`` (default) the threshold in the model's ``fer.abstention`` (none if it
            has none), a number in [0, 1] instead of it, or None for never.
        landmarks: for models trained with landmark AU maps (``fer.au_source`` ``landmarks``):
            a callable ``rgb face crop (H, W, 3) uint8 -> (68, 2) landmarks or None``. Default:
            an installed finder (:func:`fer_export.landmarks.find_landmarks`: dlib with
            ``$CAPSNET_DLIB_LANDMARKS``, or face_alignment). Ignored by other models.
        au_source: None (default) feeds every face the AU map the model was trained with;
            ``"template"`` knowingly gives a landmarks model the mean-face template map
            instead (no landmark finder needed; predictions may be less accurate).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: a directory, an empty file, not an ONNX model, or one ONNX Runtime
            cannot load (a ValueError; the message names the cause).
        ContractError: no or invalid FER metadata, or a graph that does not match it (a
            ValueError naming the key, its value and what it should be).
        ProviderUnavailableError: an explicitly requested provider cannot be used.
        LandmarksUnavailableError: the model was trained with landmark AU maps, no
            ``landmarks=`` was given and no landmark finder is installed (a ValueError naming
            the model, what to install and ``au_source="template"``).
        ValueError: unknown provider name or bad argument.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: str | Sequence[str] = "auto",
        *,
        device_id: int = 0,
        trt_cache_dir: str | os.PathLike[str] | None = None,
        trt_fp16: bool = False,
        trt_batch: tuple[int, int, int] = (1, 8, 32),
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        warmup: bool = True,
        max_batch: int = 64,
        detector: Detector | None = None,
        abstain: str | float | None = "model",
        landmarks: LandmarkFinder | None = None,
        au_source: str | None = None,
    ) -> None:
        self.path = Path(path)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if len(trt_batch) != 3 or not 1 <= trt_batch[0] <= trt_batch[1] <= trt_batch[2]:
            raise ValueError(
                f"trt_batch must be (min, opt, max) with 1 <= min <= opt <= max, got {trt_batch}"
            )
        auto, wanted = normalise_providers(providers)
        loaded = read_model(self.path)  # the CLI's checks and messages for bad files
        self._metadata = loaded.metadata
        self._contract: ModelContract = loaded.contract
        self._static_batch = loaded.static_batch
        del loaded  # the protobuf: ONNX Runtime reads the file itself
        self._abstain = resolve_abstain(self._contract, abstain)
        self._au_source, self._landmarks = resolve_au_source(
            self._contract, au_source, landmarks, str(self.path)
        )

        self.device_id = int(device_id)
        self.trt_fp16 = bool(trt_fp16)
        self.trt_batch = (int(trt_batch[0]), int(trt_batch[1]), int(trt_batch[2]))
        self.trt_cache_dir = (
            Path(trt_cache_dir)
            if trt_cache_dir is not None
            else self.path.with_name(self.path.stem + ".trt_cache")
        )
        self.max_batch = int(max_batch)
        self.latency_ms: float | None = None
        self._detector: Detector = detector if detector is not None else ThreadLocalDetector()
        self._attention_map: np.ndarray | None = None

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no "nodes not assigned" warnings
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)

        s = self._contract.input_size
        shapes = {IMAGE_INPUT: (3, s, s)}
        if self._contract.attention == "input":
            shapes[ATTENTION_INPUT] = (1, s, s)
        settings = ProviderSettings(
            device_id=self.device_id,
            trt_cache_dir=self.trt_cache_dir,
            trt_fp16=self.trt_fp16,
            trt_batch=self.trt_batch,
            input_shapes=shapes,
            static_batch=self._static_batch,
        )
        self._session, skipped = open_session(self.path, auto, wanted, settings, options)
        #: Why ``auto`` skipped faster providers (empty for explicit requests).
        self.skipped_providers: list[str] = skipped
        self.providers: list[str] = list(self._session.get_providers())
        main = self.providers[0]
        self.provider: str = short_name(main)
        self._io_device: str | None = (
            "cuda" if main in (PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"]) else None
        )
        if warmup:
            self.warmup()

    # -- properties ---------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, str]:
        """All ONNX metadata key/value pairs (a copy)."""
        return dict(self._metadata)

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ONNX Runtime session."""
        return self._session

    def __repr__(self) -> str:
        s = self.input_size
        return (
            f"FERSession(path={str(self.path)!r}, provider={self.provider!r}, "
            f"input_size={s}x{s}, labels={len(self.labels)}, "
            f"attention={self._contract.attention!r})"
        )

    # -- inference ----------------------------------------------------------------------------

    def _chunk_size(self) -> int:
        if self._static_batch is not None:
            return self._static_batch
        if self.provider == "tensorrt":
            return min(self.max_batch, self.trt_batch[2])
        return self.max_batch

    def _check_array(self, name: str, x: Any, channels: int, n: int | None) -> np.ndarray:
        s = self.input_size
        want = f"(N, {channels}, {s}, {s})" if n is None else f"({n}, {channels}, {s}, {s})"
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{name} must be a numpy array {want} float32, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise ValueError(
                f"{name} must be float32 {want}, got dtype {x.dtype} "
                "(preprocess uint8 faces with session.contract.preprocess)"
            )
        if x.ndim != 4 or x.shape[1:] != (channels, s, s) or (n is not None and x.shape[0] != n):
            raise ValueError(f"{name} must have shape {want}, got {x.shape}")
        return np.ascontiguousarray(x)

    def _run_chunk(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._io_device is None:
            (out,) = self._session.run([SCORES_OUTPUT], feeds)
            return np.asarray(out)
        # A binding per call: bindings are not shared between threads.
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(SCORES_OUTPUT, self._io_device, self.device_id)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])

    def run(self, batch: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        """Scores ``(N, C)`` float32 for a preprocessed batch ``(N, 3, S, S)`` float32.

        ``attention`` ``(N, 1, S, S)`` float32 is only for ``attention == "input"`` models and
        defaults to the contract's template map (``contract.default_attention(N)``; zeros for a
        model trained without AU maps) -- also for landmarks models: the landmark maps are
        made by ``predict*``, or pass your own. Returns raw scores (capsule lengths or logits):
        ``contract.probabilities(scores)`` makes them calibrated probabilities. Batches
        larger than ``max_batch`` (or TensorRT's profile maximum) are split; a model with a
        static batch size gets padded chunks. Sets :attr:`latency_ms`.
        """
        x = self._check_array("batch", batch, 3, None)
        n = x.shape[0]
        takes_attention = self._contract.attention == "input"
        if attention is not None and not takes_attention:
            raise ValueError(
                f"{self.path.name} takes no attention input "
                f"(contract attention={self._contract.attention!r})"
            )
        att: np.ndarray | None = None
        if takes_attention:
            att = (
                self._default_attention(n)
                if attention is None
                else self._check_array("attention", attention, 1, n)
            )
        start = time.perf_counter()
        if n == 0:
            self.latency_ms = 0.0
            return np.zeros((0, self._contract.num_classes), np.float32)
        step = self._chunk_size()
        parts: list[np.ndarray] = []
        for i in range(0, n, step):
            chunk = x[i : i + step]
            m = chunk.shape[0]
            feeds = {IMAGE_INPUT: chunk}
            if att is not None:
                feeds[ATTENTION_INPUT] = att[i : i + step]
            if self._static_batch is not None and m < step:
                feeds = {
                    k: np.concatenate([v, np.zeros((step - m, *v.shape[1:]), v.dtype)])
                    for k, v in feeds.items()
                }
            parts.append(self._run_chunk(feeds)[:m])
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self.latency_ms = (time.perf_counter() - start) * 1000.0
        if out.shape != (n, self._contract.num_classes):
            raise ContractError(
                f"{self.path}: output {SCORES_OUTPUT!r} has shape {out.shape}, expected "
                f"({n}, {self._contract.num_classes})"
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def warmup(self, runs: int = 2) -> None:
        """Run ``runs`` dummy batches (batch 1, then TensorRT's ``opt`` batch size).

        On TensorRT the first run builds the engine -- minutes on an edge board the first time,
        then loaded from ``trt_cache_dir`` in seconds.
        """
        s = self.input_size
        sizes = [1]
        if self.provider == "tensorrt":
            sizes.append(min(self.trt_batch[1], self._chunk_size()))
        for i in range(max(1, runs)):
            self.run(np.zeros((sizes[min(i, len(sizes) - 1)], 3, s, s), np.float32))
