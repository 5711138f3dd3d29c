"""Streamed prediction (``StreamPredictor``) against the in-memory ``Predictor``: identical labels in 2D, 3D
and for the valid-padding U-Net, bounded band buffers, thread errors, tissue skipping, resume."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from unetseg.data.normalize import Normalizer
from unetseg.errors import DataError
from unetseg.inference import Engine, Predictor, load_engine
from unetseg.inference.stream.predictor import StreamPredictor
from unetseg.inference.stream.statistics import ChannelStats, image_statistics, stream_normalizer, tissue_skip
from unetseg.io.lazy import open_lazy
from unetseg.io.ngff import LabelZarrWriter

from .helpers import make_checkpoint, tiny_config


class Counting(Engine):
    """An engine that counts its forward passes (one per batch without TTA)."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.calls = inner, 0
        for name in ("device", "spatial_dims", "in_channels", "num_classes", "divisors", "_sizes"):
            setattr(self, name, getattr(inner, name))

    def __call__(self, x):
        self.calls += 1
        return self.inner(x)


class ArraySource:
    """A numpy image behind the lazy-source interface."""

    path = "array"

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.channels = image, image.shape[0]

    def shape(self, level: int = 0) -> tuple[int, ...]:
        return self.image.shape[1:]

    def read(self, region, level: int = 0) -> np.ndarray:
        return self.image[(slice(None), *region)].astype(np.float32)


class MemoryWriter:
    """Collects written blocks; checks they are whole chunk rows."""

    path, probabilities, uncertainty = "memory", 0, 0

    def __init__(self, shape: tuple[int, ...], rows: int) -> None:
        self.shape, self.chunks = shape, (rows, *shape[1:])
        self.labels = np.full(shape, 255, np.uint8)
        self.starts: list[int] = []

    def done_rows(self, columns) -> np.ndarray:
        return np.zeros(self.shape[0], dtype=bool)  # nothing held before: no resume

    def flush(self) -> None:
        pass

    def write(self, start, labels, probabilities=None) -> None:
        assert start[0] % self.chunks[0] == 0 and labels.shape[1:] == self.shape[1:]
        assert labels.shape[0] == self.chunks[0] or start[0] + labels.shape[0] == self.shape[0]
        self.starts.append(start[0])
        self.labels[start[0] : start[0] + labels.shape[0]] = labels


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Engine]:
    root = tmp_path_factory.mktemp("stream-ckpt")
    kinds = {"2d": (2, {}), "valid": (2, {"padding": "valid"}), "3d": (3, {})}
    return {k: load_engine(make_checkpoint(root / k, "unet", d, **o), "cpu", "fp32")[0]
            for k, (d, o) in kinds.items()}


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 80, shape[-1], dtype=np.float32)
    return (rng.random((1, *shape), dtype=np.float32) * 200 + ramp).astype(np.float32)


def _tiff(path: Path, image: np.ndarray) -> Path:
    tifffile.imwrite(path, image[0], tile=(32, 32) if image.ndim == 3 else None)
    return path


def _stats(image: np.ndarray) -> ChannelStats:
    """The in-memory z-score statistics, as fixed statistics (bit-identical to Normalizer)."""
    return ChannelStats(tuple(float(c.mean(dtype=np.float64)) for c in image),
                        tuple(float(c.std(dtype=np.float64)) for c in image))


