"""The common shell of every architecture: argument checks, "same"-padding to a multiple of 2**depth inside
``forward`` (cropped back afterwards), the "valid" size checks, and the size helpers used by tiled
inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.layers import check_choice, check_dims
from unetseg.models.sizes import (
    min_valid_input_size,
    nearest_valid_input_size,
    same_padding,
    valid_output_size,
)

PADDINGS = ("same", "valid")
Logits = torch.Tensor | list[torch.Tensor]


def check_int(option: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` when it is an integer ``>= minimum``, else raise a :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}={value!r} is not allowed; give an integer >= {minimum}")
    return value


class SegmentationModel(nn.Module):
    """Base class: maps ``(N, in_channels, *spatial)`` to logits ``(N, num_classes, *spatial)``.

    Subclasses implement :meth:`forward_padded`, which sees inputs whose size is a multiple of
    ``2**depth`` ("same") or a valid size ("valid").

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        num_classes: output logit channels (1 = one sigmoid channel for binary segmentation).
        depth: number of 2x down-steps.
        padding: ``same`` (output size == input size, any input size) or ``valid`` (unpadded convs).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, num_classes: int, depth: int, padding: str = "same"
    ) -> None:
        super().__init__()
        self.spatial_dims = check_dims(spatial_dims)
        self.in_channels = check_int("in_channels", in_channels)
        self.num_classes = check_int("num_classes", num_classes)
        self.depth = check_int("depth", depth)
        self.padding = check_choice("padding", padding, PADDINGS)

    def forward_padded(self, x: torch.Tensor) -> Logits:
        raise NotImplementedError

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """The spatial size of the logits for ``input_size`` (== input for "same" padding)."""
        size = self._spatial(input_size)
        if self.padding == "same":
            return size
        return tuple(valid_output_size(size, self.depth))  # type: ignore[arg-type]

    def valid_input_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The smallest size ``>= size`` the model takes without error (``size`` itself for "same")."""
        size = self._spatial(size)
        if self.padding == "same":
            return size
        return tuple(nearest_valid_input_size(size, self.depth))  # type: ignore[arg-type]

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
        """Logits for ``x``; "same" models pad ``x`` up to a multiple of ``2**depth`` and crop back.

        The pad amounts are computed from ``x.shape`` with int arithmetic, which ``torch.jit.trace`` records
        (its sizes are traced tensors) and ``torch.export`` keeps symbolic: both then always pad (maybe by
        0) and crop, so the traced/exported graph serves every input size. ``torch.export`` with dynamic
        sizes needs each dynamic dim's minimum ``> 2**depth`` (a bottleneck of size 1 is specialised).
        Eager mode skips a zero pad and crops with a view.
        """
        self._check_input(x)
        if self.padding == "valid":
            return self.forward_padded(x)
        sizes = x.shape[2:]
        pads = [same_padding(s, 2**self.depth) for s in sizes]
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
