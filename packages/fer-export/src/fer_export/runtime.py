"""ONNX Runtime inference for exported FER models: TensorRT, CUDA or CPU (no torch).

:class:`FERSession` loads an ONNX file written by :func:`fer_export.export_onnx`, reads the
preprocessing contract from its metadata (:class:`fer_export.contract.ModelContract`), checks
the graph against it, picks an execution provider and runs it::

    session = FERSession("fer.onnx")               # TensorRT > CUDA > CPU, whichever works
    for p in session.predict("photo.jpg"):          # detect faces, crop, preprocess, run
        print(p.box, p.label, p.score)
    scores = session.run(batch)                     # (N, 3, S, S) float32 -> (N, C) float32

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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import cv2
import numpy as np
import onnxruntime as ort

from fer_export.contract import (
    ATTENTION_INPUT,
    IMAGE_INPUT,
    SCORES_OUTPUT,
    ContractError,
    ModelContract,
    ModelLoadError,
    read_model,
)
from fer_export.faces import (
    DEFAULT_MAX_PIXELS,
    Box,
    FaceDetector,
    ImageDecodeError,
    ImageInput,
    ImageTooLargeError,
    clip_box,
    crop_with_margin,
    decode_image,
)

__all__ = [
    "PROVIDER_NAMES",
    "FERSession",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ModelLoadError",
    "Prediction",
    "ProviderUnavailableError",
    "gpu_status",
]

#: Short provider names and their ONNX Runtime names, in "auto" order.
PROVIDER_NAMES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items()}

Detector: TypeAlias = Callable[[np.ndarray], Sequence[Sequence[int]]]
FacesArg: TypeAlias = str | Sequence[Sequence[int]]
ProviderOptions: TypeAlias = dict[str, Any]


class ProviderUnavailableError(RuntimeError):
    """An execution provider that was asked for explicitly cannot be used on this machine."""


@dataclass(frozen=True)
class Prediction:
    """One face's result.

    ``box``: the face ``(x, y, w, h)`` in the original image (clipped to it); ``crop_box``: the
    region actually fed to the model (``box`` plus the contract's ``face_margin``, clipped);
    ``label``/``label_index``/``score``: the top class; ``scores``: every label's score.
    """

    box: Box
    label: str
    label_index: int
    score: float
    scores: dict[str, float]
    crop_box: Box = field(default=(0, 0, 0, 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (boxes as lists)."""
        return {
            "box": list(self.box),
            "crop_box": list(self.crop_box),
            "label": self.label,
            "label_index": self.label_index,
            "score": self.score,
            "scores": dict(self.scores),
        }


# ---------------------------------------------------------------------------------------------
# GPU probing without touching ONNX Runtime's CUDA provider (which logs loader errors).


def _load_library(names: Sequence[str], extra_dirs: Sequence[Path] = ()) -> str | None:
    """The first of ``names`` that ctypes can load (from the default search path or
    ``extra_dirs``), or None."""
    for name in names:
        candidates = [name] + [str(d / name) for d in extra_dirs]
        for candidate in candidates:
            try:
                ctypes.CDLL(candidate)
            except OSError:
                continue
            return candidate
    return None


@functools.cache
def gpu_status() -> tuple[int, str]:
    """``(number of CUDA devices, explanation)`` from the NVIDIA driver, without ORT.

    Loads the driver library (``libcuda.so.1`` / ``nvcuda.dll``) with ctypes and asks it for the
    device count; 0 devices with the reason when there is no driver or no GPU. Cached.
    """
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            rc = lib.cuInit(0)
            if rc != 0:
                return 0, f"NVIDIA driver found ({name}) but cuInit failed with CUDA error {rc}"
            count = ctypes.c_int(0)
            rc = lib.cuDeviceGetCount(ctypes.byref(count))
        except (AttributeError, OSError) as exc:
            return 0, f"{name} is not a usable CUDA driver ({exc})"
        if rc != 0:
            return 0, f"cuDeviceGetCount failed with CUDA error {rc}"
        if count.value == 0:
            return 0, "the NVIDIA driver reports no CUDA device"
        return count.value, f"{count.value} CUDA device(s)"
    return 0, f"no NVIDIA driver/GPU on this machine ({' / '.join(names)} not loadable)"


@functools.cache
def _tensorrt_library() -> str | None:
    """Path/name of a loadable TensorRT runtime library (``libnvinfer``), or None."""
    if sys.platform == "win32":
        names = ["nvinfer_10.dll", "nvinfer.dll"]
    else:
        names = ["libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"]
    extra: list[Path] = []
    spec = importlib.util.find_spec("tensorrt_libs")  # the pip wheel's libraries
    if spec is not None and spec.submodule_search_locations:
        extra.extend(Path(p) for p in spec.submodule_search_locations)
    found = _load_library(names, extra)
    if found is None and (path := ctypes.util.find_library("nvinfer")):
        found = _load_library([path])
    return found


def _gpu_unusable_reason(provider: str, device_id: int) -> str | None:
    """Why ``provider`` (ORT name) cannot work here, or None if it is worth trying."""
    if provider == PROVIDER_NAMES["cpu"]:
        return None
    available = ort.get_available_providers()
    if provider not in available:
        return (
            f"this onnxruntime build ({ort.__version__}) has no {provider} "
            f"(available: {', '.join(available)}); install onnxruntime-gpu"
        )
    if provider in (PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"]):
        count, why = gpu_status()
        if count == 0:
            return why
        if not 0 <= device_id < count:
            return f"device_id {device_id} out of range: {why}"
    if provider == PROVIDER_NAMES["tensorrt"] and _tensorrt_library() is None:
        return "TensorRT runtime library (libnvinfer) not found; install TensorRT 10"
    return None


def _normalise_providers(providers: str | Sequence[str]) -> tuple[bool, list[str]]:
    """``(auto?, ORT provider names in priority order)``; ValueError for unknown names."""
    valid_hint = (
        f"valid: 'auto', {', '.join(repr(k) for k in PROVIDER_NAMES)} or ORT provider names "
        f"({', '.join(ort.get_all_providers())})"
    )
    if isinstance(providers, str):
        if providers.lower() == "auto":
            return True, list(PROVIDER_NAMES.values())
        items: list[str] = [providers]
    else:
        items = list(providers)
        if not items:
            raise ValueError(f"providers is empty; {valid_hint}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"provider names must be strings, got {item!r}; {valid_hint}")
        name = PROVIDER_NAMES.get(item.lower(), item)
        if name not in ort.get_all_providers():
            raise ValueError(f"unknown execution provider {item!r}; {valid_hint}")
        if name not in out:
            out.append(name)
    return False, out


# ---------------------------------------------------------------------------------------------


class FERSession:
    """An ONNX Runtime session for one exported FER model.

    Args:
        path: the ``.onnx`` file (with ``fer.*`` metadata).
        providers: ``"auto"`` (TensorRT > CUDA > CPU, first that works), ``"tensorrt"``,
            ``"cuda"``, ``"cpu"``, an ORT provider name or a list of them (see module doc).
        device_id: CUDA device for the CUDA/TensorRT providers.
        trt_cache_dir: TensorRT engine + timing cache folder (default
            ``<model stem>.trt_cache`` next to the model).
        trt_fp16: let TensorRT use fp16 kernels.
        trt_batch: ``(min, opt, max)`` batch sizes of TensorRT's optimisation profile.
        intra_op_threads, inter_op_threads: ORT thread pools (None: ORT's default).
        warmup: run dummy batches now (builds/loads the TensorRT engine).
        max_batch: largest batch sent to ORT in one call; larger ones are split.
        detector: face detector for :meth:`predict` -- any callable ``rgb -> [(x, y, w, h)]``
            (default: a :class:`fer_export.faces.FaceDetector`, created on first use).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: a directory, an empty file, not an ONNX model, or one ONNX Runtime
            cannot load (a ValueError; the message names the cause).
        ContractError: no or invalid FER metadata, or a graph that does not match it (a
            ValueError naming the key, its value and what it should be).
        ProviderUnavailableError: an explicitly requested provider cannot be used.
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
    ) -> None:
        self.path = Path(path)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if len(trt_batch) != 3 or not 1 <= trt_batch[0] <= trt_batch[1] <= trt_batch[2]:
            raise ValueError(
                f"trt_batch must be (min, opt, max) with 1 <= min <= opt <= max, got {trt_batch}"
            )
        auto, wanted = _normalise_providers(providers)
        loaded = read_model(self.path)  # the CLI's checks and messages for bad files
        self._metadata = loaded.metadata
        self._contract: ModelContract = loaded.contract
        self._static_batch = loaded.static_batch
        del loaded  # the protobuf: ONNX Runtime reads the file itself

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
        self._detector = detector
        self._attention_map: np.ndarray | None = None

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no "nodes not assigned" warnings
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            options.inter_op_num_threads = int(inter_op_threads)
        self._session_options = options

        #: Why ``auto`` skipped faster providers (empty for explicit requests).
        self.skipped_providers: list[str] = []
        self._session = self._create_session(auto, wanted)
        self.providers: list[str] = list(self._session.get_providers())
        main = self.providers[0]
        self.provider: str = _SHORT_NAMES.get(main, main)
        self._io_device: str | None = (
            "cuda" if main in (PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"]) else None
        )
        if warmup:
            self.warmup()

    # -- provider set-up ----------------------------------------------------------------------

    def _provider_options(self, name: str) -> ProviderOptions:
        if name == PROVIDER_NAMES["cuda"]:
            # HEURISTIC: no exhaustive cuDNN benchmark per new input shape (batch sizes vary).
            return {"device_id": self.device_id, "cudnn_conv_algo_search": "HEURISTIC"}
        if name == PROVIDER_NAMES["tensorrt"]:
            try:
                self.trt_cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ProviderUnavailableError(
                    f"cannot create the TensorRT cache folder {self.trt_cache_dir} ({exc}); "
                    "pass trt_cache_dir= a writable folder"
                ) from exc
            s = self._contract.input_size

            def shapes(batch: int) -> str:
                parts = [f"{IMAGE_INPUT}:{batch}x3x{s}x{s}"]
                if self._contract.attention == "input":
                    parts.append(f"{ATTENTION_INPUT}:{batch}x1x{s}x{s}")
                return ",".join(parts)

            lo, opt, hi = self.trt_batch
            if self._static_batch is not None:
                lo = opt = hi = self._static_batch
            return {
                "device_id": self.device_id,
                "trt_fp16_enable": self.trt_fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(self.trt_cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(self.trt_cache_dir),
                "trt_profile_min_shapes": shapes(lo),
                "trt_profile_opt_shapes": shapes(opt),
                "trt_profile_max_shapes": shapes(hi),
            }
        return {}

    def _provider_chain(self, first: str) -> list[tuple[str, ProviderOptions]]:
        """``first`` with its fallbacks for unsupported nodes (TensorRT > CUDA > CPU)."""
        chain = [first]
        if first == PROVIDER_NAMES["tensorrt"]:
            chain.append(PROVIDER_NAMES["cuda"])
        if first != PROVIDER_NAMES["cpu"]:
            chain.append(PROVIDER_NAMES["cpu"])
        return [(name, self._provider_options(name)) for name in chain]

    def _new_session(self, chain: Sequence[tuple[str, ProviderOptions]]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                str(self.path),
                sess_options=self._session_options,
                providers=[name for name, _ in chain],
                provider_options=[opts for _, opts in chain],
            )
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph...)
            names = ", ".join(name for name, _ in chain)
            raise ModelLoadError(
                f"onnxruntime cannot load {self.path} with {names}: {type(exc).__name__}: {exc}"
            ) from exc

    def _create_session(self, auto: bool, wanted: list[str]) -> ort.InferenceSession:
        if not auto:
            for name in wanted:
                reason = _gpu_unusable_reason(name, self.device_id)
                if reason is not None:
                    raise ProviderUnavailableError(
                        f"{_SHORT_NAMES.get(name, name)} requested for {self.path} "
                        f"but unavailable: {reason}"
                    )
            chain = [(name, self._provider_options(name)) for name in wanted]
            session = self._new_session(chain)
            got = session.get_providers()
            if not got or got[0] != wanted[0]:
                raise ProviderUnavailableError(
                    f"{_SHORT_NAMES.get(wanted[0], wanted[0])} requested for {self.path} but "
                    f"onnxruntime fell back to {got} (see its log above for the cause)"
                )
            return session

        skipped: list[str] = []
        for name in wanted:
            reason = _gpu_unusable_reason(name, self.device_id)
            if reason is not None:
                skipped.append(f"{_SHORT_NAMES[name]}: {reason}")
                continue
            try:
                session = self._new_session(self._provider_chain(name))
            except (ModelLoadError, ProviderUnavailableError) as exc:
                if name == PROVIDER_NAMES["cpu"]:
                    raise
                skipped.append(f"{_SHORT_NAMES[name]}: {exc}")
                continue
            got = session.get_providers()
            if got and got[0] == name:
                self.skipped_providers = skipped
                return session
            skipped.append(f"{_SHORT_NAMES[name]}: onnxruntime fell back to {got}")
        raise ProviderUnavailableError(  # pragma: no cover - CPU always works
            f"no execution provider works for {self.path}: {'; '.join(skipped)}"
        )

    # -- properties ---------------------------------------------------------------------------

    @property
    def contract(self) -> ModelContract:
        """The preprocessing contract from the model's metadata."""
        return self._contract

    @property
    def metadata(self) -> dict[str, str]:
        """All ONNX metadata key/value pairs (a copy)."""
        return dict(self._metadata)

    @property
    def input_size(self) -> int:
        """``S``: the model takes ``(N, 3, S, S)`` images."""
        return self._contract.input_size

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in score order."""
        return self._contract.labels

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ONNX Runtime session."""
        return self._session

    @property
    def detector(self) -> Detector:
        """The face detector used by ``predict(faces="detect")`` (created on first use)."""
        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

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

    def _default_attention(self, n: int) -> np.ndarray:
        if self._attention_map is None:
            self._attention_map = self._contract.default_attention(1)
        return np.ascontiguousarray(
            np.broadcast_to(self._attention_map, (n, *self._attention_map.shape[1:]))
        )

    def _run_chunk(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._io_device is None:
            (out,) = self._session.run([SCORES_OUTPUT], feeds)
            return np.asarray(out)
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(SCORES_OUTPUT, self._io_device, self.device_id)
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])

    def run(self, batch: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        """Scores ``(N, C)`` float32 for a preprocessed batch ``(N, 3, S, S)`` float32.

        ``attention`` ``(N, 1, S, S)`` float32 is only for ``attention == "input"`` models and
        defaults to the contract's template map (``contract.default_attention(N)``). Batches
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

    # -- images -------------------------------------------------------------------------------

    def _face_boxes(self, rgb: np.ndarray, faces: FacesArg) -> list[tuple[Box, Box]]:
        """``(box as given, box clipped to the image)`` for each face; the margin is taken from
        the box as given, so a face running off the image keeps its proportions."""
        height, width = rgb.shape[:2]
        if isinstance(faces, str):
            if faces == "whole":
                return [((0, 0, width, height), (0, 0, width, height))]
            if faces != "detect":
                raise ValueError(
                    f"faces must be 'detect', 'whole' or a list of boxes, got {faces!r}"
                )
            faces = self.detector(rgb)
        out: list[tuple[Box, Box]] = []
        for b in faces:
            if isinstance(b, str) or len(b) != 4:
                raise ValueError(f"each face box must be (x, y, w, h), got {b!r}")
            x, y, w, h = (round(float(v)) for v in b)
            out.append(((x, y, w, h), clip_box((x, y, w, h), width, height)))
        return out

    def _face_input(self, rgb: np.ndarray, box: Box, whole: bool) -> tuple[np.ndarray, Box]:
        """(S, S, 3) uint8 face in the contract's channel order, and the crop's box."""
        margin = 0.0 if whole else self._contract.face_margin
        crop, crop_box = crop_with_margin(rgb, box, margin)
        s = self.input_size
        h, w = crop.shape[:2]
        interpolation = cv2.INTER_AREA if (h > s or w > s) else cv2.INTER_LINEAR
        face = cv2.resize(crop, (s, s), interpolation=interpolation)
        if self._contract.channel_order == "BGR":
            face = face[:, :, ::-1]
        return np.ascontiguousarray(face), crop_box

    def _predictions(
        self, scores: np.ndarray, boxes: Sequence[tuple[Box, Box]]
    ) -> list[Prediction]:
        labels = self.labels
        out = []
        for row, (box, crop_box) in zip(scores, boxes, strict=True):
            k = int(np.argmax(row))
            out.append(
                Prediction(
                    box=box,
                    label=labels[k],
                    label_index=k,
                    score=float(row[k]),
                    scores={label: float(v) for label, v in zip(labels, row, strict=True)},
                    crop_box=crop_box,
                )
            )
        return out

    def predict_batch(
        self,
        images: Sequence[ImageInput],
        faces: FacesArg | Sequence[FacesArg] = "detect",
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[list[Prediction]]:
        """Predictions for every face of every image, with all faces run together.

        ``faces`` is ``"detect"`` or ``"whole"`` for all images, or a sequence with one entry
        per image (``"detect"``, ``"whole"`` or a list of ``(x, y, w, h)`` boxes).
        ``max_pixels`` (default 40 MP, ``None``: no limit): a larger image raises
        :class:`ImageTooLargeError` -- for bytes and paths before it is decoded.
        Returns one (possibly empty) list per image.
        """
        images = list(images)
        if isinstance(faces, str):
            per_image: list[FacesArg] = [faces] * len(images)
        else:
            per_image = list(faces)  # type: ignore[arg-type]
            if len(per_image) != len(images):
                raise ValueError(
                    f"faces must be 'detect', 'whole' or one entry per image: got "
                    f"{len(per_image)} entries for {len(images)} images"
                )
        crops: list[np.ndarray] = []
        owners: list[tuple[int, Box, Box]] = []
        for index, (image, face_arg) in enumerate(zip(images, per_image, strict=True)):
            rgb = decode_image(image, max_pixels=max_pixels)
            whole = isinstance(face_arg, str) and face_arg == "whole"
            for raw, box in self._face_boxes(rgb, face_arg):
                face, crop_box = self._face_input(rgb, raw, whole)
                crops.append(face)
                owners.append((index, box, crop_box))
        results: list[list[Prediction]] = [[] for _ in images]
        if not crops:
            return results
        scores = self.run(self._contract.preprocess(np.stack(crops)))
        preds = self._predictions(scores, [(b, c) for _, b, c in owners])
        for (index, _, _), pred in zip(owners, preds, strict=True):
            results[index].append(pred)
        return results

    def predict(
        self,
        image: ImageInput,
        faces: FacesArg = "detect",
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[Prediction]:
        """Predictions for the faces in one image.

        ``image``: RGB ``uint8`` ``(H, W, 3)`` (grayscale ``(H, W)`` and RGBA accepted), a path
        or encoded bytes. ``faces``: ``"detect"`` (the detector's boxes, largest first; no face
        -> ``[]``), ``"whole"`` (the whole image is the face) or a list of ``(x, y, w, h)``
        boxes. Detected and given boxes are cropped with the contract's ``face_margin``.
        ``max_pixels``: see :meth:`predict_batch` (:class:`ImageTooLargeError` above it).
        """
        return self.predict_batch([image], [faces], max_pixels=max_pixels)[0]
