"""int8 calibration from a folder: decoded through fer-images, bad and oversized files skipped."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_export.contract import ModelContract
from fer_export.quantize import image_dir_batches
from fer_images.testing import png_bomb


def _contract(order: str) -> ModelContract:
    return ModelContract(
        labels=("a", "b"),
        input_size=8,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        channel_order=order,
        pixel_scale=1.0,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    (root / "x.jpg").mkdir(parents=True)  # a folder with an image name
    red = np.zeros((16, 16, 3), np.uint8)
    red[:, :, 2] = 200  # red, in OpenCV's BGR order
    cv2.imwrite(str(root / "a_red.png"), red)
    cv2.imwrite(str(root / "b_grey.png"), np.full((30, 20, 3), 77, np.uint8))
    (root / "c_text.png").write_text("not an image")
    (root / "d_bomb.png").write_bytes(png_bomb(9000, 9000))
    return root


@pytest.mark.parametrize(("order", "channel"), [("RGB", 0), ("BGR", 2)])
def test_folder_calibration_skips_bad_and_oversized_files(
    folder: Path, order: str, channel: int
) -> None:
    batches = list(image_dir_batches(folder, _contract(order), count=10, batch_size=8))
    assert len(batches) == 1 and batches[0].shape == (2, 3, 8, 8)
    red, grey = batches[0]
    assert np.allclose(red[channel], 200) and np.allclose(np.delete(red, channel, 0), 0)
    assert np.allclose(grey, 77)


def test_folder_without_readable_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_bomb(9000, 9000))
    with pytest.raises(ValueError, match="no readable images"):
        list(image_dir_batches(tmp_path, _contract("RGB")))
