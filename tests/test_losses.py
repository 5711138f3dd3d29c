"""Losses against values worked by hand on tiny tensors, 2D and 3D, binary (C=1) and multi-class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from unetseg.data.instances import unet_weight_map
from unetseg.errors import ConfigError
from unetseg.losses import DeepSupervisionLoss, available_losses, build_loss

L3 = math.log(3.0)  # softmax([0, ln 3]) = [1/4, 3/4]; sigmoid(ln 3) = 3/4


def pixels(rows, target, dims=2):
    """Per-pixel logit vectors -> logits (1, C, 1, P) or (1, C, 1, 1, P), target of the matching shape."""
    x = torch.tensor(rows, dtype=torch.float32).T  # (C, P)
    shape = (1, x.shape[0]) + (1,) * (dims - 1) + (x.shape[1],)
    return x.reshape(shape), torch.tensor(target).reshape((1,) + shape[2:])


def value(name, num_classes, x, t, w=None, **options) -> float:
    return build_loss(name, num_classes, **options)(x, t, w).item()


# Three pixels used by several tests: probabilities [1/4, 3/4] (t=1), [3/4, 1/4] (t=0), [1/2, 1/2] (t=1).
THREE = ([[0, L3], [L3, 0], [0, 0]], [1, 0, 1])


@pytest.mark.parametrize("dims", [2, 3])
def test_cross_entropy_by_hand(dims):
    x, t = pixels([[0, L3], [0, L3]], [1, 0], dims)  # p = [1/4, 3/4] at both pixels
    ce = build_loss("ce", 2)
    a, b = -math.log(3 / 4), -math.log(1 / 4)  # -log p_t at pixel 1 (t=1) and pixel 2 (t=0)
    assert ce(x, t).item() == pytest.approx((a + b) / 2, rel=1e-6)
    # class weights [1, 3]: (3a + 1b) / (3 + 1), PyTorch's weighted mean
    assert build_loss("ce", 2, class_weights=[1, 3])(x, t).item() == pytest.approx((3 * a + b) / 4, rel=1e-6)
    # U-Net weight map w = [2, 0.5] multiplies each pixel's term: (2a + 0.5b) / 2
    w = torch.tensor([2.0, 0.5]).reshape(t.shape)
    assert ce(x, t, w).item() == pytest.approx((2 * a + 0.5 * b) / 2, rel=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_bce_for_one_sigmoid_channel(dims):
    x, t = pixels([[0.0], [L3]], [0, 1], dims)  # sigmoid = 1/2 (t=0) and 3/4 (t=1)
    expected = (-math.log(1 / 2) - math.log(3 / 4)) / 2  # = 0.490415
    assert build_loss("ce", 1)(x, t).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(F.binary_cross_entropy_with_logits(x[:, 0], t.float()).item(), rel=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_dice_by_hand(dims):
    x, t = pixels(*THREE, dims)
    # class 1: TP = 3/4 + 1/2 = 5/4, sum p = 3/4 + 1/4 + 1/2 = 3/2, |g| = 2 -> 2TP / (sum p + |g|) = 2.5 / 3.5
    # class 0: TP = 3/4, sum p = 3/2, |g| = 1 -> 1.5 / 2.5 = 0.6
    assert build_loss("dice", 2, smooth=0)(x, t).item() == pytest.approx(1 - 5 / 7, rel=1e-6)
    with_bg = build_loss("dice", 2, smooth=0, include_background=True)(x, t).item()
    assert with_bg == pytest.approx(1 - (5 / 7 + 0.6) / 2, rel=1e-6)
    # the default smoothing (1e-5) barely moves it
    assert build_loss("dice", 2)(x, t).item() == pytest.approx(1 - 5 / 7, abs=1e-5)


def test_batch_dice_differs_from_per_sample():
    # sample a: p1 = 3/4, t = 1 -> dice1 = 1.5 / 1.75 = 6/7; sample b: p1 = 1/4, t = 0 -> dice1 = 0 / 0.25 = 0
    x = torch.tensor([[0.0, L3], [L3, 0.0]]).reshape(2, 2, 1, 1)
    t = torch.tensor([1, 0]).reshape(2, 1, 1)
    assert build_loss("dice", 2, smooth=0)(x, t).item() == pytest.approx(1 - (6 / 7 + 0) / 2, rel=1e-6)
    # batch: TP = 3/4, sum p = 1, |g| = 1 -> 1.5 / 2 = 0.75
    assert build_loss("dice", 2, smooth=0, batch_dice=True)(x, t).item() == pytest.approx(0.25, rel=1e-6)


def test_binary_dice_equals_two_class_softmax():
    x1, t = pixels([[L3], [-L3]], [1, 0])  # foreground p = 3/4 (t=1), 1/4 (t=0)
    # TP = 3/4, sum p = 1, |g| = 1 -> dice = 1.5 / 2 = 0.75
    assert build_loss("dice", 1, smooth=0)(x1, t).item() == pytest.approx(0.25, rel=1e-6)
    x2 = torch.cat([torch.zeros_like(x1), x1], 1)
    for name in ("dice", "ce", "focal", "tversky", "dice_ce"):
        assert build_loss(name, 1)(x1, t).item() == pytest.approx(build_loss(name, 2)(x2, t).item(), rel=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_tversky_by_hand(dims):
    x, t = pixels(*THREE, dims)
    # class 1: TP = 5/4, FP = 3/2 - 5/4 = 1/4, FN = 2 - 5/4 = 3/4 -> 1.25 / (1.25 + 0.3 * 0.25 + 0.7 * 0.75)
    expected = 1 - 1.25 / (1.25 + 0.075 + 0.525)
    assert value("tversky", 2, x, t, alpha=0.3, beta=0.7, smooth=0) == pytest.approx(expected, rel=1e-6)
    half = value("tversky", 2, x, t, alpha=0.5, beta=0.5, smooth=0)
    assert half == pytest.approx(value("dice", 2, x, t, smooth=0), rel=1e-6)  # = Dice


def test_dice_ce_by_hand():
    x, t = pixels(*THREE)
    ce = (2 * -math.log(3 / 4) - math.log(1 / 2)) / 3  # p_t = 3/4, 3/4, 1/2
    dice = 1 - 5 / 7  # as in test_dice_by_hand
    assert build_loss("dice_ce", 2, smooth=0)(x, t).item() == pytest.approx(dice + ce, rel=1e-6)
    weighted = build_loss("dice_ce", 2, smooth=0, dice_weight=2.0, ce_weight=0.5)(x, t).item()
    assert weighted == pytest.approx(2 * dice + 0.5 * ce, rel=1e-6)
    # the weight map reaches the CE part only: the change equals CE's change
    w = torch.tensor([3.0, 1.0, 1.0]).reshape(t.shape)
    dice_ce, plain_ce = build_loss("dice_ce", 2), build_loss("ce", 2)
    delta = dice_ce(x, t, w) - dice_ce(x, t)
    assert delta.item() == pytest.approx((plain_ce(x, t, w) - plain_ce(x, t)).item(), rel=1e-5)
    assert delta.item() == pytest.approx(2 * -math.log(3 / 4) / 3, rel=1e-5)  # pixel 1 counted 3x not 1x


@pytest.mark.parametrize("dims", [2, 3])
def test_focal_by_hand(dims):
    x, t = pixels([[L3], [0.0]], [1, 0], dims)  # p_t = 3/4 and 1/2
    a = (1 / 4) ** 2 * -math.log(3 / 4)  # (1 - p_t)^2 * -log p_t = 0.017980
    b = (1 / 2) ** 2 * -math.log(1 / 2)  # = 0.173287
    assert build_loss("focal", 1)(x, t).item() == pytest.approx((a + b) / 2, rel=1e-6)
    # alpha = 0.25: 0.25 for the foreground pixel, 0.75 for the background one (RetinaNet)
    assert value("focal", 1, x, t, alpha=0.25) == pytest.approx((0.25 * a + 0.75 * b) / 2, rel=1e-6)
    assert value("focal", 1, x, t, gamma=0) == pytest.approx(value("ce", 1, x, t), rel=1e-6)  # = CE


@pytest.mark.parametrize("dims", [2, 3])
def test_lovasz_hinge_by_hand(dims):
    x, t = pixels([[2.0], [-1.0], [0.5]], [1, 1, 0], dims)
    # errors = 1 - x * sign = [1 - 2, 1 + 1, 1 + 0.5] = [-1, 2, 1.5]; sorted: 2 (gt 1), 1.5 (gt 0), -1 (gt 1)
    # gts = 2; intersection = 2 - cumsum(gt) = [1, 1, 0]; union = 2 + cumsum(1 - gt) = [2, 3, 3]
    # jaccard = [1/2, 2/3, 1] -> grad = [1/2, 1/6, 1/3]; loss = 2 * 1/2 + 1.5 * 1/6 + relu(-1) * 1/3 = 1.25
    assert build_loss("lovasz", 1)(x, t).item() == pytest.approx(1.25, rel=1e-6)


def test_lovasz_softmax_by_hand():
    x, t = pixels([[0, L3], [0, 0]], [1, 0])  # p = [1/4, 3/4] (t=1), [1/2, 1/2] (t=0)
    # class 0: fg = [0, 1], errors |fg - p0| = [1/4, 1/2]; sorted 1/2 (fg 1), 1/4 (fg 0); grad = [1, 0] -> 1/2
    # class 1: fg = [1, 0], errors = [1/4, 1/2]; sorted 1/2 (fg 0), 1/4 (fg 1); jaccard = [1/2, 1]
    #          -> grad = [1/2, 1/2] -> 1/2 * 1/2 + 1/4 * 1/2 = 3/8;   mean over present classes = 7/16
    assert build_loss("lovasz", 2)(x, t).item() == pytest.approx(7 / 16, rel=1e-6)
    # a third class absent from the truth (p ~ 0) is left out of the mean; counting it would give 7/24
    x3 = torch.cat([x, torch.full_like(x[:, :1], -50.0)], 1)
    assert build_loss("lovasz", 3)(x3, t).item() == pytest.approx(7 / 16, rel=1e-5)


def random_case(num_classes, dims, n=2, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) + (size,) * dims
    t = torch.randint(0, max(num_classes, 2), shape, generator=g)
    x = torch.randn((n, num_classes) + shape[1:], generator=g)
    return x, t


def perfect_logits(t, num_classes):
    if num_classes == 1:
        return (t.float() * 2 - 1).unsqueeze(1) * 20
    return (F.one_hot(t, num_classes).movedim(-1, 1).float() * 2 - 1) * 20


@pytest.mark.parametrize("name", ["dice", "tversky", "lovasz"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_perfect_prediction_gives_zero(name, num_classes):
    _, t = random_case(num_classes, 2)
    assert value(name, num_classes, perfect_logits(t, num_classes), t) == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize("name", available_losses())
@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_finite(name, num_classes, dims):
    x, t = random_case(num_classes, dims)
    x.requires_grad_(True)
    w = torch.rand(t.shape) + 0.5
    loss = build_loss(name, num_classes)(x, t, w)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", available_losses())
def test_bf16_autocast_and_channels_last(name):
    x, t = random_case(3, 2, size=6)
    conv = torch.nn.Conv2d(3, 3, 1)
    reference = build_loss(name, 3)(conv(x), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x.to(memory_format=torch.channels_last))
        loss = build_loss(name, 3)(logits, t)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    assert loss.item() == pytest.approx(build_loss(name, 3)(logits.float(), t).item(), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_build_loss_errors_list_what_is_allowed():
    with pytest.raises(ConfigError, match="dice_ce"):
        build_loss("dcie", 2)
    with pytest.raises(ConfigError, match="allowed: gamma, alpha"):
        build_loss("focal", 2, smooth=1.0)
    with pytest.raises(ConfigError, match="allowed: none"):
        build_loss("lovasz", 2, gamma=1)
    with pytest.raises(ConfigError, match="3 non-negative"):
        build_loss("ce", 3, class_weights=[1, 2])
    with pytest.raises(ConfigError):
        build_loss("tversky", 2, alpha=-1)
    with pytest.raises(ValueError, match="expected C=3"):
        build_loss("ce", 3)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_deep_supervision_weights_and_downsampled_targets():
    base = build_loss("dice_ce", 2)
    ds = DeepSupervisionLoss(base)
    x, t = random_case(2, 2, n=1, size=4)
    coarse = torch.randn(1, 2, 2, 2)
    # nnU-Net weights 1/2**i from the finest head, normalised: coarse 1/3, fine 2/3; its target t[::2, ::2]
    expected = base(coarse, t[:, ::2, ::2]) / 3 + base(x, t) * 2 / 3
    assert ds([coarse, x], t).item() == pytest.approx(expected.item(), rel=1e-6)
    heads = [torch.randn(1, 2, 4, 4) for _ in range(3)]  # UNet++: all full size -> 1/7, 2/7, 4/7
    expected = sum(w * base(h, t) for w, h in zip([1 / 7, 2 / 7, 4 / 7], heads, strict=True))
    assert ds(heads, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert ds(x, t).item() == pytest.approx(base(x, t).item())  # a plain tensor: just the loss
    custom = DeepSupervisionLoss(base, weights=[1, 1, 2])
    assert custom(heads, t).item() == pytest.approx(((base(heads[0], t) + base(heads[1], t)) / 4
                                                     + base(heads[2], t) / 2).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="3 weights given for 2"):
        custom([coarse, x], t)


def test_weight_map_two_squares():
    labels = np.zeros((10, 16), np.int64)
    labels[3:7, 2:6] = 1  # square A, columns 2..5
    labels[3:7, 10:14] = 1  # square B, columns 10..13: nearest pixel centres 5 apart (gap = 5)
    w = unet_weight_map(labels, w0=10, sigma=5)
    # balanced: 160 px, 32 foreground, 128 background -> w_fg = 160 / (2 * 32) = 2.5, w_bg = 160 / (2 * 128)
    w_bg = 0.625
    assert w[4, 3] == pytest.approx(2.5)  # inside an object: w_c only
    # in the gap d1 + d2 = (7 - 5) + (10 - 7) = 5 -> w_bg + 10 * exp(-25 / 50)
    for col in (7, 8):
        assert w[4, col] == pytest.approx(w_bg + 10 * math.exp(-(5**2) / (2 * 5**2)), rel=1e-6)
    # corner (0, 0): d1 = |(0,0)-(3,2)| = sqrt(13), d2 = |(0,0)-(3,10)| = sqrt(109)
    d = math.sqrt(13) + math.sqrt(109)
    assert w[0, 0] == pytest.approx(w_bg + 10 * math.exp(-(d**2) / 50), rel=1e-5)
    assert w.dtype == np.float32 and w.shape == labels.shape


def test_weight_map_3d_single_object_and_no_class_weights():
    labels = np.zeros((5, 6, 12), np.int64)
    labels[1:4, 1:4, 1:4] = 1
    assert np.array_equal(unet_weight_map(labels, class_weights=None), np.ones(labels.shape, np.float32))
    labels[1:4, 1:4, 7:10] = 1  # nearest centres x = 3 and x = 7: d1 + d2 = 2 + 2 at (2, 2, 5)
    w = unet_weight_map(labels, class_weights=None)
    assert w[2, 2, 5] == pytest.approx(1 + 10 * math.exp(-16 / 50), rel=1e-6)
    assert w[2, 2, 2] == 1.0
    w2 = unet_weight_map(labels, class_weights=[0.5, 4.0])
    assert w2[2, 2, 2] == 4.0 and w2[2, 2, 5] == pytest.approx(0.5 + 10 * math.exp(-16 / 50), rel=1e-6)
    with pytest.raises(ConfigError):
        unet_weight_map(labels, class_weights="inverse")


def test_weight_map_cropping_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = (ndimage.uniform_filter(rng.random((60, 70)), 5) > 0.55).astype(np.int64)
    objects, n = ndimage.label(labels)
    assert n >= 4
    dists = np.sort(np.stack([ndimage.distance_transform_edt(objects != i) for i in range(1, n + 1)]), 0)
    border = 10 * np.exp(-((dists[0] + dists[1]) ** 2) / 50) * (labels == 0)
    expected = unet_weight_map(labels, class_weights=None) - 1
    np.testing.assert_allclose(expected, border, atol=1e-3)
