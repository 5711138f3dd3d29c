"""The shared blocks: what each one computes, checked through its defining property."""

from __future__ import annotations

import pytest
import torch

from unetseg.models.blocks import (
    AttentionGate,
    DoubleConv,
    RecurrentBlock,
    ResidualBlock,
    RRCNNBlock,
    UpBlock,
    center_crop,
)
from unetseg.models.layers import LayerConfig

CFG = LayerConfig(dims=2, norm="none")


def test_double_conv_same_keeps_size_and_valid_loses_four():
    x = torch.randn(1, 2, 20, 21)
    assert DoubleConv(CFG, 2, 5)(x).shape == (1, 5, 20, 21)
    assert DoubleConv(LayerConfig(dims=2, same=False), 2, 5)(x).shape == (1, 5, 16, 17)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_recurrent_block_applies_its_shared_unit_t_plus_one_times(t):
    block = RecurrentBlock(CFG, 4, recurrence=t)
    calls = []
    block.unit.register_forward_hook(lambda *_: calls.append(1))
    block(torch.randn(1, 4, 6, 6))
    assert len(calls) == t + 1
    assert sum(p.numel() for p in block.parameters()) == 4 * 4 * 9 + 4  # weights shared across steps


def test_rrcnn_block_is_residual_around_two_recurrent_blocks():
    block = RRCNNBlock(CFG, 3, 4, recurrence=2)
    assert [b.recurrence for b in block.body] == [2, 2]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = block.proj(x) + block.body(block.proj(x))
    torch.testing.assert_close(block(x), expected)


def test_residual_block_is_a_shortcut_plus_a_pre_activated_branch():
    block = ResidualBlock(CFG, 4, 4)
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        branch = block(x) - x  # the shortcut is the identity when the width stays
        # pre-activation: the branch sees relu(x), so the negative part of x cannot change it
        torch.testing.assert_close(block(x.clamp(min=0)) - x.clamp(min=0), branch)
        block.body[3].weight.zero_()
        block.body[3].bias.zero_()
        torch.testing.assert_close(block(x), x)  # no branch left: the pure shortcut
    first = ResidualBlock(CFG, 3, 5, first=True)  # the first block sees the raw image: no pre-activation
    with torch.no_grad():
        y = torch.randn(1, 3, 6, 6)
        branch = first(y) - first.shortcut(y)
        assert not torch.allclose(first(y.clamp(min=0)) - first.shortcut(y.clamp(min=0)), branch)
        assert first(y).shape == (1, 5, 6, 6)


def _gate(bias: float) -> AttentionGate:
    gate = AttentionGate(CFG, skip_ch=4, gate_ch=6)
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.fill_(bias)
    return gate


def test_attention_gate_scales_the_skip_by_its_coefficients():
    x, g = torch.randn(1, 4, 8, 10), torch.randn(1, 6, 4, 5)
    open_gate, closed_gate = _gate(30.0), _gate(-30.0)
    with torch.no_grad():
        torch.testing.assert_close(open_gate(x, g), open_gate.out(x))  # alpha = 1
        torch.testing.assert_close(closed_gate(x, g), closed_gate.out(torch.zeros_like(x)))  # alpha = 0
    # A gating signal on another grid is resampled; the output keeps the skip's shape.
    assert AttentionGate(CFG, 4, 6)(x, torch.randn(1, 6, 3, 3)).shape == x.shape


def test_attention_gate_output_depends_on_the_gating_signal():
    gate = AttentionGate(CFG, 4, 6)
    x = torch.randn(1, 4, 8, 10)
    assert not torch.allclose(gate(x, torch.randn(1, 6, 4, 5)), gate(x, torch.randn(1, 6, 4, 5)))


def test_center_crop_takes_the_middle():
    x = torch.arange(100.0).reshape(1, 1, 10, 10)
    assert torch.equal(center_crop(x, (4, 6)), x[:, :, 3:7, 2:8])


def test_up_block_valid_crops_the_skip():
    up = UpBlock(LayerConfig(dims=2, same=False), 8, 4, 4, DoubleConv, crop=True)
    out = up(torch.randn(1, 8, 6, 6), [torch.randn(1, 4, 20, 20)])
    assert out.shape == (1, 4, 8, 8)  # 12x12 after the up-step, minus 4 for the valid DoubleConv
