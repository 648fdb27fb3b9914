"""fer-train: train -> evaluate -> export -> verify an E2-Capsnet facial expression model in
one run (``fer-train`` console script, ``python -m fer_train``, ``accelerate launch -m
fer_train``)."""

__version__ = "0.1.0"
