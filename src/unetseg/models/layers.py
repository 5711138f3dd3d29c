"""Dimension-agnostic layer factories (in the spirit of MONAI's ``Conv[...]``/``Norm[...]`` factories).

Every block of every architecture is built from these, so 2D and 3D networks share one code path:
``spatial_dims`` picks ``Conv2d`` or ``Conv3d``, ``BatchNorm2d`` or ``BatchNorm3d``, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from unetseg.errors import ConfigError

# Each option's values once, as a Literal (the registry lists them from the signatures) and as a tuple
Norm = Literal["batch", "instance", "group", "none"]
Activation = Literal["relu", "leaky_relu", "gelu"]
Upsample = Literal["transpose", "bilinear", "nearest"]
NORMS: tuple[Norm, ...] = get_args(Norm)
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)
UPSAMPLES: tuple[Upsample, ...] = get_args(Upsample)
LEAKY_SLOPE = 0.01


def check_choice(option: str, value: object, allowed: Sequence[str]) -> str:
    """Return ``value`` when it is one of ``allowed``, else raise a :class:`ConfigError` listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{option}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def check_positive(option: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` when it is an integer ``>= minimum``, else raise a :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}={value!r} is not allowed; give an integer >= {minimum}")
    return value


def check_dims(spatial_dims: object) -> int:
    """Return ``spatial_dims`` when it is 2 or 3, else raise a :class:`ConfigError`."""
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ConfigError(f"spatial_dims={spatial_dims!r} is not allowed; choose 2 or 3")
    return int(spatial_dims)


# An input axis this short sends a CPU autocast convolution's backward to float32 (see _TinyInFloat32).
TINY_AXIS = 2


class _TinyInFloat32:
    """Mixin for a convolution: on CPU under autocast, with gradients on, an input with a spatial axis of at
    most :data:`TINY_AXIS` is convolved in float32.

    Measured with torch 2.13 (oneDNN) on AMD EPYC (AVX-512-bf16): the bf16 backward of such convolutions
    returns wrong weight gradients, often NaN (uninitialised memory), and sometimes writes out of bounds
    ("corrupted size vs. prev_size"); one Conv3d on a 2-slice input made a 3D run diverge on its first
    step. Axes of 3 and more, the forward pass and transposed convolutions were right in every case
    (``tests/models/test_layers.py``). Such inputs are a network's tiny deepest levels: float32 there costs
    2-15% of a step (``benchmarks/tiny_axis.py``), and planned networks keep 4-8 voxels per axis at the
    coarsest level, so mostly hand-set depths meet it. Inference (no gradients) keeps bf16; weights already
    in bf16 (no float32 master copy) are left as they are.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        if (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and weight.dtype == torch.float32 and min(x.shape[2:]) <= TINY_AXIS):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


class Conv2d(_TinyInFloat32, nn.Conv2d):
    """``nn.Conv2d`` (same weights and state dict), see :class:`_TinyInFloat32`."""


class Conv3d(_TinyInFloat32, nn.Conv3d):
    """``nn.Conv3d`` (same weights and state dict), see :class:`_TinyInFloat32`."""


def conv(dims: int) -> type[nn.Module]:
    """The convolution class for ``dims`` spatial dimensions (:class:`Conv2d` / :class:`Conv3d`)."""
    return (Conv2d, Conv3d)[check_dims(dims) - 2]


def conv_transpose(dims: int) -> type[nn.Module]:
    """The transposed convolution class for ``dims`` spatial dimensions."""
    return (nn.ConvTranspose2d, nn.ConvTranspose3d)[check_dims(dims) - 2]


Steps = int | Sequence[int]  # one value for every axis, or one per axis


def per_axis(value: Steps, dims: int) -> tuple[int, ...]:
    """``2`` -> ``(2, 2)`` in 2D; a sequence is checked to have one value per axis."""
    if isinstance(value, int):
        return (value,) * dims
    out = tuple(int(v) for v in value)
    if len(out) != dims:
        raise ConfigError(f"{list(value)} has {len(out)} values; give one per spatial axis ({dims})")
    return out


def pool(dims: int, stride: Steps = 2) -> nn.Module:
    """Max pooling with kernel = stride (2: the U-Net down-step; ``(1, 2, 2)`` keeps a coarse axis)."""
    s = per_axis(stride, check_dims(dims))
    k = s if len(set(s)) > 1 else s[0]  # an int when isotropic (as before: identical modules)
    return (nn.MaxPool2d, nn.MaxPool3d)[dims - 2](kernel_size=k, stride=k)


def dropout(dims: int, p: float) -> nn.Module:
    """Channel-wise (spatial) dropout with probability ``p``; ``nn.Identity`` when ``p == 0``."""
    if p == 0:
        return nn.Identity()
    return (nn.Dropout2d, nn.Dropout3d)[check_dims(dims) - 2](p)


def group_count(channels: int, max_groups: int = 8) -> int:
    """The largest group count ``<= max_groups`` that divides ``channels`` (for GroupNorm)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def norm(name: str, dims: int, channels: int) -> nn.Module:
    """A normalisation layer: ``batch``, ``instance`` (affine), ``group`` (up to 8 groups) or ``none``."""
    name = check_choice("norm", name, NORMS)
    i = check_dims(dims) - 2
    if name == "batch":
        return (nn.BatchNorm2d, nn.BatchNorm3d)[i](channels)
    if name == "instance":
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[i](channels, affine=True)
    if name == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.Identity()


def act(name: str) -> nn.Module:
    """An activation: ``relu``, ``leaky_relu`` (slope 0.01) or ``gelu``."""
    name = check_choice("activation", name, ACTIVATIONS)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    return nn.GELU()


def interp_mode(dims: int, mode: str = "bilinear") -> str:
    """The ``F.interpolate`` mode: ``bilinear`` becomes ``trilinear`` in 3D; ``nearest`` stays."""
    return mode if mode == "nearest" else ("bilinear", "trilinear")[check_dims(dims) - 2]


def upsample(mode: str, dims: int, in_ch: int, out_ch: int, scale: Steps = 2) -> nn.Module:
    """An up-step by ``scale`` (2, or one factor per axis) from ``in_ch`` to ``out_ch`` channels.

    ``transpose``: ``ConvTranspose`` kernel 2 stride 2 (the 2015 paper's "up-convolution").
    ``bilinear`` (trilinear in 3D) / ``nearest``: fixed interpolation followed by a 3x3 convolution, which
    avoids the checkerboard artefacts of transposed convolutions (Odena et al., Distill 2016). A 1x1
    convolution after interpolation would be redundant (it commutes with the interpolation).
    """
    mode = check_choice("upsample", mode, UPSAMPLES)
    s = per_axis(scale, check_dims(dims))
    k = s if len(set(s)) > 1 else s[0]
    if mode == "transpose":
        return conv_transpose(dims)(in_ch, out_ch, kernel_size=k, stride=k)
    align = None if mode == "nearest" else False
    factor = tuple(float(v) for v in s) if len(set(s)) > 1 else 2 if s[0] == 2 else float(s[0])
    return nn.Sequential(
        nn.Upsample(scale_factor=factor, mode=interp_mode(dims, mode), align_corners=align),
        conv(dims)(in_ch, out_ch, kernel_size=3, padding=1),
    )


@dataclass(frozen=True)
class LayerConfig:
    """The layer choices shared by every block of one network.

    Args:
        dims: spatial dimensions, 2 or 3.
        norm: one of :data:`NORMS`.
        act: one of :data:`ACTIVATIONS`.
        dropout: channel dropout probability at the end of each block (0 = off).
        same: ``True`` pads 3x3 convolutions by 1 ("same"); ``False`` leaves them unpadded ("valid").
    """

    dims: int = 2
    norm: str = "batch"
    act: str = "relu"
    dropout: float = 0.0
    same: bool = True

    def __post_init__(self) -> None:
        check_dims(self.dims)
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.act, ACTIVATIONS)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError(f"dropout={self.dropout!r} is not allowed; give a number in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout!r} is not allowed; give a number in [0, 1)")

    def conv(
        self, in_ch: int, out_ch: int, kernel: Steps = 3, *, stride: Steps = 1, bias: bool = True
    ) -> nn.Module:
        """A convolution (``kernel`` per axis, e.g. ``(1, 3, 3)``); padded by kernel // 2 per axis for
        "same" padding and unpadded for "valid"."""
        k, st = per_axis(kernel, self.dims), per_axis(stride, self.dims)
        pad = tuple(a // 2 if self.same and b == 1 else 0 for a, b in zip(k, st, strict=True))
        iso = len(set(k)) == 1 and len(set(st)) == 1 and len(set(pad)) == 1  # ints, as torch prints them
        return conv(self.dims)(
            in_ch,
            out_ch,
            kernel_size=k[0] if iso else k,
            stride=st[0] if iso else st,
            padding=pad[0] if iso else pad,
            bias=bias,
        )

    def norm_layer(self, channels: int) -> nn.Module:
        return norm(self.norm, self.dims, channels)

    def act_layer(self) -> nn.Module:
        return act(self.act)

    def dropout_layer(self) -> nn.Module:
        return dropout(self.dims, float(self.dropout))

    @property
    def conv_bias(self) -> bool:
        """A bias right before a normalisation layer is redundant (the norm removes the mean)."""
        return self.norm == "none"
