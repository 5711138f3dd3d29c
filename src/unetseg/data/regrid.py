"""Resampling region by region, for images too big to resample whole (streamed volumes).

Each output region is computed from the source region it maps to, plus a margin, with the same grid
alignment (``grid_mode``: pixel areas aligned), interpolation order and border mode as the whole-array
functions of :mod:`unetseg.data.resample`. Linear interpolation is local, so a region equals the same region
of the whole-array result (up to float rounding). A cubic spline's prefilter reaches the whole axis but
decays as 0.268^d with the distance d, so a margin of :data:`SPLINE_MARGIN` pixels leaves it below float32
rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from unetseg.data.resample import coarse_axis, nearest_index

SPLINE_MARGIN = 12  # 0.268^12 ~ 1.4e-7: below float32 rounding
Region = tuple[slice, ...]


def _span(a: int, b: int, n_src: int, n_dst: int, order: int) -> tuple[int, int]:
    """Source pixels [lo, hi) that output pixels [a, b) of an axis read (``order`` > 1: with the margin)."""
    s = n_src / n_dst
    lo, hi = (a + 0.5) * s - 0.5, (b - 0.5) * s - 0.5
    pad = (order + 1) // 2 + (SPLINE_MARGIN if order > 1 else 0)
    return max(0, math.floor(lo) - pad), min(n_src, math.floor(hi) + 1 + pad)


def source_region(region: Region, src: Sequence[int], dst: Sequence[int], order: int,
                  coarse: int | None = None) -> Region:
    """The source region output ``region`` (on the ``dst`` grid) is computed from."""
    out = []
    for axis, (r, n, m) in enumerate(zip(region, src, dst, strict=True)):
        if n == m:
            out.append(slice(r.start, r.stop))
        elif axis == coarse:
            idx = nearest_index(n, m)[r.start : r.stop]
            out.append(slice(int(idx.min()), int(idx.max()) + 1))
        else:
            out.append(slice(*_span(r.start, r.stop, n, m, order)))
    return tuple(out)


def _transform(block: np.ndarray, region: Region, origin: Sequence[int], src: Sequence[int],
               dst: Sequence[int], order: int) -> np.ndarray:
    """One channel's block (source pixels from ``origin``) onto output ``region``: ``zoom_shift`` as
    ``ndimage.zoom(grid_mode=True, mode="nearest")`` does, with the offset of the block."""
    scale = np.array([n / m for n, m in zip(src, dst, strict=True)], dtype=np.float64)
    offset = np.array([(r.start + 0.5) * s - 0.5 - o for r, s, o in zip(region, scale, origin, strict=True)])
    shape = tuple(r.stop - r.start for r in region)
    if np.all(scale == 1.0) and np.all(offset == np.round(offset)):
        start = offset.astype(int)
        return block[tuple(slice(a, a + n) for a, n in zip(start, shape, strict=True))].astype(np.float32)
    return ndimage.affine_transform(block, scale, offset=offset, output_shape=shape, order=order,
                                    mode="nearest", output=np.float32)


def regrid_region(read: Callable[[Region], np.ndarray], region: Region, src: Sequence[int],
                  dst: Sequence[int], order: int, coarse: int | None = None) -> np.ndarray:
    """Output ``region`` (``dst`` grid) of a ``(C, *src)`` array read region by region with ``read``:
    float32 ``(C, *region)``. ``coarse``: that axis by nearest neighbour, the others per slice (as
    :func:`unetseg.data.resample._resize`)."""
    region = tuple(slice(int(r.start), int(r.stop)) for r in region)
    need = source_region(region, src, dst, order, coarse)
    block = np.asarray(read(need), dtype=np.float32)
    origin = [r.start for r in need]
    if coarse is None or src[coarse] == dst[coarse]:
        return np.stack([_transform(ch, region, origin, src, dst, order) for ch in block])
    idx = nearest_index(src[coarse], dst[coarse])[region[coarse]] - need[coarse].start
    plane = [a for a in range(len(src)) if a != coarse]
    sub = ([src[a] for a in plane], [dst[a] for a in plane], tuple(region[a] for a in plane))
    out = []
    for ch in block:
        slices = np.moveaxis(ch, coarse, 0)[idx]
        done = np.stack([_transform(s, sub[2], [origin[a] for a in plane], sub[0], sub[1], order)
                         for s in slices])
        out.append(np.moveaxis(done, 0, coarse))
    return np.stack(out)


class ResampledImage:
    """A lazy image (one pyramid ``level``) seen on another grid: every region read is normalised with
    ``normalize`` (the source's statistics, as the in-memory path normalises before it resamples) and
    resampled with a cubic spline, the coarse axis of anisotropic data by nearest neighbour (as
    :func:`unetseg.data.resample.resample_image`)."""

    def __init__(self, source: Any, level: int, shape: Sequence[int], spacing: Sequence[float],
                 target: Sequence[float], normalize: Callable[[np.ndarray], np.ndarray]) -> None:
        self.source, self.src_level, self.normalize = source, level, normalize
        self.src = tuple(source.shape(level))
        self.dst = tuple(int(s) for s in shape)
        self.coarse = coarse_axis(spacing, target)
        self.path, self.channels, self.spatial_dims = source.path, source.channels, source.spatial_dims
        self.target = tuple(float(t) for t in target)

    def shape(self, level: int = 0) -> tuple[int, ...]:
        return self.dst

    def pixel_size(self, level: int = 0) -> tuple[float, ...]:
        return self.target

    def to_source(self, region: Region) -> Region:
        """The source-level pixels a region of this grid covers (for tissue masks)."""
        return tuple(slice(math.floor(r.start * n / m), math.ceil(r.stop * n / m))
                     for r, n, m in zip(region, self.src, self.dst, strict=True))

    def read(self, region: Region | None = None, level: int = 0) -> np.ndarray:
        region = tuple(region or (slice(0, s) for s in self.dst))
        return regrid_region(lambda r: self.normalize(self.source.read(r, self.src_level)), region,
                             self.src, self.dst, 3, self.coarse)


class RegriddedProbabilities:
    """``(K, *src)`` probabilities (an array read by slices, e.g. a zarr array) seen on the grid ``shape``:
    linear per class, clipped at 0 and renormalised per pixel (as
    :func:`unetseg.data.resample.resample_probabilities`); ``normalise=False``: linear only (other maps,
    e.g. an uncertainty map)."""

    def __init__(self, probs: Any, shape: Sequence[int], *, normalise: bool = True) -> None:
        self.probs, self.normalise = probs, normalise
        self.src = tuple(int(s) for s in probs.shape[1:])
        self.dst = tuple(int(s) for s in shape)
        self.shape = (int(probs.shape[0]), *self.dst)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if key[:1] == (slice(None),):
            key = key[1:]
        region = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.dst, strict=False))
        region += tuple(slice(0, n) for n in self.dst[len(region):])
        out = regrid_region(lambda r: np.asarray(self.probs[(slice(None), *r)], dtype=np.float32), region,
                            self.src, self.dst, 1)
        if not self.normalise:
            return out
        np.maximum(out, 0.0, out=out)
        total = out.sum(axis=0, keepdims=True)
        np.divide(out, total, out=out, where=total > 0)
        return out
