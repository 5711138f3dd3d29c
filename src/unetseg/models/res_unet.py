"""Residual U-Net (Zhang, Liu & Wang, "Road Extraction by Deep Residual U-Net", IEEE GRSL 2018)."""

from __future__ import annotations

from typing import Any

from unetseg.models.blocks import ResidualBlock
from unetseg.models.unet import UNet


class ResUNet(UNet):
    """U-Net with pre-activation residual blocks in encoder and decoder.

    Takes the arguments of :class:`~unetseg.models.unet.UNet` except ``padding`` (always "same").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, block=ResidualBlock, **kwargs)
