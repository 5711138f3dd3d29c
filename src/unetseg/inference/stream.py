"""Streaming sliding-window prediction in flat memory, for slides and volumes of any size.

:class:`StreamPredictor` runs the tiles of an in-memory :class:`~unetseg.inference.predictor.Predictor`
(its plan, batches, Gaussian weights, TTA and engine) over a lazily read image and hands finished rows to
a writer (:class:`~unetseg.data.ngff.LabelZarrWriter`). Labels equal ``Predictor.predict`` of the same
normalised image bit for bit. Why it is exact, and flat:

* **Bands.** Tiles with the same start on the first spatial axis form a *band*. The plan's tile order
  visits the bands in order, and every pixel receives its tile contributions in the in-memory order (float
  addition is not associative). The batches are the in-memory batches (the positions chunked by
  ``batch_size``): CPU kernels round a batch of one differently from a larger batch (~1e-5), so tiles are
  never re-batched; a batch runs when any of its tiles is needed, the outputs of the others are dropped.
* **Accumulator.** One float32 window ``(classes, tile_out[0], *domain[1:])``: the rows of the current
  band (``max_buffer_rows``). When band k's last tile is added, rows ``[start_k, start_k+1)`` are final (no
  later tile touches them): labels are the first-maximum argmax of the undivided sums (``_argmax``, as
  ``predict``); probabilities, when the writer stores them, are divided by the outer product of the
  per-axis weight sums (as ``_normalise``). The window then shifts by ``start_k+1 - start_k``. Peak memory:
  the window, the input bands of the batch in flight plus at most three read ahead (``tile_in[0]`` rows
  each), one chunk row of finished labels: O(tile extent x image width), independent of the height.
* **Input.** A prefetch thread reads each band's rows of the mirror-extended image (numpy ``reflect`` at
  the true image borders only, as ``Predictor._mirror``, via the index map ``np.pad(arange)`` on the first
  axis), reusing the rows shared with the previous band, and normalises them with ``normalize``.
* **Output.** Finished rows are buffered until a whole chunk row of the writer (or the image end) is
  complete, then a writer thread writes it (LabelZarrWriter accepts whole chunks only).
* **Threads.** Bounded queues (2 items); an exception in a thread is re-raised in the caller as the
  original exception; both threads are always joined.

Normalisation is per region, so it must use fixed, whole-image statistics:
:func:`unetseg.inference.regions.stream_normalizer` computes them in a first streaming pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetseg.errors import ConfigError, DataError
from unetseg.inference.pipes import Pipe
from unetseg.inference.predictor import Predictor
from unetseg.inference.tiling import Plan, axis_weight_sum, box, gaussian_1d
from unetseg.inference.tta import predict_probs

Region = tuple[slice, ...]
RUN, SKIP, DONE = 0, 1, 2  # tile states: computed; background (no tissue); rows already written (resume)


@dataclass
class StreamResult:
    """What one :meth:`StreamPredictor.predict_to` did (tile counts are of the plan's tiles)."""

    tiles: int  # tiles in the plan
    run: int  # tiles whose prediction was used
    skipped: int  # tiles without tissue: background
    resumed: int  # tiles lying in rows the writer had already completed: not computed
    computed: int  # tiles through the engine (run + those sharing a batch with them)
    batches: int  # engine batches (each is 2**dims forward passes with TTA)
    bytes_read: int  # float32 bytes decoded from the source
    rows_written: int  # image rows handed to the writer


class StreamPredictor:
    """Sliding-window prediction from a lazy source into a writer, in memory bounded by one tile band.

    ``max_buffer_rows`` / ``max_input_rows``: the largest accumulator window and the most input rows held
    by the compute loop in the last call (for tests and capacity planning)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.max_buffer_rows = 0
        self.max_input_rows = 0

    def predict_to(self, source: Any, writer: Any, *, normalize: Callable[[np.ndarray], np.ndarray],
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

        Resume: rows in ``writer.completed_rows()`` are neither written nor computed: tiles lying entirely in
        them are not run; tiles touching an incomplete row are. The writer is not finished here.
        """
        shape = tuple(int(s) for s in source.shape(level))
        name = str(getattr(source, "path", "image"))
        self._check(source, shape, writer, name)
        run = _Pass(self, source, writer, shape, name, normalize, level, skip)
        self.max_buffer_rows, self.max_input_rows = run.acc.shape[1], 0
        return run.execute(progress)

    def _check(self, source: Any, shape: tuple[int, ...], writer: Any, name: str) -> None:
        engine = self.predictor.engine
        if len(shape) != engine.spatial_dims or min(shape) < 1:
            raise DataError(f"{name}: image of shape {shape}; the model is {engine.spatial_dims}D")
        channels = getattr(source, "channels", engine.in_channels)
        if channels != engine.in_channels:
            raise DataError(f"{name}: {channels} channels, the model expects {engine.in_channels}")
        where = getattr(writer, "path", "writer")
        if tuple(getattr(writer, "shape", shape)) != shape:
            raise ConfigError(f"{where}: the writer is {tuple(writer.shape)}, the image {shape}")
        probs = int(getattr(writer, "probabilities", 0) or 0)
        if probs not in (0, self.predictor.out_channels):
            raise ConfigError(f"{where}: {probs} probability channels; the model gives "
                              f"{self.predictor.out_channels}")


class _Pass:
    """One streamed prediction: the tile states, the accumulator window and the two helper threads."""

    def __init__(self, owner: StreamPredictor, source: Any, writer: Any, shape: tuple[int, ...], name: str,
                 normalize: Callable, level: int, skip: Callable | None) -> None:
        pred = self.pred = owner.predictor
        self.owner, self.shape, self.name = owner, shape, name
        plan = self.plan = pred.plan(shape)
        self.positions = list(plan.positions())
        self.per_band = math.prod(len(s) for s in plan.starts[1:])
        done = _done_rows(writer, shape[0])
        self.states = _tile_states(plan, shape, done, skip)
        n, bs = len(self.positions), pred.batch_size
        self.batches = [range(i, min(i + bs, n)) for i in range(0, n, bs)]
        self.run_batch = [bool((self.states[b.start:b.stop] == RUN).any()) for b in self.batches]
        bands = sorted({j // self.per_band for b, r in zip(self.batches, self.run_batch, strict=True) if r
                        for j in b})
        self.reader = _BandReader(source, level, normalize, plan, shape, bands, name, pred.engine.in_channels)
        self.writer, self.sink = writer, _RowSink(writer, shape, done)
        self.acc = torch.zeros((pred.out_channels, plan.tile_out[0], *plan.domain[1:]), dtype=torch.float32)
        self.weights = pred._weights(plan)
        self.background = self.weights.cpu() if self.weights is not None else 1.0
        self.sums0, self.inner = _weight_sums(plan, pred.sigma_scale)
        self.bands: dict[int, torch.Tensor] = {}
        cuda = pred.engine.device.type == "cuda"
        self.in_buf = torch.empty((bs, pred.engine.in_channels, *plan.tile_in), pin_memory=cuda)
        self.counts = {"computed": 0, "batches": 0, "done": 0}

    def execute(self, progress: Callable | None) -> StreamResult:
        prefetch = Pipe.reading(iter(self.reader))
        out = self.sink.out = Pipe.writing(self.writer)
        ok = False
        try:
            self._loop(prefetch, progress)
            ok = True
        finally:
            prefetch.close(drain=True)
            out.close(drain=False, raise_error=ok)
        s, c = self.states, self.counts
        return StreamResult(len(s), int((s == RUN).sum()), int((s == SKIP).sum()), int((s == DONE).sum()),
                            c["computed"], c["batches"], self.reader.bytes_read, self.sink.written)

    def _loop(self, prefetch: Pipe, progress: Callable | None) -> None:
        total = int((self.states == RUN).sum())
        for batch, runs in zip(self.batches, self.run_batch, strict=True):
            tiles = self._compute(batch, prefetch) if runs else None
            for i, j in enumerate(batch):
                state = self.states[j]
                if state != DONE:
                    view = self.acc[(slice(None), slice(None), *(
                        slice(a, a + t) for a, t in zip(self.positions[j][1:], self.plan.tile_out[1:],
                                                        strict=True)))]
                    if state == RUN:
                        view.add_(tiles[i])
                        self.counts["done"] += 1
                    else:  # no tissue: a certain background prediction
                        view[0].add_(self.background)
                if (j + 1) % self.per_band == 0:
                    self._finish_band(j // self.per_band)
            if runs and progress is not None:
                progress(self.counts["done"], total, self.reader.bytes_read)

    def _compute(self, batch: range, prefetch: Pipe) -> torch.Tensor:
        """The weighted probabilities of one batch on the host (as ``Predictor._accumulate``)."""
        pred, plan = self.pred, self.plan
        first, last = batch.start // self.per_band, (batch.stop - 1) // self.per_band
        while last not in self.bands:
            k, band = prefetch.get()
            self.bands[k] = band
        for k in [k for k in self.bands if k < first]:
            del self.bands[k]
        held = sum(b.shape[1] for b in self.bands.values())
        self.owner.max_input_rows = max(self.owner.max_input_rows, held)
        xb = self.in_buf[: len(batch)]
        for i, j in enumerate(batch):
            p = self.positions[j]
            xb[i].copy_(self.bands[j // self.per_band][box((0, *p[1:]), plan.tile_in)])
        dev = pred.engine.device
        with torch.inference_mode():
            probs = predict_probs(pred.engine, xb.to(dev, non_blocking=True), pred.spatial_dims, pred.tta)
            if tuple(probs.shape[2:]) != plan.tile_out:
                raise ConfigError(f"the model returned tiles of {tuple(probs.shape[2:])} for input "
                                  f"{plan.tile_in}; expected {plan.tile_out}")
            if self.weights is not None:
                probs.mul_(self.weights)
            probs = probs.to("cpu")
        self.counts["computed"] += len(batch)
        self.counts["batches"] += 1
        return probs

    def _finish_band(self, k: int) -> None:
        """Rows ``[start_k, start_k+1)`` are final: labels (and probabilities) to the sink, then shift."""
        starts = self.plan.starts[0]
        lo = starts[k]
        hi = starts[k + 1] if k + 1 < len(starts) else self.plan.domain[0]
        top = min(hi, self.shape[0])
        if lo < top:
            labels = probs = None
            if self.sink.wanted(lo, top):
                part = self.acc[:, : top - lo]
                labels = self.pred._argmax(part, (top - lo, *self.shape[1:]))
                probs = self._probabilities(part, lo) if self.sink.probabilities else None
            self.sink.push(lo, top, labels, probs)
        self._shift(hi - lo)

    def _probabilities(self, part: torch.Tensor, lo: int) -> np.ndarray:
        if self.plan.num_tiles > 1:
            rows = self.sums0[lo : lo + part.shape[1]].reshape(-1, *([1] * self.inner.ndim))
            part = part / (rows * self.inner)
        return part[box((0,) * (len(self.shape)), (part.shape[1], *self.shape[1:]))].numpy().copy()

    def _shift(self, by: int) -> None:
        """Drop the first ``by`` rows of the window (copied forward in disjoint steps: no temporary)."""
        rows = self.acc.shape[1]
        for i in range(0, rows - by, by):
            n = min(by, rows - by - i)
            self.acc[:, i : i + n].copy_(self.acc[:, i + by : i + by + n])
        self.acc[:, max(0, rows - by) :].zero_()


def _weight_sums(plan: Plan, sigma_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed tile weights: per-row sums of the first axis and the outer product of the others."""
    sums = []
    for d, t, s in zip(plan.domain, plan.tile_out, plan.starts, strict=True):
        w = gaussian_1d(t, sigma_scale) if plan.weighted else np.ones(t, np.float32)
        sums.append(axis_weight_sum(d, t, list(s), w))
    rest = sums[1:]
    inner = rest[0] if rest else torch.ones(())
    for extra in rest[1:]:
        inner = torch.outer(inner.reshape(-1), extra).reshape(*inner.shape, *extra.shape)
    return sums[0], inner


def _done_rows(writer: Any, height: int) -> np.ndarray:
    """Image rows the writer has completely written already (resume), as a boolean per row."""
    done = np.zeros(height, dtype=bool)
    completed = getattr(writer, "completed_rows", None)
    for row in completed() if completed is not None else []:
        done[writer.row_region(row)[0]] = True
    return done


def _tile_states(plan: Plan, shape: tuple[int, ...], done: np.ndarray, skip: Callable | None) -> np.ndarray:
    states = np.full(plan.num_tiles, RUN, dtype=np.int8)
    for j, p in enumerate(plan.positions()):
        region = tuple(slice(a, min(a + t, s)) for a, t, s in zip(p, plan.tile_out, shape, strict=True))
        if done[region[0]].all():
            states[j] = DONE
        elif skip is not None and skip(region):
            states[j] = SKIP
    return states


class _BandReader:
    """The input rows of each band, ``tile_in[0]`` rows of the mirror-extended, normalised image."""

    def __init__(self, source: Any, level: int, normalize: Callable, plan: Plan, shape: tuple[int, ...],
                 bands: list[int], name: str, channels: int) -> None:
        self.source, self.level, self.normalize, self.plan = source, level, normalize, plan
        self.shape, self.bands, self.name, self.channels = shape, bands, name, channels
        m0, d0 = plan.margin[0], plan.domain[0]
        self.index = np.pad(np.arange(shape[0]), (m0, m0 + d0 - shape[0]), mode="reflect")
        self.pads = [(m, m + d - s)
                     for m, d, s in zip(plan.margin[1:], plan.domain[1:], shape[1:], strict=True)]
        self.bytes_read = 0

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        prev: tuple[int, int, torch.Tensor] | None = None
        for k in self.bands:
            a = self.plan.starts[0][k]
            b = a + self.plan.tile_in[0]
            if prev is not None and prev[0] <= a < prev[1]:  # the rows shared with the previous band
                kept, first = prev[2][:, a - prev[0] :], prev[1]
                band = torch.cat([kept, self._rows(first, b)], dim=1) if first < b else kept[:, : b - a]
            else:
                band = self._rows(a, b)
            prev = (a, b, band)
            yield k, band

    def _rows(self, a: int, b: int) -> torch.Tensor:
        rows = self.index[a:b]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        region = (slice(lo, hi), *(slice(0, s) for s in self.shape[1:]))
        x = np.asarray(self.source.read(region, self.level), dtype=np.float32)
        if x.shape != (self.channels, hi - lo, *self.shape[1:]):
            raise DataError(f"{self.name}: region {lo}:{hi} read as shape {x.shape}")
        self.bytes_read += x.nbytes
        x = np.asarray(self.normalize(x), dtype=np.float32)
        if hi - lo != len(rows) or rows[0] != lo:  # reflected rows at an image border
            x = x[:, rows - lo]
        if any(a or b for a, b in self.pads):
            x = np.pad(x, [(0, 0), (0, 0), *self.pads], mode="reflect")
        return torch.from_numpy(np.ascontiguousarray(x))


class _RowSink:
    """Finished rows -> whole chunk rows -> the writer thread; chunk rows complete already are dropped."""

    def __init__(self, writer: Any, shape: tuple[int, ...], done: np.ndarray) -> None:
        chunks = getattr(writer, "chunks", None)  # None: a writer taking any block of rows
        self.step = int(chunks[0]) if chunks else None
        self.shape, self.done = shape, done
        self.probabilities = int(getattr(writer, "probabilities", 0) or 0)
        self.pieces: list[tuple[int, int, np.ndarray | None, np.ndarray | None]] = []
        self.start = self.written = 0
        self.out: Pipe | None = None

    def wanted(self, lo: int, hi: int) -> bool:
        return not bool(self.done[lo:hi].all())

    def push(self, lo: int, hi: int, labels: np.ndarray | None, probs: np.ndarray | None) -> None:
        self.pieces.append((lo, hi, labels, probs))
        while self.pieces:
            end = min(self.start + self.step, self.shape[0]) if self.step else hi
            if hi < end:
                break
            self._emit(end)

    def _emit(self, end: int) -> None:
        parts, rest = [], []
        for lo, hi, lab, pr in self.pieces:
            if lo >= end:
                rest.append((lo, hi, lab, pr))
                continue
            cut = min(hi, end) - lo
            parts.append((lab, pr, cut))
            if hi > end:
                rest.append((end, hi, None if lab is None else lab[cut:],
                             None if pr is None else pr[:, cut:]))
        self.pieces = rest
        if not self.done[self.start]:
            labels = np.concatenate([lab[:n] for lab, _, n in parts])
            probs = np.concatenate([pr[:, :n] for _, pr, n in parts], axis=1) if self.probabilities else None
            assert self.out is not None
            self.out.put(((self.start, *(0 for _ in self.shape[1:])), labels, probs))
            self.written += end - self.start
        self.start = end
