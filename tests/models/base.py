"""One tester for every architecture (as segmentation_models_pytorch does): subclass ``ModelTester`` and set
``name`` (and ``options``); each check runs in 2D and 3D on sizes that are not multiples of 2**depth."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from unetseg.models import build_model

# (spatial_dims, input size, depth): odd sizes, so the model must pad internally and crop back.
CASES = [(2, (97, 131), 3), (3, (19, 37, 29), 2)]
IDS = ["2d", "3d"]


def as_list(out: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return out if isinstance(out, list) else [out]


class ModelTester:
    """The checks every architecture must pass. Widths are tiny (base 4) to keep the suite fast."""

    name: str = ""
    options: dict[str, Any] = {}
    num_classes = 3
    base_channels = 4
    heads_in_training = 1  # how many logit tensors forward returns in training mode

    def build(self, dims: int, depth: int, **overrides: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(
            self.name,
            spatial_dims=dims,
            in_channels=1,
            num_classes=self.num_classes,
            base_channels=self.base_channels,
            depth=depth,
            **{**self.options, **overrides},
        )

    @pytest.fixture(params=CASES, ids=IDS)
    def case(self, request: pytest.FixtureRequest) -> tuple[int, tuple[int, ...], int]:
        return request.param

    def test_attributes_and_sizes(self, case):
        dims, size, depth = case
        model = self.build(dims, depth)
        assert (model.spatial_dims, model.in_channels, model.num_classes, model.depth) == (
            dims,
            1,
            self.num_classes,
            depth,
        )
        assert model.output_size(size) == size
        assert model.valid_input_size(size) == size

    def test_shape_and_backward(self, case):
        dims, size, depth = case
        model = self.build(dims, depth).train()
        x = torch.randn(1, 1, *size, requires_grad=True)
        outs = as_list(model(x))
        assert len(outs) == self.heads_in_training
        for out in outs:
            assert out.shape == (1, self.num_classes, *size)
        sum(o.square().mean() for o in outs).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{pname} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"

    def test_every_convolution_comes_from_the_layer_factory(self, case):
        """So each gets the CPU bf16 float32 fallback for tiny inputs (``layers.conv``)."""
        from unetseg.models import layers

        model = self.build(case[0], case[2])
        convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
        assert convs and all(isinstance(m, layers.conv(case[0])) for m in convs)

    def test_eval_is_deterministic(self, case):
        dims, size, depth = case
        model = self.build(dims, depth, dropout=0.3).eval()  # dropout must switch off in eval
        x = torch.randn(1, 1, *size)
        with torch.no_grad():
            a, b = model(x), model(x)
        assert isinstance(a, torch.Tensor)
        assert a.shape == (1, self.num_classes, *size)
        assert torch.equal(a, b)

    def test_jit_trace(self, case):
        dims, size, depth = case
        model = self.build(dims, depth).eval()
        x = torch.randn(1, 1, *size)
        other = torch.randn(1, 1, *(s + 3 for s in size))  # the pad/crop is traced, not baked in
        with torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)  # compared below instead
            for inp in (x, other):
                torch.testing.assert_close(traced(inp), model(inp), atol=1e-5, rtol=1e-4)

    def test_channels_last_bf16_autocast(self, case):
        dims, size, depth = case
        model = self.build(dims, depth).train()
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            ref = as_list(model(x))[-1]
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        model = model.to(memory_format=fmt)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = as_list(model(x.to(memory_format=fmt)))[-1]
        assert out.shape == ref.shape
        assert torch.isfinite(out).all()
        # bf16 keeps ~3 significant digits; the same network must give nearly the same logits.
        assert (out.float() - ref).abs().max() <= 0.1 * ref.abs().max()
