"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018)."""

from __future__ import annotations

from typing_extensions import Unpack

from unetseg.models.blocks import DoubleConv
from unetseg.models.unet import CommonOptions, EncoderDecoder


class AttentionUNet(EncoderDecoder):
    """U-Net whose skips pass through additive attention gates driven by the coarser decoder level.

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
            spatial_dims,
            in_channels,
            num_classes,
            base_channels,
            depth,
            block=DoubleConv,
            attention=True,
            **options,
        )
