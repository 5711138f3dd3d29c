"""Pyramid rules shared by the OME-Zarr and OME-TIFF writers (see :mod:`unetseg.io.ngff`).

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
    """Block mode of a label array (ties go to the larger label). The block's pixels are compared pairwise
    as strided views (k^2 comparisons for k pixels per block, no sort: 4x faster than sorting blocks)."""
    lead = labels.ndim - len(factor)
    pad = [(0, 0)] * lead + [(0, -s % f) for s, f in zip(labels.shape[lead:], factor, strict=True)]
    a = np.pad(labels, pad, mode="edge") if any(p for _, p in pad) else labels
    head = (slice(None),) * lead
    cols = [a[(*head, *(slice(o, None, f) for o, f in zip(off, factor, strict=True)))]
            for off in np.ndindex(*factor)]
    best = best_n = None
    for j, cand in enumerate(cols):
        n = np.zeros(cand.shape, np.uint16)
        for i, other in enumerate(cols):
            if i != j:
                n += other == cand
        if best is None or best_n is None:  # the first candidate (both are set together)
            best, best_n = cand, n
            continue
        better = (n > best_n) | ((n == best_n) & (cand > best))
        best, best_n = np.where(better, cand, best), np.where(better, n, best_n)
    return np.ascontiguousarray(best)


def downsample_mean(values: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Block mean in the input dtype (integers rounded)."""
    m = _blocks(values, factor).mean(axis=-1, dtype=np.float32)
    return np.rint(m).astype(values.dtype) if values.dtype.kind in "iu" else m.astype(values.dtype)


class PyramidBuilder:
    """Builds pyramid levels chunk by chunk as soon as their source is complete, so a streamed writer
    finishes its pyramid while the prediction is still running (in its writer thread).

    ``arrays``: per level (0 first) the arrays to fill, each ``(*lead, *spatial)`` (several stores, e.g.
    labels and probabilities, share the geometry), ``chunks`` the spatial chunk shape of every level
    (clipped to the level's size), ``reducers`` one per array. Level-0 completion is given by
    :meth:`written`; every built chunk of a higher level is recorded here."""

    def __init__(self, arrays: list[list], factors: list[tuple[int, ...]], chunks: Sequence[int],
                 reducers: list) -> None:
        self.arrays, self.factors, self.reducers = arrays, factors, reducers
        self.shapes = [tuple(arrays[0][0].shape[-len(chunks):])]
        for f in factors:
            self.shapes.append(tuple(math.ceil(s / k) for s, k in zip(self.shapes[-1], f, strict=True)))
        self.chunks = [tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)) for shape in self.shapes]
        self.built = [np.zeros([math.ceil(s / c) for s, c in zip(shape, ch, strict=True)], dtype=bool)
                      for shape, ch in zip(self.shapes, self.chunks, strict=True)]

    def written(self, grid: tuple[slice, ...], level0: np.ndarray) -> None:
        """Level-0 chunks ``grid`` (chunk-index slices) are written (``level0``: the writer's record of all
        level-0 chunks): build every higher chunk whose source is now complete."""
        self.built[0] = level0
        for level in range(1, len(self.shapes)):
            grown = self._grow(level, grid)
            if grown is None:
                return
            grid = grown

    def finish(self, level0: np.ndarray) -> None:
        """Build whatever is left (all chunks after a resume or a run in parts)."""
        self.built[0] = level0
        for level in range(1, len(self.shapes)):
            self._grow(level, tuple(slice(0, n) for n in self.built[level - 1].shape))

    def _grow(self, level: int, below: tuple[slice, ...]) -> tuple[slice, ...] | None:
        """Build the ``level`` chunks over the ``below`` chunks of ``level - 1`` whose sources are all
        built; returns the chunk box of this level they span (None: none built)."""
        f, cin, cout = self.factors[level - 1], self.chunks[level - 1], self.chunks[level]
        src_shape, done = self.shapes[level - 1], self.built[level - 1]
        # the output chunks whose source boxes overlap the given source chunks
        box = tuple(slice(b.start * c // (k * o), -(-min(b.stop * c, n) // (k * o)))
                    for b, c, k, o, n in zip(below, cin, f, cout, src_shape, strict=True))
        made = []
        for idx in np.ndindex(*(b.stop - b.start for b in box)):
            g = tuple(b.start + i for b, i in zip(box, idx, strict=True))
            if self.built[level][g]:
                continue
            out = tuple(slice(i * o, min((i + 1) * o, s)) for i, o, s in zip(g, cout, self.shapes[level],
                                                                            strict=True))
            src = tuple(slice(s.start * k, min(s.stop * k, n))
                        for s, k, n in zip(out, f, src_shape, strict=True))
            need = tuple(slice(s.start // c, -(-s.stop // c)) for s, c in zip(src, cin, strict=True))
            if not done[need].all():
                continue
            for arrays, reduce in zip(self.arrays, self.reducers, strict=True):
                lead = (slice(None),) * (arrays[level].ndim - len(out))
                arrays[level][(*lead, *out)] = reduce(arrays[level - 1][(*lead, *src)], f)
            self.built[level][g] = True
            made.append(g)
        if not made:
            return None
        return tuple(slice(min(g[a] for g in made), max(g[a] for g in made) + 1) for a in range(len(box)))
