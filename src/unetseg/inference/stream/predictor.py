"""Streaming sliding-window prediction in flat memory, for slides and volumes of any size.

:class:`StreamPredictor` runs the tiles of an in-memory :class:`~unetseg.inference.predictor.Predictor`
(its plan, batches, Gaussian weights, TTA and engine) over a lazily read image and hands finished rows to
a writer (:class:`~unetseg.io.ngff.LabelZarrWriter`). Labels equal ``Predictor.predict`` of the same
normalised image bit for bit. Why it is exact, and flat:

* **Strips and bands.** The image is cut into *strips*: boxes of whole writer chunks on the axes after the
  first, 16 tile steps wide or as wide as the memory budget allows
  (:func:`~unetseg.inference.stream.strips.strip_extents`), predicted one after the other. A strip runs every
  plan tile that reaches into it (tiles over a strip edge run in both strips), in plan order; tiles with the
  same start on the first axis form a *band*. Every pixel so receives its tile contributions in the
  in-memory order (float addition is not associative).
* **Batches.** A tile's output depends on the size of the batch it runs in (CPU kernels round a batch of
  one differently from a larger one, ~1e-5), not on the other tiles in it (checked on the CPU kernels
  here). So a tile runs in a batch of ``batch_size``, or, if the in-memory path ran it in its last,
  smaller batch, in a batch of that size; a strip's tiles are batched in plan order and a short batch is
  filled with copies of its first tile. Skipped and resumed tiles are so never computed.
* **Accumulator.** One float32 window ``(classes, tile_out[0], *strip extent)`` per strip. When band k's
  last tile is added, rows ``[start_k, start_k+1)`` of the strip's own columns are final: labels are the
  first-maximum argmax of the undivided sums (``Predictor.argmax``, as ``predict``); probabilities, when
  the writer stores them, are divided by the outer product of the per-axis weight sums
  (:func:`~unetseg.inference.tiling.weight_sums`, as in memory); so is the uncertainty map, when the
  writer stores one (the accumulator then holds the tiles' mutual information as one more channel, as
  :meth:`~unetseg.inference.predictor.Predictor.predict_uncertain`). The window then shifts by
  ``start_k+1 - start_k``. Peak memory: the window, the input bands of the batch in flight
  plus at most three read ahead (``tile_in[0]`` rows of the strip each), one chunk row of the strip's
  labels: O(tile extent x strip), independent of the image's size.
* **Input.** A prefetch thread reads each band's rows of the mirror-extended image over the strip's
  input columns (numpy ``reflect`` at the true image borders only, as ``Predictor._mirror``, via index maps
  ``np.pad(arange)``), reusing the rows shared with the previous band, and normalises them.
* **Output.** Finished rows are buffered until a whole chunk row of the strip (or the image end) is
  complete, then a writer thread writes it (LabelZarrWriter accepts whole chunks only). Resume is per
  written chunk block: a strip skips the rows the writer holds complete in its columns.
* **Threads.** Bounded queues (2 items); an exception in a thread is re-raised in the caller as the
  original exception; both threads are always joined.

Normalisation is per region, so it must use fixed, whole-image statistics:
:func:`unetseg.inference.stream.statistics.stream_normalizer` computes them in a first streaming pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetseg.errors import ConfigError, DataError
from unetseg.inference.predictor import Predictor
from unetseg.inference.stream.strips import WINDOW_BYTES, BandReader, BlockSink, Strip, done_rows, make_strips
from unetseg.inference.stream.threads import Pipe
from unetseg.inference.tiling import TilePlan, box, weight_sums
from unetseg.inference.tta import uncertainty_map
from unetseg.io.ngff import ChunkWriter
from unetseg.io.readers import RegionSource

Region = tuple[slice, ...]
RUN, SKIP, DONE = 0, 1, 2  # tile states: computed; background (no tissue); rows already written (resume)


@dataclass
class StreamResult:
    """What one :meth:`StreamPredictor.predict_to` did (tile counts are of the plan's tiles)."""

    tiles: int  # tiles in the plan
    run: int  # tiles whose prediction was used
    skipped: int  # tiles without tissue: background
    resumed: int  # tiles lying in rows the writer had already completed: not computed
    computed: int  # tiles through the engine: run, again in the next strip over its edge, short-batch fill
    batches: int  # engine batches (each is 2**dims forward passes with TTA)
    bytes_read: int  # float32 bytes decoded from the source
    rows_written: int  # image rows handed to the writer (pixels written over the image width: strips add up)


class StreamPredictor:
    """Sliding-window prediction from a lazy source into a writer, in memory bounded by one tile band of
    one strip.

    ``strip``: columns per strip on each axis after the first, rounded up to whole writer chunks (default:
    :func:`~unetseg.inference.stream.strips.strip_extents` within ``window_bytes``).
    ``max_buffer_rows`` / ``max_window`` / ``max_input_rows``: the
    accumulator window's rows and elements and the most input rows held by the compute loop in the last
    call (for tests and capacity planning)."""

    def __init__(self, predictor: Predictor, strip: Sequence[int] | None = None,
                 window_bytes: int = WINDOW_BYTES) -> None:
        self.predictor, self.window_bytes = predictor, int(window_bytes)
        self.strip = None if strip is None else tuple(int(s) for s in strip)
        self.max_buffer_rows = self.max_window = self.max_input_rows = 0

    def predict_to(self, source: RegionSource, writer: ChunkWriter, *,
                   normalize: Callable[[np.ndarray], np.ndarray],
                   progress: Callable[[int, int, int], Any] | None = None,
                   skip: Callable[[Region], bool] | None = None, level: int = 0) -> StreamResult:
        """Predict ``source`` (``.shape(level)``, ``.read(region, level) -> float32 (C, *region)``) and write
        labels (and probabilities when ``writer.probabilities``) with ``writer.write(start, labels, probs)``.

        Args:
            normalize: applied to every read region; it must use fixed statistics (:func:`stream_normalizer`).
            progress: called after every batch with (tiles done, tiles to run, bytes read).
            skip: ``skip(region) -> True`` marks a tile (``region``: its output box clipped to the image, in
                ``level`` pixels) as empty: it is not run and counts as a tile predicting class 0 with
                probability 1 (its weights go to class 0), so pixels covered only by skipped tiles are
                background and pixels shared with run tiles blend both as overlapping tiles always do.
                See :func:`tissue_skip`.
            level: the pyramid level to predict.

        Resume: chunk blocks the writer holds (``writer.done_rows(columns)``) are neither written nor
        computed: a strip does not run tiles lying
        entirely in rows it holds complete; tiles touching an incomplete row are. The writer is not
        finished here (``writer.flush()``, where it exists, runs at the end, also after an error).
        """
        shape = tuple(int(s) for s in source.shape(level))
        name = str(source.path)
        self._check(source, shape, writer, name)
        run = _StreamRun(self, source, writer, shape, name, normalize, level, skip)
        self.max_buffer_rows, self.max_window, self.max_input_rows = run.plan.tile_out[0], 0, 0
        return run.execute(progress)

    def _check(self, source: RegionSource, shape: tuple[int, ...], writer: ChunkWriter, name: str) -> None:
        engine = self.predictor.engine
        if len(shape) != engine.spatial_dims or min(shape) < 1:
            raise DataError(f"{name}: image of shape {shape}; the model is {engine.spatial_dims}D")
        if source.channels != engine.in_channels:
            raise DataError(f"{name}: {source.channels} channels, the model expects {engine.in_channels}")
        where = writer.path
        if tuple(writer.shape) != shape:
            raise ConfigError(f"{where}: the writer is {tuple(writer.shape)}, the image {shape}")
        probs = int(writer.probabilities)
        if probs not in (0, self.predictor.out_channels):
            raise ConfigError(f"{where}: {probs} probability channels; the model gives "
                              f"{self.predictor.out_channels}")
        if int(writer.uncertainty) not in (0, 2):
            raise ConfigError(f"{where}: {writer.uncertainty} uncertainty channels; the map has 2")


class _StreamRun:
    """One streamed prediction: the tile states, the strips, their accumulator windows and the two helper
    threads."""

    def __init__(self, owner: StreamPredictor, source: Any, writer: Any, shape: tuple[int, ...], name: str,
                 normalize: Callable, level: int, skip: Callable | None) -> None:
        pred = self.pred = owner.predictor
        self.owner, self.shape, self.name, self.writer = owner, shape, name, writer
        plan = self.plan = pred.plan(shape)
        self.positions = list(plan.positions())
        self.per_band = math.prod(len(a) for a in plan.starts[1:])
        self.entropy = bool(writer.uncertainty)  # one more accumulator channel: the mutual information
        self.channels = pred.out_channels + int(self.entropy)
        # per window column: the accumulator's rows and the input bands in flight (one computing, the
        # prefetch queue's and the one being read)
        column = 4 * (self.channels * plan.tile_out[0] + 4 * pred.engine.in_channels * plan.tile_in[0])
        strips = make_strips(plan, shape, writer.chunks, owner.strip, column,
                             owner.window_bytes)
        self.done = [done_rows(writer, shape[0], s.own) for s in strips]
        self.states = _tile_states(plan, shape, strips, self.done, skip)
        n, bs = len(self.positions), pred.batch_size
        self.tail = n - n % bs  # tiles from here on ran as one smaller batch in memory: they still do
        self.work = []
        for strip, state in zip(strips, self.states, strict=True):
            needed = [j for j in strip.tiles if state[j] == RUN]
            self.work.append((strip, sorted({j // self.per_band for j in needed}), needed))
        self.reader = BandReader(source, level, normalize, plan, shape, [(s, b) for s, b, _ in self.work],
                                 name, pred.engine.in_channels)
        self.weights = pred.weights(plan)
        self.background = self.weights.cpu() if self.weights is not None else 1.0
        self.sums0, self.inner = weight_sums(plan, pred.sigma_scale)
        self.bands: dict[tuple[int, int], torch.Tensor] = {}  # (strip, band) -> its input rows
        cuda = pred.engine.device.type == "cuda"
        self.in_buf = torch.empty((bs, pred.engine.in_channels, *plan.tile_in), pin_memory=cuda)
        self.counts = {"computed": 0, "batches": 0, "done": 0, "written": 0}

    def execute(self, progress: Callable | None) -> StreamResult:
        prefetch = Pipe.reading(iter(self.reader))
        out = Pipe.writing(self.writer)
        ok = False
        try:
            total = sum(len(needed) for _, _, needed in self.work)
            for si, (strip, _, needed) in enumerate(self.work):
                sink = BlockSink(self.writer, self.shape, strip, self.done[si], out)
                _StripRun(self, si, strip, needed, sink).run(prefetch, progress, total)
                width = math.prod(b - a for a, b in strip.own)
                self.counts["written"] += sink.written * width
            ok = True
        finally:
            prefetch.close(drain=True)
            try:
                out.close(drain=False, raise_error=ok)
            finally:
                self.writer.flush()  # an interrupted run keeps what it wrote for --resume
        union = np.stack(self.states).min(axis=0)  # a tile run in any strip counts as run
        c = self.counts
        return StreamResult(len(union), int((union == RUN).sum()),
                            int((union == SKIP).sum()), int((union == DONE).sum()), c["computed"],
                            c["batches"], self.reader.bytes_read,
                            c["written"] // max(1, math.prod(self.shape[1:])))

    def compute(self, tiles: list[int], size: int, prefetch: Pipe, si: int) -> torch.Tensor:
        """The weighted probabilities of ``tiles`` on the host, run as one batch of ``size`` (the size the
        in-memory path ran them in: outputs do not depend on the other tiles of a batch, only on its
        size); the extra slots repeat the first tile."""
        pred, plan, strip = self.pred, self.plan, self.work[si][0]
        per_band = self.per_band
        first, last = tiles[0] // per_band, tiles[-1] // per_band
        while (si, last) not in self.bands:
            s, k, band = prefetch.get()
            self.bands[(s, k)] = band
        for key in [key for key in self.bands if key < (si, first)]:
            del self.bands[key]
        held = sum(b.shape[1] for b in self.bands.values())
        self.owner.max_input_rows = max(self.owner.max_input_rows, held)
        xb = self.in_buf[:size]
        for i in range(size):
            j = tiles[i] if i < len(tiles) else tiles[0]
            p = self.positions[j]
            at = (0, *(a - o for a, o in zip(p[1:], strip.origin, strict=True)))
            xb[i].copy_(self.bands[(si, j // per_band)][box(at, plan.tile_in)])
        with torch.inference_mode():
            probs = pred.run_batch(xb, plan, self.weights, self.entropy).to("cpu")
        self.counts["computed"] += size
        self.counts["batches"] += 1
        return probs


class _StripRun:
    """The tiles of one strip in plan order into its accumulator window ``(classes, tile_out[0],
    *strip.extent)``; each band's finished rows (its own columns) go to the sink."""

    def __init__(self, owner: _StreamRun, si: int, strip: Strip, needed: list[int], sink: BlockSink) -> None:
        self.owner, self.si, self.strip, self.sink = owner, si, strip, sink
        plan, bs = owner.plan, owner.pred.batch_size
        self.plan = plan
        body = [j for j in needed if j < owner.tail]
        groups = [(body[i : i + bs], bs) for i in range(0, len(body), bs)]
        rest = [j for j in needed if j >= owner.tail]
        if rest:
            groups.append((rest, len(self.owner.positions) - owner.tail))
        self.groups = groups
        self.slot = {j: (g, i) for g, (tiles, _) in enumerate(groups) for i, j in enumerate(tiles)}
        size = (owner.channels, plan.tile_out[0], *strip.extent)
        self.acc = torch.zeros(size, dtype=torch.float32)
        owner.owner.max_window = max(owner.owner.max_window, self.acc.numel())

    def run(self, prefetch: Pipe, progress: Callable | None, total: int) -> None:
        owner, plan, strip = self.owner, self.plan, self.strip
        state = owner.states[self.si]
        current: tuple[int, torch.Tensor] | None = None
        for k in range(len(plan.starts[0])):
            for j in strip.band_tiles(k):
                if state[j] == DONE:
                    continue
                p = owner.positions[j]
                view = self.acc[(slice(None), slice(None), *(
                    slice(a - o, a - o + t) for a, o, t in zip(p[1:], strip.origin, plan.tile_out[1:],
                                                               strict=True)))]
                if state[j] == SKIP:  # no tissue: a certain background prediction
                    view[0].add_(owner.background)
                    continue
                g, i = self.slot[j]
                if current is None or current[0] != g:
                    tiles, size = self.groups[g]
                    current = (g, owner.compute(tiles, size, prefetch, self.si))
                    if progress is not None:
                        progress(owner.counts["done"] + len(tiles), total, owner.reader.bytes_read)
                view.add_(current[1][i])
                owner.counts["done"] += 1
            self._finish_band(k)

    def _finish_band(self, k: int) -> None:
        """Rows ``[start_k, start_k+1)`` are final: labels (and probabilities) to the sink, then shift."""
        starts, shape = self.plan.starts[0], self.owner.shape
        lo = starts[k]
        hi = starts[k + 1] if k + 1 < len(starts) else self.plan.domain[0]
        top = min(hi, shape[0])
        if lo < top:
            labels = probs = maps = None
            if self.sink.wanted(lo, top):
                classes = self.owner.pred.out_channels
                part = self.acc[(slice(None), slice(0, top - lo), *self.strip.own_slices())]
                labels = self.owner.pred.argmax(part[:classes], tuple(part.shape[1:]))
                if self.sink.probabilities or self.sink.uncertainty:
                    mean = self._probabilities(part, lo)
                    probs = mean[:classes] if self.sink.probabilities else None
                    maps = uncertainty_map(mean[:classes], mean[classes]) if self.sink.uncertainty else None
            self.sink.push(lo, top, labels, probs, maps)
        self._shift(hi - lo)

    def _probabilities(self, part: torch.Tensor, lo: int) -> np.ndarray:
        if self.plan.num_tiles > 1:
            inner = self.owner.inner[tuple(slice(a, b) for a, b in self.strip.own)]
            rows = self.owner.sums0[lo : lo + part.shape[1]].reshape(-1, *([1] * inner.ndim))
            part = part / (rows * inner)
        return part.numpy().copy()

    def _shift(self, by: int) -> None:
        """Drop the first ``by`` rows of the window (copied forward in disjoint steps: no temporary)."""
        rows = self.acc.shape[1]
        for i in range(0, rows - by, by):
            n = min(by, rows - by - i)
            self.acc[:, i : i + n].copy_(self.acc[:, i + by : i + by + n])
        self.acc[:, max(0, rows - by) :].zero_()


def _tile_states(plan: TilePlan, shape: tuple[int, ...], strips: list[Strip], done: list[np.ndarray],
                 skip: Callable | None) -> list[np.ndarray]:
    """Per strip, the state of every plan tile: DONE where the strip's rows it covers are written, SKIP
    where ``skip`` says it has no tissue (the same in every strip), RUN otherwise."""
    positions = list(plan.positions())
    skipped = np.zeros(plan.num_tiles, dtype=bool)
    if skip is not None:
        for j, p in enumerate(positions):
            region = tuple(slice(a, min(a + t, s)) for a, t, s in zip(p, plan.tile_out, shape, strict=True))
            skipped[j] = bool(skip(region))
    out = []
    for strip, rows in zip(strips, done, strict=True):
        states = np.full(plan.num_tiles, DONE, dtype=np.int8)  # tiles outside the strip: nothing to do
        for j in strip.tiles:
            a = positions[j][0]
            states[j] = DONE if rows[a : min(a + plan.tile_out[0], shape[0])].all() else \
                SKIP if skipped[j] else RUN
        out.append(states)
    return out
