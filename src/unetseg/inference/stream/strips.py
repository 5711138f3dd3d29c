"""The geometry, input and output of one streamed prediction (:mod:`unetseg.inference.stream.predictor`):
the column
strips a slide is cut into, the band reader feeding a strip's tiles and the sink turning its finished rows
into whole writer chunks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetseg.errors import DataError
from unetseg.inference.tiling import TilePlan
from unetseg.io.ngff import ChunkWriter

# A strip is STRIP_STEPS tile steps wide on every axis after the first (the whole axis when that is
# shorter), unless its window (the accumulator and the input bands in flight) would exceed WINDOW_BYTES:
# then as wide as the budget allows, in square-ish strips of whole chunks, never under MIN_STRIP_STEPS
# steps. Tiles over a strip edge run in both strips (about tile / strip more compute per cut axis): 2D
# strips of 16 steps of 512 px tiles cost ~8% per cut for a ~75 MiB window; 3D 96^3 tiles hit the budget
# first (a 512^3 volume is one strip, 1024^3 four of ~512 x 640 columns).
STRIP_STEPS = 16
MIN_STRIP_STEPS = 4
WINDOW_BYTES = 1 << 30


@dataclass(frozen=True)
class Strip:
    """A box of output columns on the axes after the first, and the plan's tiles that reach into it."""

    own: tuple[tuple[int, int], ...]  # [lo, hi) per axis >= 1: the image columns this strip writes
    origin: tuple[int, ...]  # per axis >= 1: where its accumulator window starts (first tile's start)
    extent: tuple[int, ...]  # per axis >= 1: the window's size
    tiles: tuple[int, ...]  # indices into plan.positions(), in plan order
    per_band: int  # tiles of one band inside the strip

    def own_slices(self) -> tuple[slice, ...]:
        """The strip's own columns in window coordinates."""
        return tuple(slice(a - o, b - o) for (a, b), o in zip(self.own, self.origin, strict=True))

    def band_tiles(self, k: int) -> tuple[int, ...]:
        return self.tiles[k * self.per_band : (k + 1) * self.per_band]


