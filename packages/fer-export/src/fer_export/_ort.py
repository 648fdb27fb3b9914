"""What to install when ONNX Runtime is missing: fer-export leaves it out on linux aarch64."""

from __future__ import annotations

import platform
import sys

__all__ = ["OnnxRuntimeMissingError", "onnxruntime_missing"]

JETSON_HINT = (
    "on a Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack "
    "(https://elinux.org/Jetson_Zoo#ONNX_Runtime); on other linux aarch64 boxes, PyPI's CPU "
    'build: pip install "fer-export[cpu]"'
)


class OnnxRuntimeMissingError(ModuleNotFoundError):
    """``import onnxruntime`` failed; the message says which build to install here."""


def install_hint(system: str | None = None, machine: str | None = None) -> str:
    """Returns how to install ONNX Runtime on ``system``/``machine`` (default: this machine)."""
    system = sys.platform if system is None else system
    machine = (platform.machine() if machine is None else machine).lower()
    if system.startswith("linux") and machine in ("aarch64", "arm64"):
        return JETSON_HINT
    if system.startswith("linux") and machine in ("x86_64", "amd64"):
        return (
            "pip install onnxruntime-gpu (runs on CPU too; for CUDA and cuDNN from pip "
            'instead of the system: pip install "onnxruntime-gpu[cuda,cudnn]")'
        )
    return "pip install onnxruntime"


def onnxruntime_missing(exc: ImportError) -> OnnxRuntimeMissingError:
    """Returns the error to raise from a failed ``import onnxruntime`` (chain ``exc``)."""
    error = OnnxRuntimeMissingError(
        f"fer-export needs ONNX Runtime, which is not installed ({exc}); install {install_hint()}"
    )
    error.name = "onnxruntime"
    return error
