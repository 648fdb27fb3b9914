"""Export of E2-Capsnet checkpoints with either AU attention placement: a new checkpoint
(``before_pool`` recorded) and one written before the placement was recorded (built
``after_pool``) both export to graphs that match the model that was saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("capsnet_model")
ort = pytest.importorskip("onnxruntime")

from safetensors.torch import save as st_save  # noqa: E402

from capsnet_model import create_model  # noqa: E402
from capsnet_model.checkpoint import ModelInfo, save_model  # noqa: E402
from capsnet_model.data import Preprocess  # noqa: E402
from fer_export.export import export_onnx, read_contract  # noqa: E402

TINY: dict[str, Any] = {"width": 1 / 16, "image_size": 64, "primary_channels": 4}


def _trained(placement: str) -> Any:
    """A tiny E2-Capsnet whose capsule lengths spread over (0, 1), so that a wrong placement
    in the exported graph shows in the scores (untrained ones are ~1e-7 and near-equal)."""
    torch.manual_seed(0)
    model = create_model("e2capsnet", attention_placement=placement, **TINY)
    with torch.no_grad():
        model.routing.weight.mul_(1000.0)
        model.primary.conv.weight.mul_(10.0)
    return model.eval()


def _check(model: Any, onnx_path: Path) -> float:
    """Returns the largest |PyTorch - ONNX Runtime| score difference on random faces and maps
    (attention as an input)."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    image = rng.standard_normal((3, 3, 64, 64), np.float32)
    attention = rng.random((3, 1, 64, 64), np.float32)
    got = sess.run(["scores"], {"image": image, "attention": attention})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(image), torch.from_numpy(attention)).numpy()
    assert want.max() > 0.1  # spread scores: the comparison means something
    return float(np.abs(got - want).max())


def test_new_checkpoint_exports_before_pool(tmp_path: Path) -> None:
    model = _trained("before_pool")
    info = ModelInfo("e2capsnet", kwargs=dict(TINY), preprocess=Preprocess(64))
    ckpt = save_model(model, tmp_path / "new.safetensors", info)
    path = export_onnx(ckpt, tmp_path / "new.onnx", attention="input")
    assert read_contract(path).extra["model_kwargs"]["attention_placement"] == "before_pool"
    assert _check(model, path) <= 1e-4
    other = _trained("after_pool")
    other.load_state_dict(model.state_dict())  # same weights, the other placement
    assert _check(other, path) > 1e-3


def test_checkpoint_without_a_placement_exports_after_pool(tmp_path: Path) -> None:
    model = _trained("after_pool")
    meta = ModelInfo("e2capsnet", kwargs=dict(TINY), preprocess=Preprocess(64)).to_metadata()
    meta["model_kwargs"] = json.dumps(TINY, sort_keys=True)  # as capsnet-model 0.1 wrote it
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "old.safetensors"
    ckpt.write_bytes(st_save(state, metadata=meta))
    path = export_onnx(ckpt, tmp_path / "old.onnx", attention="input")
    assert read_contract(path).extra["model_kwargs"]["attention_placement"] == "after_pool"
    assert _check(model, path) <= 1e-4
