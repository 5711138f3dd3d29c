"""R2U-Net (Alom et al., "Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) for
Medical Image Segmentation", arXiv:1802.06955, 2018), with and without attention gates."""

from __future__ import annotations

from functools import partial
from typing import Any

from unetseg.models.blocks import RRCNNBlock
from unetseg.models.unet import UNet


class R2UNet(UNet):
    """U-Net built from recurrent residual blocks; ``recurrence`` (t, default 2) recurrent steps each.

    Takes the arguments of :class:`~unetseg.models.unet.UNet` except ``padding`` (always "same").
    """

    _attention = False

    def __init__(self, *args: Any, recurrence: int = 2, **kwargs: Any) -> None:
        block = partial(RRCNNBlock, recurrence=recurrence)
        super().__init__(*args, block=block, attention=self._attention, **kwargs)
        self.recurrence = recurrence


class R2AttentionUNet(R2UNet):
    """R2U-Net with the attention gates of Oktay et al. (2018) on the skips."""

    _attention = True
