"""Fixtures for fer-edge: the tiny model, a CPU session, an image folder and a video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from edge_helpers import build_tiny_model, encode, scene


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model on disk (shared by the whole session)."""
    return build_tiny_model(tmp_path_factory.mktemp("model") / "edge_tiny.onnx")


@pytest.fixture(scope="session")
def session(model_path: Path):  # type: ignore[no-untyped-def]
    """A CPU FERSession of the tiny model."""
    from fer_export.runtime import FERSession

    return FERSession(model_path, "cpu")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder with 4 good images (one in a subfolder), a corrupt JPEG and a text file."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a_one.png").write_bytes(encode(scene(1)))
    (folder / "b_two.jpg").write_bytes(encode(scene(2, 10), ".jpg"))
    (folder / "c_none.png").write_bytes(encode(np.full((60, 80, 3), 128, np.uint8)))
    (folder / "sub" / "d_sub.png").write_bytes(encode(scene(1, 30)))
    good = encode(scene(1), ".jpg")
    (folder / "bad.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="session")
def video_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-frame 240x240 MJPG AVI at 10 fps: 4 frames with a face, then 2 of plain background."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (240, 240))
    assert writer.isOpened()
    for i in range(6):
        rgb = scene(1, 5 * i) if i < 4 else np.full((240, 240, 3), 90, np.uint8)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
