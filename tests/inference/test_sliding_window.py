"""The sliding-window predictor: geometry, blending, exactness against plain forward passes, sizes, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unetseg.errors import ConfigError, DataError
from unetseg.inference import Predictor, TorchEngine, gaussian_importance_map, predict, tile_starts

from .helpers import tiny_config, tiny_model


class ValidConv(nn.Module):
    """A fixed 3x3(x3) convolution without padding: translation-equivariant, output smaller by 2, like the
    valid-padding U-Net in miniature (so tiling it exercises the overlap-tile path)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, num_classes
        torch.manual_seed(0)
        self.conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(in_channels, num_classes, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s - 2 for s in size)


class SymmetricConv(nn.Module):
    """A same-padded conv with kernels symmetric under every flip: the model commutes with flips."""

    spatial_dims, in_channels, num_classes = 2, 1, 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 5, padding=2)
        with torch.no_grad():
            w = self.conv.weight
            w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def softmax_forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)[None]), 1)[0].numpy()


@pytest.mark.parametrize("tile", [(16, 16), (15, 24), (1, 7), (9, 8, 7)])
def test_gaussian_map_is_positive_with_max_at_centre(tile):
    g = gaussian_importance_map(tile)
    assert g.shape == tile and g.dtype == np.float32
    assert (g > 0).all()
    centre = tuple(t // 2 for t in tile)
    assert g[centre] == pytest.approx(g.max()) and g.max() == pytest.approx(1.0)
    for axis in range(len(tile)):  # symmetric and decaying away from the centre
        np.testing.assert_allclose(g, np.flip(g, axis), rtol=1e-6)
        if tile[axis] > 2:
            assert g.take(0, axis=axis).max() < g.max()


@pytest.mark.parametrize("size,tile,overlap,align", [(100, 32, 0.25, 1), (100, 32, 0.5, 8), (33, 32, 0.5, 4),
                                                      (512, 128, 0.0, 16), (10, 32, 0.5, 16)])
def test_tile_starts_cover_with_overlap_on_the_pooling_grid(size, tile, overlap, align):
    starts, extent = tile_starts(size, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] + tile == extent >= size
    assert extent - max(size, tile) < align  # never more than one pooling cell past the image
    assert all(s % align == 0 for s in starts)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= tile * (1 - overlap) + 1e-9).all()  # overlap at least as asked


@pytest.mark.parametrize("shape,tile", [((32, 48), (32, 48)), ((32, 48), (64, 64)), ((32, 48), None),
                                        ((8, 16, 12), (8, 16, 12))])
def test_one_tile_over_the_image_equals_a_plain_forward_pass(shape, tile):
    cfg = tiny_config(spatial_dims=len(shape))
    model = tiny_model(cfg)
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    # an engine that runs the module as it is (the API's default folds BatchNorm, ~1e-6 apart)
    pred = Predictor(TorchEngine(model, precision="fp32", own=False, channels_last="off"), tile=tile)
    assert pred.plan(shape).num_tiles == 1
    probs = pred.predict_proba(x)
    want = softmax_forward(model, x)
    np.testing.assert_array_equal(probs, want)
    np.testing.assert_array_equal(pred.predict(x), want.argmax(0))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape,tile,overlap", [((37, 50), (16, 16), 0.5), ((30, 41), (12, 20), 0.25),
                                                ((11, 14, 13), (6, 8, 6), 0.5)])
def test_tiled_equals_untiled_for_a_translation_equivariant_model(blend, shape, tile, overlap):
    model = ValidConv(spatial_dims=len(shape), in_channels=2)
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    pred = Predictor(model, tile=tile, overlap=overlap, blend=blend, batch_size=3, precision="fp32")
    assert pred.plan(shape).num_tiles > 4
    got = pred.predict_proba(x)
    # overlap-tile: the untiled output over the mirror-extended image, exact everywhere
    want = softmax_forward(model, np.pad(x, [(0, 0)] + [(1, 1)] * len(shape), mode="reflect"))
    assert got.shape == (3, *shape)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_overlap_tile_with_the_valid_unet_is_seamless():
    model = tiny_model(tiny_config(padding="valid"))
    x = np.random.default_rng(2).normal(size=(1, 45, 61)).astype(np.float32)
    tiled = Predictor(model, tile=(48, 52), overlap=0.25, precision="fp32")
    assert tiled.plan(x.shape[1:]).num_tiles > 20 and tiled.plan(x.shape[1:]).margin == (20, 20)
    whole = Predictor(model, tile=None, precision="fp32")
    a, b = tiled.predict_proba(x), whole.predict_proba(x)
    assert a.shape == (2, 45, 61)
    # channels-last convolutions (the CPU inference default) pick per-shape kernels: rounding ~1e-6
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (37, 29), (64, 61), (1, 1, 1), (7, 19, 10)])
def test_any_size_gives_labels_and_probabilities_of_that_size(shape):
    model = tiny_model(tiny_config(spatial_dims=len(shape), num_classes=3))
    x = np.random.default_rng(3).normal(size=(1, *shape)).astype(np.float32)
    pred = Predictor(model, tile=(16,) * len(shape), overlap=0.5, batch_size=2)
    labels, probs = pred.predict_both(x)
    assert labels.shape == shape and labels.dtype == np.uint8 and labels.max() < 3
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_batch_size_does_not_change_the_result():
    model = tiny_model(tiny_config())
    x = np.random.default_rng(4).normal(size=(1, 40, 52)).astype(np.float32)
    a = Predictor(model, tile=(16, 16), batch_size=1, precision="fp32").predict_proba(x)
    b = Predictor(model, tile=(16, 16), batch_size=7, precision="fp32").predict_proba(x)
    np.testing.assert_allclose(a, b, atol=1e-5)  # conv kernels may sum in another order per batch size


