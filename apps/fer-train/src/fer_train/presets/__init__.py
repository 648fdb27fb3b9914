"""Shipped presets: the paper's settings per data set (``fer-train --preset NAME``)."""
