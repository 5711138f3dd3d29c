"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA 2018).

Node ``X[i][j]`` (level ``i``, column ``j``) is a conv block over the concatenation of every earlier node
of its level, ``X[i][0..j-1]``, and the up-sampled ``X[i+1][j-1]`` (the dense skip pathways). Column 0 is
the shared :class:`~unetseg.models.encoder.Encoder`; ``X[0][1..depth]`` each feed a 1x1 head when deep
supervision is on.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast, get_args

import torch
from torch import nn
from typing_extensions import Unpack

from unetseg.errors import ConfigError
from unetseg.models.base import Logits, SegmentationModel
from unetseg.models.blocks import DoubleConv, UpBlock
from unetseg.models.encoder import Encoder
from unetseg.models.init import init_weights
from unetseg.models.layers import LayerConfig, check_choice, conv
from unetseg.models.unet import CommonOptions, widths

DsEval = Literal["mean", "last"]
DS_EVAL: tuple[DsEval, ...] = get_args(DsEval)
DeepSupervision = Annotated[bool, "true | false"]


class UNetPlusPlus(SegmentationModel):
    """UNet++ with nested dense skips, built from the U-Net :class:`DoubleConv` and :class:`UpBlock`.

    Args:
        spatial_dims, in_channels, num_classes, base_channels, depth, **options: as for
            :class:`~unetseg.models.unet.UNet` (always "same" padding).
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
        deep_supervision: DeepSupervision = False,
        ds_eval: DsEval = "mean",
        **options: Unpack[CommonOptions],
    ) -> None:
        unknown = sorted(set(options) - set(CommonOptions.__annotations__))
        if unknown:
            raise ConfigError(f"unet_pp: unknown option(s) {', '.join(unknown)}")
        super().__init__(
            spatial_dims,
            in_channels,
            num_classes,
            depth,
            "same",
            options.get("strides"),
            options.get("kernels"),
        )
        if not isinstance(deep_supervision, bool):
            raise ConfigError(f"deep_supervision={deep_supervision!r} is not allowed; give true or false")
        w = self.widths = widths(base_channels, depth, options.get("channels"))
        self.base_channels = w[0]
        self.deep_supervision = deep_supervision
        self.ds_eval = check_choice("ds_eval", ds_eval, DS_EVAL)
        activation = options.get("activation", "relu")
        cfg = LayerConfig(spatial_dims, options.get("norm", "batch"), activation, options.get("dropout", 0.0))
        steps, kers = self.level_steps()
        self.encoder = Encoder(cfg, in_channels, w, DoubleConv, steps, kers)
        up = options.get("upsample", "transpose")
        # nested[i][j - 1] computes X[i][j] from j skips of width w[i] and the up-sampled X[i+1][j-1].
        self.nested = nn.ModuleList(
            nn.ModuleList(
                UpBlock(cfg, w[i + 1], j * w[i], w[i], DoubleConv, up, stride=steps[i], kernel=kers[i])
                for j in range(1, depth - i + 1)
            )
            for i in range(depth)
        )
        n_heads = depth if deep_supervision else 1
        self.heads = nn.ModuleList(
            conv(spatial_dims)(w[0], num_classes, kernel_size=1) for _ in range(n_heads)
        )
        init_weights(self, options.get("init", "kaiming"), activation)

    def forward_padded(self, x: torch.Tensor) -> Logits:
        grid = [[feat] for feat in self.encoder(x)]
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                row = cast(nn.ModuleList, self.nested[i])  # a ModuleList's items are typed as plain Modules
                grid[i].append(row[j - 1](grid[i + 1][j - 1], grid[i][:j]))
        if not self.deep_supervision or (not self.training and self.ds_eval == "last"):
            return self.heads[-1](grid[0][-1])
        logits = [head(feat) for head, feat in zip(self.heads, grid[0][1:], strict=True)]
        return logits if self.training else torch.stack(logits).mean(0)
