"""Where the AU attention joins the VGG trunk: before the stage's max-pool (the official
E2-Capsnet code, the default) or after it (capsnet-model 0.1), checked against a trunk run by
hand with functional operations; parameter counts; which placement old checkpoints load with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import nn

from capsnet_model.checkpoint import ModelInfo, load_model, read_info, save_model
from capsnet_model.data import Preprocess
from capsnet_model.models import ATTENTION_STAGES, E2Capsnet, VGGClassifier, VGGTrunk
from capsnet_model.registry import (
    ChangedDefault,
    changed_defaults,
    create_model,
    with_changed_defaults,
)

PLACEMENTS = ("before_pool", "after_pool")
TINY: dict[str, Any] = {"width": 1 / 16, "image_size": 64, "primary_channels": 4}


def _fixed_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Returns ``model`` in eval mode with every float parameter and batch-norm statistic
    redrawn from ``seed`` (the running statistics away from their 0/1 start, so batch norm
    is not an identity and a mix-up of its tensors shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.rand(value.shape, generator=g)
            if key.endswith("running_var"):
                value.copy_(0.5 + noise)
            else:
                value.add_(0.1 * (noise - 0.5))
    return model.eval()


def _inputs(size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, size, size, generator=g)
    attention = torch.rand(2, 1, size, size, generator=g)
    return image, attention


def _conv_block(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Returns conv3x3 -> batch norm (running statistics) -> ReLU, repeated, computed with
    functional operations from the layers' tensors."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, layer.weight, layer.bias, padding=1)
        elif isinstance(layer, nn.BatchNorm2d):
            assert layer.running_mean is not None and layer.running_var is not None
            x = F.batch_norm(
                x,
                layer.running_mean,
                layer.running_var,
                layer.weight,
                layer.bias,
                training=False,
                eps=layer.eps,
            )
        else:
            assert isinstance(layer, nn.ReLU)
            x = F.relu(x)
    return x


def _reference_trunk(
    trunk: VGGTrunk, image: torch.Tensor, attention: torch.Tensor, placement: str
) -> tuple[torch.Tensor, dict[int, int]]:
    """Returns (the trunk's output, {stage: side of the feature map where the attention
    joins}) for ``placement``, built by hand: conv blocks, side branch ReLU(conv3x3(stage
    input)), the AU map max-pooled (kernel = stride = image side / feature side) to the
    resolution where it joins, multiply, add, 2x2 max-pool."""
    x = image
    joined: dict[int, int] = {}
    for k, stage in enumerate(trunk.stages, start=1):
        layers = list(stage)
        assert isinstance(layers[-1], nn.MaxPool2d)
        h = _conv_block(layers[:-1], x)
        if k not in ATTENTION_STAGES:
            x = F.max_pool2d(h, 2)
            continue
        side_conv = trunk.side[str(k)][0]
        assert isinstance(side_conv, nn.Conv2d)
        side = F.relu(F.conv2d(x, side_conv.weight, side_conv.bias, padding=1))
        if placement == "after_pool":
            h = F.max_pool2d(h, 2)
            side = F.max_pool2d(side, 2)
        kernel = attention.shape[-1] // h.shape[-1]
        au = F.max_pool2d(attention, kernel)
        assert au.shape[-2:] == h.shape[-2:]
        joined[k] = h.shape[-1]
        h = h + au * side
        x = F.max_pool2d(h, 2) if placement == "before_pool" else h
    return x, joined


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize(
    ("name", "kwargs", "size", "join"),
    [
        # the full-resolution layout (224 px: joins at 56/28 before the pool, 28/14 after)
        # at a width that keeps the test fast; the width changes channels, not resolutions
        ("e2capsnet", {"width": 1 / 64, "primary_channels": 2}, 224, {3: 56, 4: 28}),
        ("e2capsnet_small", {}, 64, {3: 16, 4: 8}),
    ],
)
def test_placement_matches_hand_built_reference(
    name: str, kwargs: dict[str, Any], size: int, join: dict[int, int], placement: str
) -> None:
    model = create_model(name, attention_placement=placement, **kwargs)
    assert isinstance(model, E2Capsnet) and model.attention_placement == placement
    _fixed_weights(model)
    image, attention = _inputs(size)
    want_features, joined = _reference_trunk(model.trunk, image, attention, placement)
    expected_join = join if placement == "before_pool" else {k: v // 2 for k, v in join.items()}
    assert joined == expected_join
    with torch.no_grad():
        features = model.trunk(image, attention)
        scores, _ = model.forward_capsules(image, attention)
        want_scores = model.routing(model.primary(want_features)).norm(dim=-1)
    side = size // 32
    assert features.shape == want_features.shape == (2, model.trunk.out_channels, side, side)
    assert torch.allclose(features, want_features, rtol=1e-5, atol=1e-6)
    assert torch.allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    assert torch.allclose(model(image, attention), scores)


def test_placements_give_different_outputs_on_the_same_weights() -> None:
    before = _fixed_weights(create_model("e2capsnet", attention_placement="before_pool", **TINY))
    assert isinstance(before, E2Capsnet)
    with torch.no_grad():  # untrained capsule lengths are ~1e-6 and near-equal: spread them
        before.routing.weight.mul_(100.0)
        before.primary.conv.weight.mul_(3.0)
    after = create_model("e2capsnet", attention_placement="after_pool", **TINY).eval()
    after.load_state_dict(before.state_dict(), strict=True)  # same keys, same shapes
    image, attention = _inputs(64)
    with torch.no_grad():
        fb, fa = before.trunk(image, attention), after.trunk(image, attention)
        sb, sa = before(image, attention), after(image, attention)
        # with a zero map the side branch is switched off and the placement does not matter
        zero = torch.zeros_like(attention)
        torch.testing.assert_close(before.trunk(image, zero), after.trunk(image, zero))
    assert (fb - fa).abs().max() > 1e-2 * fb.abs().max()
    assert sb.max() > 0.1  # spread, not saturated: the comparison below means something
    # routing averages over the 64 primary capsules, so the scores move less than the features
    assert (sb - sa).abs().max() > 5e-3 * sb.max()


def test_avggnet_placement_switch() -> None:
    image, attention = _inputs(32)
    kw: dict[str, Any] = {"width": 1 / 16, "image_size": 32, "hidden": 16}
    before = _fixed_weights(create_model("avggnet", **kw))
    after = create_model("avggnet", attention_placement="after_pool", **kw).eval()
    after.load_state_dict(before.state_dict(), strict=True)
    assert isinstance(before, VGGClassifier) and before.attention_placement == "before_pool"
    with torch.no_grad():
        want, _ = _reference_trunk(before.trunk, image, attention, "before_pool")
        torch.testing.assert_close(before.trunk(image, attention), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(before(image, attention), after(image, attention))


@pytest.mark.parametrize("name", ["e2capsnet", "e2capsnet_small", "avggnet"])
def test_default_is_before_pool_and_registered_as_changed(name: str) -> None:
    with torch.device("meta"):  # shapes only: the full-size models allocate nothing
        model = create_model(name)
    assert model.attention_placement == "before_pool"
    assert changed_defaults(name) == {
        "attention_placement": ChangedDefault(old="after_pool", new="before_pool")
    }


def test_models_without_attention_have_no_changed_defaults() -> None:
    assert changed_defaults("vgg16_bn") == changed_defaults("rccnet") == {}
    assert changed_defaults("no_such_model") == {}


def test_bad_placement_is_refused() -> None:
    with pytest.raises(ValueError, match=r"attention_placement must be one of .*'beforepool'"):
        create_model("e2capsnet_small", attention_placement="beforepool")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_parameter_counts_do_not_depend_on_the_placement(placement: str) -> None:
    with torch.device("meta"):
        full = create_model("e2capsnet", attention_placement=placement)
        with_decoder = create_model("e2capsnet", attention_placement=placement, decoder=True)
        small = create_model("e2capsnet_small", attention_placement=placement)

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    # the official E2-Capsnet's counts, without and with the reconstruction decoder
    assert count(full) == 17_755_200
    assert count(with_decoder) == 172_629_568
    assert count(small) == 349_224


def test_with_changed_defaults_fills_only_missing_keys() -> None:
    explicit = {"attention_placement": "after_pool", "width": 0.5}
    assert with_changed_defaults("e2capsnet", explicit, old=False) == explicit
    assert with_changed_defaults("e2capsnet", {}, old=True) == {"attention_placement": "after_pool"}
    assert with_changed_defaults("e2capsnet", {}, old=False) == {
        "attention_placement": "before_pool"
    }
    assert with_changed_defaults("vgg16_bn", {"hidden": 8}, old=True) == {"hidden": 8}


# --------------------------------------------------------------------------- checkpoints


def test_model_info_records_the_placement_without_touching_the_callers_dict() -> None:
    given = dict(TINY)
    info = ModelInfo("e2capsnet", kwargs=given)
    assert info.kwargs == {**TINY, "attention_placement": "before_pool"}
    assert given == TINY
    assert json.loads(info.to_metadata()["model_kwargs"])["attention_placement"] == "before_pool"
    assert ModelInfo("vgg16_bn", kwargs={"hidden": 8}).kwargs == {"hidden": 8}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_new_checkpoint_loads_with_its_placement(tmp_path: Path, placement: str) -> None:
    model = _fixed_weights(create_model("e2capsnet", attention_placement=placement, **TINY))
    kwargs = {**TINY, "attention_placement": placement} if placement == "after_pool" else TINY
    path = save_model(model, tmp_path / "m.safetensors", ModelInfo("e2capsnet", kwargs=kwargs))
    info = read_info(path)
    assert info.kwargs["attention_placement"] == placement
    loaded, _ = load_model(path)
    assert isinstance(loaded, E2Capsnet) and loaded.attention_placement == placement
    image, attention = _inputs(64)
    with torch.no_grad():
        want = model(image, attention)
        torch.testing.assert_close(loaded(image, attention), want, rtol=0, atol=0)


def _old_checkpoint(path: Path, model: nn.Module, kwargs: dict[str, Any]) -> Path:
    """Writes ``model`` as capsnet-model 0.1 did: ``model_kwargs`` without the placement."""
    meta = ModelInfo("e2capsnet", kwargs=kwargs, preprocess=Preprocess(64)).to_metadata()
    meta["model_kwargs"] = json.dumps(kwargs, sort_keys=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.write_bytes(st_save(state, metadata=meta))
    return path


def test_old_checkpoint_without_a_placement_loads_after_pool(tmp_path: Path) -> None:
    old = _fixed_weights(create_model("e2capsnet", attention_placement="after_pool", **TINY))
    path = _old_checkpoint(tmp_path / "old.safetensors", old, dict(TINY))
    assert "attention_placement" not in json.loads(_metadata(path)["model_kwargs"])
    info = read_info(path)
    assert info.kwargs == {**TINY, "attention_placement": "after_pool"}
    loaded, _ = load_model(path)
    assert isinstance(loaded, E2Capsnet) and loaded.attention_placement == "after_pool"
    image, attention = _inputs(64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, attention), old(image, attention), rtol=0, atol=0)
        torch.testing.assert_close(loaded(image), old(image), rtol=0, atol=0)  # template map
    # saved again, the placement is now written down and survives another round
    again = save_model(loaded, tmp_path / "again.safetensors", info)
    assert json.loads(_metadata(again)["model_kwargs"])["attention_placement"] == "after_pool"
    assert load_model(again)[0].attention_placement == "after_pool"


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta: dict[str, str] = handle.metadata()
    return meta
