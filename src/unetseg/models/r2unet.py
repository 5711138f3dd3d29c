"""R2U-Net (Alom et al., "Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) for
Medical Image Segmentation", arXiv:1802.06955, 2018), with and without attention gates."""

from __future__ import annotations

from typing import Annotated

from typing_extensions import Unpack

from unetseg.models.blocks import Recurrent
from unetseg.models.layers import check_positive
from unetseg.models.unet import CommonOptions, EncoderDecoder

Recurrence = Annotated[int, "an integer >= 1 (recurrent steps of each block)"]


class R2UNet(EncoderDecoder):
    """U-Net built from recurrent residual blocks; ``recurrence`` (t, default 2) recurrent steps each.

    Other arguments as :class:`~unetseg.models.unet.UNet` (always "same" padding).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 32,
        depth: int = 4,
        *,
        recurrence: Recurrence = 2,
        **options: Unpack[CommonOptions],
    ) -> None:
        block = Recurrent(check_positive("recurrence", recurrence))
        super().__init__(spatial_dims, in_channels, num_classes, base_channels, depth, block=block, **options)
        self.recurrence = recurrence


class R2AttentionUNet(EncoderDecoder):
    """R2U-Net with the attention gates of Oktay et al. (2018) on the skips."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 32,
        depth: int = 4,
        *,
        recurrence: Recurrence = 2,
        **options: Unpack[CommonOptions],
    ) -> None:
        block = Recurrent(check_positive("recurrence", recurrence))
        super().__init__(
            spatial_dims,
            in_channels,
            num_classes,
            base_channels,
            depth,
            block=block,
            attention=True,
            **options,
        )
        self.recurrence = recurrence