def test_tta_with_a_flip_equivariant_model_changes_nothing():
    model = SymmetricConv()
    x = np.random.default_rng(5).normal(size=(1, 30, 37)).astype(np.float32)
    plain = Predictor(model, tile=(16, 16), precision="fp32").predict_proba(x)
    tta = Predictor(model, tile=(16, 16), tta=True, precision="fp32").predict_proba(x)
    np.testing.assert_allclose(tta, plain, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tta_averages_the_flipped_predictions_mapped_back(spatial_dims):
    model = tiny_model(tiny_config(spatial_dims=spatial_dims))
    shape = (12, 16) if spatial_dims == 2 else (8, 8, 12)
    x = np.random.default_rng(6).normal(size=(1, *shape)).astype(np.float32)
    got = Predictor(model, tile=None, tta=True, precision="fp32").predict_proba(x)
    axes_sets = [(), *[(a,) for a in range(1, spatial_dims + 1)]]
    axes_sets += [(1, 2), (1, 3), (2, 3), (1, 2, 3)][: 1 if spatial_dims == 2 else 4]
    want = np.mean([np.flip(softmax_forward(model, np.flip(x, ax).copy()), ax) for ax in axes_sets], axis=0)
    assert len(axes_sets) == 2**spatial_dims
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - softmax_forward(model, x)).max() > 1e-4  # it did change something


def test_binary_model_gives_two_probability_rows():
    model = tiny_model(tiny_config(num_classes=1))
    x = np.random.default_rng(7).normal(size=(1, 20, 24)).astype(np.float32)
    labels, probs = Predictor(model, tile=(16, 16), precision="fp32").predict_both(x)
    assert probs.shape == (2, 20, 24)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels, (probs[1] > 0.5).astype(np.uint8))


def test_predict_api_takes_spatial_or_channel_first_images_and_applies_the_config():
    cfg = tiny_config(in_channels=1)
    model = tiny_model(cfg)
    raw = np.random.default_rng(8).uniform(0, 255, size=(33, 47)).astype(np.float32)
    z = ((raw - raw.mean()) / raw.std())[None]
    with_cfg = predict(model, raw, config=cfg, precision="fp32")  # zscore + the config's 16x16 tile
    by_hand = Predictor(model, tile=(16, 16), overlap=0.25, precision="fp32").predict(z)
    np.testing.assert_array_equal(with_cfg, by_hand)
    np.testing.assert_array_equal(predict(model, raw[None]), predict(model, raw))
    two = tiny_model(tiny_config(in_channels=2))
    assert predict(two, np.zeros((2, 9, 10), np.float32)).shape == (9, 10)
    with pytest.raises(DataError, match="channel"):
        predict(two, np.zeros((9, 10), np.float32))


@pytest.mark.parametrize("kwargs,err", [({"overlap": 1.0}, ConfigError), ({"blend": "median"}, ConfigError),
                                        ({"tile": (16,)}, ConfigError), ({"batch_size": 0}, ConfigError)])
def test_bad_settings_are_config_errors(kwargs, err):
    with pytest.raises(err):
        Predictor(tiny_model(tiny_config()), **kwargs)


def test_wrong_image_shape_is_a_data_error():
    pred = Predictor(tiny_model(tiny_config()), tile=(16, 16))
    with pytest.raises(DataError, match="channels"):
        pred.predict(np.zeros((3, 16, 16), np.float32))
    with pytest.raises(DataError, match="2D"):
        pred.predict(np.zeros((1, 4, 16, 16), np.float32))
