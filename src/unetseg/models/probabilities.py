"""A network that gives class probabilities instead of logits: what a BioImage Model Zoo package holds, so
that Fiji (deepImageJ), QuPath and ilastik see probabilities without a postprocessing step of their own.

:func:`class_probabilities` is the callable a package's ``pytorch_state_dict`` weights name
(``import_from: unetseg.models.probabilities``): it builds one of the registry's architectures by name and
wraps it. Its state dict is the network's under ``net.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.base import SegmentationModel
from unetseg.models.registry import build_model

CALLABLE = "class_probabilities"  # the package's architecture.callable


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; one sigmoid channel becomes ``[1 - p, p]``, so that labels are always the
    argmax over channels (scriptable: the TorchScript export uses it too)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


class ClassProbabilities(nn.Module):
    """``net`` followed by :func:`to_probabilities` (a deep-supervision list: its full-resolution head).
    The geometry the exporters read (spatial dims, channels, divisors, valid sizes) is the network's."""

    def __init__(self, net: SegmentationModel, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature = float(temperature)  # the run's calibration (infer.temperature), in the graph
        self.spatial_dims: int = net.spatial_dims
        self.in_channels: int = net.in_channels
        self.num_classes: int = max(2, net.num_classes)
        self.divisors: tuple[int, ...] = tuple(net.divisors)
        self.padding: str = net.padding

    def valid_input_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.net.valid_input_size(size))

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.net.output_size(size))

    @staticmethod
    def _last(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return out[-1] if isinstance(out, (list, tuple)) else out

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The network's padded core, then probabilities (per pixel, so cropping after is the same as
        before): lets the TorchScript export pad at run time as it does for the bare network."""
        return to_probabilities(self._scaled(self._last(self.net.forward_padded(x))))

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return logits / self.temperature if self.temperature != 1.0 else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_probabilities(self._scaled(self._last(self.net(x))))


def with_probabilities(net: nn.Module, temperature: float = 1.0) -> ClassProbabilities:
    """One of unetseg's networks giving class probabilities (of ``logits / temperature``)."""
    if not isinstance(net, SegmentationModel):
        raise ConfigError(f"{type(net).__name__} is not one of unetseg's architectures")
    return ClassProbabilities(net, temperature)


def class_probabilities(name: str, temperature: float = 1.0, **kwargs: Any) -> ClassProbabilities:
    """``build_model(name, **kwargs)`` giving class probabilities (see the module doc); ``temperature``:
    the run's calibration, applied before the softmax."""
    return with_probabilities(build_model(name, **kwargs), temperature)
