"""Procedural synthetic faces: the embedded data set, so that everything runs with no download.

Each of the 7 expressions is a point in a small face-parameter space — mouth curvature and
opening, brow angle and height, eye openness — drawn with jitter (neighbouring expressions
overlap a little), then rendered with random pose (rotation, scale, shift), skin and background
colour, lighting gradient and noise. Faces are roughly centred and upright, like aligned crops.

Labels follow the package's canonical order (``EXPRESSION_NAMES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from capsnet_model.datasets import EXPRESSIONS

# The package's one canonical label order (defined with the data set mappings).
EXPRESSION_NAMES = EXPRESSIONS


@dataclass(frozen=True)
class FaceParams:
    """Expression geometry: curvature > 0 smiles; brow_angle > 0 raises the inner brow ends."""

    mouth_curvature: float  # -1 (frown) .. 1 (smile)
    mouth_opening: float  # 0 (closed) .. 1 (wide open)
    brow_angle: float  # -1 (inner ends down: anger) .. 1 (inner ends up: sadness, fear)
    brow_raise: float  # 0 .. 1, brow height above the eyes
    eye_openness: float  # 0 (shut) .. 1 (wide)


PROTOTYPES: dict[str, FaceParams] = {
    "neutral": FaceParams(0.0, 0.0, 0.0, 0.3, 0.5),
    "happiness": FaceParams(0.85, 0.25, 0.0, 0.3, 0.35),
    "sadness": FaceParams(-0.7, 0.0, 0.6, 0.35, 0.35),
    "surprise": FaceParams(0.0, 0.9, 0.1, 0.9, 0.95),
    "fear": FaceParams(-0.25, 0.5, 0.7, 0.7, 0.85),
    "disgust": FaceParams(-0.45, 0.15, -0.3, 0.15, 0.2),
    "anger": FaceParams(-0.35, 0.05, -0.9, 0.1, 0.5),
}


def _jitter(p: FaceParams, rng: np.random.Generator, amount: float) -> FaceParams:
    def j(value: float, low: float, high: float) -> float:
        return float(np.clip(value + rng.normal(0.0, amount), low, high))

    return FaceParams(
        j(p.mouth_curvature, -1, 1),
        j(p.mouth_opening, 0, 1),
        j(p.brow_angle, -1, 1),
        j(p.brow_raise, 0, 1),
        j(p.eye_openness, 0.05, 1),
    )


def render_face(
    label: int, rng: np.random.Generator, size: int = 64, *, jitter: float = 0.08
) -> np.ndarray:
    """Returns one (size, size, 3) uint8 RGB face showing expression ``label``."""
    if not 0 <= label < len(EXPRESSION_NAMES):
        raise ValueError(f"label must be in 0..{len(EXPRESSION_NAMES) - 1}, got {label!r}")
    p = _jitter(PROTOTYPES[EXPRESSION_NAMES[label]], rng, jitter)
    scale = 4  # draw large, then downsample: smooth edges
    n = size * scale
    background = rng.uniform(30, 220, size=3)
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = background
    skin = np.array([rng.uniform(150, 235), rng.uniform(110, 190), rng.uniform(90, 160)])
    cx, cy = n / 2, n / 2
    fw, fh = 0.36 * n, 0.46 * n
    cv2.ellipse(img, (int(cx), int(cy)), (int(fw), int(fh)), 0, 0, 360, skin.tolist(), -1)
    dark = (skin * 0.25).tolist()
    thick = max(2, n // 64)

    # Eyes: ellipses whose height follows the openness.
    eye_y, eye_dx, eye_w = cy - 0.12 * n, 0.15 * n, 0.07 * n
    eye_h = max(1.0, 0.045 * n * p.eye_openness)
    for side in (-1, 1):
        centre = (int(cx + side * eye_dx), int(eye_y))
        cv2.ellipse(img, centre, (int(eye_w), int(eye_h)), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(img, centre, int(min(eye_h, 0.025 * n)), dark, -1)

    # Brows: lines above the eyes, inner ends raised or lowered by the brow angle.
    brow_y = eye_y - 0.06 * n - 0.06 * n * p.brow_raise
    for side in (-1, 1):
        inner = (cx + side * 0.05 * n, brow_y - 0.045 * n * p.brow_angle)
        outer = (cx + side * 0.25 * n, brow_y + 0.015 * n * p.brow_angle)
        cv2.line(
            img, (int(inner[0]), int(inner[1])), (int(outer[0]), int(outer[1])), dark, thick * 2
        )

    # Nose.
    cv2.line(
        img, (int(cx), int(cy - 0.05 * n)), (int(cx - 0.02 * n), int(cy + 0.08 * n)), dark, thick
    )

    # Mouth: upper and lower lips as parabolas; curvature bends the corners, opening parts them.
    mouth_y, half = cy + 0.22 * n, 0.14 * n
    xs = np.linspace(-half, half, 48)
    bend = -p.mouth_curvature * 0.07 * n * (xs / half) ** 2  # corners up for a smile
    gap = 0.08 * n * p.mouth_opening * (1 - (xs / half) ** 2)
    upper = np.stack([cx + xs, mouth_y + bend - gap / 2], axis=1)
    lower = np.stack([cx + xs, mouth_y + bend + gap / 2], axis=1)
    if p.mouth_opening > 0.1:
        polygon = np.concatenate([upper, lower[::-1]]).astype(np.int32)
        cv2.fillPoly(img, [polygon], (60, 20, 30))
    for lip in (upper, lower):
        cv2.polylines(img, [lip.astype(np.int32)], False, (150, 50, 60), thick)

    # Pose: rotation, scale and shift as in loosely aligned crops.
    angle = rng.uniform(-12, 12)
    zoom = rng.uniform(0.85, 1.1)
    shift = rng.uniform(-0.06, 0.06, size=2) * n
    matrix = np.asarray(cv2.getRotationMatrix2D((cx, cy), angle, zoom), dtype=np.float64)
    matrix[:, 2] += shift
    img = np.asarray(
        cv2.warpAffine(img, matrix, (n, n), borderMode=cv2.BORDER_REPLICATE), dtype=np.float32
    )

    # Lighting: a linear gradient in a random direction, then sensor noise.
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    light = 1.0 + rng.uniform(0.0, 0.35) * (math.cos(theta) * xx + math.sin(theta) * yy)
    img = img * light[..., None] * rng.uniform(0.8, 1.15)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = img + rng.normal(0.0, rng.uniform(2.0, 8.0), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticFaces(Dataset):
    """``n`` procedural faces, balanced over the 7 expressions, identical for equal seeds.

    Item ``i`` is ``(image, label)``: a (size, size, 3) uint8 RGB array (or ``transform(image)``)
    and an int label. Each item is drawn from its own generator seeded with (seed, i), so items
    do not depend on the order they are read in or on the number of workers.
    """

    def __init__(self, n: int, *, seed: int = 0, size: int = 64, transform=None) -> None:
        if n <= 0:
            raise ValueError(f"n must be > 0, got {n!r}")
        self.n, self.seed, self.size, self.transform = n, seed, size, transform
        self.name = "synthetic"  # the data set's name, as the real loaders' FERDataset.name
        order = np.random.default_rng(seed).permutation(n)
        self.labels = [int(k % len(EXPRESSION_NAMES)) for k in order]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} faces")
        rng = np.random.default_rng([self.seed, index])
        image = render_face(self.labels[index], rng, self.size)
        return (self.transform(image) if self.transform else image), self.labels[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns all images as a float (N, 3, size, size) tensor in [0, 1] and the labels."""
        images = np.stack(
            [
                render_face(lab, np.random.default_rng([self.seed, i]), self.size)
                for i, lab in enumerate(self.labels)
            ]
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return x, torch.tensor(self.labels)
