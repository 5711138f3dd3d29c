"""Every architecture through the shared :class:`ModelTester` checks (2D and 3D, odd sizes)."""

from __future__ import annotations

import torch

from unetseg.models import available_models, build_model

from .base import ModelTester


class TestUNet(ModelTester):
    name = "unet"


class TestUNetPlusPlus(ModelTester):
    name = "unet_pp"


class TestUNetPlusPlusDeepSupervision(ModelTester):
    name = "unet_pp"
    options = {"deep_supervision": True}
    heads_in_training = 3  # CASES use depth 3 (2D) and 2 (3D); overridden per case below

    def test_shape_and_backward(self, case):
        self.heads_in_training = case[2]
        super().test_shape_and_backward(case)


class TestAttentionUNet(ModelTester):
    name = "attention_unet"


class TestR2UNet(ModelTester):
    name = "r2unet"


class TestR2AttentionUNet(ModelTester):
    name = "r2_attention_unet"
    options = {"recurrence": 1}


class TestResUNet(ModelTester):
    name = "res_unet"


def test_every_registered_model_has_a_tester():
    tested = {cls.name for cls in ModelTester.__subclasses__()} | {
        c.name for sub in ModelTester.__subclasses__() for c in sub.__subclasses__()
    }
    assert set(available_models()) <= tested


def test_deep_supervision_eval_is_mean_or_last_head():
    # Instance norm behaves the same in train and eval mode, so the eval output can be compared with
    # the heads returned in training mode.
    x = torch.randn(1, 1, 21, 30)
    for ds_eval in ("mean", "last"):
        torch.manual_seed(0)
        model = build_model(
            "unet_pp", base_channels=4, depth=3, norm="instance", deep_supervision=True, ds_eval=ds_eval
        )
        with torch.no_grad():
            heads = model.train()(x)
            out = model.eval()(x)
        assert len(heads) == 3 and all(h.shape == (1, 2, 21, 30) for h in heads)
        assert not torch.allclose(heads[0], heads[-1])
        expected = torch.stack(heads).mean(0) if ds_eval == "mean" else heads[-1]
        torch.testing.assert_close(out, expected)


def test_unet_pp_without_deep_supervision_has_one_head():
    model = build_model("unet_pp", base_channels=4, depth=3)
    assert len(model.heads) == 1
    assert isinstance(model.train()(torch.randn(1, 1, 16, 16)), torch.Tensor)


def test_single_logit_channel_for_binary():
    for name in available_models():
        out = build_model(name, num_classes=1, base_channels=2, depth=2)(torch.randn(1, 1, 10, 14))
        assert out.shape == (1, 1, 10, 14), name


def test_multi_channel_input():
    for name in available_models():
        out = build_model(name, in_channels=3, base_channels=2, depth=2)(torch.randn(2, 3, 12, 12))
        assert out.shape == (2, 2, 12, 12), name


def test_torch_export_with_dynamic_sizes_pads_and_crops_symbolically():
    # The pad/crop inside forward must stay symbolic so one exported graph serves every size (the ONNX
    # exporter builds on torch.export). Dynamic minimum > 2**depth: a size-1 bottleneck is specialised.
    torch.manual_seed(0)
    model = build_model("attention_unet", base_channels=2, depth=2).eval()
    h, w = torch.export.Dim("h", min=5, max=512), torch.export.Dim("w", min=5, max=512)
    program = torch.export.export(model, (torch.randn(1, 1, 20, 24),), dynamic_shapes={"x": {2: h, 3: w}})
    with torch.no_grad():
        for size in [(20, 24), (23, 30), (9, 41)]:
            x = torch.randn(1, 1, *size)
            torch.testing.assert_close(program.module()(x), model(x))