@pytest.mark.parametrize(("kind", "shape", "tile", "blend", "chunks"), [
    ("2d", (300, 420), (64, 64), "gaussian", (96, 128)),
    ("2d", (301, 419), (64, 48), "constant", (64, 512)),
    ("valid", (300, 420), (64, 64), "gaussian", (100, 200)),
    ("3d", (40, 72, 72), (16, 32, 32), "gaussian", (8, 32, 32)),
    ("3d", (40, 72, 72), (16, 32, 32), "constant", (16, 72, 72)),
])
def test_streamed_labels_equal_in_memory(engines, tmp_path, kind, shape, tile, blend, chunks):
    image = _image(shape)
    norm = _stats(image)
    pred = Predictor(engines[kind], tile=tile, overlap=0.25, blend=blend, batch_size=4)
    labels, probs = pred.predict(norm(image)), pred.predict_proba(norm(image))
    assert len(pred.plan(shape).starts[0]) >= 3  # several bands
    source = open_lazy(_tiff(tmp_path / "image.tif", image))
    writer = LabelZarrWriter(tmp_path / "out.ome.zarr", shape, chunks=chunks, probabilities=2)
    result = StreamPredictor(pred).predict_to(source, writer, normalize=norm)
    out = writer.finish()
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], labels)
    stored = zarr.open_array(str(out / "probabilities" / "0"), mode="r")[...]
    np.testing.assert_array_equal(stored, np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8))
    assert result.run == result.tiles <= result.computed and result.rows_written == shape[0]
    assert result.bytes_read >= image.nbytes


def test_band_buffers_do_not_grow_with_the_image_height(engines):
    pred = Predictor(engines["2d"], tile=(32, 32), overlap=0.25, batch_size=4)
    sizes = []
    for height in (160, 960):
        image = _image((height, 96), seed=height)
        writer, stream = MemoryWriter((height, 96), rows=40), StreamPredictor(pred)
        stream.predict_to(ArraySource(image), writer, normalize=lambda x: x)
        np.testing.assert_array_equal(writer.labels, pred.predict(image))
        sizes.append((stream.max_buffer_rows, stream.max_input_rows))
    # one tile extent of accumulator rows; the input rows of the bands one batch spans
    assert sizes[0] == sizes[1] and sizes[0][0] == 32 and sizes[0][1] <= 2 * 32


def test_normalisation_statistics_match_the_in_memory_normaliser(tmp_path):
    image = _image((257, 130), seed=3) * np.float32(3.0)
    source = open_lazy(_tiff(tmp_path / "image.tif", image))
    streamed = image_statistics(source, block=5000)  # many blocks
    exact = _stats(image)
    np.testing.assert_allclose(streamed.mean, exact.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.std, exact.std, rtol=1e-12)
    # fixed statistics reproduce Normalizer's arithmetic exactly
    np.testing.assert_array_equal(exact(image), Normalizer("zscore")(image))
    lo, hi = np.percentile(image[0], (0.5, 99.5))
    clipped = np.clip(image[0], lo, hi)
    fixed = ChannelStats((float(clipped.mean(dtype=np.float64)),), (float(clipped.std(dtype=np.float64)),),
                         ((float(lo), float(hi)),))
    np.testing.assert_array_equal(fixed(image), Normalizer("percentile")(image))
    sampled = image_statistics(source, "percentile", sample=10000)  # every 2nd pixel per axis
    tol = 0.01 * (hi - lo)
    assert abs(sampled.clip[0][0] - lo) < tol and abs(sampled.clip[0][1] - hi) < tol
    assert abs(sampled.mean[0] - fixed.mean[0]) < tol and abs(sampled.std[0] - fixed.std[0]) < tol
    cfg = tiny_config().data
    assert isinstance(stream_normalizer(source, cfg), ChannelStats)
    cfg.normalization = "none"
    assert isinstance(stream_normalizer(source, cfg), Normalizer)


