"""Registry-wide model tests (timm style), at small sizes so the file stays fast on CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from capsnet_model import create_model, list_models, register_model
from capsnet_model.models import E2Capsnet

# Small configurations per model: kwargs and input size (channels, pixels).
SMALL: dict[str, tuple[dict[str, Any], int]] = {
    "vgg16_bn": ({"width": 1 / 16, "image_size": 32, "hidden": 16}, 32),
    "avggnet": ({"width": 1 / 16, "image_size": 32, "hidden": 16}, 32),
    "rccnet": ({"width": 1 / 16, "image_size": 64, "primary_channels": 4}, 64),
    "capsnet": ({"image_size": 28, "conv_channels": 16, "primary_caps": 4}, 28),
    "e2capsnet": ({"width": 1 / 16, "image_size": 64, "primary_channels": 4}, 64),
    "e2capsnet_small": ({}, 64),
}
NUM_CLASSES = 7


def _build(name: str, seed: int = 0) -> tuple[nn.Module, int]:
    kwargs, size = SMALL[name]
    torch.manual_seed(seed)
    return create_model(name, num_classes=NUM_CLASSES, **kwargs), size


def _input(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


def test_every_model_has_a_small_config() -> None:
    assert set(SMALL) == set(list_models())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="e2capsnet_small"):
        create_model("no_such_model")


def test_duplicate_registration_fails() -> None:
    with pytest.raises(ValueError):
        register_model("e2capsnet")(lambda num_classes=7, **kw: nn.Identity())


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name: str) -> None:
    model, size = _build(name)
    model.eval()
    with torch.no_grad():
        out = model(_input(2, size))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_backward_reaches_every_parameter(name: str) -> None:
    model, size = _build(name)
    model.train()
    out = model(_input(2, size))
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    zero = [
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0
    ]
    assert not zero


@pytest.mark.parametrize("name", list_models())
def test_batch_one(name: str) -> None:
    model, size = _build(name)
    model.eval()
    with torch.no_grad():
        out = model(_input(1, size))
    assert out.shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_deterministic(name: str) -> None:
    a, size = _build(name, seed=3)
    b, _ = _build(name, seed=3)
    a.eval()
    b.eval()
    x = _input(2, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list_models())
def test_zero_input_no_nan(name: str) -> None:
    model, size = _build(name)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", list_models())
def test_batch_independent(name: str) -> None:
    model, size = _build(name)
    model.eval()
    x = _input(3, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-4, atol=1e-5)


def test_capsule_scores_are_lengths() -> None:
    model, size = _build("e2capsnet_small")
    assert isinstance(model, E2Capsnet)
    model.eval()
    with torch.no_grad():
        scores, caps = model.forward_capsules(_input(2, size))
    assert caps.shape == (2, NUM_CLASSES, 16)
    torch.testing.assert_close(scores, caps.norm(dim=-1))
    assert ((scores >= 0) & (scores < 1)).all()


def test_length_softmax_sums_to_one() -> None:
    torch.manual_seed(0)
    model = create_model("e2capsnet_small", length_softmax=True).eval()
    with torch.no_grad():
        out = model(_input(2, 64))
    torch.testing.assert_close(out.sum(-1), torch.ones(2))


def test_attention_map_is_used() -> None:
    torch.manual_seed(0)
    model = create_model("e2capsnet_small").eval()
    assert isinstance(model, E2Capsnet) and model.attention is not None
    x = _input(2, 64)
    with torch.no_grad():
        default = model(x)
        template = model(x, model.attention.get_buffer("template").expand(2, -1, -1, -1))
        none = model(x, torch.zeros(2, 1, 64, 64))
    torch.testing.assert_close(default, template)
    assert (default - none).abs().max() > 1e-3 * default.abs().max()


def test_decoder_not_in_forward() -> None:
    torch.manual_seed(0)
    model = create_model("e2capsnet_small", decoder=True, decoder_hidden=(16, 32))
    assert isinstance(model, E2Capsnet)
    model.train()
    _, caps = model.forward_capsules(_input(2, 64))
    rec = model.reconstruct(caps, torch.tensor([0, 3]))
    assert rec.shape == (2, 3, 64, 64)
    model.zero_grad()
    model(_input(2, 64)).sum().backward()
    assert model.decoder is not None
    assert all(p.grad is None for p in model.decoder.parameters())


@pytest.mark.slow
def test_full_size_e2capsnet_forward() -> None:
    """The real 224 px model: 512x7x7 trunk output, 1152 primary capsules, one forward."""
    torch.manual_seed(0)
    model = create_model("e2capsnet").eval()
    assert isinstance(model, E2Capsnet)
    assert model.routing.in_caps == 1152
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, NUM_CLASSES)
