"""AU-aware attention maps (EAC-Net style) for E2-Capsnet.

Twenty action-unit (AU) centres are placed on the face from its 68 iBUG landmarks (0-based
indexing: jaw 0-16, right brow 17-21, left brow 22-26, nose 27-35, right eye 36-41, left eye
42-47, outer lips 48-59, inner lips 60-67; "right" is the subject's right, the image left).
Every centre paints a diamond ``max(0, 1 - 0.07 (|dx| + |dy|))`` on a 100x100 grid (it
reaches zero 1/0.07 = 14.3 px away); overlapping diamonds are combined by maximum. The map is then
resized to the network's input size. All values lie in [0, 1].

Centres (index: where, AU it is meant to cover; :data:`AU_RULE` holds this table as data and
:func:`au_centres_from_landmarks` computes the centres from it):

====  ==========================================  ============
0, 1  inner brow ends (21, 22)                    AU1
2, 3  outer brow ends (17, 26)                    AU2
4, 5  brow middles (19, 24)                       AU4
6, 7  upper eyelid middles (37-38, 43-44)         AU5
8, 9  cheeks: half an eye distance below each     AU6
      eye centre
10,11 lower eyelid middles (40-41, 46-47)         AU7
12,13 sides of the nose (midpoints 29-31, 29-35)  AU9
14,15 upper lip (50, 52)                          AU10
16,17 lip corners (48, 54)                        AU12, AU15
18    mouth centre (mean of 62 and 66)            AU25, AU26
19    chin (midpoint of 57 and 8)                 AU17
====  ==========================================  ============
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

NUM_AU_CENTRES = 20
MAP_SIZE = 100
FALLOFF = 0.07


class AUCentre(NamedTuple):
    """One row of :data:`AU_RULE`: the centre is the mean of ``landmarks`` (0-based iBUG
    indices) moved down by ``down`` eye distances."""

    landmarks: tuple[int, ...]
    down: float


#: How the 20 AU centres are computed from 68 iBUG landmarks, as data (the table above, row by
#: row): centre = mean of the row's landmarks + (0, down x eye distance), the eye distance being
#: |mean(42..47) - mean(36..41)|. Exported models carry it (fer-export's ``fer.au_rule``), so a
#: runtime without this package applies exactly the rule the model was trained with.
AU_RULE: tuple[AUCentre, ...] = (
    AUCentre((21,), 0.0),
    AUCentre((22,), 0.0),
    AUCentre((17,), 0.0),
    AUCentre((26,), 0.0),
    AUCentre((19,), 0.0),
    AUCentre((24,), 0.0),
    AUCentre((37, 38), 0.0),
    AUCentre((43, 44), 0.0),
    AUCentre(tuple(range(36, 42)), 0.5),
    AUCentre(tuple(range(42, 48)), 0.5),
    AUCentre((40, 41), 0.0),
    AUCentre((46, 47), 0.0),
    AUCentre((29, 31), 0.0),
    AUCentre((29, 35), 0.0),
    AUCentre((50,), 0.0),
    AUCentre((52,), 0.0),
    AUCentre((48,), 0.0),
    AUCentre((54,), 0.0),
    AUCentre((62, 66), 0.0),
    AUCentre((57, 8), 0.0),
)
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))


def au_centres_from_landmarks(
    landmarks68: np.ndarray, rule: Sequence[AUCentre] = AU_RULE
) -> np.ndarray:
    """The AU centres (len(rule), 2) float32 as (x, y), in the coordinates of the (68, 2)
    landmarks, computed with ``rule`` (default :data:`AU_RULE`: the 20 centres)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected landmarks of shape (68, 2), got {lm.shape}")
    eye_dist = float(
        np.linalg.norm(lm[list(LEFT_EYE)].mean(axis=0) - lm[list(RIGHT_EYE)].mean(axis=0))
    )
    if not rule:
        return np.zeros((0, 2), np.float32)
    centres = [
        lm[list(row.landmarks)].mean(axis=0) + np.array([0.0, row.down * eye_dist]) for row in rule
    ]
    return np.stack(centres).astype(np.float32).reshape(-1, 2)


