"""Training augmentation with albumentations, applied jointly to the face and its AU attention map.

Geometric transforms (flip, affine, resize) move the image and the map together, so the map
keeps pointing at the same facial regions (the official E2-Capsnet code flipped the image
alone); photometric ones (colour, blur) and cutout touch the image only. The map is a float
mask in [0, 1], warped with bilinear interpolation so that it stays smooth.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (0 disables one)."""

    flip: float = 0.5
    affine: float = 0.7
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.06
    rotate: float = 10.0
    colour: float = 0.8
    blur: float = 0.2
    cutout: float = 0.3


class JointAugment:
    """Callable ``(image, attention) -> (image, attention)``.

    image: (H, W, 3) uint8 RGB. attention: (H, W) float32 in [0, 1] or None (then only the image
    is transformed). Both come back resized to ``image_size``. ``seed`` makes the random draws
    reproducible.
    """

    def __init__(
        self, image_size: int, config: AugmentConfig | None = None, *, seed: int | None = None
    ) -> None:
        c = config or AugmentConfig()
        self.image_size = image_size
        self.pipeline = A.Compose(
            [
                A.HorizontalFlip(p=c.flip),
                A.Affine(
                    scale=c.scale,
                    translate_percent=(-c.shift, c.shift),
                    rotate=(-c.rotate, c.rotate),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_LINEAR,
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=c.affine,
                ),
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=c.colour),
                A.GaussianBlur(blur_limit=(3, 5), p=c.blur),
                A.CoarseDropout(
                    num_holes_range=(1, 3),
                    hole_height_range=(0.1, 0.25),
                    hole_width_range=(0.1, 0.25),
                    fill=0,
                    p=c.cutout,
                ),
                A.Resize(
                    image_size,
                    image_size,
                    interpolation=cv2.INTER_AREA,
                    mask_interpolation=cv2.INTER_LINEAR,
                ),
            ],
            seed=seed,
        )

    def __call__(
        self, image: np.ndarray, attention: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}"
            )
        if attention is None:
            out = self.pipeline(image=image)
            return out["image"], None
        if attention.shape != image.shape[:2]:
            raise ValueError(
                f"attention map {attention.shape} must match the image's {image.shape[:2]}"
            )
        out = self.pipeline(image=image, mask=attention.astype(np.float32))
        return out["image"], np.clip(out["mask"], 0.0, 1.0).astype(np.float32)
