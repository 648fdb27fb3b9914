"""Joint augmentation: geometry moves the face and its attention map together; colour, blur and
cutout leave the map alone."""

from __future__ import annotations

import numpy as np
import pytest

from capsnet_model.augment import AugmentConfig, JointAugment

OFF = dict(flip=0.0, affine=0.0, colour=0.0, blur=0.0, cutout=0.0)


def marked(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A face stand-in with a bright block on the left and an attention blob on the left."""
    image = np.zeros((size, size, 3), np.uint8)
    image[20:30, 5:15] = 255
    attention = np.zeros((size, size), np.float32)
    attention[20:30, 5:15] = 1.0
    return image, attention


def test_flip_moves_image_and_attention_together() -> None:
    image, attention = marked()
    out_image, out_attention = JointAugment(64, AugmentConfig(**{**OFF, "flip": 1.0}))(
        image, attention
    )
    assert out_attention is not None
    assert out_image[25, 64 - 10].max() == 255 and out_image[25, 10].max() == 0
    assert out_attention[25, 64 - 10] == pytest.approx(1.0) and out_attention[25, 10] == 0
    assert np.array_equal(out_image[..., 0] > 127, out_attention > 0.5)


def test_affine_keeps_the_map_aligned_and_in_range() -> None:
    image, attention = marked()
    augment = JointAugment(64, AugmentConfig(**{**OFF, "affine": 1.0}), seed=0)
    for _ in range(5):
        out_image, out_attention = augment(image, attention)
        assert out_attention is not None
        assert out_attention.min() >= 0.0 and out_attention.max() <= 1.0
        bright = out_image[..., 0] > 127
        assert (out_attention[bright] > 0.3).mean() > 0.9  # where the block went, the map went


def test_photometric_transforms_leave_the_map_untouched() -> None:
    image, attention = marked()
    augment = JointAugment(64, AugmentConfig(**{**OFF, "colour": 1.0, "blur": 1.0, "cutout": 1.0}))
    out_image, out_attention = augment(image, attention)
    assert np.array_equal(out_attention, attention)
    assert not np.array_equal(out_image, image)


def test_resize_and_image_only_calls() -> None:
    image, attention = marked(64)
    out_image, out_attention = JointAugment(32, AugmentConfig(**OFF))(image, attention)
    assert out_image.shape == (32, 32, 3) and out_attention is not None
    assert out_attention.shape == (32, 32)
    only, none = JointAugment(32)(image)
    assert only.shape == (32, 32, 3) and none is None


def test_bad_inputs_are_errors() -> None:
    image, attention = marked()
    with pytest.raises(ValueError, match="uint8 RGB"):
        JointAugment(32)(image.astype(np.float32), attention)
    with pytest.raises(ValueError, match="must match"):
        JointAugment(32)(image, attention[:10])