def test_resume_after_an_interruption_recomputes_only_incomplete_rows(engines, tmp_path):
    shape = (300, 420)
    image = _image(shape, seed=5)
    norm, source = _stats(image), ArraySource(image)
    clean_engine = Counting(engines["2d"])
    pred = Predictor(clean_engine, tile=(64, 64), overlap=0.25, batch_size=4)
    clean = LabelZarrWriter(tmp_path / "clean.ome.zarr", shape, chunks=(64, 256))
    full = StreamPredictor(pred).predict_to(source, clean, normalize=norm)
    expected = zarr.open_array(str(clean.finish() / "0"), mode="r")[...]
    assert clean_engine.calls == full.batches

    def stop(done: int, total: int, nbytes: int) -> None:
        if done >= total // 2:
            raise KeyboardInterrupt  # as from Ctrl-C in the middle of the slide

    path = tmp_path / "slide.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        StreamPredictor(pred).predict_to(source, LabelZarrWriter(path, shape, chunks=(64, 256)),
                                         normalize=norm, progress=stop)
    writer = LabelZarrWriter(path, shape, chunks=(64, 256), resume=True)
    done_rows = writer.completed_rows()
    assert 0 < len(done_rows) < writer.n_rows
    engine = Counting(engines["2d"])
    resumed = Predictor(engine, tile=(64, 64), overlap=0.25, batch_size=4)
    result = StreamPredictor(resumed).predict_to(source, writer, normalize=norm)
    np.testing.assert_array_equal(zarr.open_array(str(writer.finish() / "0"), mode="r")[...], expected)
    top = 64 * (max(done_rows) + 1)
    assert done_rows == list(range(len(done_rows)))  # rows complete from the top
    in_done = sum(1 for p in pred.plan(shape).positions() if p[0] + 64 <= top)
    assert result.resumed == in_done > 0 and result.run == full.tiles - in_done
    assert engine.calls == result.batches < full.batches
    assert result.rows_written == shape[0] - top


def test_a_thread_error_reaches_the_caller_and_threads_are_joined(engines):
    image = _image((200, 96))
    pred = Predictor(engines["2d"], tile=(32, 32), overlap=0.25, batch_size=4)
    failure = DataError("slide.svs: cannot decode region [64:96, 0:96] (corrupt tile)")

    class BadSource(ArraySource):
        def read(self, region, level=0):
            if region[0].start >= 64:
                raise failure
            return super().read(region, level)

    class BadWriter(MemoryWriter):
        def write(self, start, labels, probabilities=None):
            if start[0] >= 80:
                raise failure
            super().write(start, labels, probabilities)

    for source, writer in ((BadSource(image), MemoryWriter((200, 96), 40)),
                           (ArraySource(image), BadWriter((200, 96), 40))):
        with pytest.raises(DataError) as info:
            StreamPredictor(pred).predict_to(source, writer, normalize=lambda x: x)
        assert info.value is failure
        assert not [t for t in threading.enumerate() if t.name.startswith("unetseg-")]


def test_tiles_without_tissue_are_background(engines, tmp_path):
    shape = (256, 320)
    rng = np.random.default_rng(7)
    image = np.full((1, *shape), 220.0, np.float32) + rng.normal(0, 2, (1, *shape)).astype(np.float32)
    image[:, 40:110, 30:120] = 60 + rng.normal(0, 10, (70, 90)).astype(np.float32)  # dark tissue on glass
    source = open_lazy(_tiff(tmp_path / "slide.tif", image))
    skip = tissue_skip(source)
    pred = Predictor(Counting(engines["2d"]), tile=(64, 64), overlap=0.25, batch_size=1)
    writer = LabelZarrWriter(tmp_path / "out.ome.zarr", shape, chunks=(64, 320), probabilities=2)
    norm = _stats(image)
    result = StreamPredictor(pred).predict_to(source, writer, normalize=norm, skip=skip)
    out = writer.finish()
    labels = zarr.open_array(str(out / "0"), mode="r")[...]
    probs = zarr.open_array(str(out / "probabilities" / "0"), mode="r")[...]
    assert 0 < result.run < result.tiles and result.skipped == result.tiles - result.run
    assert pred.engine.calls == result.computed == result.run  # batch size 1: only tissue tiles run
    plan = pred.plan(shape)
    covered = np.zeros(shape, bool)
    for p in plan.positions():
        if not skip(tuple(slice(a, a + 64) for a in p)):
            covered[p[0] : p[0] + 64, p[1] : p[1] + 64] = True
    assert covered[40:110, 30:120].all() and not covered.all()
    assert (labels[~covered] == 0).all() and (probs[0][~covered] == 255).all()
    # pixels no skipped tile touches get the ordinary prediction
    untouched = np.ones(shape, bool)
    for p in plan.positions():
        if skip(tuple(slice(a, a + 64) for a in p)):
            untouched[p[0] : p[0] + 64, p[1] : p[1] + 64] = False
    assert untouched.sum() > 64 * 64
    np.testing.assert_array_equal(labels[untouched], pred.predict(norm(image))[untouched])


