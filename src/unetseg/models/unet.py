"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and the encoder/decoder skeleton of its family.

:class:`EncoderDecoder` is the shared skeleton (a :class:`~unetseg.models.encoder.Encoder`, a mirrored
decoder of :class:`~unetseg.models.blocks.UpBlock` s, a 1x1 head); the attention, recurrent-residual and
residual variants are thin subclasses that choose the conv block and the attention gates. The options
every architecture takes are typed once, in :class:`CommonOptions`; the registry reads them from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypedDict

from torch import nn
from typing_extensions import Unpack

from unetseg.errors import ConfigError
from unetseg.models.base import Padding, SegmentationModel
from unetseg.models.blocks import BlockFactory, DoubleConv, UpBlock
from unetseg.models.encoder import Encoder
from unetseg.models.init import Init, InitSpec, init_children, init_weights
from unetseg.models.layers import Activation, LayerConfig, Norm, Upsample, check_positive, conv


class CommonOptions(TypedDict, total=False):
    """The options of every architecture (besides the five core arguments); see :class:`UNet`."""

    norm: Norm
    activation: Activation
    channels: Annotated[
        Sequence[int] | None,
        "depth + 1 integers, one width per level (default: base_channels doubled per level)",
    ]
    dropout: Annotated[float, "a number in [0, 1)"]
    upsample: Upsample
    init: Init
    strides: Annotated[Sequence[Sequence[int]] | None, "depth lists of 1 or 2 per axis (default 2)"]
    kernels: Annotated[Sequence[Sequence[int]] | None, "depth + 1 lists of 1, 3 or 5 per axis (default 3)"]


def widths(base_channels: int, depth: int, channels: Sequence[int] | None = None) -> list[int]:
    """Channels per level 0..depth (the last is the bottleneck): ``channels`` when given (e.g. MONAI
    ``BasicUNet``'s 32, 32, 64, 128, 256), else ``base * 2**level``."""
    if channels is None:
        return [check_positive("base_channels", base_channels) * 2**i for i in range(depth + 1)]
    ok = isinstance(channels, Sequence) and not isinstance(channels, str) and len(channels) == depth + 1
    if not ok or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ConfigError(
            f"channels={channels!r} is not allowed; give depth + 1 = {depth + 1} integers >= 1 "
            f"(one per level, the bottleneck last), or leave it out to double base_channels per level"
        )
    return list(channels)


class EncoderDecoder(SegmentationModel):
    """The skeleton of the U-Net family: encoder, decoder with skip connections, 1x1 head.

    Args:
        spatial_dims, in_channels, num_classes, base_channels, depth: see :class:`UNet`.
        block: the conv block of encoder and decoder.
        attention: attention gates on the skips (Oktay et al. 2018).
        padding, **options: see :class:`UNet` and :class:`CommonOptions`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        base_channels: int,
        depth: int,
        *,
        block: BlockFactory = DoubleConv,
        attention: bool = False,
        padding: str = "same",
        norm: str = "batch",
        activation: str = "relu",
        channels: Sequence[int] | None = None,
        dropout: float = 0.0,
        upsample: str = "transpose",
        init: str = "kaiming",
        strides: Sequence[Sequence[int]] | None = None,
        kernels: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, depth, padding, strides, kernels)
        if padding == "valid" and (block is not DoubleConv or attention):
            raise ConfigError("padding='valid' is only for unet; this architecture needs 'same'")
        cfg = LayerConfig(spatial_dims, norm, activation, dropout, same=padding == "same")
        w = self.widths = widths(base_channels, depth, channels)
        self.base_channels = w[0]
        steps, kers = self.level_steps()
        self.encoder = Encoder(cfg, in_channels, w, block, steps, kers)
        self.decoder = nn.ModuleList(
            UpBlock(
                cfg,
                w[i + 1],
                w[i],
                w[i],
                block,
                upsample,
                attention=attention,
                crop=padding == "valid",
                stride=steps[i],
                kernel=kers[i],
            )
            for i in reversed(range(depth))
        )
        self.head = conv(spatial_dims)(w[0], num_classes, kernel_size=1)
        self.linear_head = not block.rectified_output
        init_weights(self, init, activation)

    def initialise(self, spec: InitSpec) -> None:
        init_children(self, spec, {"head"} if self.linear_head else set())

    def forward_padded(self, x):
        skips = self.encoder(x)
        x = skips.pop()  # the bottleneck
        for up in self.decoder:
            x = up(x, [skips.pop()])
        return self.head(x)


class UNet(EncoderDecoder):
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
        padding: ``same`` (any input size, output size == input size) or ``valid`` (unpadded convs).
        **options: :class:`CommonOptions`: ``norm`` (batch | instance | group | none), ``activation``
            (relu | leaky_relu | gelu), ``channels`` (explicit widths of levels 0..depth), ``dropout``
            (channel dropout at the end of each block), ``upsample`` (transpose | bilinear (trilinear in
            3D) | nearest), ``init`` (kaiming | xavier | normal | orthogonal), ``strides`` / ``kernels``
            (per level and axis, for anisotropic volumes).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 32,
        depth: int = 4,
        *,
        padding: Padding = "same",
        **options: Unpack[CommonOptions],
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, num_classes, base_channels, depth, padding=padding, **options
        )
