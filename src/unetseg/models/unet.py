"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and the shared encoder/decoder skeleton.

The attention, recurrent-residual and residual variants are this same class with another conv block
and/or attention gates on the skips (see ``attention_unet.py``, ``r2unet.py``, ``res_unet.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.base import SegmentationModel, check_int
from unetseg.models.blocks import BlockFactory, DoubleConv, UpBlock
from unetseg.models.init import init_weights, mark_linear_input
from unetseg.models.layers import LayerConfig, conv, pool
from unetseg.models.sizes import (  # noqa: F401  (re-exported for overlap-tile inference)
    min_valid_input_size,
    nearest_valid_input_size,
    valid_border,
    valid_input_sizes,
    valid_output_size,
)


def widths(base_channels: int, depth: int, channels: Sequence[int] | None = None) -> list[int]:
    """Channels per level 0..depth (the last is the bottleneck): ``channels`` when given (e.g. MONAI
    ``BasicUNet``'s 32, 32, 64, 128, 256), else ``base * 2**level``."""
    if channels is None:
        return [check_int("base_channels", base_channels) * 2**i for i in range(depth + 1)]
    ok = isinstance(channels, Sequence) and not isinstance(channels, str) and len(channels) == depth + 1
    if not ok or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ConfigError(
            f"channels={channels!r} is not allowed; give depth + 1 = {depth + 1} integers >= 1 "
            f"(one per level, the bottleneck last), or leave it out to double base_channels per level"
        )
    return list(channels)


class UNet(SegmentationModel):
    """U-Net: a conv-block encoder with 2x max pooling, a mirrored decoder with 2x up-steps, and skip
    connections that concatenate each encoder level to the decoder level of the same resolution.

    With ``base_channels=64, depth=4, norm="none", upsample="transpose"`` this is exactly the 2015
    architecture (31,030,658 parameters for 1 input channel and 2 classes); ``padding="valid"`` makes it
    the paper's unpadded network (572x572 -> 388x388, skips centre-cropped).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        num_classes: logit channels (1 = binary with a sigmoid).
        base_channels: channels of the first level, doubled at each down-step.
        depth: number of down-steps.
        channels: explicit widths of levels 0..depth instead of doubling ``base_channels``.
        norm: ``batch`` | ``instance`` | ``group`` | ``none``.
        activation: ``relu`` | ``leaky_relu`` | ``gelu``.
        dropout: channel dropout at the end of each conv block.
        upsample: ``transpose`` | ``bilinear`` (trilinear in 3D) | ``nearest``.
        padding: ``same`` (any input size, output size == input size) or ``valid`` (unpadded convs).
        init: ``kaiming`` | ``xavier`` | ``normal`` | ``orthogonal``.
        block: the conv block class of encoder and decoder (for the variants).
        attention: attention gates on the skips (for the variants).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 32,
        depth: int = 4,
        *,
        norm: str = "batch",
        activation: str = "relu",
        channels: Sequence[int] | None = None,
        dropout: float = 0.0,
        upsample: str = "transpose",
        padding: str = "same",
        init: str = "kaiming",
        block: BlockFactory = DoubleConv,
        attention: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, depth, padding)
        if padding == "valid" and (block is not DoubleConv or attention):
            raise ConfigError("padding='valid' is only for unet; this architecture needs 'same'")
        cfg = LayerConfig(spatial_dims, norm, activation, dropout, same=padding == "same")
        w = self.widths = widths(base_channels, depth, channels)
        self.base_channels = w[0]
        self.encoder = nn.ModuleList(
            [block(cfg, in_channels, w[0], first=True)]
            + [block(cfg, w[i - 1], w[i]) for i in range(1, depth + 1)]
        )
        self.pool = pool(spatial_dims)
        self.decoder = nn.ModuleList(
            UpBlock(cfg, w[i + 1], w[i], w[i], block, upsample, attention=attention, crop=padding == "valid")
            for i in reversed(range(depth))
        )
        self.head = conv(spatial_dims)(w[0], num_classes, kernel_size=1)
        if not getattr(block, "func", block).rectified_output:  # partial(RRCNNBlock, ...) has .func
            mark_linear_input(self.head, *(up.up for up in self.decoder))
        init_weights(self, init, activation)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()  # the bottleneck
        for up in self.decoder:
            x = up(x, [skips.pop()])
        return self.head(x)
