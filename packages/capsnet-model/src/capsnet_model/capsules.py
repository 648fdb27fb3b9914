"""Capsule layers: squash, primary capsules, dynamic routing, margin loss, decoder.

Shape letters used in the comments: B batch, I input capsules, J output capsules,
D output capsule dimension, K input capsule dimension.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SoftmaxOver = Literal["output", "input"]


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Squash non-linearity ``|s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps)``.

    Keeps the direction of ``s`` and maps its length into [0, 1). ``eps`` makes the value and
    the gradient at the zero vector finite (both are 0 there).
    """
    n2 = (s * s).sum(dim=dim, keepdim=True)
    return (n2 / (1.0 + n2)) * s / torch.sqrt(n2 + eps)


class PrimaryCapsules(nn.Module):
    """Primary capsule layer of E2-Capsnet.

    ``num_maps`` parallel convolutions ``in_channels -> out_channels`` (kernel ``kernel_size``,
    stride 1, no padding), implemented as one convolution with ``num_maps * out_channels``
    output channels. Map ``m`` gives coordinate ``m`` of every capsule, so the capsule
    dimension is ``num_maps`` (``caps_dim`` must equal it; it is there for readability).
    For a 512x7x7 input and the defaults: 32 * 6 * 6 = 1152 capsules of dimension 8.
    """

    def __init__(
        self,
        in_channels: int = 512,
        num_maps: int = 8,
        caps_dim: int = 8,
        out_channels: int = 32,
        kernel_size: int = 2,
    ) -> None:
        super().__init__()
        if caps_dim != num_maps:
            raise ValueError(f"caps_dim ({caps_dim}) must equal num_maps ({num_maps})")
        self.num_maps = num_maps
        self.caps_dim = caps_dim
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(in_channels, num_maps * out_channels, kernel_size)

    def num_capsules(self, height: int, width: int | None = None) -> int:
        """Number of capsules produced for a ``height x width`` input feature map."""
        width = height if width is None else width
        k = self.kernel_size
        return self.out_channels * (height - k + 1) * (width - k + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, M*C, H', W')
        b, _, h, w = y.shape
        y = y.view(b, self.num_maps, self.out_channels, h, w)  # (B, M, C, H', W')
        y = y.permute(0, 2, 3, 4, 1).reshape(b, self.out_channels * h * w, self.num_maps)
        return squash(y)  # (B, I, K)


def _check_softmax_over(softmax_over: str) -> None:
    if softmax_over not in ("output", "input"):
        raise ValueError(f"softmax_over must be 'output' or 'input', got {softmax_over!r}")


