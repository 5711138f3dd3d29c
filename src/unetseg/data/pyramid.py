"""Pyramid rules shared by the OME-Zarr and OME-TIFF writers (see :mod:`unetseg.data.ngff`).

Each level halves y and x; in 3D z is halved too once its pixel size is below twice the finest
in-plane size, so anisotropic stacks become isotropic first. Levels are added until the longest side
is at most ``max_side`` px. Labels are reduced by block mode (ties to the larger label, so thin
objects survive), probabilities by block mean. Odd sizes round up (edge pixels are replicated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pyramid_factors(shape: Sequence[int], pixel_size: Sequence[float] | None = None, *,
                    max_side: int = 1024, levels: int | None = None) -> list[tuple[int, ...]]:
    """Per-level downsampling factors (relative to the previous level) by the rule of the module doc;
    ``levels`` (including level 0) overrides the size rule."""
    shape = [int(s) for s in shape]
    px = [float(p) for p in (pixel_size or [1.0] * len(shape))]
    out: list[tuple[int, ...]] = []
    while (max(shape) > max_side) if levels is None else (len(out) + 1 < levels):
        finest = min(px[-2:])
        f = tuple(2 if shape[i] > 1 and (i >= len(shape) - 2 or px[i] < 2 * finest) else 1
                  for i in range(len(shape)))
        if f == (1,) * len(shape):
            break
        out.append(f)
        shape = [math.ceil(s / k) for s, k in zip(shape, f, strict=True)]
        px = [p * k for p, k in zip(px, f, strict=True)]
    return out


def _blocks(a: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """``(*lead, n0*f0, n1*f1, ...)`` -> ``(*lead, n0, n1, ..., f0*f1*...)`` after edge padding."""
    lead = a.ndim - len(factor)
    pad = [(0, 0)] * lead + [(0, -s % f) for s, f in zip(a.shape[lead:], factor, strict=True)]
    a = np.pad(a, pad, mode="edge") if any(p for _, p in pad) else a
    split = [d for s, f in zip(a.shape[lead:], factor, strict=True) for d in (s // f, f)]
    a = a.reshape(*a.shape[:lead], *split)
    n = len(factor)
    order = [*range(lead), *(lead + 2 * i for i in range(n)), *(lead + 2 * i + 1 for i in range(n))]
    a = a.transpose(order)
    return a.reshape(*a.shape[: lead + n], -1)


def downsample_mode(labels: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Block mode of a label array (ties go to the larger label); memory O(block size x factor)."""
    v = np.sort(_blocks(labels, factor), axis=-1)[..., ::-1]
    best, best_n = v[..., 0], (v == v[..., :1]).sum(-1)
    for j in range(1, v.shape[-1]):
        n = (v == v[..., j: j + 1]).sum(-1)
        better = n > best_n
        best, best_n = np.where(better, v[..., j], best), np.where(better, n, best_n)
    return best


def downsample_mean(values: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Block mean in the input dtype (integers rounded)."""
    m = _blocks(values, factor).mean(axis=-1, dtype=np.float32)
    return np.rint(m).astype(values.dtype) if values.dtype.kind in "iu" else m.astype(values.dtype)
