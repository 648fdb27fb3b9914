"""Shipped presets (``fer-train --preset NAME``): ``rafdb-paper`` is the E2-Capsnet paper's
recipe; ``rafdb``, ``fer2013`` and ``affectnet`` are fer-train's improved recipe."""
