"""E2-Capsnet (Cao, Yao, An, arXiv 1912.02491) for facial expression recognition."""

from importlib import metadata as _metadata

from capsnet_model import models as _models  # noqa: F401  (registers the models)
from capsnet_model._io import atomic_write_bytes, atomic_write_text
from capsnet_model.registry import create_model, list_models, register_model

__version__ = _metadata.version("capsnet-model")

__all__ = [
    "__version__",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_model",
    "list_models",
    "register_model",
]
