"""Architecture names -> classes, with option checking: :func:`build_model` is the one way in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from unetseg.errors import ConfigError
from unetseg.models.attention_unet import AttentionUNet
from unetseg.models.base import PADDINGS
from unetseg.models.init import INITS
from unetseg.models.layers import ACTIVATIONS, NORMS, UPSAMPLES
from unetseg.models.r2unet import R2AttentionUNet, R2UNet
from unetseg.models.res_unet import ResUNet
from unetseg.models.unet import UNet
from unetseg.models.unet_pp import DS_EVAL, UNetPlusPlus

# Option -> what it accepts, for error messages (the model classes check the values themselves).
COMMON_OPTIONS = {
    "norm": " | ".join(NORMS),
    "activation": " | ".join(ACTIVATIONS),
    "upsample": " | ".join(UPSAMPLES),
    "channels": "depth + 1 integers, one width per level (default: base_channels doubled per level)",
    "dropout": "a number in [0, 1)",
    "init": " | ".join(INITS),
}
EXTRA_OPTIONS = {
    "padding": " | ".join(PADDINGS),
    "deep_supervision": "true | false",
    "ds_eval": " | ".join(DS_EVAL),
    "recurrence": "an integer >= 1",
}


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: its class, a one-line description and its own extra options."""

    cls: type[nn.Module]
    description: str
    extra: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelSpec] = {
    "unet": ModelSpec(
        UNet,
        "U-Net (Ronneberger et al., MICCAI 2015); padding same | valid (the paper's unpadded net)",
        ("padding",),
    ),
    "unet_pp": ModelSpec(
        UNetPlusPlus,
        "UNet++: nested dense skips, optional deep supervision (Zhou et al., DLMIA 2018)",
        ("deep_supervision", "ds_eval"),
    ),
    "attention_unet": ModelSpec(
        AttentionUNet, "Attention U-Net: additive attention gates on the skips (Oktay et al., MIDL 2018)"
    ),
    "r2unet": ModelSpec(
        R2UNet,
        "R2U-Net: recurrent residual conv blocks (Alom et al., arXiv:1802.06955, 2018)",
        ("recurrence",),
    ),
    "r2_attention_unet": ModelSpec(
        R2AttentionUNet,
        "R2U-Net with attention gates (Alom et al. 2018 + Oktay et al. 2018)",
        ("recurrence",),
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


def model_options(name: str) -> dict[str, str]:
    """The options ``name`` takes besides the common arguments, with the values each accepts."""
    spec = _spec(name)
    return {**COMMON_OPTIONS, **{k: EXTRA_OPTIONS[k] for k in spec.extra}}


def build_model(
    name: str,
    *,
    spatial_dims: int = 2,
    in_channels: int = 1,
    num_classes: int = 2,
    base_channels: int = 32,
    depth: int = 4,
    **options: Any,
) -> nn.Module:
    """Build an architecture by name.

    Args:
        name: one of :func:`available_models`.
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        num_classes: logit channels (1 = binary, one sigmoid channel).
        base_channels: channels of the first level (doubled at each down-step).
        depth: number of 2x down-steps.
        **options: ``norm``, ``activation``, ``upsample``, ``dropout``, ``init``, ``channels`` (explicit
            widths per level) for every model;
            ``padding`` (unet), ``deep_supervision``/``ds_eval`` (unet_pp), ``recurrence`` (r2 models).

    Raises:
        ConfigError (a ``ValueError``): unknown name or option, or a value that is not allowed; the message
            lists what is allowed.
    """
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        owners = {k: [n for n, s in _REGISTRY.items() if k in s.extra] for k in unknown}
        problems = [
            f"{k} is only for {' and '.join(o)}" if o else f"unknown option {k!r}" for k, o in owners.items()
        ]
        listing = "; ".join(f"{k}: {v}" for k, v in allowed.items())
        raise ConfigError(f"{name}: {', '.join(problems)}; {name} takes {listing}")
    try:
        return _spec(name).cls(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            base_channels=base_channels,
            depth=depth,
            **options,
        )
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_model(name: str) -> str:
    """A one-line description of the architecture ``name``, with its paper."""
    return _spec(name).description
