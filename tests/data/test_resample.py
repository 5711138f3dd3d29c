"""Resampling to a target spacing and back: nnU-Net's target spacing, identities, round trips, label sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg.data.resample import (
    resample_image,
    resample_mask,
    resample_probabilities,
    shape_after,
    target_spacing,
)
from unetseg.errors import ConfigError


def _field(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """A smooth field sampled at the voxel centres of a grid, ``(1, *shape)`` float32."""
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    value = np.sin(grids[0] / 6.0) + np.cos(grids[1] / 5.0) * np.sin(grids[-1] / 7.0)
    return value.astype(np.float32)[None]


def _labels(shape: tuple[int, ...], values: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth random regions holding ``values`` (uint8)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
    edges = np.quantile(noise, np.linspace(0, 1, len(values) + 1)[1:-1])
    return np.asarray(values, np.uint8)[np.digitize(noise, edges)]


def test_shape_after() -> None:
    assert shape_after((10, 20), (2.0, 1.0), (1.0, 1.0)) == (20, 20)
    assert shape_after((16, 24, 24), (1.5, 1.0, 1.0), (0.75, 0.7, 0.7)) == (32, 34, 34)
    assert shape_after((1, 3), (1.0, 1.0), (5.0, 10.0)) == (1, 1)  # at least 1
    with pytest.raises(ConfigError, match="one per axis"):
        shape_after((4, 4), (1.0,), (1.0, 1.0))
    with pytest.raises(ConfigError, match="positive"):
        shape_after((4, 4), (1.0, 0.0), (1.0, 1.0))


def test_target_spacing_median_when_isotropic() -> None:
    spacings = [(1.0, 0.8, 0.8), (1.2, 0.7, 0.7), (2.0, 0.9, 0.9)]
    assert target_spacing(spacings) == pytest.approx((1.2, 0.8, 0.8))
    assert target_spacing([(1.0, 1.0)]) == (1.0, 1.0)


def test_target_spacing_anisotropic_keeps_the_10th_percentile_on_z() -> None:
    z = [4.0, 4.0, 5.0, 3.0, 6.0, 4.5, 2.5, 4.0, 4.0, 5.5]
    spacings = [(s, 1.0, 1.0) for s in z]
    target = target_spacing(spacings)
    assert np.median(z) > 3 and target[0] == pytest.approx(np.percentile(z, 10)) and target[1:] == (1.0, 1.0)
    # nnU-Net's voxel condition (shapes given): a z axis that is not short keeps the median
    assert target_spacing(spacings, [(64, 128, 128)] * 10)[0] == pytest.approx(np.median(z))
    assert target_spacing(spacings, [(20, 256, 256)] * 10)[0] == pytest.approx(np.percentile(z, 10))
    # the 10th percentile never goes finer than the in-plane spacing
    low = target_spacing([(z, 1.0, 1.0) for z in (0.8, 0.8, 4.0, 5.0, 6.0)])
    assert low[0] == pytest.approx(1.0, abs=1e-4)


def test_identity_when_the_grid_does_not_change() -> None:
    image = _field((6, 8, 8), (2.0, 1.0, 1.0))
    mask = _labels((6, 8, 8), (0, 1))
    probs = np.full((2, 6, 8, 8), 0.5, np.float32)
    assert resample_image(image, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0)) is image
    assert resample_mask(mask, (2.0, 1.0, 1.0), (2.0, 1.0, 1.0), 2) is mask
    assert resample_probabilities(probs, (6, 8, 8)) is probs


@pytest.mark.parametrize(
    "spacing, target",
    [((1.5, 1.0, 1.0), (0.75, 0.5, 0.5)), ((1.5, 1.0, 1.0), (1.0, 0.7, 0.7)),
     ((4.0, 1.0, 1.0), (2.0, 0.7, 0.7))],
)
def test_image_round_trip(spacing: tuple[float, ...], target: tuple[float, ...]) -> None:
    image = _field((16, 24, 24), spacing)
    there = resample_image(image, spacing, target)
    assert there.dtype == np.float32 and there.shape[1:] == shape_after((16, 24, 24), spacing, target)
    back = resample_image(there, target, spacing)
    assert back.shape == image.shape
    assert np.abs(back - image).max() < 0.01  # the field spans [-2, 2]
    assert np.abs(back - image)[:, 2:-2, 2:-2, 2:-2].max() < 1e-3  # edges aside: spline accuracy


def test_coarse_axis_is_nearest_when_anisotropic() -> None:
    image = _field((5, 12, 12), (4.0, 1.0, 1.0))
    up = resample_image(image, (4.0, 1.0, 1.0), (2.0, 1.0, 1.0))  # anisotropy 4 > 3: slices copied
    assert up.shape == (1, 10, 12, 12)
    np.testing.assert_array_equal(up[:, 0::2], image)
    np.testing.assert_array_equal(up[:, 1::2], image)
    smooth = resample_image(image, (2.5, 1.0, 1.0), (1.25, 1.0, 1.0))  # anisotropy 2.5: cubic along z
    assert not np.array_equal(smooth[:, 1::2], image)


def test_2d_image_and_multichannel() -> None:
    image = np.concatenate([_field((20, 30), (1.0, 1.0)), -_field((20, 30), (1.0, 1.0))])
    half = resample_image(image, (1.0, 1.0), (0.5, 0.5))
    assert half.shape == (2, 40, 60)
    np.testing.assert_allclose(half[0], -half[1], atol=1e-6)
    np.testing.assert_allclose(resample_image(half, (0.5, 0.5), (1.0, 1.0)), image, atol=0.01)


@pytest.mark.parametrize("num_classes", [None, 100])  # one-hot linear + argmax / nearest
def test_masks_keep_their_value_set(num_classes: int | None) -> None:
    mask = _labels((12, 24, 24), (0, 3, 7))
    for spacing, target in [((1.5, 1.0, 1.0), (1.0, 0.7, 0.7)), ((1.0, 1.0, 1.0), (2.5, 1.6, 1.3)),
                            ((4.0, 1.0, 1.0), (2.0, 0.6, 0.6))]:
        out = resample_mask(mask, spacing, target, num_classes)
        assert out.dtype == mask.dtype and out.shape == shape_after(mask.shape, spacing, target)
        assert set(np.unique(out)) <= {0, 3, 7}
    up = resample_mask(mask, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), num_classes)
    back = resample_mask(up, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), num_classes)
    assert set(np.unique(back)) == {0, 3, 7} and (back == mask).mean() > 0.98
    if num_classes == 100:
        np.testing.assert_array_equal(back, mask)  # nearest at an integer factor is exact


def test_mask_with_one_value_and_tiny_regions() -> None:
    flat = np.full((4, 6), 5, np.uint8)
    np.testing.assert_array_equal(resample_mask(flat, (1.0, 1.0), (0.5, 0.5)), np.full((8, 12), 5))
    dot = np.zeros((9, 9), np.uint8)
    dot[4, 4] = 2
    assert set(np.unique(resample_mask(dot, (1.0, 1.0), (3.0, 3.0)))) <= {0, 2}


def test_probabilities_back_to_the_original_grid() -> None:
    logits = np.stack([ndimage.gaussian_filter(np.random.default_rng(k).normal(size=(8, 16, 16)), 2)
                       for k in range(3)]) * 20
    probs = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    out = resample_probabilities(probs, (11, 23, 20))
    assert out.shape == (3, 11, 23, 20) and out.dtype == np.float32 and out.min() >= 0
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    aniso = resample_probabilities(probs, (16, 16, 16), spacing=(4.0, 1.0, 1.0),
                                   original_spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(aniso[:, 0::2], aniso[:, 1::2])  # nearest along the coarse axis
    np.testing.assert_allclose(aniso[:, 0::2], probs, atol=1e-6)  # (renormalised: last bits differ)
    with pytest.raises(ConfigError, match="does not fit"):
        resample_probabilities(probs, (16, 16))


def test_a_2d_image_downsampled_and_brought_back_is_within_interpolation_error() -> None:
    """The planner's coarser resolution in 2D: the image to the model's grid (cubic spline) and
    probabilities back to the image's own grid (linear) keep a smooth image and the class borders."""
    from unetseg.config import DataConfig
    from unetseg.data.resample import model_grid

    cfg = DataConfig(downsample=[2.0, 2.0])
    own, target = model_grid((1.0, 1.0), cfg, 2)
    assert target == (2.0, 2.0)
    image = _field((96, 130), (1.0, 1.0))
    coarse = resample_image(image, own, target)
    assert coarse.shape == (1, 48, 65)
    back = resample_image(coarse, target, own)
    assert back.shape == image.shape
    assert np.abs(back - image)[:, 4:-4, 4:-4].max() < 0.02  # smooth: the spline's error only
    labels = _labels((96, 130), (0, 1), seed=4)
    onehot = np.stack([labels == 0, labels == 1]).astype(np.float32)
    small = resample_probabilities(onehot, (48, 65))
    again = resample_probabilities(small, (96, 130)).argmax(0)
    assert (again == labels).mean() > 0.97  # only pixels at the borders move


