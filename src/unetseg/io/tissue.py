"""Tissue / foreground detection on a low pyramid level, to skip empty glass when predicting slides.

Re-exported by :mod:`unetseg.io.lazy`; works on any :class:`~unetseg.io.readers.LazyImage`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from unetseg.io.readers import LazyImage


def _mask_level(image: LazyImage, min_side: int) -> int:
    big = [i for i in range(len(image.levels)) if min(image.shape(i)[-2:]) >= min_side]
    return min(big, key=lambda i: min(image.shape(i)[-2:])) if big else 0


def tissue_mask(image: LazyImage, level: int | None = None, *, min_side: int = 512) -> tuple[np.ndarray, int]:
    """Boolean tissue/foreground mask of a low pyramid level and that level's index.

    The level is the smallest one whose short side has at least ``min_side`` pixels (level 0 when
    none has). A level much larger than that (no pyramid) is read with an in-plane stride, so the mask
    may be smaller than the level: use :func:`mask_scale` for its level-0 pixels per mask pixel.
    Otsu's threshold on the channel mean splits two classes; polarity: the class covering most of the
    image border is background (bright glass in bright-field, dark in fluorescence). Specks below
    0.05 % of the mask area are removed and holes below 0.1 % filled. A flat image is all tissue (a
    tile from inside the tissue), so nothing is skipped by mistake.
    """
    from skimage.filters import gaussian, threshold_otsu

    lvl = _mask_level(image, min_side) if level is None else level
    shape = image.shape(lvl)
    step = max(1, min(shape[-2:]) // min_side)
    region = (*(slice(None),) * (len(shape) - 2), slice(None, None, step), slice(None, None, step))
    grey = gaussian(image.read(region, level=lvl).mean(axis=0), sigma=1, preserve_range=True)
    if float(grey.max() - grey.min()) <= 1e-6 * max(1.0, float(np.abs(grey).max())):
        return np.ones(grey.shape, dtype=bool), lvl
    bright = grey > threshold_otsu(grey)
    border = np.concatenate([bright[..., 0, :].ravel(), bright[..., -1, :].ravel(),
                             bright[..., :, 0].ravel(), bright[..., :, -1].ravel()])
    mask = ~bright if border.mean() > 0.5 else bright
    return _clean(mask), lvl


def _clean(mask: np.ndarray) -> np.ndarray:
    from skimage import morphology

    speck, hole = max(4, int(mask.size * 5e-4)), max(4, int(mask.size * 1e-3))
    try:  # scikit-image >= 0.26 names the size max_size; older releases min_size/area_threshold
        mask = morphology.remove_small_objects(mask, max_size=speck)
        return morphology.remove_small_holes(mask, max_size=hole)
    except TypeError:
        mask = morphology.remove_small_objects(mask, min_size=speck + 1)
        return morphology.remove_small_holes(mask, area_threshold=hole + 1)


def mask_scale(image: LazyImage, mask: np.ndarray) -> tuple[float, ...]:
    """Level-0 pixels per mask pixel along each spatial axis."""
    return tuple(a / b for a, b in zip(image.shape(0), mask.shape, strict=True))


def region_has_tissue(mask: np.ndarray, mask_level_scale: float | Sequence[float],
                      region_level0: tuple[slice, ...]) -> bool:
    """Whether the level-0 ``region`` (slices with explicit bounds) touches tissue in ``mask``."""
    scales = np.broadcast_to(np.asarray(mask_level_scale, dtype=np.float64), (mask.ndim,))
    index = []
    for s, f, n in zip(region_level0, scales, mask.shape, strict=True):
        lo = min(n - 1, max(0, math.floor((s.start or 0) / f)))
        hi = max(lo + 1, min(n, math.ceil((n * f if s.stop is None else s.stop) / f)))
        index.append(slice(lo, hi))
    return bool(mask[tuple(index)].any())
