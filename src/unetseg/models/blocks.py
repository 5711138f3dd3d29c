"""The building blocks shared by every architecture.

Each conv block has the signature ``Block(cfg, in_ch, out_ch, *, first=False, kernel=3)`` so the
encoder/decoder skeletons can take any of them; ``first`` marks the block that sees the raw input image,
``kernel`` is the level's kernel size (an int or one per axis, e.g. ``(1, 3, 3)`` for an anisotropic
level). Each block initialises itself (``initialise``): it knows which of its convolutions see
non-rectified input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.init import InitSpec, init_children, init_module
from unetseg.models.layers import LayerConfig, Steps, check_positive, interp_mode, upsample


class BlockFactory(Protocol):
    """Builds a level's conv block: a block class, or :class:`Recurrent` (R2U-Net's, its steps fixed)."""

    @property
    def rectified_output(self) -> bool:
        """The block ends in an activation (the next layer may then use ReLU's Kaiming gain)."""
        ...

    def __call__(
        self, cfg: LayerConfig, in_ch: int, out_ch: int, *, first: bool = ..., kernel: Steps = ...
    ) -> nn.Module: ...


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation (the conv has no bias when a norm follows)."""

    def __init__(self, cfg: LayerConfig, in_ch: int, out_ch: int, kernel: Steps = 3) -> None:
        super().__init__(
            cfg.conv(in_ch, out_ch, kernel, bias=cfg.conv_bias), cfg.norm_layer(out_ch), cfg.act_layer()
        )


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, norm, activation) units, then dropout: the U-Net block (Ronneberger et al. 2015).

    With ``cfg.same == False`` the convolutions are unpadded and each block shrinks every side by 2.
    """

    rectified_output = True  # ends in an activation (the next layer may use ReLU's Kaiming gain)

    def __init__(
        self, cfg: LayerConfig, in_ch: int, out_ch: int, *, first: bool = False, kernel: Steps = 3
    ) -> None:
        super().__init__(
            ConvNormAct(cfg, in_ch, out_ch, kernel),
            ConvNormAct(cfg, out_ch, out_ch, kernel),
            cfg.dropout_layer(),
        )
        self.first = first

    def initialise(self, spec: InitSpec) -> None:
        init_children(self, spec, {"0"} if self.first else set())  # the first conv sees the raw image


class ResidualBlock(nn.Module):
    """Pre-activation residual block (He et al., ECCV 2016), as used by ResUNet (Zhang et al., 2018).

    ``norm -> act -> conv -> norm -> act -> conv`` plus a shortcut (1x1 conv when the width changes).
    The ``first`` block skips the leading norm/activation, which would otherwise act on the raw image.
    """

    rectified_output = False

    def __init__(
        self, cfg: LayerConfig, in_ch: int, out_ch: int, *, first: bool = False, kernel: Steps = 3
    ) -> None:
        super().__init__()
        require_same(cfg)
        self.first = first
        self.pre = nn.Identity() if first else nn.Sequential(cfg.norm_layer(in_ch), cfg.act_layer())
        self.body = nn.Sequential(
            cfg.conv(in_ch, out_ch, kernel, bias=cfg.conv_bias),
            cfg.norm_layer(out_ch),
            cfg.act_layer(),
            cfg.conv(out_ch, out_ch, kernel),
            cfg.dropout_layer(),
        )
        self.shortcut = nn.Identity() if in_ch == out_ch else cfg.conv(in_ch, out_ch, 1)

    def initialise(self, spec: InitSpec) -> None:
        init_children(self.pre, spec)
        init_children(self.body, spec, {"0"} if self.first else set())
        init_module(self.shortcut, spec.as_linear())  # a projection of the block's input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.pre(x)) + self.shortcut(x)


def require_same(cfg: LayerConfig) -> None:
    if not cfg.same:
        raise ConfigError("padding='valid' is only for unet; residual blocks need 'same' padding")


class RecurrentBlock(nn.Module):
    """Recurrent convolutional layer (Alom et al. 2018): ``h = f(x)``, then ``t`` times ``h = f(x + h)``,
    with one shared (conv, norm, act) unit ``f``."""

    def __init__(self, cfg: LayerConfig, channels: int, recurrence: int = 2, kernel: Steps = 3) -> None:
        super().__init__()
        self.unit = ConvNormAct(cfg, channels, channels, kernel)
        self.recurrence = recurrence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.unit(x)
        for _ in range(self.recurrence):
            h = self.unit(x + h)
        return h


class RRCNNBlock(nn.Module):
    """Recurrent residual block of R2U-Net (Alom et al., arXiv:1802.06955): a 1x1 projection, two
    :class:`RecurrentBlock` s, and a residual connection around them."""

    rectified_output = False

    def __init__(
        self,
        cfg: LayerConfig,
        in_ch: int,
        out_ch: int,
        *,
        first: bool = False,
        recurrence: int = 2,
        kernel: Steps = 3,
    ) -> None:
        super().__init__()
        require_same(cfg)
        check_positive("recurrence", recurrence)
        self.proj = cfg.conv(in_ch, out_ch, 1)
        self.body = nn.Sequential(
            RecurrentBlock(cfg, out_ch, recurrence, kernel), RecurrentBlock(cfg, out_ch, recurrence, kernel)
        )
        self.drop = cfg.dropout_layer()

    def initialise(self, spec: InitSpec) -> None:
        init_children(self, spec, {"proj"})  # a projection of what the previous level summed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.drop(x + self.body(x))


@dataclass(frozen=True)
class Recurrent:
    """The :class:`BlockFactory` of R2U-Net: :class:`RRCNNBlock` s of ``recurrence`` steps."""

    recurrence: int
    rectified_output = RRCNNBlock.rectified_output

    def __call__(
        self, cfg: LayerConfig, in_ch: int, out_ch: int, *, first: bool = False, kernel: Steps = 3
    ) -> RRCNNBlock:
        return RRCNNBlock(cfg, in_ch, out_ch, first=first, recurrence=self.recurrence, kernel=kernel)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., "Attention U-Net", MIDL 2018).

    The skip features ``x`` are sub-sampled to the grid of the gating signal ``g`` (the coarser decoder
    level) by a strided conv (the level's stride), added to a 1x1 projection of ``g``, and turned into one
    coefficient per voxel (act -> 1x1 conv -> sigmoid) that is resampled to ``x``'s grid and multiplies
    ``x``; a final 1x1 conv + norm transforms the gated features, as in the paper.
    """

    def __init__(
        self, cfg: LayerConfig, skip_ch: int, gate_ch: int, inter_ch: int | None = None, stride: Steps = 2
    ) -> None:
        super().__init__()
        inter = inter_ch or max(1, skip_ch // 2)
        self.theta = cfg.conv(skip_ch, inter, stride, stride=stride, bias=False)
        self.phi = cfg.conv(gate_ch, inter, 1)
        self.act = cfg.act_layer()
        self.psi = cfg.conv(inter, 1, 1)
        self.out = nn.Sequential(cfg.conv(skip_ch, skip_ch, 1, bias=cfg.conv_bias), cfg.norm_layer(skip_ch))
        self.mode = interp_mode(cfg.dims)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x)
        phi = self.phi(g)
        # Equal under 'same' padding; a trace would bake the comparison in, so it is left out there.
        if not torch.jit.is_tracing() and phi.shape[2:] != theta.shape[2:]:
            phi = F.interpolate(phi, size=theta.shape[2:], mode=self.mode)
        alpha = torch.sigmoid(self.psi(self.act(theta + phi)))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode=self.mode)
        return self.out(x * alpha.to(x.dtype))


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` region of ``x``'s spatial dims (a view; the 2015 paper's skip cropping)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UpBlock(nn.Module):
    """Decoder step: upsample the coarser features, (crop,) (gate,) concatenate with the skip(s), conv block.

    Args:
        cfg: shared layer choices.
        in_ch: channels of the coarser input.
        skip_ch: total channels of the skip tensors (UNet++ passes several, concatenated).
        out_ch: channels after the up-step and after the block.
        block: the conv block class (see module docstring).
        upsample_mode: ``transpose`` | ``bilinear`` | ``nearest``.
        attention: put an :class:`AttentionGate` (gated by the coarser input) on the skip.
        crop: centre-crop the skip to the upsampled size ("valid" padding).
        stride: the level's down-step, undone here (2, or one factor per axis).
        kernel: the level's conv kernel.
    """

    def __init__(
        self,
        cfg: LayerConfig,
        in_ch: int,
        skip_ch: int,
        out_ch: int,
        block: BlockFactory,
        upsample_mode: str = "transpose",
        *,
        attention: bool = False,
        crop: bool = False,
        stride: Steps = 2,
        kernel: Steps = 3,
    ) -> None:
        super().__init__()
        self.up = upsample(upsample_mode, cfg.dims, in_ch, out_ch, stride)
        self.gate = AttentionGate(cfg, skip_ch, in_ch, stride=stride) if attention else None
        self.block = block(cfg, skip_ch + out_ch, out_ch, kernel=kernel)
        self.crop = crop
        # the up-step sees the previous block's output: gain 1 unless that ends in a rectifier
        self.linear_up = not block.rectified_output

    def initialise(self, spec: InitSpec) -> None:
        init_children(self, spec, {"up"} if self.linear_up else set())

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        up = self.up(x)
        skips = list(skips)
        if self.gate is not None:
            skips = [self.gate(torch.cat(skips, 1) if len(skips) > 1 else skips[0], x)]
        if self.crop:
            skips = [center_crop(s, up.shape[2:]) for s in skips]
        return self.block(torch.cat([*skips, up], 1))
