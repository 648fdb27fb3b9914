"""ONNX export of FER models and ONNX Runtime inference for edge GPUs.

The runtime (:class:`FERSession`, :mod:`fer_export.contract`, face detection) needs no torch.
:func:`export_onnx` lives in :mod:`fer_export.export` and needs the ``export`` extra
(``pip install "fer-export[export]"``: torch, onnxscript, capsnet-model); it is imported on
first use, so ``import fer_export`` works on an edge box without torch.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

from fer_export.contract import ContractError, ModelContract

__version__ = _metadata.version("fer-export")

__all__ = ["ContractError", "FERSession", "ModelContract", "__version__", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name == "FERSession":
        from fer_export.runtime import FERSession

        return FERSession
    if name == "export_onnx":
        try:
            from fer_export.export import export_onnx
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"fer_export.export_onnx needs the export extra ({exc.name} is missing): "
                'pip install "fer-export[export]"'
            ) from exc
        return export_onnx
    raise AttributeError(f"module 'fer_export' has no attribute {name!r}")
