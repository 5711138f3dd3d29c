"""Residual U-Net (Zhang, Liu & Wang, "Road Extraction by Deep Residual U-Net", IEEE GRSL 2018)."""

from __future__ import annotations

from typing_extensions import Unpack

from unetseg.models.blocks import ResidualBlock
from unetseg.models.unet import CommonOptions, EncoderDecoder


class ResUNet(EncoderDecoder):
    """U-Net with pre-activation residual blocks in encoder and decoder.

    Arguments as :class:`~unetseg.models.unet.UNet` (always "same" padding).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 32,
        depth: int = 4,
        **options: Unpack[CommonOptions],
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, num_classes, base_channels, depth, block=ResidualBlock, **options
        )