def test_parts_of_one_store_give_the_single_process_labels(engines, tmp_path):
    shape = (300, 200)
    image = _image(shape, seed=5)
    norm = _stats(image)
    pred = Predictor(engines["2d"], tile=(64, 64), overlap=0.25, batch_size=4)
    want = pred.predict(norm(image))
    source = open_lazy(_tiff(tmp_path / "image.tif", image))
    path = tmp_path / "out.ome.zarr"
    writer = LabelZarrWriter(path, shape, chunks=(64, 64))  # 5 chunk rows
    writer.record_rows([0, 1])  # nothing on disk yet: not recorded
    assert writer.completed_rows() == []
    computed = 0
    for part in [(3, 5), (0, 1), (1, 3)]:  # any order, as workers finish
        piece = LabelZarrWriter(path, shape, chunks=(64, 64), part=part)
        result = StreamPredictor(pred).predict_to(source, piece, normalize=norm)
        assert piece.part_rows() == list(range(*part))
        assert result.rows_written == min(300, 64 * part[1]) - 64 * part[0]
        computed += result.run
        writer.record_rows(piece.part_rows())
        with pytest.raises(RuntimeError, match="cannot finish"):
            piece.finish()
    assert computed > pred.plan(shape).num_tiles  # tiles on a cut run on both sides
    out = writer.finish()
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], want)


def test_the_valid_unet_gives_the_same_prediction_for_any_tile_size(engines, tmp_path):
    """Overlap-tile with the unpadded U-Net: every output pixel sees the same input context whatever the
    tiling, so the probabilities agree to float rounding and the labels wherever they are not a tie."""
    shape = (150, 190)
    image = _image(shape, seed=9)
    x = _stats(image)(image)
    eng = engines["valid"]
    whole = Predictor(eng, tile=None).predict_proba(x)
    margin = np.abs(whole[1] - whole[0]) > 1e-4
    assert margin.mean() > 0.99
    for tile in [(44, 44), (60, 92), (100, 76)]:
        pred = Predictor(eng, tile=tile, overlap=0.25, batch_size=2)
        assert pred.plan(shape).num_tiles > 4
        np.testing.assert_allclose(pred.predict_proba(x), whole, atol=1e-5)
        writer = MemoryWriter(shape, rows=50)
        StreamPredictor(pred).predict_to(ArraySource(image), writer, normalize=_stats(image))
        np.testing.assert_array_equal(writer.labels[margin], whole.argmax(0)[margin])


@pytest.mark.parametrize(("kind", "shape", "tile", "chunks", "strip"), [
    ("2d", (160, 240), (32, 32), (40, 48), (48,)),
    ("valid", (150, 200), (48, 48), (50, 50), (50,)),
    ("3d", (24, 48, 64), (16, 16, 16), (8, 16, 16), (16, 32)),
])
def test_strips_keep_the_in_memory_labels_in_a_window_that_does_not_grow(engines, tmp_path, kind, shape,
                                                                         tile, chunks, strip):
    # batch 3: the plan's tile count is no multiple of it, so the last in-memory batch is a short one
    pred = Predictor(engines[kind], tile=tile, overlap=0.25, batch_size=3)
    windows = []
    for wide in (1, 2):
        size = (*shape[:-1], shape[-1] * wide)
        image = _image(size, seed=wide)
        norm = _stats(image)
        labels, probs = pred.predict(norm(image)), pred.predict_proba(norm(image))
        writer = LabelZarrWriter(tmp_path / f"out{wide}.ome.zarr", size, chunks=chunks, probabilities=2)
        stream = StreamPredictor(pred, strip=strip)
        result = stream.predict_to(ArraySource(image), writer, normalize=norm)
        out = writer.finish()
        np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], labels)
        stored = zarr.open_array(str(out / "probabilities" / "0"), mode="r")[...]
        np.testing.assert_array_equal(stored, np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8))
        assert result.run == result.tiles < result.computed  # tiles over strip edges run twice
        assert result.rows_written == size[0]
        out_tile = pred.plan(size).tile_out
        bound = 2 * out_tile[0] * int(np.prod([s + 2 * t for s, t in zip(strip, out_tile[1:], strict=True)]))
        windows.append((stream.max_window, bound))
    # twice as wide, the same bound on the accumulator: classes x tile rows x (strip + its edge tiles)
    assert windows[0][1] == windows[1][1] and all(w <= b for w, b in windows)


