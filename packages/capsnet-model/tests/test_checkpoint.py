"""Checkpoints: safetensors files that rebuild their model, and atomic file writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import nn

from capsnet_model import checkpoint
from capsnet_model._io import atomic_write_bytes, atomic_write_text
from capsnet_model.checkpoint import (
    ModelInfo,
    load_model,
    load_weights,
    read_info,
    save_model,
    unwrap,
)
from capsnet_model.data import Preprocess
from capsnet_model.datasets import EXPRESSIONS
from capsnet_model.registry import create_model

E2CAPS = {"width": 1 / 16, "image_size": 64, "primary_channels": 4}
VGG = {"width": 1 / 16, "image_size": 32, "hidden": 16}


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the real model under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> torch.Tensor:
        out: torch.Tensor = self.module(*args)
        return out


def _trained(name: str, kwargs: dict[str, Any], num_classes: int) -> nn.Module:
    """A model whose weights and buffers (batch-norm statistics) differ from a fresh build."""
    model = create_model(name, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for value in model.state_dict().values():  # parameters and persistent buffers
            if value.is_floating_point():
                value.add_(0.05 * torch.rand_like(value))
    return model.eval()


@pytest.mark.parametrize(
    ("name", "kwargs", "labels", "size"),
    [
        ("e2capsnet", E2CAPS, EXPRESSIONS, 64),
        ("vgg16_bn", VGG, ("neg", "neutral", "pos"), 32),
    ],
)
def test_save_load_roundtrip(
    tmp_path: Path, name: str, kwargs: dict[str, Any], labels: tuple[str, ...], size: int
) -> None:
    model = _trained(name, kwargs, len(labels))
    info = ModelInfo(
        name,
        kwargs=dict(kwargs),
        labels=labels,
        preprocess=Preprocess(image_size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
        attention="landmarks",
        extra={"epoch": 3, "note": "test"},
    )
    path = save_model(model, tmp_path / "sub" / "model.safetensors", info)
    assert path == tmp_path / "sub" / "model.safetensors" and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))

    loaded, loaded_info = load_model(path)
    assert loaded_info == info and loaded_info.num_classes == len(labels)
    assert isinstance(loaded_info.labels, tuple) and isinstance(loaded_info.preprocess, Preprocess)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    fresh = info.build().state_dict()
    running = [k for k in fresh if "running" in k]
    assert running and all(not torch.equal(fresh[k], model.state_dict()[k]) for k in running)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert read_info(path) == info


def test_load_model_train_mode(tmp_path: Path) -> None:
    model = _trained("vgg16_bn", VGG, 7)
    path = save_model(model, tmp_path / "m.safetensors", ModelInfo("vgg16_bn", kwargs=VGG))
    loaded, _ = load_model(path, eval_mode=False)
    assert loaded.training


def test_read_info_does_not_load_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = ModelInfo("vgg16_bn", kwargs=VGG, preprocess=Preprocess(image_size=32))
    path = save_model(create_model("vgg16_bn", **VGG), tmp_path / "m.safetensors", info)

    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read_info must not load the weights")

    monkeypatch.setattr(checkpoint, "st_load", no_weights)
    assert read_info(path) == info


def test_save_unwraps_module_wrappers(tmp_path: Path) -> None:
    model = _trained("vgg16_bn", VGG, 7)
    path = save_model(Wrapper(model), tmp_path / "m.safetensors", ModelInfo("vgg16_bn", kwargs=VGG))
    loaded, _ = load_model(path)  # keys carry no "module." prefix
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    target = Wrapper(create_model("vgg16_bn", **VGG))
    load_weights(target, path)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), model(x), rtol=0, atol=0)


def test_unwrap() -> None:
    inner = nn.Linear(2, 2)
    assert unwrap(Wrapper(inner)) is inner
    assert unwrap(inner) is inner

    class NotAModule(nn.Module):
        module = "not a module"

    outer = NotAModule()
    assert unwrap(outer) is outer


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a capsnet-model checkpoint"):
        read_info(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not a capsnet-model checkpoint \(format 'pt'"):
        load_model(other)


def test_corrupt_metadata(tmp_path: Path) -> None:
    meta = ModelInfo("vgg16_bn", kwargs=VGG).to_metadata()
    del meta["labels"]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(2)}, metadata=meta))
    with pytest.raises(ValueError, match="corrupt checkpoint metadata"):
        read_info(path)
    meta = ModelInfo("vgg16_bn", kwargs=VGG).to_metadata()
    meta["preprocess"] = '{"image_size": 32, "crop": 1}'
    path.write_bytes(st_save({"w": torch.zeros(2)}, metadata=meta))
    with pytest.raises(ValueError, match="corrupt checkpoint metadata.*crop"):
        read_info(path)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_info(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        read_info(tmp_path)  # a directory is no checkpoint
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_info(junk)


def test_load_weights_into_another_architecture(tmp_path: Path) -> None:
    path = save_model(
        create_model("e2capsnet", **E2CAPS), tmp_path / "e2.safetensors", ModelInfo("e2capsnet")
    )
    with pytest.raises(ValueError, match=r"does not match the model: missing \[.+unexpected \["):
        load_weights(create_model("vgg16_bn", **VGG), path)
    load_weights(create_model("vgg16_bn", **VGG), path, strict=False)  # allowed when not strict


def test_load_weights_shape_mismatch_is_a_value_error(tmp_path: Path) -> None:
    small = create_model("vgg16_bn", **VGG)
    path = save_model(small, tmp_path / "small.safetensors", ModelInfo("vgg16_bn", kwargs=VGG))
    with pytest.raises(ValueError, match="does not match the model"):
        load_weights(create_model("vgg16_bn", **{**VGG, "hidden": 32}), path)


def test_failed_load_leaves_the_model_untouched(tmp_path: Path) -> None:
    source = create_model("vgg16_bn", **VGG)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    partial = dict(list(state.items())[:3])  # a checkpoint missing most of the tensors
    path = tmp_path / "partial.safetensors"
    path.write_bytes(st_save(partial))
    target = create_model("vgg16_bn", **VGG)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in partial.items())
    with pytest.raises(ValueError, match="missing"):
        load_weights(target, path)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- atomic writes ------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "a" / "b" / "f.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write_text(path, "héllo")
    assert path.read_bytes() == "héllo".encode()
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # handle.write raises
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_replace_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")

    def fail(src: Any, dst: Any) -> None:
        assert Path(src).read_bytes() == b"new"  # the full data was written first
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_save_model_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_model("vgg16_bn", **VGG)
    info = ModelInfo("vgg16_bn", kwargs=VGG)
    path = save_model(model, tmp_path / "m.safetensors", info)
    old = path.read_bytes()

    def interrupted(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path, ModelInfo("vgg16_bn", kwargs=VGG, extra={"epoch": 9}))
    assert path.read_bytes() == old
    assert not list(tmp_path.glob(".*.tmp"))
