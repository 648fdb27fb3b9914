"""Drawing face boxes and labels onto frames (OpenCV only)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fer_export.runtime import Prediction

__all__ = ["draw_predictions"]

_BOX_COLOUR = (40, 220, 60)  # RGB
_TEXT_COLOUR = (0, 0, 0)


def draw_predictions(rgb: np.ndarray, predictions: Sequence[Prediction]) -> np.ndarray:
    """A copy of the RGB ``uint8`` image ``rgb`` with each face's box and ``label score``.

    The line width and font scale follow the image size, so small and large frames both stay
    readable; the label sits above the box (inside it when the box touches the top edge).
    """
    out = np.ascontiguousarray(rgb).copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(height, width) / 240))
    font_scale = max(0.35, min(height, width) / 700)
    for p in predictions:
        x, y, w, h = p.box
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), _BOX_COLOUR, thickness)
        text = f"{p.label} {p.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = y - th - base - 2 if y - th - base - 2 >= 0 else y
        cv2.rectangle(out, (x, top), (x + tw + 2, top + th + base + 2), _BOX_COLOUR, -1)
        cv2.putText(
            out,
            text,
            (x + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            _TEXT_COLOUR,
            thickness,
            cv2.LINE_AA,
        )
    return out
