"""Capsule layers: squash, primary capsules, routing, margin loss, decoder."""

from __future__ import annotations

import time

import pytest
import torch

from capsnet_model.capsules import (
    CapsuleDecoder,
    DynamicRouting,
    PrimaryCapsules,
    ReferenceRouting,
    SoftmaxOver,
    margin_loss,
    squash,
)


def test_squash_length_below_one_and_direction_kept() -> None:
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(64, 16, generator=generator) * torch.logspace(-3, 3, 64)[:, None]
    v = squash(s)
    lengths = v.norm(dim=-1)
    # Below 1 in exact arithmetic; float32 rounds n^2 / (1 + n^2) to 1.0 once n is beyond ~1e4.
    assert (lengths <= 1).all()
    assert (lengths[s.norm(dim=-1) < 100] < 1).all()
    n = s.norm(dim=-1)
    torch.testing.assert_close(lengths, n**2 / (1 + n**2), rtol=1e-4, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(s, v, dim=-1)
    torch.testing.assert_close(cos, torch.ones(64), rtol=1e-4, atol=1e-4)


def test_squash_other_dim() -> None:
    s = torch.randn(3, 8, 5)
    torch.testing.assert_close(squash(s, dim=1), squash(s.transpose(1, 2)).transpose(1, 2))


def test_squash_zero_vector_value_and_gradient() -> None:
    s = torch.zeros(2, 8, requires_grad=True)
    v = squash(s)
    assert torch.equal(v, torch.zeros(2, 8))
    v.sum().backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all()
    assert torch.equal(s.grad, torch.zeros(2, 8))


def test_primary_capsules_shape() -> None:
    layer = PrimaryCapsules()
    x = torch.randn(2, 512, 7, 7)
    out = layer(x)
    assert out.shape == (2, 1152, 8)
    assert layer.num_capsules(7) == 1152
    assert (out.norm(dim=-1) < 1).all()
    assert len([m for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]) == 1
    assert layer(torch.randn(5, 512, 7, 7)).shape == (5, 1152, 8)


def test_primary_capsules_map_is_capsule_coordinate() -> None:
    layer = PrimaryCapsules(in_channels=4, num_maps=3, caps_dim=3, out_channels=2)
    x = torch.randn(1, 4, 3, 3)
    raw = layer.conv(x).view(1, 3, 2, 2, 2)  # (B, maps, channels, H, W)
    out = layer(x)  # capsule (channel 1, row 0, col 1) is index 1*4 + 0*2 + 1 = 5
    torch.testing.assert_close(out[0, 5], squash(raw[0, :, 1, 0, 1]))


def test_primary_capsules_caps_dim_must_match() -> None:
    with pytest.raises(ValueError):
        PrimaryCapsules(num_maps=8, caps_dim=4)


def _pair(softmax_over: SoftmaxOver, in_caps: int = 50) -> tuple[DynamicRouting, ReferenceRouting]:
    torch.manual_seed(0)
    fast = DynamicRouting(in_caps, 8, 7, 16, softmax_over=softmax_over)
    ref = ReferenceRouting(in_caps, 8, 7, 16, softmax_over=softmax_over)
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        fast.weight.mul_(10)
        ref.weight.copy_(fast.weight)
    return fast, ref


@pytest.mark.parametrize("softmax_over", ["output", "input"])
def test_routing_matches_reference(softmax_over: SoftmaxOver) -> None:
    fast, ref = _pair(softmax_over)
    u = squash(torch.randn(4, 50, 8))
    out = fast(u)
    assert out.shape == (4, 7, 16)
    torch.testing.assert_close(out, ref(u), rtol=1e-5, atol=1e-5)


def test_routing_softmax_over_input_and_output_differ() -> None:
    out_fast, _ = _pair("output")
    in_fast, _ = _pair("input")
    u = squash(torch.randn(2, 50, 8))
    a, b = out_fast(u), in_fast(u)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b)


def test_routing_one_iteration_is_uniform_coupling() -> None:
    fast, _ = _pair("output")
    fast.iterations = 1
    u = squash(torch.randn(2, 50, 8))
    u_hat = torch.einsum("ijdk,bik->bjid", fast.weight, u)
    torch.testing.assert_close(fast(u), squash(u_hat.sum(2) / 7))


def test_routing_gradients() -> None:
    fast, _ = _pair("output")
    u = squash(torch.randn(2, 50, 8)).requires_grad_(True)
    fast(u).norm(dim=-1).sum().backward()
    assert fast.weight.grad is not None and fast.weight.grad.abs().sum() > 0
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_routing_bad_softmax_over() -> None:
    with pytest.raises(ValueError):
        DynamicRouting(4, 8, 7, 16, softmax_over="both")  # type: ignore[arg-type]


def test_routing_is_vectorised_over_capsules() -> None:
    """1152 input capsules at batch 8 route in well under a second (no per-capsule loop)."""
    layer = DynamicRouting(1152, 8, 7, 16)
    u = squash(torch.randn(8, 1152, 8))
    with torch.no_grad():
        layer(u)  # warm-up
        t0 = time.perf_counter()
        out = layer(u)
        elapsed = time.perf_counter() - t0
    assert out.shape == (8, 7, 16)
    assert elapsed < 1.0


def test_margin_loss_hand_computed() -> None:
    lengths = torch.tensor([[0.95, 0.05, 0.5], [0.2, 0.3, 0.0]])
    targets = torch.tensor([0, 1])
    # sample 0: target 0.95 >= 0.9 -> 0; 0.05 <= 0.1 -> 0; 0.5: 0.5 * 0.4^2 = 0.08
    # sample 1: target 0.3: (0.9 - 0.3)^2 = 0.36; 0.2: 0.5 * 0.1^2 = 0.005; 0.0 -> 0
    expected = (0.08 + 0.365) / 2
    torch.testing.assert_close(margin_loss(lengths, targets), torch.tensor(expected))


def test_margin_loss_zero_when_perfect() -> None:
    lengths = torch.tensor([[0.0, 1.0, 0.05]])
    assert margin_loss(lengths, torch.tensor([1])).item() == 0.0


def test_margin_loss_parameters() -> None:
    lengths = torch.tensor([[0.5, 0.5]])
    loss = margin_loss(lengths, torch.tensor([0]), m_plus=1.0, m_minus=0.0, lam=1.0)
    torch.testing.assert_close(loss, torch.tensor(0.25 + 0.25))


def test_decoder_shape_and_masking() -> None:
    torch.manual_seed(0)
    dec = CapsuleDecoder(num_caps=7, caps_dim=16, out_shape=(1, 20, 24), hidden=(32, 64))
    caps = torch.randn(3, 7, 16)
    rec = dec(caps, torch.tensor([0, 1, 2]))
    assert rec.shape == (3, 1, 20, 24)
    assert ((rec >= 0) & (rec <= 1)).all()
    # Only the selected capsule matters.
    other = caps.clone()
    other[:, 3:] = torch.randn(3, 4, 16)
    torch.testing.assert_close(dec(other, torch.tensor([0, 1, 2])), rec)
    # Without targets the longest capsule is used.
    caps[:, 5] *= 100
    torch.testing.assert_close(dec(caps), dec(caps, torch.full((3,), 5)))


def test_decoder_default_size() -> None:
    dec = CapsuleDecoder()
    assert dec(torch.randn(1, 7, 16)).shape == (1, 3, 224, 224)
