"""Weight initialisation: each block knows which of its convolutions see non-rectified input and initialises
itself (:meth:`initialise`); :func:`init_weights` walks the network once, in module order.

Kaiming uses ReLU's gain sqrt(2) for convolutions after a rectifier and gain 1 for those fed by the raw
image, a residual sum or a projection (He et al. 2015, eq. 10 and the note on the first layer); without
that, residual and recurrent-residual U-Nets start with logits around 100 because every unnormalised
projection doubles the variance. Norm layers start as the identity and biases at zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol, get_args, runtime_checkable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from unetseg.models.layers import LEAKY_SLOPE, check_choice

Init = Literal["kaiming", "xavier", "normal", "orthogonal"]
INITS: tuple[Init, ...] = get_args(Init)
NORMAL_STD = 0.02


@runtime_checkable
class SelfInitialising(Protocol):
    """A block that initialises itself: it knows which of its convolutions see non-rectified input."""

    def initialise(self, spec: InitSpec) -> None: ...


@dataclass(frozen=True)
class InitSpec:
    """How to initialise: the scheme, the network's activation (the Kaiming gain; GELU uses ReLU's) and
    whether the convolutions at hand see non-rectified input (gain 1)."""

    scheme: str = "kaiming"
    activation: str = "relu"
    linear: bool = False

    def as_linear(self, linear: bool = True) -> InitSpec:
        return replace(self, linear=linear)


def init_conv(m: _ConvNd, spec: InitSpec) -> None:
    """Initialise one (transposed) convolution."""
    if spec.scheme == "kaiming":
        leaky = spec.activation == "leaky_relu"
        nonlinearity: Literal["linear", "leaky_relu", "relu"] = (
            "linear" if spec.linear else ("leaky_relu" if leaky else "relu")
        )
        nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE if leaky else 0, nonlinearity=nonlinearity)
    elif spec.scheme == "xavier":
        nn.init.xavier_uniform_(m.weight)
    elif spec.scheme == "normal":
        nn.init.normal_(m.weight, 0.0, NORMAL_STD)
    else:
        nn.init.orthogonal_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def init_module(module: nn.Module, spec: InitSpec) -> None:
    """Initialise ``module`` and everything inside it, in module order: a block with its own
    ``initialise(spec)`` does its part, plain convolutions and norms are set here."""
    if any(p.is_meta for p in module.parameters(recurse=False)):
        return  # shapes only (e.g. counting parameters): there is nothing to fill, and it is slow
    if isinstance(module, SelfInitialising):
        module.initialise(spec)
        return
    if isinstance(module, _ConvNd):
        init_conv(module, spec)
        return
    if isinstance(module, (_NormBase, nn.GroupNorm)) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
        return
    for child in module.children():
        init_module(child, spec)


def init_weights(module: nn.Module, scheme: str = "kaiming", activation: str = "relu") -> nn.Module:
    """Initialise every (transposed) convolution of ``module`` in place and return ``module``.

    Args:
        module: the network.
        scheme: ``kaiming`` (He et al. 2015, normal, fan-in; the 2015 U-Net paper's ``sqrt(2/N)``
            Gaussian), ``xavier`` (Glorot & Bengio 2010, uniform), ``normal`` (N(0, 0.02)) or
            ``orthogonal`` (Saxe et al. 2014, on the weight flattened to out x fan-in).
        activation: the network's activation, which sets the Kaiming gain.
    """
    init_module(module, InitSpec(check_choice("init", scheme, INITS), activation))
    return module


def init_children(module: nn.Module, spec: InitSpec, linear: frozenset[str] | set[str] = frozenset()) -> None:
    """The usual body of a block's ``initialise``: its children in order, those named in ``linear`` (and
    everything inside them) with gain 1."""
    for name, child in module.named_children():
        init_module(child, spec.as_linear() if name in linear else spec)
