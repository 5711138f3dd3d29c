"""Resampling to a target spacing and back, with nnU-Net's rules (``default_resampling.py``).

Grids are aligned by their pixel areas, not their corner centres (``grid_mode=True``, as skimage's
``resize`` that nnU-Net uses): the field of view stays where it is. Strongly anisotropic data (the
coarsest spacing over ``ANISO_THRESHOLD`` times the finest, in the source or the target spacing, on a single
axis) is resampled in-plane slice by slice with the interpolation order asked for and along the coarse axis
with nearest neighbour, so thick slices are not smeared into each other. Every function returns its input
unchanged (no copy) when the output grid is the input grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unetseg.config import DataConfig
from unetseg.data.labels import unique_values
from unetseg.errors import ConfigError

ANISO_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD
MAX_ONEHOT_CLASSES = 32  # above this many values in a mask, masks are resampled by nearest neighbour


def _spacing(values: Sequence[float], dims: int, what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != dims or not all(np.isfinite(v) and v > 0 for v in out):
        raise ConfigError(f"resample: {what} {list(values)} needs {dims} positive value(s), one per axis")
    return out


def shape_after(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The grid size at ``target`` spacing: ``round(shape * spacing / target)`` per axis (Python's round,
    half to even, as nnU-Net's ``compute_new_shape``), at least 1."""
    sp, tg = _spacing(spacing, len(shape), "spacing"), _spacing(target, len(shape), "target spacing")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, sp, tg, strict=True))


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]] | None = None, *,
                   threshold: float = ANISO_THRESHOLD) -> tuple[float, ...]:
    """The training spacing of a dataset: nnU-Net's ``determine_fullres_target_spacing``.

    The median spacing per axis; when the coarsest median axis is over ``threshold`` times the next
    coarsest (and, when ``shapes`` are given, that axis also has fewer than 1/``threshold`` of the voxels of
    the others), that axis takes its 10th percentile instead (at least the next coarsest spacing), so the
    many images with thinner slices are not downsampled to the median's thick ones, nor thick-slice images
    upsampled too much.
    """
    sp = np.asarray(spacings, dtype=np.float64)
    if sp.ndim != 2 or sp.shape[0] == 0 or not (np.isfinite(sp).all() and (sp > 0).all()):
        raise ConfigError("target_spacing: needs one positive spacing per image and axis")
    target = np.median(sp, axis=0)
    if target.size < 2:
        return tuple(float(t) for t in target)
    worst = int(np.argmax(target))
    others = [i for i in range(target.size) if i != worst]
    finer = float(max(target[others]))
    aniso = target[worst] > threshold * finer
    if aniso and shapes is not None:
        size = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
        aniso = size[worst] * threshold < min(size[others])
    if aniso:
        coarse = float(np.percentile(sp[:, worst], 10))
        target[worst] = coarse if coarse >= finer else finer + 1e-5  # nnU-Net's guard
    return tuple(float(t) for t in target)


