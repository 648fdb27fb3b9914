"""ONNX Runtime execution providers for FER models: probing, options and fallback (no torch).

* :func:`gpu_status` and :func:`tensorrt_library` look for an NVIDIA driver with a device and for
  TensorRT's runtime library with ctypes, without touching ORT's CUDA provider (which logs loader
  errors on a machine without a GPU);
* :func:`normalise_providers` turns ``providers=`` (``"auto"``, short names, ORT names or a list)
  into ORT provider names;
* :func:`provider_options` builds each provider's options (TensorRT: engine cache and batch
  profile from :class:`ProviderSettings`);
* :func:`open_session` creates the ``onnxruntime.InferenceSession``: ``auto`` walks TensorRT >
  CUDA > CPU and skips what cannot work (recording why), an explicit request gets exactly its
  provider or :class:`ProviderUnavailableError` -- never a silent CPU fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

try:
    import onnxruntime as ort
except ImportError as _exc:  # left out on linux aarch64: say what to install
    from fer_export._ort import onnxruntime_missing

    raise onnxruntime_missing(_exc) from _exc

from fer_export.contract import ModelLoadError

__all__ = [
    "PROVIDER_NAMES",
    "ProviderSettings",
    "ProviderUnavailableError",
    "gpu_status",
    "gpu_unusable_reason",
    "normalise_providers",
    "open_session",
    "provider_options",
    "short_name",
    "tensorrt_library",
]

#: Short provider names and their ONNX Runtime names, in "auto" order.
PROVIDER_NAMES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items()}

ProviderOptions: TypeAlias = dict[str, Any]


class ProviderUnavailableError(RuntimeError):
    """An execution provider that was asked for explicitly cannot be used on this machine."""


def short_name(provider: str) -> str:
    """``"tensorrt"``, ``"cuda"`` or ``"cpu"`` for those ORT names; any other name unchanged."""
    return _SHORT_NAMES.get(provider, provider)


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
def tensorrt_library() -> str | None:
    """Path/name of a loadable TensorRT runtime library (``libnvinfer``), or None. Cached."""
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


def gpu_unusable_reason(provider: str, device_id: int) -> str | None:
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
    if provider == PROVIDER_NAMES["tensorrt"] and tensorrt_library() is None:
        return "TensorRT runtime library (libnvinfer) not found; install TensorRT 10"
    return None


def normalise_providers(providers: str | Sequence[str]) -> tuple[bool, list[str]]:
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
# Provider options and the session with its fallbacks.


@dataclass(frozen=True)
class ProviderSettings:
    """What the GPU providers need to know about one model.

    ``input_shapes``: each graph input's per-sample shape (``{"image": (3, S, S)}``...), for
    TensorRT's optimisation profile; ``trt_batch``: its ``(min, opt, max)`` batch sizes
    (``static_batch``, when the graph fixes one, replaces all three).
    """

    device_id: int
    trt_cache_dir: Path
    trt_fp16: bool
    trt_batch: tuple[int, int, int]
    input_shapes: Mapping[str, tuple[int, ...]]
    static_batch: int | None = None


def provider_options(name: str, settings: ProviderSettings) -> ProviderOptions:
    """ORT's options for provider ``name`` (creates TensorRT's cache folder)."""
    if name == PROVIDER_NAMES["cuda"]:
        # HEURISTIC: no exhaustive cuDNN benchmark per new input shape (batch sizes vary).
        return {"device_id": settings.device_id, "cudnn_conv_algo_search": "HEURISTIC"}
    if name != PROVIDER_NAMES["tensorrt"]:
        return {}
    try:
        settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProviderUnavailableError(
            f"cannot create the TensorRT cache folder {settings.trt_cache_dir} ({exc}); "
            "pass trt_cache_dir= a writable folder"
        ) from exc

    def shapes(batch: int) -> str:
        return ",".join(
            f"{input_name}:{'x'.join(str(d) for d in (batch, *shape))}"
            for input_name, shape in settings.input_shapes.items()
        )

    lo, opt, hi = settings.trt_batch
    if settings.static_batch is not None:
        lo = opt = hi = settings.static_batch
    return {
        "device_id": settings.device_id,
        "trt_fp16_enable": settings.trt_fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(settings.trt_cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(settings.trt_cache_dir),
        "trt_profile_min_shapes": shapes(lo),
        "trt_profile_opt_shapes": shapes(opt),
        "trt_profile_max_shapes": shapes(hi),
    }


def _fallback_chain(first: str) -> list[str]:
    """``first`` with its fallbacks for the nodes it cannot run (TensorRT > CUDA > CPU)."""
    chain = [first]
    if first == PROVIDER_NAMES["tensorrt"]:
        chain.append(PROVIDER_NAMES["cuda"])
    if first != PROVIDER_NAMES["cpu"]:
        chain.append(PROVIDER_NAMES["cpu"])
    return chain


def _new_session(
    path: Path, names: Sequence[str], settings: ProviderSettings, options: ort.SessionOptions
) -> ort.InferenceSession:
    """An ORT session of ``path`` on ``names``; ModelLoadError when ORT cannot load it."""
    provider_opts = [provider_options(name, settings) for name in names]
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=list(names), provider_options=provider_opts
        )
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph...)
        raise ModelLoadError(
            f"onnxruntime cannot load {path} with {', '.join(names)}: {type(exc).__name__}: {exc}"
        ) from exc


def open_session(
    path: Path,
    auto: bool,
    wanted: Sequence[str],
    settings: ProviderSettings,
    options: ort.SessionOptions,
) -> tuple[ort.InferenceSession, list[str]]:
    """``(session, why faster providers were skipped)`` for ``path`` on ``wanted`` (ORT names
    from :func:`normalise_providers`).

    ``auto``: the first of ``wanted`` that is usable here and that ORT really makes the main
    provider (ORT silently replaces a failing provider by CPU: that counts as not working).
    Otherwise exactly ``wanted``, its first the main provider, or
    :class:`ProviderUnavailableError`. :class:`ModelLoadError` when ORT cannot load the file.
    """
    if not auto:
        for name in wanted:
            reason = gpu_unusable_reason(name, settings.device_id)
            if reason is not None:
                raise ProviderUnavailableError(
                    f"{short_name(name)} requested for {path} but unavailable: {reason}"
                )
        session = _new_session(path, wanted, settings, options)
        got = session.get_providers()
        if not got or got[0] != wanted[0]:
            raise ProviderUnavailableError(
                f"{short_name(wanted[0])} requested for {path} but onnxruntime fell back to "
                f"{got} (see its log above for the cause)"
            )
        return session, []

    skipped: list[str] = []
    for name in wanted:
        reason = gpu_unusable_reason(name, settings.device_id)
        if reason is not None:
            skipped.append(f"{short_name(name)}: {reason}")
            continue
        try:
            session = _new_session(path, _fallback_chain(name), settings, options)
        except (ModelLoadError, ProviderUnavailableError) as exc:
            if name == PROVIDER_NAMES["cpu"]:
                raise
            skipped.append(f"{short_name(name)}: {exc}")
            continue
        got = session.get_providers()
        if got and got[0] == name:
            return session, skipped
        skipped.append(f"{short_name(name)}: onnxruntime fell back to {got}")
    raise ProviderUnavailableError(  # pragma: no cover - CPU always works
        f"no execution provider works for {path}: {'; '.join(skipped)}"
    )
