"""The tile geometry of sliding-window prediction: where tiles go, how they are weighted, and the helpers
to index boxes and chunks. The :class:`TilePlan` of an image shape depends only on its shape, never on pixels,
so the in-memory and the streamed predictors share it (and so their tiles and labels are identical).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@functools.lru_cache(maxsize=64)
def gaussian_1d(length: int, sigma_scale: float = 0.125) -> np.ndarray:
    """A 1-D Gaussian over ``length`` pixels, centred, max 1, sigma = ``sigma_scale * length``."""
    x = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    sigma = max(sigma_scale * length, 1e-6)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g = np.maximum(g / g.max(), 1e-6)  # strictly positive so the border is never divided by zero
    g = g.astype(np.float32)
    g.flags.writeable = False
    return g


def gaussian_importance_map(tile: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """The N-D importance map used to blend tiles: the outer product of :func:`gaussian_1d` per axis
    (nnU-Net, Isensee et al. 2021). Positive everywhere, 1 at the centre, decaying towards the border."""
    out = np.ones((), dtype=np.float32)
    for n in tile:
        out = np.multiply.outer(out, gaussian_1d(int(n), sigma_scale))
    return out.astype(np.float32)


def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> tuple[list[int], int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` pixels with at least ``overlap``
    (fraction of the tile) between neighbours, spread evenly from 0 to the end (as in nnU-Net).

    Starts are multiples of ``align`` (2**depth), so every tile sees the same pooling grid as a pass over
    the whole image; for the valid-padding U-Net that makes tiling seamless (identical to one pass).
    Returns the starts and the covered extent (``>= size``; larger by less than ``align`` when the last
    tile has to reach past the end, which is then mirror-extended).
    """
    if size <= tile:
        return [0], tile
    span = -(-(size - tile) // align) * align  # the last start
    step = max(align, int(tile * (1.0 - overlap)) // align * align)
    n = -(-span // step) + 1
    # rounded to multiples of align, consecutive gaps stay <= step, so tiles still overlap enough
    return [int(round(span * i / (n - 1) / align)) * align for i in range(n)], span + tile


def axis_weight_sum(size: int, tile: int, starts: list[int], weights: np.ndarray) -> torch.Tensor:
    total = np.zeros(size, dtype=np.float64)
    for s in starts:
        total[s : s + tile] += weights
    return torch.from_numpy(total.astype(np.float32))


def weight_sums(plan: TilePlan, sigma_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed tile weights of a plan, without a weight image: per-row sums of the first axis and the
    outer product of the other axes' sums (the map and the grid are separable). Probabilities are the
    accumulated weighted sums divided by their product (in memory and streamed alike)."""
    sums = []
    for d, t, s in zip(plan.domain, plan.tile_out, plan.starts, strict=True):
        w = gaussian_1d(t, sigma_scale) if plan.weighted else np.ones(t, np.float32)
        sums.append(axis_weight_sum(d, t, list(s), w))
    rest = sums[1:]
    inner = rest[0] if rest else torch.ones(())
    for extra in rest[1:]:
        inner = torch.outer(inner.reshape(-1), extra).reshape(*inner.shape, *extra.shape)
    return sums[0], inner


@dataclass(frozen=True)
class TilePlan:
    """Everything about one image shape that does not depend on the pixel values."""

    tile_in: tuple[int, ...]
    tile_out: tuple[int, ...]
    margin: tuple[int, ...]  # mirror-extension per side (valid padding); 0 for "same" networks
    domain: tuple[int, ...]  # output domain: the image, extended to the tiles' extent
    starts: tuple[tuple[int, ...], ...]  # per axis
    weighted: bool

    @property
    def num_tiles(self) -> int:
        return math.prod(len(s) for s in self.starts)

    def positions(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*self.starts)


def box(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Index of the box ``[start, start + size)`` in a ``(C, *spatial)`` array, all channels."""
    return (slice(None), *(slice(a, a + n) for a, n in zip(start, size, strict=True)))


def chunks(n: int, row_size: int, target: int = 1 << 22) -> Iterator[tuple[int, int]]:
    """Ranges over the first axis holding about ``target`` elements each (bounds the temporaries)."""
    step = max(1, target // max(1, row_size))
    for i in range(0, n, step):
        yield i, min(n, i + step)