def model_grid(own: Sequence[float] | None, data_cfg: DataConfig,
               dims: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(own, target)``: the spacing of an image (``own``; unknown: the training spacing, else 1 per axis)
    and of the grid its model works on: ``data.spacing`` (3D resampling) or, without it, the image's own,
    each axis times ``data.downsample``. None when the two are the same grid. The one rule every path
    (training store, validation, in-memory and streamed prediction) resamples by."""
    spacing = data_cfg.spacing if data_cfg.spacing and len(data_cfg.spacing) == dims else None
    if own is None or len(own) != dims:
        own = spacing or (1.0,) * dims
    own = _spacing(own, dims, "spacing")
    factor = data_cfg.downsample
    if factor is not None and len(factor) != dims:
        raise ConfigError(f"data.downsample {list(factor)} has {len(factor)} factor(s) but the images are "
                          f"{dims}D; give one per axis")
    target = tuple(float(b) * float(f) for b, f in zip(spacing or own, factor or (1.0,) * dims, strict=True))
    return None if np.allclose(own, target) else (own, target)


def coarse_axis(spacing: Sequence[float], target: Sequence[float]) -> int | None:
    """nnU-Net's separate-z decision: the one axis of maximal spacing when max/min > ANISO_THRESHOLD in
    the source spacing (else in the target); None when isotropic enough or two axes share the maximum."""
    for sp in (np.asarray(spacing, float), np.asarray(target, float)):
        if sp.size > 1 and sp.max() / sp.min() > ANISO_THRESHOLD:
            axes = np.flatnonzero(sp == sp.max())
            return int(axes[0]) if axes.size == 1 else None
    return None


def nearest_index(old: int, new: int) -> np.ndarray:
    """Source index of each output position (the source pixel holding the output pixel's centre)."""
    return np.minimum(np.floor((np.arange(new) + 0.5) * (old / new)).astype(np.intp), old - 1)


def _zoom(arr: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    if arr.shape == shape:
        return arr.astype(np.float32, copy=False)
    factors = [n / o for n, o in zip(shape, arr.shape, strict=True)]
    return ndimage.zoom(arr, factors, order=order, mode="nearest", grid_mode=True, output=np.float32)


def _resize(arr: np.ndarray, shape: tuple[int, ...], order: int, coarse: int | None) -> np.ndarray:
    """One channel to ``shape``: spline of ``order`` on every axis, or (``coarse`` set) in-plane per slice
    and nearest along ``coarse``. float32."""
    if coarse is None or arr.ndim < 2:
        return _zoom(arr, shape, order)
    moved = np.moveaxis(arr, coarse, 0)
    plane = shape[:coarse] + shape[coarse + 1 :]
    slices = np.stack([_zoom(s, plane, order) for s in moved]) if moved.shape[1:] != plane else moved
    if moved.shape[0] != shape[coarse]:
        slices = slices[nearest_index(moved.shape[0], shape[coarse])]
    return np.moveaxis(slices, 0, coarse).astype(np.float32, copy=False)


def resample_image(image: np.ndarray, spacing: Sequence[float], target: Sequence[float], *,
                   order: int = 3) -> np.ndarray:
    """An image ``(C, *spatial)`` at ``target`` spacing (float32): third-order spline per channel (the
    coarse axis of strongly anisotropic data by nearest neighbour, as nnU-Net). Splines may overshoot
    slightly at edges; values are not clipped (nnU-Net does not either). The input itself when the grid
    does not change."""
    dims = image.ndim - 1
    shape = shape_after(image.shape[1:], spacing, target)
    if shape == image.shape[1:]:
        return image
    coarse = coarse_axis(_spacing(spacing, dims, "spacing"), _spacing(target, dims, "target spacing"))
    return np.stack([_resize(ch, shape, order, coarse) for ch in image])


def resample_mask(mask: np.ndarray, spacing: Sequence[float], target: Sequence[float],
                  num_classes: int | None = None) -> np.ndarray:
    """A label map ``(*spatial)`` (class indices or stored values) at ``target`` spacing, same dtype.

    Each value present is one-hot encoded, interpolated linearly (nnU-Net's ``order_seg=1``; nearest along
    the coarse axis of anisotropic data) and every voxel takes the value of the largest (ties: the smaller
    value), one class at a time so memory stays at two float32 volumes. With more than
    ``MAX_ONEHOT_CLASSES`` classes (``num_classes``, else the values present) nearest neighbour instead,
    which costs one pass. Either way only values present in ``mask`` come out.
    """
    shape = shape_after(mask.shape, spacing, target)
    if shape == mask.shape:
        return mask
    values = unique_values(mask)
    if values.size == 1:
        return np.full(shape, values[0], dtype=mask.dtype)
    if (num_classes if num_classes is not None else values.size) > MAX_ONEHOT_CLASSES:
        return mask[np.ix_(*[nearest_index(o, n) for o, n in zip(mask.shape, shape, strict=True)])]
    coarse = coarse_axis(_spacing(spacing, mask.ndim, "spacing"), _spacing(target, mask.ndim, "target"))
    out = np.full(shape, values[0], dtype=mask.dtype)
    best = _resize((mask == values[0]).astype(np.float32), shape, 1, coarse)
    for v in values[1:]:
        score = _resize((mask == v).astype(np.float32), shape, 1, coarse)
        win = score > best
        out[win] = v
        np.maximum(best, score, out=best)
    return out


def resample_maps(maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Per-pixel maps ``(K, *spatial)`` (an uncertainty map) onto the grid ``shape``: linear per channel, as
    :func:`resample_probabilities` but not renormalised. float32."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != maps.ndim - 1 or min(shape, default=0) < 1:
        raise ConfigError(f"resample: grid {list(shape)} does not fit maps {maps.shape}")
    if shape == maps.shape[1:]:
        return maps
    return np.stack([_resize(m, shape, 1, None) for m in maps])


def resample_probabilities(probs: np.ndarray, shape: Sequence[int], *, spacing: Sequence[float] | None = None,
                           original_spacing: Sequence[float] | None = None) -> np.ndarray:
    """Class probabilities ``(K, *spatial)`` onto the grid ``shape`` (an image's own, after prediction at
    the target spacing): linear per class, clipped at 0 and renormalised to sum 1 per voxel. Given both
    spacings (``spacing``: the probabilities', ``original_spacing``: the output grid's), strongly
    anisotropic data uses nearest along the coarse axis (nnU-Net's export: ``order=1, order_z=0``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != probs.ndim - 1 or min(shape, default=0) < 1:
        raise ConfigError(f"resample: grid {list(shape)} does not fit probabilities {probs.shape}")
    if shape == probs.shape[1:]:
        return probs
    coarse = None
    if spacing is not None and original_spacing is not None:
        dims = probs.ndim - 1
        coarse = coarse_axis(_spacing(spacing, dims, "spacing"), _spacing(original_spacing, dims, "spacing"))
    out = np.stack([_resize(p, shape, 1, coarse) for p in probs])
    np.maximum(out, 0.0, out=out)
    total = out.sum(axis=0, keepdims=True)
    np.divide(out, total, out=out, where=total > 0)
    return out
