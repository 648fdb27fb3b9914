"""fer-train: train -> evaluate -> export -> verify an E2-Capsnet facial expression model in
one run (``fer-train`` console script, ``python -m fer_train``, ``accelerate launch -m
fer_train``)."""

from importlib import metadata as _metadata

__version__ = _metadata.version("fer-train")
