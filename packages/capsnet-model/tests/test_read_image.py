"""read_image: the training loaders' decoder refuses decompression bombs and names the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from capsnet_model.datasets import DatasetError, FERSample, load_folder, read_image
from fer_images.testing import png_bomb


def test_read_image_refuses_a_bomb_from_its_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20000, 20000))
    with pytest.raises(DatasetError, match=r"image too large \(image is 20000x20000.*bomb\.png"):
        read_image(bomb)


def test_read_image_limit_is_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.zeros((30, 40, 3), np.uint8))
    assert read_image(path).shape == (30, 40, 3)
    with pytest.raises(DatasetError, match="40x30"):
        read_image(path, max_pixels=1000)


def test_read_image_reasons(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(DatasetError, match="image file not found"):
        read_image(missing)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"unreadable or corrupt image \(no data.*empty\.jpg"):
        read_image(empty)
    text = tmp_path / "text.png"
    text.write_text("hello")
    with pytest.raises(DatasetError, match=r"unrecognised image format.*text\.png"):
        read_image(text)


def test_a_bomb_in_a_folder_is_skipped_with_its_reason(tmp_path: Path) -> None:
    for split in ("train",):
        for label in ("happy", "sad"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            cv2.imwrite(str(folder / "ok.png"), np.full((20, 20, 3), 128, np.uint8))
    (tmp_path / "train" / "sad" / "bomb.png").write_bytes(png_bomb(9000, 9000))
    data = load_folder(tmp_path, "train", on_error="skip", verify_images=True)
    assert len(data) == 2
    assert [row.reason.split(":")[0] for row in data.skipped] == ["bad image"]
    assert "image too large" in data.skipped[0].reason and "bomb.png" in data.skipped[0].where
    assert all(isinstance(s, FERSample) for s in data.samples)