def test_the_model_grid_rule() -> None:
    """One rule for every path: data.spacing (3D) or each image's own grid, times data.downsample."""
    from unetseg.config import DataConfig
    from unetseg.data.resample import model_grid

    assert model_grid((1.0, 1.0), DataConfig(), 2) is None
    assert model_grid((0.5, 0.5), DataConfig(downsample=[3.0, 3.0]), 2) == ((0.5, 0.5), (1.5, 1.5))
    assert model_grid(None, DataConfig(downsample=[2.0, 2.0]), 2) == ((1.0, 1.0), (2.0, 2.0))
    cfg = DataConfig(spacing=[2.0, 1.0, 1.0], downsample=[1.0, 2.0, 2.0])
    assert model_grid((1.0, 0.5, 0.5), cfg, 3) == ((1.0, 0.5, 0.5), (2.0, 2.0, 2.0))
    assert model_grid(None, cfg, 3) == ((2.0, 1.0, 1.0), (2.0, 2.0, 2.0))  # unknown: the training spacing
    assert model_grid((2.0, 1.0, 1.0), DataConfig(spacing=[2.0, 1.0, 1.0]), 3) is None
    with pytest.raises(ConfigError, match="one per axis"):
        model_grid((1.0, 1.0), DataConfig(downsample=[2.0, 2.0, 2.0]), 2)
