"""Layer factories, weight initialisation and the size arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unetseg.errors import ConfigError
from unetseg.models import layers
from unetseg.models.blocks import DoubleConv, ResidualBlock
from unetseg.models.init import init_weights
from unetseg.models.sizes import (
    min_valid_input_size,
    nearest_valid_input_size,
    same_padding,
    valid_border,
    valid_input_sizes,
    valid_output_size,
)


@pytest.mark.parametrize(("channels", "groups"), [(1, 1), (3, 3), (4, 4), (12, 6), (20, 5), (64, 8)])
def test_group_count_divides_channels(channels, groups):
    assert layers.group_count(channels) == groups


@pytest.mark.parametrize("dims", [2, 3])
def test_factories_pick_the_dimension(dims):
    assert issubclass(layers.conv(dims), (nn.Conv2d, nn.Conv3d)[dims - 2])
    assert isinstance(layers.pool(dims), (nn.MaxPool2d, nn.MaxPool3d)[dims - 2])
    assert isinstance(layers.norm("batch", dims, 8), (nn.BatchNorm2d, nn.BatchNorm3d)[dims - 2])
    inorm = layers.norm("instance", dims, 8)
    assert isinstance(inorm, (nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 2]) and inorm.affine
    assert layers.norm("group", dims, 12).num_groups == 6
    assert isinstance(layers.norm("none", dims, 8), nn.Identity)
    assert isinstance(layers.dropout(dims, 0.1), (nn.Dropout2d, nn.Dropout3d)[dims - 2])
    assert isinstance(layers.dropout(dims, 0.0), nn.Identity)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", layers.UPSAMPLES)
def test_upsample_doubles_size_and_maps_channels(dims, mode):
    up = layers.upsample(mode, dims, 6, 3)
    out = up(torch.randn(1, 6, *([5] * dims)))
    assert out.shape == (1, 3, *([10] * dims))


def _grads(conv: nn.Module, x: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    conv.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    out.float().square().mean().backward()
    return out, conv.weight.grad.clone(), x.grad.clone()


def test_a_cpu_bf16_convolution_of_a_two_slice_input_gets_right_gradients():
    """torch 2.13's oneDNN bf16 backward of a convolution whose input has a 1- or 2-long axis gave wrong
    weight gradients (NaN in about half the calls on this AMD EPYC, and heap corruption): such inputs run
    in float32 under CPU autocast, so each of many calls matches the float32 gradients."""
    torch.manual_seed(0)
    conv = layers.conv(3)(8, 16, kernel_size=3, padding=1, bias=False)
    x = torch.randn(1, 8, 2, 4, 4, requires_grad=True)
    _, w_ref, x_ref = _grads(conv, x, bf16=False)
    for _ in range(30):  # the fault depends on what the allocator hands out: one call proves little
        out, w, g = _grads(conv, x, bf16=True)
        assert out.dtype == torch.float32
        torch.testing.assert_close(w, w_ref)
        torch.testing.assert_close(g, x_ref)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_float32_fallback_is_only_for_tiny_axes_under_gradients(dims):
    """Axes of 3 and more (measured right) keep bf16, and so does inference on tiny inputs (its forward
    pass was right): predictions and speed are unchanged."""
    conv = layers.conv(dims)(4, 8, kernel_size=3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 4, *([3] * dims))).dtype == torch.bfloat16
        assert conv(torch.randn(1, 4, *([2] * dims))).dtype == torch.float32
        with torch.inference_mode():
            assert conv(torch.randn(1, 4, *([2] * dims))).dtype == torch.bfloat16
    assert conv(torch.randn(1, 4, *([2] * dims))).dtype == torch.float32  # no autocast: as torch does
    conv.to(torch.bfloat16)  # no float32 master weights: nothing to fall back to, and no dtype clash
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 4, *([2] * dims))).dtype == torch.bfloat16


def test_activations():
    assert isinstance(layers.act("relu"), nn.ReLU)
    assert layers.act("leaky_relu").negative_slope == layers.LEAKY_SLOPE
    assert isinstance(layers.act("gelu"), nn.GELU)
    with pytest.raises(ConfigError, match="choose one of: relu, leaky_relu, gelu"):
        layers.act("swish")


def _conv(in_ch: int = 64, out_ch: int = 64) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3)


def test_kaiming_init_uses_the_rectifier_gain_and_gain_one_for_linear_inputs():
    cfg = layers.LayerConfig(dims=2)
    block = DoubleConv(cfg, 64, 64, first=True)  # its first conv sees the raw image, the second a ReLU
    with torch.no_grad():
        block[0][1].weight.fill_(3.0)
    init_weights(block, "kaiming")
    fan_in = 64 * 9
    assert block[0][0].weight.std().item() == pytest.approx(math.sqrt(1 / fan_in), rel=0.05)
    assert block[1][0].weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert torch.equal(block[0][1].weight, torch.ones(64))  # norms start as the identity
    inner = DoubleConv(cfg, 64, 64)  # not the first block: both convs after a rectifier
    init_weights(inner, "kaiming")
    assert inner[0][0].weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    res = ResidualBlock(layers.LayerConfig(dims=2, norm="none"), 64, 128)
    res.shortcut.bias.data.fill_(1.0)
    init_weights(res, "kaiming")  # the 1x1 shortcut projects the block's un-rectified input: gain 1
    assert res.shortcut.weight.std().item() == pytest.approx(math.sqrt(1 / 64), rel=0.05)
    assert torch.equal(res.shortcut.bias, torch.zeros(128))


def test_other_init_schemes():
    conv = _conv()
    init_weights(conv, "normal")
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    init_weights(conv, "xavier")
    bound = math.sqrt(6 / (64 * 9 + 64 * 9))
    assert conv.weight.abs().max().item() <= bound and conv.weight.std().item() == pytest.approx(
        bound / math.sqrt(3), rel=0.05
    )
    init_weights(conv, "orthogonal")
    flat = conv.weight.reshape(64, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(64), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="init='he'"):
        init_weights(conv, "he")


def test_same_padding_splits_evenly():
    assert same_padding(97, 8) == (3, 4)
    assert same_padding(96, 8) == (0, 0)
    assert same_padding(1, 16) == (7, 8)


def test_valid_sizes():
    assert valid_output_size(572, 4) == 388
    assert valid_output_size((572, 188), 4) == (388, 4)
    assert valid_border(4) == 92 and 572 - 2 * valid_border(4) == 388
    assert min_valid_input_size(4) == 188 and min_valid_input_size(1) == 18
    sizes = valid_input_sizes(2, max_size=80)
    assert sizes == [44, 48, 52, 56, 60, 64, 68, 72, 76, 80]
    for n in range(1, 81):
        if n in sizes:
            assert valid_output_size(n, 2) == n - 2 * valid_border(2)
        else:
            with pytest.raises(ConfigError):
                valid_output_size(n, 2)
    assert nearest_valid_input_size(573, 4) == 588
    assert nearest_valid_input_size(10, 4) == 188
    assert nearest_valid_input_size((572, 573), 4) == (572, 588)
