"""End to end: fer-train (tiny budget) -> model.onnx -> fer-edge on images and over HTTP,
checked against the PyTorch model on the same images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from edge_helpers import serving

from capsnet_model.checkpoint import load_model
from capsnet_model.synthetic import SyntheticFaces
from fer_edge.cli import main as edge_main
from fer_edge.server import create_app
from fer_train.cli import main as train_main

TINY = [
    "data.synthetic_train=140",
    "data.synthetic_test=35",
    "train.epochs=2",
    "train.max_batches_per_epoch=3",
    "train.model=e2capsnet",
    "train.image_size=64",
    "train.model_kwargs={width: 0.0625, primary_channels: 4}",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fer-train") / "run"
    assert train_main([f"output_dir={out}", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """Eight unseen synthetic faces at the model's input size, written as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    faces = SyntheticFaces(8, seed=99, size=64)
    rgbs = [faces[i][0] for i in range(len(faces))]
    for i, rgb in enumerate(rgbs):
        assert cv2.imwrite(str(folder / f"face{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder, rgbs


def torch_scores(run: Path, rgbs: list[np.ndarray]) -> np.ndarray:
    """The selected PyTorch model on the same faces, preprocessed by capsnet-model."""
    model, info = load_model(run / "best.safetensors")
    x = torch.stack([info.preprocess(rgb) for rgb in rgbs])
    with torch.no_grad():
        return model(x).numpy()


def test_contract_files(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert 0.0 <= metrics["mean_class_accuracy"] <= 1.0
    assert (trained / "model.onnx").stat().st_size > 0
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in (trained / "report.md").read_text()


def test_fer_edge_run_agrees_with_pytorch(
    trained: Path, images: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    folder, rgbs = images
    out = tmp_path / "out.jsonl"
    code = edge_main(
        [
            "run",
            "--model",
            str(trained / "model.onnx"),
            "--source",
            str(folder),
            "--out",
            str(out),
            "--faces",
            "whole",
            "--providers",
            "cpu",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["file"] for row in lines] == [f"face{i}.png" for i in range(8)]
    reference = torch_scores(trained, rgbs)
    labels = json.loads((trained / "metrics.json").read_text()).get("labels")
    for row, want in zip(lines, reference, strict=True):
        assert row["error"] is None and len(row["faces"]) == 1
        face = row["faces"][0]
        assert face["box"] == [0, 0, 64, 64]
        got = np.array(list(face["raw_scores"].values()))
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert list(face["raw_scores"])[int(want.argmax())] == face["top_label"]
        assert face["label"] in (face["top_label"], "unknown")
        assert abs(sum(face["probabilities"].values()) - 1.0) < 1e-5
        if labels:
            assert list(face["raw_scores"]) == labels


@pytest.fixture(scope="module")
def server(trained: Path) -> Iterator[str]:
    with serving(create_app(trained / "model.onnx", providers="cpu", max_concurrency=2)) as url:
        yield url


def test_http_service_agrees_with_pytorch(
    trained: Path, images: tuple[Path, list[np.ndarray]], server: str
) -> None:
    folder, rgbs = images
    reference = torch_scores(trained, rgbs)
    for i, want in enumerate(reference):
        data = (folder / f"face{i}.png").read_bytes()
        r = httpx.post(
            f"{server}/predict",
            params={"faces": "whole"},
            files={"file": (f"face{i}.png", data, "image/png")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        faces = r.json()["faces"]
        assert len(faces) == 1
        got = np.array(list(faces[0]["raw_scores"].values()))
        np.testing.assert_allclose(got, want, atol=1e-4)
    meta = httpx.get(f"{server}/metadata", timeout=10).json()
    assert meta["input_size"] == 64