def _step(plan: TilePlan, axis: int) -> float:
    starts = plan.starts[axis]
    return (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else plan.tile_out[axis]


def strip_extents(plan: TilePlan, shape: tuple[int, ...], chunks: Sequence[int], column_bytes: int,
                  budget: int = WINDOW_BYTES) -> list[int]:
    """Columns per strip on each axis after the first, in whole chunks (see :data:`STRIP_STEPS`); the
    shortest axes take their share of the budget first."""
    axes = sorted(range(1, len(shape)), key=lambda a: shape[a])
    left = max(1.0, budget / max(1, column_bytes))  # window columns the budget holds
    ext = {}
    for i, a in enumerate(axes):
        c, t, step = chunks[a], plan.tile_out[a], _step(plan, a)
        want = STRIP_STEPS * step
        want = shape[a] if shape[a] <= want else _whole(want, c)
        share = left ** (1.0 / (len(axes) - i))  # the columns this axis may take
        if min(want, shape[a]) + t > share:  # the window reaches over the edge tiles
            want = max(_whole(MIN_STRIP_STEPS * step, c), c, int(share - t) // c * c)
        ext[a] = want
        left = max(1.0, left / (min(want, shape[a]) + t))
    return [ext[a] for a in range(1, len(shape))]


def _whole(n: float, chunk: int) -> int:
    """``n`` rounded up to whole chunks."""
    return max(chunk, -(-math.ceil(n) // chunk) * chunk)


def make_strips(plan: TilePlan, shape: tuple[int, ...], chunks: Sequence[int] | None,
                given: Sequence[int] | None = None, column_bytes: int = 0,
                budget: int = WINDOW_BYTES) -> list[Strip]:
    """The strips of an image, in the order they are predicted (row-major over the strip grid): ``given``
    columns per strip (rounded up to whole chunks), else :func:`strip_extents` for windows of
    ``column_bytes`` per column within ``budget`` bytes."""
    lens = [len(s) for s in plan.starts]
    grid = [int(c) for c in chunks] if chunks else [1] * len(shape)
    if given is not None:
        extents = [_whole(int(g), c) for g, c in zip(given, grid[1:], strict=True)]
    else:
        extents = strip_extents(plan, shape, grid, column_bytes, budget)
    ranges, touching = [], []
    for a, ext in zip(range(1, len(shape)), extents, strict=True):
        own = [(lo, min(lo + ext, shape[a])) for lo in range(0, shape[a], ext)]
        ranges.append(own)
        t = plan.tile_out[a]
        touching.append([[i for i, p in enumerate(plan.starts[a]) if p < hi and p + t > lo]
                         for lo, hi in own])
    out = []
    for pick in itertools.product(*(range(len(r)) for r in ranges)):
        idx = [touching[a][i] for a, i in enumerate(pick)]
        cols = [np.ravel_multi_index(c, lens[1:]) if c else 0 for c in itertools.product(*idx)]
        per_band = len(cols)
        tiles = tuple(int(k * math.prod(lens[1:]) + c) for k in range(lens[0]) for c in cols)
        origin = tuple(plan.starts[a + 1][ix[0]] for a, ix in enumerate(idx))
        extent = tuple(plan.starts[a + 1][ix[-1]] + plan.tile_out[a + 1] - o
                       for a, (ix, o) in enumerate(zip(idx, origin, strict=True)))
        span = tuple(ranges[a][i] for a, i in enumerate(pick))
        out.append(Strip(span, origin, extent, tiles, per_band))
    return out


def done_rows(writer: ChunkWriter, height: int, own: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Per image row: whether the writer holds it complete within the strip's columns ``own`` (resume)."""
    done = np.asarray(writer.done_rows(tuple(slice(a, b) for a, b in own)), dtype=bool)
    if done.shape != (height,):
        raise ValueError(f"the writer's done_rows gave {done.shape} for an image of {height} rows")
    return done


class BandReader:
    """The input of every band of every strip: ``tile_in[0]`` rows of the mirror-extended, normalised image
    over the strip's input columns, read from the source region they map to (numpy ``reflect`` at the true
    image borders only, as ``Predictor._mirror``, by index maps ``np.pad(arange)``)."""

    def __init__(self, source: Any, level: int, normalize: Any, plan: TilePlan, shape: tuple[int, ...],
                 work: list[tuple[Strip, list[int]]], name: str, channels: int) -> None:
        self.source, self.level, self.normalize, self.plan = source, level, normalize, plan
        self.shape, self.work, self.name, self.channels = shape, work, name, channels
        self.index = [np.pad(np.arange(s), (m, m + d - s), mode="reflect")
                      for s, m, d in zip(shape, plan.margin, plan.domain, strict=True)]
        self.bytes_read = 0

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for si, (strip, bands) in enumerate(self.work):
            cols = [self.index[a + 1][o : o + e - self.plan.tile_out[a + 1] + self.plan.tile_in[a + 1]]
                    for a, (o, e) in enumerate(zip(strip.origin, strip.extent, strict=True))]
            prev: tuple[int, int, torch.Tensor] | None = None
            for k in bands:
                a = self.plan.starts[0][k]
                b = a + self.plan.tile_in[0]
                if prev is not None and prev[0] <= a < prev[1]:  # the rows shared with the previous band
                    kept, first = prev[2][:, a - prev[0] :], prev[1]
                    band = torch.cat([kept, self._read(first, b, cols)], dim=1) if first < b \
                        else kept[:, : b - a]
                else:
                    band = self._read(a, b, cols)
                prev = (a, b, band)
                yield si, k, band

    def _read(self, a: int, b: int, cols: list[np.ndarray]) -> torch.Tensor:
        maps = [self.index[0][a:b], *cols]
        region = tuple(slice(int(m.min()), int(m.max()) + 1) for m in maps)
        x = np.asarray(self.source.read(region, self.level), dtype=np.float32)
        want = (self.channels, *(r.stop - r.start for r in region))
        if x.shape != want:
            raise DataError(f"{self.name}: region {region} read as shape {x.shape}, expected {want}")
        self.bytes_read += x.nbytes
        x = np.asarray(self.normalize(x), dtype=np.float32)
        for axis, (m, r) in enumerate(zip(maps, region, strict=True), start=1):
            if len(m) != r.stop - r.start or m[0] != r.start:  # reflected pixels at an image border
                x = np.take(x, m - r.start, axis=axis)
        return torch.from_numpy(np.ascontiguousarray(x))


def _predicted(rows: np.ndarray | None) -> np.ndarray:
    assert rows is not None  # rows not done yet were wanted, so predicted
    return rows


class BlockSink:
    """Finished rows of one strip -> whole chunk rows of the writer -> the writer thread; blocks the writer
    holds complete already (resume) are dropped. Each piece carries its labels and, when the writer stores
    them, its probabilities and its uncertainty map (channels first)."""

    def __init__(self, writer: ChunkWriter, shape: tuple[int, ...], strip: Strip, done: np.ndarray,
                 out: Any) -> None:
        chunks = writer.chunks  # None: a writer taking any block of rows
        self.step = int(chunks[0]) if chunks else None
        self.height, self.origin = shape[0], tuple(a for a, _ in strip.own)
        self.done, self.out = done, out
        self.probabilities = int(writer.probabilities)
        self.uncertainty = int(writer.uncertainty)
        self.pieces: list[tuple[int, int, np.ndarray | None, tuple[np.ndarray | None, ...]]] = []
        self.start = self.written = 0

    def wanted(self, lo: int, hi: int) -> bool:
        return not bool(self.done[lo:hi].all())

    def push(self, lo: int, hi: int, labels: np.ndarray | None, probs: np.ndarray | None,
             uncertainty: np.ndarray | None = None) -> None:
        self.pieces.append((lo, hi, labels, (probs, uncertainty)))
        while self.pieces:
            end = min(self.start + self.step, self.height) if self.step else hi
            if hi < end:
                break
            self._emit(end)

    def _emit(self, end: int) -> None:
        parts, rest = [], []
        for lo, hi, lab, maps in self.pieces:
            if lo >= end:
                rest.append((lo, hi, lab, maps))
                continue
            cut = min(hi, end) - lo
            parts.append((lab, maps, cut))
            if hi > end:
                rest.append((end, hi, None if lab is None else lab[cut:],
                             tuple(None if m is None else m[:, cut:] for m in maps)))
        self.pieces = rest
        if not self.done[self.start]:
            labels = np.concatenate([_predicted(lab)[:n] for lab, _, n in parts])
            wanted = (self.probabilities, self.uncertainty)
            joined = [np.concatenate([_predicted(m[k])[:, :n] for _, m, n in parts], axis=1) if want else None
                      for k, want in enumerate(wanted)]
            extra = joined if self.uncertainty else joined[:1]  # writers without uncertainty take 3 arguments
            self.out.put(((self.start, *self.origin), labels, *extra))
            self.written += end - self.start
        self.start = end
