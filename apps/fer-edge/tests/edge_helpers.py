"""Test helpers for fer-edge (a uniquely named module, so that ``conftest`` names never clash):
a tiny FER-contract ONNX model made with onnx.helper (no torch) and face pictures the Haar
cascade finds."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fer_export.contract import ModelContract

LABELS = ("neutral", "happy", "sad", "angry", "surprised")
INPUT = 24


def make_contract() -> ModelContract:
    """The tiny model's contract (5 labels, 24 px input)."""
    return ModelContract(
        labels=LABELS,
        input_size=INPUT,
        mean=(0.45, 0.45, 0.45),
        std=(0.25, 0.25, 0.25),
        score_kind="logit",
        model_name="edge-tiny",
        model_version="0.0.1",
    )


def build_tiny_model(path: Path) -> Path:
    """Write ``image (N,3,24,24) -> 4x4 average pool -> flatten -> Gemm -> scores (N,5)``.

    Pooling to 6x6 cells keeps some spatial layout, so different faces get different scores.
    """
    rng = np.random.default_rng(7)
    features = 3 * 6 * 6
    weight = rng.normal(0.0, 0.3, (features, len(LABELS))).astype(np.float32)
    bias = np.linspace(-0.2, 0.2, len(LABELS), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["image"], ["cells"], kernel_shape=[4, 4], strides=[4, 4]
            ),
            helper.make_node("Flatten", ["cells"], ["vector"], axis=1),
            helper.make_node("Gemm", ["vector", "weight", "bias"], ["scores"]),
        ],
        "edge_tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, make_contract().to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def face_picture(size: int = 160, tone: int = 0) -> np.ndarray:
    """An RGB drawing of a frontal face (head, eyes, brows, nose, mouth) on a plain background.

    ``tone`` shifts the skin colour so that pictures differ.
    """
    img = np.full((size, size, 3), (70, 80, 100), np.uint8)
    c = size // 2
    skin = (200 - tone, 165 - tone // 2, 135)
    cv2.ellipse(img, (c, c), (int(size * 0.33), int(size * 0.44)), 0, 0, 360, skin, -1)
    eye_y = int(c - size * 0.1)
    for dx in (-1, 1):
        ex = int(c + dx * size * 0.15)
        cv2.ellipse(
            img, (ex, eye_y), (int(size * 0.07), int(size * 0.035)), 0, 0, 360, (240, 240, 240), -1
        )
        cv2.circle(img, (ex, eye_y), int(size * 0.028), (35, 25, 20), -1)
        cv2.line(
            img,
            (int(c + dx * size * 0.06), int(eye_y - size * 0.09)),
            (int(c + dx * size * 0.24), int(eye_y - size * 0.08)),
            (35, 25, 20),
            max(2, size // 25),
        )
    cv2.line(
        img, (c, int(c - size * 0.03)), (c, int(c + size * 0.1)), (150, 110, 90), max(2, size // 60)
    )
    cv2.ellipse(
        img,
        (c, int(c + size * 0.24)),
        (int(size * 0.13), int(size * 0.03)),
        0,
        0,
        360,
        (125, 50, 60),
        -1,
    )
    return img


def scene(faces: int = 1, tone: int = 0) -> np.ndarray:
    """A 240 x (240 * faces) RGB picture with ``faces`` drawn faces side by side."""
    out = np.full((240, 240 * max(faces, 1), 3), (95, 100, 105), np.uint8)
    for i in range(faces):
        out[40:200, 240 * i + 40 : 240 * i + 200] = face_picture(160, tone + 15 * i)
    return out


def encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    """``rgb`` encoded as ``ext`` bytes."""
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` on a real uvicorn server (background thread, free loopback port); yields
    its base URL and stops the server afterwards."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