def test_resume_keeps_the_chunks_of_unfinished_strips(engines, tmp_path):
    shape, chunks = (128, 256), (32, 64)
    image = _image(shape, seed=7)
    norm, source = _stats(image), ArraySource(image)
    pred = Predictor(engines["2d"], tile=(32, 32), overlap=0.25, batch_size=4)
    clean = LabelZarrWriter(tmp_path / "clean.ome.zarr", shape, chunks=chunks)
    full = StreamPredictor(pred, strip=(64,)).predict_to(source, clean, normalize=norm)
    expected = zarr.open_array(str(clean.finish() / "0"), mode="r")[...]

    def stop(done: int, total: int, nbytes: int) -> None:
        if done >= total * 0.6:
            raise KeyboardInterrupt

    path = tmp_path / "slide.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        StreamPredictor(pred, strip=(64,)).predict_to(source, LabelZarrWriter(path, shape, chunks=chunks),
                                                      normalize=norm, progress=stop)
    writer = LabelZarrWriter(path, shape, chunks=chunks, resume=True)
    assert writer.completed_rows() == []  # strip by strip: no row is whole yet ...
    kept = writer.done_rows((slice(0, 128),))
    assert kept.all() and not writer.done_rows((slice(192, 256),)).any()  # ... but two strips are
    result = StreamPredictor(pred, strip=(64,)).predict_to(source, writer, normalize=norm)
    np.testing.assert_array_equal(zarr.open_array(str(writer.finish() / "0"), mode="r")[...], expected)
    assert 0 < result.computed < full.computed and result.resumed > 0


@pytest.mark.parametrize(("kind", "tile"), [("2d", (32, 32)), ("3d", (16, 16, 16))])
def test_strips_are_as_wide_as_the_memory_budget_allows(engines, tmp_path, kind, tile):
    """A slide whose whole width fits the budget is one strip (no tile runs twice); a wider one is cut
    into strips whose windows stay within it, and the labels do not change."""
    from unetseg.inference.stream.strips import MIN_STRIP_STEPS, make_strips

    pred = Predictor(engines[kind], tile=tile, overlap=0.25, batch_size=2)
    shape = (40, 240) if kind == "2d" else (20, 40, 112)
    plan = pred.plan(shape)
    column = 4 * (2 * plan.tile_out[0] + 4 * plan.tile_in[0])
    chunks = (16,) * len(shape)
    fits = int(column * np.prod([s + t for s, t in zip(shape[1:], plan.tile_out[1:], strict=True)]))
    assert len(make_strips(plan, shape, chunks, column_bytes=column, budget=fits)) == 1
    small = fits // 3
    strips = make_strips(plan, shape, chunks, column_bytes=column, budget=small)
    assert len(strips) > 1
    for s in strips:  # whole chunks, at least MIN_STRIP_STEPS tile steps (tile 32 or 16, overlap 1/4)
        for (a, b), n, t in zip(s.own, shape[1:], plan.tile_out[1:], strict=True):
            assert a % 16 == 0 and (b % 16 == 0 or b == n)
            assert b - a >= min(n - a, MIN_STRIP_STEPS * t * 3 // 4)
    image = _image(shape)
    norm = _stats(image)
    want = pred.predict(norm(image))
    for budget, n in ((fits, 1), (small, len(strips))):
        writer = LabelZarrWriter(tmp_path / f"b{budget}.ome.zarr", shape, chunks=chunks)
        result = StreamPredictor(pred, window_bytes=budget).predict_to(ArraySource(image), writer,
                                                                       normalize=norm)
        out = writer.finish()
        np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], want)
        assert (result.computed == result.tiles) == (n == 1)  # one strip: every tile runs once
