"""build_model / available_models / count_parameters / describe_model, options and their errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import unetseg
from unetseg.errors import ConfigError
from unetseg.models import available_models, build_model, count_parameters, describe_model

NAMES = ["unet", "unet_pp", "attention_unet", "r2unet", "r2_attention_unet", "res_unet"]


def test_available_models_and_top_level_api():
    assert available_models() == NAMES
    assert unetseg.available_models() == NAMES
    assert unetseg.build_model is build_model


def test_defaults_follow_the_contract():
    model = build_model("unet")
    assert (model.spatial_dims, model.in_channels, model.num_classes, model.depth) == (2, 1, 2, 4)
    assert model.base_channels == 32
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_explicit_widths_per_level(name):
    # MONAI BasicUNet's widths: the first two levels equal, so not base_channels doubled
    model = build_model(name, depth=2, channels=[4, 4, 8], num_classes=3).eval()
    assert model.widths == [4, 4, 8] and model.base_channels == 4
    first_convs = [next(m for m in block.modules() if isinstance(m, nn.Conv2d)) for block in model.encoder]
    assert [c.out_channels for c in first_convs] == [4, 4, 8]
    with torch.no_grad():
        assert model(torch.randn(1, 1, 21, 19)).shape == (1, 3, 21, 19)
    doubled = build_model(name, depth=2, base_channels=4, num_classes=3)
    assert doubled.widths == [4, 8, 16] and count_parameters(model) < count_parameters(doubled)


@pytest.mark.parametrize("name", NAMES)
def test_describe_model_is_one_line_with_the_paper(name):
    text = describe_model(name)
    assert "\n" not in text and re.search(r"20(15|16|18)", text)


def test_models_build_on_the_meta_device_for_counting():
    # `unetseg models` counts on "meta" (no memory, no initialisation); the counts must be the real ones
    with torch.device("meta"):
        meta = build_model("r2_attention_unet", spatial_dims=3, base_channels=4, depth=2)
    real = build_model("r2_attention_unet", spatial_dims=3, base_channels=4, depth=2)
    assert all(p.is_meta for p in meta.parameters())
    assert count_parameters(meta) == count_parameters(real)


def test_count_parameters():
    model = build_model("unet", base_channels=2, depth=1)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.head.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.head.weight.numel()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vnet"}, "unknown model 'vnet'; available: unet, unet_pp, attention_unet"),
        ({"name": "unet", "num_classes": 0}, "num_classes=0 is not allowed; give an integer >= 1"),
        ({"name": "unet", "depth": 0}, "depth=0 is not allowed"),
        ({"name": "unet", "base_channels": 0}, "base_channels=0 is not allowed"),
        ({"name": "unet", "in_channels": 0}, "in_channels=0 is not allowed"),
        ({"name": "unet", "channels": [8, 16]}, r"channels=\[8, 16\] is not allowed; give depth \+ 1 = 5"),
        ({"name": "unet_pp", "depth": 1, "channels": [8, 0]}, "channels=.* is not allowed; give depth"),
        ({"name": "unet", "spatial_dims": 4}, "spatial_dims=4 is not allowed; choose 2 or 3"),
        (
            {"name": "unet", "norm": "layer"},
            "norm='layer' is not allowed; choose one of: batch, instance, group",
        ),
        ({"name": "unet", "activation": "tanh"}, "activation='tanh' is not allowed; choose one of: relu"),
        ({"name": "unet", "upsample": "pixel"}, "upsample='pixel' is not allowed; choose one of: transpose"),
        ({"name": "unet", "init": "zeros"}, "init='zeros' is not allowed; choose one of: kaiming, xavier"),
        ({"name": "unet", "padding": "full"}, "padding='full' is not allowed; choose one of: same, valid"),
        ({"name": "unet", "dropout": 1.5}, r"dropout=1.5 is not allowed; give a number in \[0, 1\)"),
        ({"name": "r2unet", "recurrence": 0}, "recurrence=0 is not allowed; give an integer >= 1"),
        ({"name": "unet_pp", "deep_supervision": "yes"}, "deep_supervision='yes' is not allowed"),
        ({"name": "unet_pp", "ds_eval": "max"}, "ds_eval='max' is not allowed; choose one of: mean, last"),
        ({"name": "unet_pp", "padding": "valid"}, "unet_pp: padding is only for unet"),
        ({"name": "unet", "deep_supervision": True}, "unet: deep_supervision is only for unet_pp"),
        ({"name": "res_unet", "recurrence": 3}, "recurrence is only for r2unet and r2_attention_unet"),
        ({"name": "unet", "colour": 1}, "unknown option 'colour'; unet takes norm: batch | instance"),
    ],
)
def test_bad_names_and_options_raise_value_errors_saying_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_model(**kwargs)
    assert isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value)


def test_wrong_input_shape_is_a_clear_error():
    model = build_model("unet", in_channels=3, base_channels=2, depth=1)
    with pytest.raises(ConfigError, match=r"expected \(N, 3, H, W\)"):
        model(torch.randn(1, 1, 8, 8))


OPTION_VALUES = [
    ("norm", "batch", nn.BatchNorm2d),
    ("norm", "instance", nn.InstanceNorm2d),
    ("norm", "group", nn.GroupNorm),
    ("norm", "none", None),
    ("activation", "relu", nn.ReLU),
    ("activation", "leaky_relu", nn.LeakyReLU),
    ("activation", "gelu", nn.GELU),
    ("upsample", "transpose", nn.ConvTranspose2d),
    ("upsample", "bilinear", nn.Upsample),
    ("upsample", "nearest", nn.Upsample),
    ("dropout", 0.2, nn.Dropout2d),
    ("init", "kaiming", None),
    ("init", "xavier", None),
    ("init", "normal", None),
    ("init", "orthogonal", None),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("option", "value", "layer"), OPTION_VALUES, ids=[f"{o}={v}" for o, v, _ in OPTION_VALUES]
)
def test_every_option_value_builds_and_trains(name, option, value, layer):
    torch.manual_seed(0)
    model = build_model(name, base_channels=4, depth=2, **{option: value}).train()
    if layer is not None:
        assert any(isinstance(m, layer) for m in model.modules())
    if option == "norm" and value == "none":
        assert not any(
            isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) for m in model.modules()
        )
    out = model(torch.randn(2, 1, 14, 18))
    out = out[-1] if isinstance(out, list) else out
    assert out.shape == (2, 2, 14, 18)
    out.logsumexp(1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_interpolating_upsample_in_3d(upsample):
    model = build_model("unet", spatial_dims=3, base_channels=2, depth=2, upsample=upsample, norm="group")
    ups = [m for m in model.modules() if isinstance(m, nn.Upsample)]
    assert ups and all(m.mode == ("trilinear" if upsample == "bilinear" else "nearest") for m in ups)
    assert model(torch.randn(1, 1, 6, 10, 9)).shape == (1, 2, 6, 10, 9)


def test_recurrence_option_sets_the_recurrent_steps():
    model = build_model("r2_attention_unet", base_channels=2, depth=1, recurrence=3)
    assert model.recurrence == 3
    assert {m.recurrence for m in model.modules() if hasattr(m, "unit")} == {3}
