"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA 2018).

Node ``X[i][j]`` (level ``i``, column ``j``) is a conv block over the concatenation of every earlier node
of its level, ``X[i][0..j-1]``, and the up-sampled ``X[i+1][j-1]`` (the dense skip pathways). Column 0 is
the encoder; ``X[0][1..depth]`` each feed a 1x1 head when deep supervision is on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.base import Logits, SegmentationModel
from unetseg.models.blocks import DoubleConv, UpBlock
from unetseg.models.init import init_weights
from unetseg.models.layers import LayerConfig, check_choice, conv, pool
from unetseg.models.unet import widths

DS_EVAL = ("mean", "last")


class UNetPlusPlus(SegmentationModel):
    """UNet++ with nested dense skips, built from the U-Net :class:`DoubleConv` and :class:`UpBlock`.

    Args:
        spatial_dims, in_channels, num_classes, base_channels, depth, channels, norm, activation, dropout,
            upsample, init: as for :class:`~unetseg.models.unet.UNet` (always "same" padding).
        deep_supervision: one head per column ``X[0][1..depth]``. In training mode ``forward`` returns the
            list of all heads' logits (coarse to fine, each full size); in eval mode their mean
            (``ds_eval="mean"``) or the last, deepest one (``ds_eval="last"``).
        ds_eval: ``mean`` | ``last``.
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
        init: str = "kaiming",
        deep_supervision: bool = False,
        ds_eval: str = "mean",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, depth)
        if not isinstance(deep_supervision, bool):
            raise ConfigError(f"deep_supervision={deep_supervision!r} is not allowed; give true or false")
        w = self.widths = widths(base_channels, depth, channels)
        self.base_channels = w[0]
        self.deep_supervision = deep_supervision
        self.ds_eval = check_choice("ds_eval", ds_eval, DS_EVAL)
        cfg = LayerConfig(spatial_dims, norm, activation, dropout)
        self.encoder = nn.ModuleList(
            [DoubleConv(cfg, in_channels, w[0], first=True)]
            + [DoubleConv(cfg, w[i - 1], w[i]) for i in range(1, depth + 1)]
        )
        self.pool = pool(spatial_dims)
        # nested[i][j - 1] computes X[i][j] from j skips of width w[i] and the up-sampled X[i+1][j-1].
        self.nested = nn.ModuleList(
            nn.ModuleList(
                UpBlock(cfg, w[i + 1], j * w[i], w[i], DoubleConv, upsample) for j in range(1, depth - i + 1)
            )
            for i in range(depth)
        )
        n_heads = depth if deep_supervision else 1
        self.heads = nn.ModuleList(
            conv(spatial_dims)(w[0], num_classes, kernel_size=1) for _ in range(n_heads)
        )
        init_weights(self, init, activation)

    def forward_padded(self, x: torch.Tensor) -> Logits:
        grid: list[list[torch.Tensor]] = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            grid.append([x])
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                grid[i].append(self.nested[i][j - 1](grid[i + 1][j - 1], grid[i][:j]))
        if not self.deep_supervision or (not self.training and self.ds_eval == "last"):
            return self.heads[-1](grid[0][-1])
        logits = [head(feat) for head, feat in zip(self.heads, grid[0][1:], strict=True)]
        return logits if self.training else torch.stack(logits).mean(0)