def _resize(m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if m.shape == hw:
        return m
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0, 0]
    return out.clamp_(0.0, 1.0).numpy()


def au_attention_map(
    centres: np.ndarray,
    size: int = MAP_SIZE,
    out_size: int | tuple[int, int] | None = None,
    falloff: float = FALLOFF,
) -> np.ndarray:
    """Paint the AU attention map.

    ``centres`` (N, 2) are (x, y) pixel positions on a ``size x size`` grid. Returns a float32
    map (size, size) -- or resized (bilinear) to ``out_size`` -- with values in [0, 1]:
    ``max_n max(0, 1 - falloff * (|x - x_n| + |y - y_n|))``.
    """
    c = np.asarray(centres, dtype=np.float32).reshape(-1, 2)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    if len(c) == 0:
        m = np.zeros((size, size), dtype=np.float32)
    else:
        dist = np.abs(xs[None] - c[:, 0, None, None]) + np.abs(ys[None] - c[:, 1, None, None])
        m = np.clip(1.0 - falloff * dist, 0.0, 1.0).max(axis=0).astype(np.float32)
    return m if out_size is None else _resize(m, out_size)


def mean_face_template() -> np.ndarray:
    """Built-in approximate mean face: 68 iBUG landmarks (68, 2) in [0, 1] coordinates.

    A synthetic, symmetric face for a tightly aligned crop (eyes at 40 % height, mouth at
    78 %, chin at 95 %), built from ellipses and arcs; not fitted to any data set.
    """
    pts: list[tuple[float, float]] = []
    for i in range(17):  # jaw: lower half of an ellipse, image left to image right
        th = np.pi * (1.0 - i / 16.0)
        pts.append((0.5 + 0.42 * np.cos(th), 0.45 + 0.50 * np.sin(th)))
    for x0 in (0.18, 0.56):  # brows
        for k in range(5):
            pts.append((x0 + 0.26 * k / 4.0, 0.30 - 0.04 * np.sin(np.pi * k / 4.0)))
    for k in range(4):  # nose bridge
        pts.append((0.5, 0.40 + 0.06 * k))
    for k in range(5):  # nose bottom
        pts.append((0.42 + 0.04 * k, 0.63 + 0.02 * (1.0 - abs(k - 2) / 2.0)))
    for cx in (0.31, 0.69):  # eyes: corner, two upper, corner, two lower
        w, h, cy = 0.14, 0.05, 0.40
        pts += [
            (cx - w / 2, cy),
            (cx - w / 6, cy - h / 2),
            (cx + w / 6, cy - h / 2),
            (cx + w / 2, cy),
            (cx + w / 6, cy + h / 2),
            (cx - w / 6, cy + h / 2),
        ]
    for n, rx, ry in ((12, 0.15, 0.06), (8, 0.10, 0.02)):  # outer then inner lips
        for k in range(n):
            th = np.pi + 2.0 * np.pi * k / n
            pts.append((0.5 + rx * np.cos(th), 0.78 + ry * np.sin(th)))
    return np.asarray(pts, dtype=np.float32)


def template_attention_map(size: int | tuple[int, int] = 224) -> np.ndarray:
    """AU attention map of the built-in mean face, resized to ``size``; values in [0, 1]."""
    centres = au_centres_from_landmarks(mean_face_template() * MAP_SIZE)
    return au_attention_map(centres, size=MAP_SIZE, out_size=size)


def landmark_attention_map(
    landmarks68: np.ndarray, image_size: int | tuple[int, int], falloff: float = FALLOFF
) -> np.ndarray:
    """AU attention map of one face from its 68 landmarks, at the image's resolution.

    ``landmarks68`` (68, 2) are (x, y) pixel positions in an image of ``image_size``
    (``int`` or ``(height, width)``). The AU centres are mapped onto the 100x100 grid (each
    axis scaled separately), painted there as in the paper, and the map is resized back to
    (height, width). Values lie in [0, 1].
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    centres = au_centres_from_landmarks(landmarks68)
    grid = centres * np.array([MAP_SIZE / w, MAP_SIZE / h], dtype=np.float32)
    return au_attention_map(grid, size=MAP_SIZE, out_size=(h, w), falloff=falloff)
