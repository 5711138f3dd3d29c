"""Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018)."""

from __future__ import annotations

from typing import Any

from unetseg.models.unet import UNet


class AttentionUNet(UNet):
    """U-Net whose skips pass through additive attention gates driven by the coarser decoder level.

    Takes the arguments of :class:`~unetseg.models.unet.UNet` except ``padding`` (always "same").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, attention=True, **kwargs)
