"""Architecture names -> classes: :func:`build_model` is the one way in. The options each architecture
takes, and the values each accepts, are read from the classes' signatures (their ``Literal`` and
``Annotated`` types), never retyped here."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.attention_unet import AttentionUNet
from unetseg.models.base import SegmentationModel
from unetseg.models.r2unet import R2AttentionUNet, R2UNet
from unetseg.models.res_unet import ResUNet
from unetseg.models.unet import UNet
from unetseg.models.unet_pp import UNetPlusPlus

CORE = ("spatial_dims", "in_channels", "num_classes", "base_channels", "depth")


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: its class and a one-line description with its paper."""

    cls: type[SegmentationModel]
    description: str


_REGISTRY: dict[str, ModelSpec] = {
    "unet": ModelSpec(
        UNet, "U-Net (Ronneberger et al., MICCAI 2015); padding same | valid (the paper's unpadded net)"
    ),
    "unet_pp": ModelSpec(
        UNetPlusPlus, "UNet++: nested dense skips, optional deep supervision (Zhou et al., DLMIA 2018)"
    ),
    "attention_unet": ModelSpec(
        AttentionUNet, "Attention U-Net: additive attention gates on the skips (Oktay et al., MIDL 2018)"
    ),
    "r2unet": ModelSpec(
        R2UNet, "R2U-Net: recurrent residual conv blocks (Alom et al., arXiv:1802.06955, 2018)"
    ),
    "r2_attention_unet": ModelSpec(
        R2AttentionUNet, "R2U-Net with attention gates (Alom et al. 2018 + Oktay et al. 2018)"
    ),
    "res_unet": ModelSpec(
        ResUNet, "Residual U-Net: pre-activation residual blocks (Zhang et al., IEEE GRSL 2018)"
    ),
}


def available_models() -> list[str]:
    """The architecture names :func:`build_model` accepts."""
    return list(_REGISTRY)


def _spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _allowed(annotation: Any) -> str:
    """What an option's type accepts, in words: ``a | b`` for a Literal, the Annotated text otherwise."""
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, str)), "a value")
    return "a value"


@functools.cache  # keyed by name: mypy takes a type[...] value for unhashable (it checks the instance's)
def _options_of(name: str) -> tuple[tuple[str, str], ...]:
    cls = _spec(name).cls
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    out = []
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.kind is param.KEYWORD_ONLY:
            out.append((param.name, _allowed(hints[param.name])))
        elif param.kind is param.VAR_KEYWORD:  # **options: Unpack[CommonOptions]
            typed = typing.get_args(hints[param.name])[0]
            common = typing.get_type_hints(typed, include_extras=True)
            out += [(k, _allowed(v)) for k, v in common.items()]
    return tuple(out)


def model_options(name: str) -> dict[str, str]:
    """The options ``name`` takes besides the core arguments, with the values each accepts."""
    return dict(_options_of(name))


def build_model(
    name: str,
    *,
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    base_channels: int = 32,
    depth: int = 4,
    **options: Any,
) -> SegmentationModel:
    """Build an architecture by name.

    Args:
        name: one of :func:`available_models`.
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        num_classes: logit channels (1 = binary, one sigmoid channel).
        base_channels: channels of the first level (doubled at each down-step).
        depth: number of down-steps.
        **options: see :func:`model_options` (``norm``, ``activation``, ``upsample``, ``dropout``, ``init``,
            ``channels``, ``strides``, ``kernels`` for every model; ``padding`` (unet),
            ``deep_supervision``/``ds_eval`` (unet_pp), ``recurrence`` (r2 models)).

    Raises:
        ConfigError (a ``ValueError``): unknown name or option, or a value that is not allowed; the message
            lists what is allowed.
    """
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        owners = {k: [n for n in _REGISTRY if k in model_options(n)] for k in unknown}
        problems = [
            f"{k} is only for {' and '.join(o)}" if o else f"unknown option {k!r}" for k, o in owners.items()
        ]
        listing = "; ".join(f"{k}: {v}" for k, v in allowed.items())
        raise ConfigError(f"{name}: {', '.join(problems)}; {name} takes {listing}")
    make: Callable[..., SegmentationModel] = _spec(name).cls  # every family takes the core arguments
    try:
        return make(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            base_channels=base_channels,
            depth=depth,
            **options,
        )
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    except (TypeError, ValueError) as e:  # a value of the wrong kind deep inside a layer
        raise ConfigError(f"{name}: {' '.join(str(e).split())[:160]}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_model(name: str) -> str:
    """A one-line description of the architecture ``name``, with its paper."""
    return _spec(name).description
