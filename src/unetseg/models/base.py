"""The common shell of every architecture: argument checks, the per-level strides and kernels,
"same"-padding to a multiple of the total stride per axis inside ``forward`` (cropped back afterwards), the
"valid" size checks, and the size helpers used by tiled inference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.layers import check_choice, check_dims, check_positive
from unetseg.models.sizes import (
    min_valid_input_size,
    nearest_valid_input_size,
    same_padding,
    valid_output_size,
)

Padding = Literal["same", "valid"]
PADDINGS: tuple[Padding, ...] = get_args(Padding)
Logits = torch.Tensor | list[torch.Tensor]


def _grid(
    value: Sequence[Sequence[int]] | None,
    rows: int,
    dims: int,
    name: str,
    allowed: tuple[int, ...],
    default: int,
) -> list[tuple[int, ...]]:
    """Per-level, per-axis values: None -> ``default`` everywhere; else ``rows`` lists of ``dims`` ints."""
    if value is None:
        return [(default,) * dims] * rows
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == rows
    rows_ok = ok and all(
        isinstance(r, Sequence)
        and not isinstance(r, str)
        and len(r) == dims
        and all(isinstance(v, int) and not isinstance(v, bool) and v in allowed for v in r)
        for r in value
    )
    if not rows_ok:
        raise ConfigError(
            f"{name}={value!r} is not allowed; give {rows} lists of {dims} values from "
            f"{', '.join(map(str, allowed))} (one per level, one value per axis)"
        )
    return [tuple(int(v) for v in r) for r in value]


class SegmentationModel(nn.Module):
    """Base class: maps ``(N, in_channels, *spatial)`` to logits ``(N, num_classes, *spatial)``.

    Subclasses implement :meth:`forward_padded`, which sees inputs whose size is a multiple of
    :attr:`divisors` per axis ("same") or a valid size ("valid").

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        num_classes: output logit channels (1 = one sigmoid channel for binary segmentation).
        depth: number of down-steps.
        padding: ``same`` (output size == input size, any input size) or ``valid`` (unpadded convs).
        strides: the down-step of each level per axis (default 2 everywhere); 1 keeps an axis, e.g.
            ``[[1, 2, 2], [2, 2, 2]]`` for a volume whose z spacing is coarse (nnU-Net's rule).
        kernels: the conv kernel of each of the ``depth + 1`` levels per axis (default 3; 1 on a coarse
            axis, e.g. ``[1, 3, 3]``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        depth: int,
        padding: str = "same",
        strides: Sequence[Sequence[int]] | None = None,
        kernels: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_dims(spatial_dims)
        self.in_channels = check_positive("in_channels", in_channels)
        self.num_classes = check_positive("num_classes", num_classes)
        self.depth = check_positive("depth", depth)
        self.padding = check_choice("padding", padding, PADDINGS)
        self.strides = _grid(strides, depth, spatial_dims, "strides", (1, 2), 2)
        self.kernels = _grid(kernels, depth + 1, spatial_dims, "kernels", (1, 3, 5), 3)
        if padding == "valid" and (strides is not None or kernels is not None):
            raise ConfigError(
                "padding='valid' takes the paper's 2x steps and 3x3 kernels; leave out strides and kernels"
            )
        self.divisors = tuple(math.prod(s[a] for s in self.strides) for a in range(spatial_dims))

    def level_steps(self) -> tuple[list[int | tuple[int, ...]], list[int | tuple[int, ...]]]:
        """Strides and kernels as the layers take them (ints when isotropic)."""

        def tidy(v: tuple[int, ...]) -> int | tuple[int, ...]:
            return v[0] if len(set(v)) == 1 else v

        return [tidy(s) for s in self.strides], [tidy(k) for k in self.kernels]

    def forward_padded(self, x: torch.Tensor) -> Logits:
        raise NotImplementedError

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """The spatial size of the logits for ``input_size`` (== input for "same" padding)."""
        size = self._spatial(input_size)
        if self.padding == "same":
            return size
        return valid_output_size(size, self.depth)

    def valid_input_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The smallest size ``>= size`` the model takes without error (``size`` itself for "same")."""
        size = self._spatial(size)
        if self.padding == "same":
            return size
        return nearest_valid_input_size(size, self.depth)

    def _spatial(self, size: Sequence[int] | int) -> tuple[int, ...]:
        size = (size,) * self.spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != self.spatial_dims:
            raise ConfigError(f"expected {self.spatial_dims} spatial sizes, got {size}")
        return size

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # sizes are traced tensors there; checks would only be baked in
            return
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ConfigError(
                f"input of shape {tuple(x.shape)} does not fit this {self.spatial_dims}D model; expected "
                f"(N, {self.in_channels}, {', '.join('DHW'[3 - self.spatial_dims :])})"
            )
        if self.padding == "valid":
            for s in x.shape[2:]:
                if s < min_valid_input_size(self.depth):
                    raise ConfigError(
                        f"input size {s} is too small for the unpadded U-Net of depth {self.depth}; "
                        f"the minimum is {min_valid_input_size(self.depth)}"
                    )
                valid_output_size(int(s), self.depth)

    def forward(self, x: torch.Tensor) -> Logits:
        """Logits for ``x``; "same" models pad ``x`` up to a multiple of :attr:`divisors` and crop back.

        The pad amounts are computed from ``x.shape`` with int arithmetic, which ``torch.jit.trace`` records
        (its sizes are traced tensors) and ``torch.export`` keeps symbolic: both then always pad (maybe by
        0) and crop, so the traced/exported graph serves every input size. ``torch.export`` with dynamic
        sizes needs each dynamic dim's minimum ``> divisor`` (a bottleneck of size 1 is specialised).
        Eager mode skips a zero pad and crops with a view.
        """
        self._check_input(x)
        if self.padding == "valid":
            return self.forward_padded(x)
        sizes = x.shape[2:]
        pads = [same_padding(s, d) for s, d in zip(sizes, self.divisors, strict=True)]
        eager = all(isinstance(s, int) for s in sizes)  # traced/symbolic sizes are not ints
        if eager and all(p == 0 for pair in pads for p in pair):
            return self.forward_padded(x)
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last dim first
        out = self.forward_padded(F.pad(x, flat))
        if eager:  # crop by slicing: a view, no copy
            index = (
                slice(None),
                slice(None),
                *(slice(b, b + s) for (b, _), s in zip(pads, sizes, strict=True)),
            )
            return [o[index] for o in out] if isinstance(out, list) else out[index]
        # Crop by negative padding: torch.export cannot prove the slice bounds of symbolic sizes, but the
        # size of a negative pad simplifies exactly to the input size.
        unpad = [-p for p in flat]
        return [F.pad(o, unpad) for o in out] if isinstance(out, list) else F.pad(out, unpad)
