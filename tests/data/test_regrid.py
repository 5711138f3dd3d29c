"""Resampling region by region (:mod:`unetseg.data.regrid`) equals the whole-array resampling of
:mod:`unetseg.data.resample`: any region, up- and downsampling, the coarse axis of anisotropic data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg.data.regrid import RegriddedProbabilities, ResampledImage, regrid_region
from unetseg.data.resample import resample_image, resample_probabilities, shape_after

CASES = [  # (source spacing, target spacing): down, up, mixed, anisotropic (coarse axis by nearest)
    ((1.0, 1.0, 1.0), (2.0, 1.5, 1.0)),
    ((2.0, 1.0, 1.0), (1.0, 0.7, 0.7)),
    ((1.0, 0.6, 1.3), (1.0, 1.0, 1.0)),
    ((5.0, 1.0, 1.0), (4.0, 1.3, 1.3)),
]


class _Lazy:
    """The part of a lazy image that :class:`ResampledImage` reads (one level, channel-first)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr, self.path, self.channels, self.spatial_dims = arr, "vol", arr.shape[0], arr.ndim - 1
        self.reads: list[tuple[slice, ...]] = []

    def shape(self, level: int = 0) -> tuple[int, ...]:
        return self.arr.shape[1:]

    def read(self, region, level=0):
        self.reads.append(tuple(region))
        return self.arr[(slice(None), *region)].astype(np.float32)


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((2, *shape)).astype(np.float32), (0, 1.5, 1.5, 1.5)) * 10


def _regions(shape: tuple[int, ...], rng: np.random.Generator, n: int = 6) -> list[tuple[slice, ...]]:
    out = [tuple(slice(0, s) for s in shape)]
    for _ in range(n):
        lo = [int(rng.integers(0, s - 1)) for s in shape]
        out.append(tuple(slice(a, int(rng.integers(a + 1, s + 1))) for a, s in zip(lo, shape, strict=True)))
    return out


@pytest.mark.parametrize(("spacing", "target"), CASES)
def test_regions_of_the_resampled_image_equal_the_whole_resampled_image(spacing, target):
    vol = _volume((23, 47, 41))
    norm = lambda x: np.clip(x, 1.0, 9.0) - 5.0  # noqa: E731 - nonlinear: normalised before the spline
    whole = resample_image(norm(vol), spacing, target)
    dst = shape_after(vol.shape[1:], spacing, target)
    assert whole.shape[1:] == dst
    lazy = _Lazy(vol)
    view = ResampledImage(lazy, 0, dst, spacing, target, normalize=norm)
    for region in _regions(dst, np.random.default_rng(1)):
        got = view.read(region)
        want = whole[(slice(None), *region)]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert view.pixel_size() == target and view.shape() == dst
    # a small region reads a small source region, not the volume
    lazy.reads.clear()
    view.read(tuple(slice(s // 2, s // 2 + 2) for s in dst))
    assert np.prod([r.stop - r.start for r in lazy.reads[0]]) < vol[0].size / 2


@pytest.mark.parametrize(("spacing", "target"), CASES[:3])
def test_regridded_probabilities_equal_the_whole_array_ones(spacing, target):
    rng = np.random.default_rng(2)
    small = rng.random((3, 13, 19, 17)).astype(np.float32)
    probs = small / small.sum(0, keepdims=True)
    shape = shape_after(probs.shape[1:], spacing, target)
    whole = resample_probabilities(probs, shape)
    view = RegriddedProbabilities(probs, shape)
    assert view.shape == whole.shape
    for region in _regions(shape, rng):
        np.testing.assert_allclose(view[(slice(None), *region)], whole[(slice(None), *region)], atol=1e-6)
    np.testing.assert_allclose(view[:, 2:5], whole[:, 2:5], atol=1e-6)  # rows only: the rest in full


def test_the_same_grid_is_a_plain_read():
    vol = _volume((8, 9, 10))
    region = (slice(1, 4), slice(0, 9), slice(3, 7))
    got = regrid_region(lambda r: vol[(slice(None), *r)], region, vol.shape[1:], vol.shape[1:], 3)
    np.testing.assert_array_equal(got, vol[(slice(None), *region)])
