"""Lazy images for whole slides and volumes too big for memory: regions are decoded on demand.

:func:`open_lazy` opens OME-TIFF/BigTIFF (tiled or stripped, pyramidal or not), OME-Zarr (NGFF 0.4 / zarr
v2 and 0.5 / zarr v3), NIfTI and small PNG/JPEG files through the one reader of each format
(:mod:`unetseg.io.readers`, which ``read_image`` uses too, so both see the same array and spacing). Every
level is a channel-first ``(C, *spatial)`` view (3D is ``(z, y, x)``) that decodes only the chunks a slice
touches. This module adds the choice of a pyramid level and the tissue detection of
:mod:`unetseg.io.tissue`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unetseg.io.readers import LazyImage, header_nbytes, open_lazy
from unetseg.io.tissue import mask_scale, region_has_tissue, tissue_mask

__all__ = ["LazyImage", "choose_level", "header_nbytes", "mask_scale", "open_lazy", "region_has_tissue",
           "tissue_mask"]


def choose_level(image: LazyImage, target_pixel_size: float | Sequence[float] | None,
                 tolerance: float = 0.1) -> int:
    """The pyramid level whose pixel size best matches ``target_pixel_size`` (µm).

    Rule: score = mean over the compared axes of ``|log(level size / target)|``; the lowest score wins,
    and any level within ``log(1 + tolerance)`` of it is preferred if finer (downsampling a finer level
    keeps detail that upsampling a coarser one would have to invent). A scalar target is compared
    with the in-plane (y, x) sizes; a sequence with the last ``len(target)`` axes. Level 0 when the
    target or the image's pixel sizes are unknown.
    """
    if target_pixel_size is None:
        return 0
    target = np.atleast_1d(np.asarray(target_pixel_size, dtype=np.float64))
    scores = []
    for lvl in range(len(image.levels)):
        px = image.pixel_size(lvl)
        if px is None or np.any(target <= 0):
            return 0
        ref = np.asarray(px[-2:] if target.size == 1 else px[-target.size:], dtype=np.float64)
        scores.append(float(np.mean(np.abs(np.log(ref / target)))))
    best = min(scores)
    return next(i for i, s in enumerate(scores) if s <= best + math.log1p(tolerance))
