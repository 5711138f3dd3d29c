"""Instance models on whole slides and huge volumes, in flat memory: object ids stitched across bands.

1. **Probabilities.** The slide is streamed as for a semantic model (:mod:`unetseg.inference.stream.slides`),
   its class probabilities (background, interior, boundary; or background and the distance bins) stored
   as float16 in a hidden temporary store beside the output (``.<stem>.probabilities.zarr``); ``resume``
   continues it, and a completed one is reused. A volume at another spacing than the training's is
   predicted on the model's grid (:func:`~unetseg.inference.stream.slides.open_slide`) and its
   probabilities read
   back through :class:`~unetseg.data.regrid.RegriddedProbabilities` onto the volume's own grid.
2. **Objects.** Bands of :data:`BAND` rows (plus :data:`OVERLAP` rows shared with the next band) are read
   back, each segmented by the seeded watershed of the in-memory path, and stitched into global ids by
   :func:`~unetseg.postprocess.instances.stitch_band_sequence` (the seam lies mid-overlap, so objects up to
   about ``OVERLAP / 2`` rows tall are one object, never two, and ids are 1..N without duplicates).
3. **Outputs.** ``<stem>.ome.zarr`` (uint32 ids, NGFF label pyramid; or ``.ome.tif``) and
   ``<stem>_objects.csv`` (the in-memory table's columns, accumulated band by band).

Peak memory: one band of probabilities and its labels (``(BAND + OVERLAP) x width`` pixels), on top of
the streamed prediction's tile band.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.regrid import RegriddedProbabilities
from unetseg.fileio import write_text
from unetseg.inference.instances import instances_of
from unetseg.inference.stream.slides import SlideSetup, finish_slide, open_slide, predict_rows
from unetseg.io.lazy import open_lazy
from unetseg.io.ngff import LabelZarrWriter
from unetseg.postprocess.instances import stitch_band_sequence
from unetseg.postprocess.objects import ObjectAccumulator, table_to_csv_text

BAND = {2: 512, 3: 64}  # rows (slices) per band
OVERLAP = {2: 128, 3: 32}  # rows shared by consecutive bands: objects up to half of it stitch exactly


def objects_output(output: Path, stem: str) -> Path:
    return output.parent / f"{stem}_objects.csv"


def predict_slide_instances(path: Path, outputs: list[Path], job: Any, *, output_format: str = "ome-zarr",
                            level: int | None = None, skip_background: bool = False, resume: bool = False,
                            progress: Callable[[int, int, int], Any] | None = None) -> list[Path]:
    """Stream one big image through an instance model: ``outputs`` = [labels store or OME-TIFF, CSV]."""
    import zarr

    output, table_path = outputs[0], outputs[1]
    store = output.with_name(f".{output.name.split('.')[0]}.probabilities.zarr")
    setup = _probabilities(path, store, job, level, skip_background, resume, progress)
    store = Path(setup.writer["path"])  # the model-grid store when the volume was resampled
    probs: Any = zarr.open_array(str(store / "probabilities" / "0"), mode="r")
    grid = setup.final or setup.writer
    if setup.final is not None:  # back to the image's grid, band by band as the watershed reads it
        probs = RegriddedProbabilities(probs, setup.final["shape"])
    shape, pixel_size = grid["shape"], grid["pixel_size"]
    dims = len(shape)
    zarr_out = output if output_format != "ome-tiff" else output.with_name(f".{output.stem}.ome.zarr")
    ids = LabelZarrWriter(zarr_out, shape, "uint32", pixel_size=pixel_size)
    origin = (0,) * (dims - 1)
    with open_lazy(setup.path) as lazy:
        stats = ObjectAccumulator(dims, lazy.channels, pixel_size)
        for start, block in stitched_objects(probs, job.config, ids.chunks[0]):
            ids.write((start, *origin), block)
            region = (slice(start, start + len(block)), *(slice(0, s) for s in block.shape[1:]))
            stats.add(block, (start, *origin), lazy.read(region, setup.level))
    written = finish_slide(ids, output, output_format)
    written.append(write_text(table_path, table_to_csv_text(stats.table())))
    shutil.rmtree(store, ignore_errors=True)
    return written


def _probabilities(path: Path, store: Path, job: Any, level: int | None, skip_background: bool,
                   resume: bool, progress: Callable | None) -> SlideSetup:
    """Pass 1: the probabilities into ``store`` (kept from an earlier run that completed it, with resume)."""
    done = resume and (store / "probabilities" / "0").is_dir()
    extra = {"probabilities": job.predictor.out_channels, "prob_dtype": "float16", "levels": 1}
    setup, writer = open_slide(path, store, job, level=level, skip_background=skip_background,
                               resume=resume, store=extra, create=not done)
    if writer is not None:
        predict_rows(setup, job, writer, progress=progress)
        writer.finish()
    return setup


def stitched_objects(probs: Any, config: Any, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """Global object ids from ``(classes, *spatial)`` probabilities (an array read in bands), as
    ``(first row, block)`` of ``step`` rows each (the last may be shorter)."""
    dims = len(probs.shape) - 1
    return _chunk_rows(stitch_band_sequence(_bands(probs, config, dims), OVERLAP[dims]), step)


def _bands(probs: Any, config: Any, dims: int) -> Iterator[np.ndarray]:
    """Local instance labels of consecutive bands, each starting OVERLAP rows before the last one ends."""
    height, band, overlap = probs.shape[1], BAND[dims], OVERLAP[dims]
    start = 0
    while True:
        stop = min(height, start + band + (overlap if start else 0))
        stop = height if height - stop <= overlap else stop  # the last band must outgrow the overlap
        yield instances_of(np.asarray(probs[:, start:stop], dtype=np.float32), config)
        if stop >= height:
            return
        start = stop - overlap


def _chunk_rows(rows: Iterator[np.ndarray], step: int) -> Iterator[tuple[int, np.ndarray]]:
    """Stitched rows regrouped into whole chunk rows of the writer (the last one may be shorter)."""
    held: list[np.ndarray] = []
    count = start = 0
    for piece in rows:
        held.append(piece)
        count += len(piece)
        while count >= step:
            block = np.concatenate(held)
            yield start, block[:step]
            start, held, count = start + step, [block[step:]], count - step
    if count:
        yield start, np.concatenate(held)