class DynamicRouting(nn.Module):
    """Routing by agreement (Sabour, Frosst, Hinton 2017), vectorised.

    Transformation weights ``W`` have shape (I, J, D, K), input capsule first, so the
    prediction vectors ``u_hat[b, j, i] = W[i, j] @ u[b, i]`` come from one batched matmul
    over ``i`` that reads ``W`` in place (a (J, I, ...) layout makes the contraction copy the
    whole weight on every forward, which dominates memory at batch 1). The routing logits
    ``b`` have shape (B, J, I): one logit per (input, output) pair, not one per output
    coordinate. Each iteration computes
    the coupling coefficients ``c = softmax(b)`` -- over the output capsules J (``"output"``,
    the paper's formulation) or over the input capsules I (``"input"``, as the official
    E2-Capsnet code does) -- then ``s_j = sum_i c_ij u_hat_j|i``, ``v_j = squash(s_j)`` and
    ``b_ij += <u_hat_j|i, v_j>``. The only Python loop is over the routing iterations.

    Memory per sample is dominated by ``u_hat``: J * I * D floats, e.g. for E2-Capsnet
    7 * 1152 * 16 * 4 bytes = 516 KB (plus the same again for its gradient in training),
    while ``b`` and ``c`` are J * I floats (32 KB). A naive implementation with logits of
    shape (B, J, I, D) keeps D times more routing state per iteration.
    """

    def __init__(
        self,
        in_caps: int,
        in_dim: int,
        out_caps: int,
        out_dim: int,
        iterations: int = 3,
        softmax_over: SoftmaxOver = "output",
    ) -> None:
        super().__init__()
        _check_softmax_over(softmax_over)
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        self.in_caps = in_caps
        self.in_dim = in_dim
        self.out_caps = out_caps
        self.out_dim = out_dim
        self.iterations = iterations
        self.softmax_over: SoftmaxOver = softmax_over
        self.weight = nn.Parameter(0.01 * torch.randn(in_caps, out_caps, out_dim, in_dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Route ``u`` (B, I, K) to output capsules (B, J, D)."""
        u_hat = torch.einsum("ijdk,bik->bjid", self.weight, u)  # (B, J, I, D)
        logits = u_hat.new_zeros(u_hat.shape[:3])  # (B, J, I)
        dim = 1 if self.softmax_over == "output" else 2
        v = u_hat.new_zeros(u_hat.shape[0], self.out_caps, self.out_dim)  # (B, J, D)
        for it in range(self.iterations):
            c = torch.softmax(logits, dim=dim)  # (B, J, I)
            s = torch.einsum("bji,bjid->bjd", c, u_hat)  # (B, J, D)
            v = squash(s)  # (B, J, D)
            if it < self.iterations - 1:
                logits = logits + torch.einsum("bjid,bjd->bji", u_hat, v)  # (B, J, I)
        return v

    def extra_repr(self) -> str:
        return (
            f"in_caps={self.in_caps}, in_dim={self.in_dim}, out_caps={self.out_caps}, "
            f"out_dim={self.out_dim}, iterations={self.iterations}, "
            f"softmax_over={self.softmax_over!r}"
        )


class ReferenceRouting(DynamicRouting):
    """Straightforward reference routing, for benchmarks and equality tests only.

    Written the way many public PyTorch CapsNets do it: prediction vectors by a broadcast
    matmul, routing logits with a redundant trailing D axis (B, J, I, D) whose D entries are
    always equal, and full-shape temporaries every iteration. It inherits the constructor and
    parameter (``weight``: (I, J, D, K)) of :class:`DynamicRouting`, so state dicts are
    interchangeable; only ``forward`` differs.
    """

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        w = self.weight.transpose(0, 1)  # (J, I, D, K)
        # (1, J, I, D, K) @ (B, 1, I, K, 1) -> (B, J, I, D, 1)
        u_hat = (w[None] @ u[:, None, :, :, None]).squeeze(-1)  # (B, J, I, D)
        logits = torch.zeros_like(u_hat)  # (B, J, I, D)
        dim = 1 if self.softmax_over == "output" else 2
        outputs = torch.zeros_like(u_hat[:, :, :1, :])  # (B, J, 1, D)
        for it in range(self.iterations):
            probs = F.softmax(logits, dim=dim)  # (B, J, I, D)
            outputs = squash((probs * u_hat).sum(dim=2, keepdim=True))  # (B, J, 1, D)
            if it != self.iterations - 1:
                delta = (u_hat * outputs).sum(dim=-1, keepdim=True)  # (B, J, I, 1)
                logits = logits + delta  # (B, J, I, D)
        return outputs.squeeze(2)  # (B, J, D)


def margin_loss(
    lengths: torch.Tensor,
    targets: torch.Tensor,
    m_plus: float = 0.9,
    m_minus: float = 0.1,
    lam: float = 0.5,
) -> torch.Tensor:
    """Capsule margin loss, summed over classes and averaged over the batch.

    ``L_k = T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2`` with
    ``lengths`` (B, J) the capsule lengths and ``targets`` (B,) integer class labels.
    """
    t = F.one_hot(targets.long(), lengths.shape[-1]).to(lengths.dtype)  # (B, J)
    present = t * F.relu(m_plus - lengths) ** 2
    absent = lam * (1.0 - t) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(dim=-1).mean()


class CapsuleDecoder(nn.Module):
    """Reconstruction decoder: masked class capsules -> image in [0, 1].

    The capsules of all classes but one are zeroed: the true label's when ``targets`` is
    given (training), otherwise the longest capsule's. MLP ``J*D -> hidden... -> C*H*W`` with
    ReLU between layers and a sigmoid at the end. Used only for the auxiliary reconstruction
    loss, never in a model's inference ``forward``.
    """

    def __init__(
        self,
        num_caps: int = 7,
        caps_dim: int = 16,
        out_shape: tuple[int, int, int] = (3, 224, 224),
        hidden: tuple[int, ...] = (512, 1024),
    ) -> None:
        super().__init__()
        self.num_caps = num_caps
        self.caps_dim = caps_dim
        self.out_shape = out_shape
        layers: list[nn.Module] = []
        width = num_caps * caps_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        c, hh, ww = out_shape
        layers += [nn.Linear(width, c * hh * ww), nn.Sigmoid()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, capsules: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct from ``capsules`` (B, J, D); returns (B, C, H, W)."""
        if targets is None:
            targets = capsules.norm(dim=-1).argmax(dim=-1)  # (B,)
        mask = F.one_hot(targets.long(), self.num_caps).to(capsules.dtype)  # (B, J)
        flat = (capsules * mask[:, :, None]).flatten(1)  # (B, J*D)
        return self.mlp(flat).view(-1, *self.out_shape)
