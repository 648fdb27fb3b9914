"""Fixtures for the runtime tests: tiny ONNX models built with onnx.helper (no torch) and
synthetic face images that OpenCV's Haar cascade detects."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fer_export.contract import ModelContract

LABELS = ("neutral", "happiness", "surprise", "sadness")
SIZE = 16
AU_CENTRES = ((30.0, 35.0), (70.0, 35.0), (50.0, 75.0))


def tiny_contract(**changes: Any) -> ModelContract:
    """A valid contract for the tiny models (4 labels, 16x16 input)."""
    values: dict[str, Any] = {
        "labels": LABELS,
        "input_size": SIZE,
        "mean": (0.5, 0.4, 0.3),
        "std": (0.25, 0.2, 0.3),
        "model_name": "tiny",
        "model_version": "0.0.1",
    }
    values.update(changes)
    return ModelContract(**values)


def weights(num_classes: int = len(LABELS)) -> np.ndarray:
    """The fixed (3, C) weight of the tiny models."""
    return np.linspace(-1.0, 1.0, 3 * num_classes, dtype=np.float32).reshape(3, num_classes)


def expected_scores(
    batch: np.ndarray, attention: np.ndarray | None = None, num_classes: int = len(LABELS)
) -> np.ndarray:
    """What the tiny models compute: mean over pixels (times mean attention) @ W."""
    pooled = batch.astype(np.float64).mean(axis=(2, 3))
    if attention is not None:
        pooled = pooled * attention.astype(np.float64).mean(axis=(2, 3))
    return (pooled @ weights(num_classes).astype(np.float64)).astype(np.float32)


def build_model(
    *,
    contract: ModelContract | None = None,
    metadata: dict[str, str] | None = None,
    attention_input: bool = False,
    image_name: str = "image",
    image_shape: tuple[int | str, ...] = ("N", 3, SIZE, SIZE),
    num_classes: int = len(LABELS),
    batch_dim: int | str = "N",
) -> onnx.ModelProto:
    """image (N,3,S,S) -> GlobalAveragePool -> Flatten [* mean(attention)] -> MatMul W -> scores.

    ``metadata`` (default: ``contract.to_metadata()``) goes into ``metadata_props``.
    """
    nodes = [
        helper.make_node("GlobalAveragePool", [image_name], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info(image_name, TensorProto.FLOAT, list(image_shape))]
    feature = "flat"
    if attention_input:
        inputs.append(
            helper.make_tensor_value_info(
                "attention", TensorProto.FLOAT, [batch_dim, 1, SIZE, SIZE]
            )
        )
        nodes += [
            helper.make_node("GlobalAveragePool", ["attention"], ["att_pooled"]),
            helper.make_node("Flatten", ["att_pooled"], ["att_flat"], axis=1),
            helper.make_node("Mul", ["flat", "att_flat"], ["weighted"]),
        ]
        feature = "weighted"
    nodes.append(helper.make_node("MatMul", [feature, "W"], ["scores"]))
    graph = helper.make_graph(
        nodes,
        "tiny_fer",
        inputs,
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch_dim, num_classes])],
        initializer=[numpy_helper.from_array(weights(num_classes), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is None:
        metadata = (contract or tiny_contract()).to_metadata()
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


ModelFactory = Callable[..., Path]


#: A progress line on stderr (``fer-export TASK: PHASE ...``), which may precede the error;
#: the error itself is one line, the last: ``fer-export: error: ...``.
PROGRESS_LINE = re.compile(r"fer-export [a-z0-9]+: \S.*")


def assert_one_error_line(err: str, message: str) -> None:
    """Checks that ``err`` ends in one ``fer-export: error:`` line containing ``message``,
    after nothing but progress lines, with no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert lines[-1].startswith("fer-export: error: ") and message in lines[-1], err
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines[:-1]), err


# Captured now: sys.modules["conftest"] is whichever package's conftest was imported last.
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture(scope="session")
def helpers() -> types.ModuleType:
    """This module (build_model, tiny_contract, expected_scores, draw_face...), so that tests
    need not import ``conftest`` by name (other packages have one too)."""
    return _THIS_MODULE


@pytest.fixture
def make_model(tmp_path: Path) -> ModelFactory:
    """``make_model(name="m.onnx", **build_model_kwargs) -> path`` of a saved tiny model."""

    def factory(name: str = "tiny.onnx", **kwargs: Any) -> Path:
        path = tmp_path / name
        onnx.save(build_model(**kwargs), str(path))
        return path

    return factory


@pytest.fixture
def model_path(make_model: ModelFactory) -> Path:
    """A tiny one-input ("baked" attention) model."""
    return make_model()


@pytest.fixture
def attention_model_path(make_model: ModelFactory) -> Path:
    """A tiny two-input model (``attention == "input"``)."""
    contract = tiny_contract(attention="input", au_centres=AU_CENTRES)
    return make_model("attention.onnx", contract=contract, attention_input=True)


def draw_face(size: int = 200, skin: tuple[int, int, int] = (205, 160, 130)) -> np.ndarray:
    """A cartoon frontal face (RGB uint8 ``(size, size, 3)``) the Haar cascade detects."""
    n = size
    img = np.full((n, n, 3), (40, 60, 90), np.uint8)
    cx, cy = n // 2, n // 2
    cv2.ellipse(img, (cx, cy), (int(0.34 * n), int(0.45 * n)), 0, 0, 360, skin, -1)
    dark = (40, 30, 25)
    ey = int(cy - 0.1 * n)
    for side in (-1, 1):
        ex = int(cx + side * 0.15 * n)
        cv2.ellipse(img, (ex, ey), (int(0.07 * n), int(0.035 * n)), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(img, (ex, ey), int(0.028 * n), dark, -1)
        brow = (
            (int(cx + side * 0.05 * n), int(ey - 0.09 * n)),
            (int(cx + side * 0.25 * n), int(ey - 0.08 * n)),
        )
        cv2.line(img, brow[0], brow[1], dark, max(2, n // 25))
    cv2.line(
        img, (cx, int(cy - 0.03 * n)), (cx, int(cy + 0.1 * n)), (150, 110, 90), max(2, n // 60)
    )
    cv2.ellipse(
        img, (cx, int(cy + 0.24 * n)), (int(0.13 * n), int(0.03 * n)), 0, 0, 360, (120, 50, 60), -1
    )
    return img


@pytest.fixture(scope="session")
def face_scene() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 400x600 RGB scene with one drawn 200 px face at (200, 100); returns (image, face
    region)."""
    scene = np.full((400, 600, 3), (90, 100, 110), np.uint8)
    scene[100:300, 200:400] = draw_face(200)
    return scene, (200, 100, 200, 200)


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A real 64x48 PNG with some structure."""
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (64, 48))
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    """A real 64x48 JPEG."""
    rng = np.random.default_rng(1)
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (64, 48))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()
