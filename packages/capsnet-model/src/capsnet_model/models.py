"""E2-Capsnet and its baselines, all registered in :mod:`capsnet_model.registry`.

Every model has ``num_classes``, ``image_size`` (its input side in pixels) and
``use_attention`` (whether it reads the AU map) attributes. Every model's ``forward`` has the
signature ``forward(image, attention=None)``: ``image``
(B, C, H, W), ``attention`` (B, 1, H, W) in [0, 1] or ``None``. Models that use the AU
attention map fall back to the built-in mean-face template map when it is ``None``; models
without attention ignore the argument. All return class scores (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from capsnet_model.attention import template_attention_map
from capsnet_model.capsules import (
    CapsuleDecoder,
    DynamicRouting,
    PrimaryCapsules,
    SoftmaxOver,
    squash,
)
from capsnet_model.registry import ChangedDefault, register_model

# VGG16 stages: (convolutions per stage, channels), each followed by a 2x2 max-pool.
VGG16_STAGES: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
ATTENTION_STAGES: tuple[int, ...] = (3, 4)  # 1-based, as in the paper (EAC-Net style)

#: Where the AU attention joins a trunk stage: ``"before_pool"`` (the official E2-Capsnet
#: code: on the stage's last convolution output, then the stage's max-pool) or
#: ``"after_pool"`` (after the max-pool: capsnet-model 0.1's placement).
AttentionPlacement = Literal["before_pool", "after_pool"]
ATTENTION_PLACEMENTS: tuple[str, ...] = ("before_pool", "after_pool")
#: Registered with every model whose attention placement default changed (0.1 built
#: ``after_pool``): a checkpoint that does not record the placement was built with 0.1's.
_PLACEMENT_CHANGE = {"attention_placement": ChangedDefault(old="after_pool", new="before_pool")}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGTrunk(nn.Module):
    """VGG16-BN convolutional trunk with optional AU-aware attention.

    Five stages (64-64 / 128-128 / 256x3 / 512x3 / 512x3 channels times ``width``), each
    conv3x3-BN-ReLU layers then a 2x2 max-pool: 224 px in -> 512x7x7 out. At every stage ``k``
    in ``attention_stages`` (1-based) a side branch ``ReLU(side_conv3x3(x))`` maps the stage's
    input ``x`` to the stage's output channels and is added, weighted by the attention map
    ``M`` max-pooled to the size where it joins:

    - ``placement="before_pool"`` (default, the official code):
      ``maxpool(convs(x) + M * ReLU(side_conv(x)))``, joining at the pre-pool resolution
      (56x56 and 28x28 at 224 px, 16x16 and 8x8 at 64 px);
    - ``placement="after_pool"``: ``maxpool(convs(x)) + M * maxpool(ReLU(side_conv(x)))``,
      joining at the stage's output resolution (28x28 and 14x14 at 224 px).

    Both placements have the same parameters and state-dict keys.
    """

    def __init__(
        self,
        width: float = 1.0,
        in_channels: int = 3,
        attention_stages: Sequence[int] = (),
        stages: Sequence[tuple[int, int]] = VGG16_STAGES,
        placement: AttentionPlacement = "before_pool",
    ) -> None:
        super().__init__()
        if placement not in ATTENTION_PLACEMENTS:
            valid = ", ".join(repr(p) for p in ATTENTION_PLACEMENTS)
            raise ValueError(f"attention_placement must be one of {valid}, got {placement!r}")
        self.attention_stages = tuple(attention_stages)
        self.placement = placement
        self.stages = nn.ModuleList()
        self.side = nn.ModuleDict()
        cin = in_channels
        for k, (n, c) in enumerate(stages, start=1):
            cout = _scaled(c, width)
            layers: list[nn.Module] = []
            for i in range(n):
                layers += _conv_bn_relu(cin if i == 0 else cout, cout)
            layers.append(nn.MaxPool2d(2))
            self.stages.append(nn.Sequential(*layers))
            if k in self.attention_stages:
                side: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                if placement == "after_pool":
                    side.append(nn.MaxPool2d(2))
                self.side[str(k)] = nn.Sequential(*side)
            cin = cout
        self.out_channels = cin
        self.reduction = 2 ** len(stages)

    def forward(self, x: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        if self.attention_stages and attention is None:
            raise ValueError("this trunk uses attention: pass an attention map (B, 1, H, W)")
        for k, stage in enumerate(self.stages, start=1):
            if k not in self.attention_stages:
                x = stage(x)
                continue
            assert attention is not None
            side = self.side[str(k)](x)
            if self.placement == "before_pool":
                *convs, pool = stage.children()  # conv-BN-ReLU layers, then the max-pool
                out = x
                for layer in convs:
                    out = layer(out)  # (B, C_k, 2 H_k, 2 W_k)
                m = F.adaptive_max_pool2d(attention, out.shape[-2:])
                x = pool(out + m * side)
            else:
                out = stage(x)  # (B, C_k, H_k, W_k)
                m = F.adaptive_max_pool2d(attention, out.shape[-2:])
                x = out + m * side
        return x


class _TemplateAttention(nn.Module):
    """Holds the template attention map and expands/resizes it for a batch."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        t = torch.from_numpy(template_attention_map(image_size))[None, None]  # (1, 1, S, S)
        self.register_buffer("template", t, persistent=False)

    def forward(self, image: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        if attention is not None:
            return attention.to(image.dtype)
        t = self.get_buffer("template")
        if t.shape[-2:] != image.shape[-2:]:
            t = F.interpolate(t, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return t.to(image.dtype).expand(image.shape[0], -1, -1, -1)


def _attended_trunk(
    width: float,
    in_channels: int,
    image_size: int,
    use_attention: bool,
    placement: AttentionPlacement,
    *,
    min_feat: int,
) -> tuple[VGGTrunk, _TemplateAttention | None, int]:
    """Returns the VGG trunk (attention at ``ATTENTION_STAGES`` when used), the template
    attention (None without attention) and the side of the trunk's output map.

    Raises ValueError when that side would be below ``min_feat`` (the image is too small).
    """
    stages = ATTENTION_STAGES if use_attention else ()
    trunk = VGGTrunk(width, in_channels, attention_stages=stages, placement=placement)
    feat = image_size // trunk.reduction
    if feat < min_feat:
        raise ValueError(f"image_size {image_size} too small: need >= {min_feat * trunk.reduction}")
    return trunk, _TemplateAttention(image_size) if use_attention else None, feat


class E2Capsnet(nn.Module):
    """E2-Capsnet: VGG16-BN with AU-aware attention, primary capsules, dynamic routing.

    Takes the attention map (``attention=None`` -> built-in template map). Pipeline: trunk
    (attention at stages 3 and 4) -> 512x7x7 at 224 px -> :class:`PrimaryCapsules` (1152
    capsules of 8-D) -> :class:`DynamicRouting` to ``num_classes`` 16-D capsules -> lengths.
    With ``use_attention=False`` it is RCCnet (capsules without attention), which ignores
    the map. ``attention_placement`` says where the attention joins the trunk (see
    :class:`VGGTrunk`; default ``"before_pool"`` as in the official code, ``"after_pool"`` as
    capsnet-model 0.1 built it). ``length_softmax=True`` reproduces the official code's
    softmax over the capsule lengths (a defect: the lengths are already class scores).
    ``decoder=True`` adds a reconstruction decoder (:meth:`reconstruct`), never used by
    ``forward``.
    """

    def __init__(
        self,
        num_classes: int = 7,
        width: float = 1.0,
        image_size: int = 224,
        routing_iterations: int = 3,
        softmax_over: SoftmaxOver = "output",
        length_softmax: bool = False,
        decoder: bool = False,
        use_attention: bool = True,
        in_channels: int = 3,
        primary_maps: int = 8,
        primary_channels: int = 32,
        class_caps_dim: int = 16,
        decoder_hidden: tuple[int, ...] = (512, 1024),
        attention_placement: AttentionPlacement = "before_pool",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.length_softmax = length_softmax
        self.use_attention = use_attention
        self.attention_placement = attention_placement
        self.trunk, attention, feat = _attended_trunk(
            width, in_channels, image_size, use_attention, attention_placement, min_feat=2
        )
        self.primary = PrimaryCapsules(
            self.trunk.out_channels, primary_maps, primary_maps, primary_channels, 2
        )
        in_caps = self.primary.num_capsules(feat)
        self.routing = DynamicRouting(
            in_caps, primary_maps, num_classes, class_caps_dim, routing_iterations, softmax_over
        )
        self.attention = attention
        self.decoder = (
            CapsuleDecoder(
                num_classes, class_caps_dim, (in_channels, image_size, image_size), decoder_hidden
            )
            if decoder
            else None
        )

    def forward_capsules(
        self, image: torch.Tensor, attention: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores (B, num_classes), class capsules (B, num_classes, 16))."""
        att = self.attention(image, attention) if self.attention is not None else None
        x = self.trunk(image, att)  # (B, 512, 7, 7)
        u = self.primary(x)  # (B, I, 8)
        v = self.routing(u)  # (B, J, 16)
        scores = v.norm(dim=-1)  # (B, J)
        if self.length_softmax:
            scores = torch.softmax(scores, dim=-1)
        return scores, v

    def forward(self, image: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_capsules(image, attention)[0]

    def reconstruct(
        self, capsules: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decoder reconstruction (needs ``decoder=True``)."""
        if self.decoder is None:
            raise RuntimeError("model was built with decoder=False")
        out: torch.Tensor = self.decoder(capsules, targets)
        return out


class VGGClassifier(nn.Module):
    """VGG16-BN with a fully connected head; with ``use_attention=True`` it is AVGGnet.

    Takes the attention map only when ``use_attention`` (``None`` -> template map); otherwise
    ignores it. Head: flatten -> hidden -> ReLU -> dropout -> hidden -> ReLU -> dropout ->
    num_classes, ``hidden = 4096 * width`` unless given. ``attention_placement`` as in
    :class:`E2Capsnet`.
    """

    def __init__(
        self,
        num_classes: int = 7,
        width: float = 1.0,
        image_size: int = 224,
        use_attention: bool = False,
        in_channels: int = 3,
        hidden: int | None = None,
        dropout: float = 0.5,
        attention_placement: AttentionPlacement = "before_pool",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.use_attention = use_attention
        self.attention_placement = attention_placement
        self.trunk, self.attention, feat = _attended_trunk(
            width, in_channels, image_size, use_attention, attention_placement, min_feat=1
        )
        hidden = _scaled(4096, width) if hidden is None else hidden
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.trunk.out_channels * feat * feat, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, image: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        att = self.attention(image, attention) if self.attention is not None else None
        out: torch.Tensor = self.head(self.trunk(image, att))
        return out


class CapsNet(nn.Module):
    """Sabour et al.'s original CapsNet (2017), for small grayscale or RGB inputs (28-64 px).

    Ignores the attention map. conv 9x9 (256, ReLU) -> primary capsules: conv 9x9 stride 2
    to 32 maps of 8-D capsules -> dynamic routing to ``num_classes`` 16-D capsules ->
    lengths. 28 px: 32 * 6 * 6 = 1152 primary capsules; 32 px: 32 * 8 * 8 = 2048.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_channels: int = 3,
        image_size: int = 32,
        conv_channels: int = 256,
        primary_caps: int = 32,
        primary_dim: int = 8,
        class_caps_dim: int = 16,
        routing_iterations: int = 3,
        softmax_over: SoftmaxOver = "output",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.use_attention = False
        self.primary_caps = primary_caps
        self.primary_dim = primary_dim
        self.conv = nn.Sequential(nn.Conv2d(in_channels, conv_channels, 9), nn.ReLU(inplace=True))
        self.primary = nn.Conv2d(conv_channels, primary_caps * primary_dim, 9, stride=2)
        grid = (image_size - 8 - 9) // 2 + 1
        if grid < 1:
            raise ValueError(f"image_size {image_size} too small: need >= 25")
        self.routing = DynamicRouting(
            primary_caps * grid * grid,
            primary_dim,
            num_classes,
            class_caps_dim,
            routing_iterations,
            softmax_over,
        )

    def forward_capsules(
        self, image: torch.Tensor, attention: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores (B, num_classes), class capsules (B, num_classes, 16))."""
        y = self.primary(self.conv(image))  # (B, 32*8, G, G)
        b, _, h, w = y.shape
        y = y.view(b, self.primary_caps, self.primary_dim, h, w)  # (B, 32, 8, G, G)
        u = squash(y.permute(0, 1, 3, 4, 2).reshape(b, -1, self.primary_dim))  # (B, I, 8)
        v = self.routing(u)  # (B, J, 16)
        return v.norm(dim=-1), v

    def forward(self, image: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_capsules(image, attention)[0]


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 7, **kw: Any) -> nn.Module:
    """VGG16-BN + fully connected head (no attention; ignores the attention map)."""
    return VGGClassifier(num_classes=num_classes, use_attention=False, **kw)


@register_model("avggnet", changed_defaults=_PLACEMENT_CHANGE)
def avggnet(num_classes: int = 7, **kw: Any) -> nn.Module:
    """AVGGnet: VGG16-BN with AU attention at stages 3-4, no capsules (takes the map)."""
    return VGGClassifier(num_classes=num_classes, use_attention=True, **kw)


@register_model("rccnet")
def rccnet(num_classes: int = 7, **kw: Any) -> nn.Module:
    """RCCnet: VGG16-BN + capsules, no attention (ignores the attention map)."""
    return E2Capsnet(num_classes=num_classes, use_attention=False, **kw)


@register_model("capsnet")
def capsnet(num_classes: int = 7, **kw: Any) -> nn.Module:
    """Sabour et al.'s CapsNet, default 3x32x32 input (ignores the attention map)."""
    return CapsNet(num_classes=num_classes, **kw)


@register_model("e2capsnet", changed_defaults=_PLACEMENT_CHANGE)
def e2capsnet(num_classes: int = 7, **kw: Any) -> nn.Module:
    """Full E2-Capsnet at 224 px (takes the attention map; ``None`` -> template)."""
    return E2Capsnet(num_classes=num_classes, **kw)


@register_model("e2capsnet_small", changed_defaults=_PLACEMENT_CHANGE)
def e2capsnet_small(num_classes: int = 7, **kw: Any) -> nn.Module:
    """E2-Capsnet at width 1/8 and 64 px input, trains in minutes on CPU (takes the map)."""
    kw.setdefault("width", 1 / 8)
    kw.setdefault("image_size", 64)
    return E2Capsnet(num_classes=num_classes, **kw)
