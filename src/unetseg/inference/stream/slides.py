"""Whole slides and huge volumes: read lazily, predicted strip by strip and band by band in flat memory,
written as an NGFF (OME-Zarr) label pyramid or a tiled pyramidal OME-TIFF (what ``predict`` does for big
or OME inputs).

* **Which inputs.** OME-TIFF / OME-Zarr always; any other image whose decoded float32 size exceeds
  :data:`STREAM_BYTES` (from its header, before decoding); or every input with ``--output-format
  ome-zarr|ome-tiff``. Small inputs keep the in-memory path and today's outputs.
* **Pyramid level.** The one whose pixel size matches the training data's (``data.pixel_size``, recorded
  in the checkpoint when known), or ``--level``; predictions are written at that level's resolution and
  the output's metadata says so (its pixel size is the level's).
* **Normalisation** uses the whole image's statistics, computed in a first streaming pass.
* ``--skip-background`` runs no tile over glass (Otsu on a low pyramid level); ``--resume`` keeps the
  chunks an interrupted run finished and predicts the rest.
* ``--uncertainty`` writes the uncertainty map (float16, entropy and mutual information) in the store's
  ``uncertainty`` sub-group, a pyramid like the probabilities'. The checkpoint's post-processing
  (``infer.postprocess``: largest component, small components) needs the whole image's connected
  components: a streamed prediction skips it, with one warning line.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.labels import ClassMap
from unetseg.data.regrid import RegriddedProbabilities, ResampledImage
from unetseg.data.resample import model_grid, shape_after
from unetseg.errors import ConfigError, DataError
from unetseg.inference.stream.predictor import StreamPredictor
from unetseg.inference.stream.statistics import stream_normalizer, tissue_skip
from unetseg.io.lazy import choose_level, header_nbytes, open_lazy
from unetseg.io.ngff import ChunkWriter, LabelZarrWriter
from unetseg.io.ometiff import write_ome_tiff_from_zarr
from unetseg.io.readers import LazyImage, RegionSource

STREAM_BYTES = 512 * 2**20  # float32 bytes above which an image is streamed instead of held in memory
OME_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr", ".zarr")
FORMATS = ("auto", "ome-zarr", "ome-tiff")


def is_streamed(path: Path, output_format: str) -> bool:
    """Whether ``predict`` streams this input (see the module doc)."""
    if output_format not in FORMATS:
        raise ConfigError(f"--output-format {output_format!r}: expected one of {', '.join(FORMATS)}")
    if output_format != "auto" or path.name.lower().endswith(OME_SUFFIXES):
        return True
    try:
        return header_nbytes(path) > STREAM_BYTES
    except DataError:
        return False  # the in-memory reader reports the file's problem, with its one line


def slide_output(stem: str, out_dir: Path, output_format: str) -> Path:
    return out_dir / (f"{stem}.ome.tif" if output_format == "ome-tiff" else f"{stem}.ome.zarr")


class _Decoded:
    """A :class:`~unetseg.io.ngff.ChunkWriter` that stores the original mask values instead of class
    indices (``--mask-values original``)."""

    def __init__(self, writer: LabelZarrWriter, class_map: ClassMap) -> None:
        self.inner, self.class_map = writer, class_map
        self.path, self.shape, self.chunks = writer.path, writer.shape, writer.chunks
        self.probabilities, self.uncertainty = writer.probabilities, writer.uncertainty

    def write(self, start: Any, labels: np.ndarray, probabilities: np.ndarray | None = None,
              uncertainty: np.ndarray | None = None) -> None:
        self.inner.write(start, self.class_map.decode(labels), probabilities, uncertainty)

    def done_rows(self, columns: Sequence[slice]) -> np.ndarray:
        return self.inner.done_rows(columns)

    def flush(self) -> None:
        self.inner.flush()


def _label_dtype(class_map: ClassMap | None, num_classes: int) -> str:
    top = max(g[0] for g in class_map.groups) if class_map is not None else num_classes - 1
    return "uint8" if top <= 255 else "uint16" if top <= 65535 else "uint32"


class _Channels:
    """A lazy image seen with the model's channels (grey -> RGB repeats, RGB -> grey averages, as the
    in-memory path's :func:`~unetseg.io.images.match_channels`)."""

    def __init__(self, image: LazyImage, channels: int) -> None:
        if image.channels != channels and not (
            image.channels == 1 or (image.channels == 3 and channels == 1)
        ):
            raise DataError(f"{image.path}: {image.channels} channel(s), the model expects {channels}")
        self.image, self.channels = image, channels
        self.path, self.spatial_dims = image.path, image.spatial_dims

    def shape(self, level: int = 0) -> tuple[int, ...]:
        return self.image.shape(level)

    def pixel_size(self, level: int = 0) -> tuple[float, ...] | None:
        return self.image.pixel_size(level)

    def read(self, region: Any = None, level: int = 0) -> np.ndarray:
        x = self.image.read(region, level)
        if x.shape[0] == self.channels:
            return x
        return (
            np.repeat(x, self.channels, axis=0)
            if x.shape[0] == 1
            else x.mean(0, keepdims=True, dtype=np.float32)
        )


def _model_grid(image: Any, level: int, job: Any) -> tuple[tuple[int, ...], tuple[float, ...],
                                                                        tuple[float, ...]] | None:
    """``(shape, spacing, target)`` of the grid the model predicts on when it is not the level's own
    (:func:`~unetseg.data.resample.model_grid`: the training spacing, 3D, in the units the in-memory reader
    reports, as the plan's; a coarser resolution, ``data.downsample``), else None."""
    level0, dims = image.meta.get("spacing"), image.spatial_dims
    own = None
    if level0 is not None and len(level0) == dims:
        own = tuple(float(s) * f for s, f in zip(level0, image.level_scale(level), strict=True))
    grid = model_grid(own, job.config.data, dims)
    if grid is None:
        return None
    shape = shape_after(image.shape(level), *grid)
    return tuple(shape), *grid


@dataclass(frozen=True)
class SlideSetup:
    """What every part of one streamed slide shares, fixed before its first tile (picklable: dask
    workers predict parts of one slide from it). With ``grid`` (shape, spacing, target) the image is
    predicted resampled to the training spacing into a model-grid store of float32 probabilities
    (``writer``), brought back to the image's grid by :func:`finish_slide` into ``final``."""

    path: str
    level: int
    normalize: Callable[[np.ndarray], np.ndarray]
    writer: dict[str, Any]  # LabelZarrWriter's arguments (the temporary store's settings)
    skip_background: bool = False
    grid: tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]] | None = None
    final: dict[str, Any] | None = None  # with grid: the output store's LabelZarrWriter arguments


def open_slide(path: Path, output: Path, job: Any, *, output_format: str = "ome-zarr",
               level: int | None = None, skip_background: bool = False, resume: bool = False,
               store: dict[str, Any] | None = None,
               create: bool = True) -> tuple[SlideSetup, LabelZarrWriter | None]:
    """Check one big image against the model, compute its normalisation statistics (one streaming pass)
    and create (or, with ``resume``, reopen) the temporary output store (``store``: more of
    :class:`LabelZarrWriter`'s arguments; ``create=False``: no store, the writer is None)."""
    _warn_postprocessing(path, job)
    with open_lazy(path) as lazy:
        lvl = choose_level(lazy, job.config.data.pixel_size) if level is None else int(level)
        if not 0 <= lvl < len(lazy.levels):
            raise ConfigError(f"--level {lvl}: {path} has levels 0..{len(lazy.levels) - 1}")
        grid = _model_grid(lazy, lvl, job)
        image = _Channels(lazy, job.engine.in_channels)
        zarr_out = output if output_format != "ome-tiff" else output.with_name(f".{output.stem}.ome.zarr")
        args = {
            "path": str(zarr_out),
            "shape": image.shape(lvl),
            "dtype": _label_dtype(job.class_map, job.engine.num_classes),
            "pixel_size": image.pixel_size(lvl),
            "probabilities": job.predictor.out_channels if job.probabilities else 0,
            "uncertainty": 2 if job.uncertainty else 0,
            **(store or {}),
        }
        normalize = stream_normalizer(image, job.config.data, level=lvl)
    final = None
    if grid is not None:
        final, args = args, _grid_store(args, grid[0], job.predictor.out_channels)
        if resume and Path(args["path"]).is_dir():  # predicted completely before: only the last pass left
            create = False
    setup = SlideSetup(str(path), lvl, normalize, args, skip_background, grid, final)
    return setup, LabelZarrWriter(**args, resume=resume) if create else None


def _warn_postprocessing(path: Path, job: Any) -> None:
    """One line: a streamed slide is not post-processed (its components are not known whole)."""
    from unetseg.inference.api import postprocessing_of
    from unetseg.postprocess.semantic import describe_step

    steps = postprocessing_of(job.config)
    if steps:
        print(f"warning: {path}: streamed, so the checkpoint's post-processing ("
              f"{'; '.join(describe_step(s) for s in steps)}) is not applied: it needs the whole image's "
              "connected components", file=sys.stderr)


def _grid_store(final: dict[str, Any], shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """The model-grid store beside the output: every class's probability as float32 (exact), one level
    (and the uncertainty map, float32, when the output has one)."""
    out = Path(final["path"])
    px = final["pixel_size"]
    if px is not None:
        px = tuple(p * n / m for p, n, m in zip(px, final["shape"], shape, strict=True))
    path = out.with_name(f".{out.name.lstrip('.')}.model-grid")
    dtype = "uint8" if classes <= 256 else "uint16"  # its labels are not used; they must fit
    return {"path": str(path), "shape": shape, "dtype": dtype, "levels": 1, "probabilities": classes,
            "prob_dtype": "float32", "pixel_size": px, "uncertainty": final.get("uncertainty", 0),
            "unc_dtype": "float32"}


def predict_rows(setup: SlideSetup, job: Any, writer: LabelZarrWriter | None = None, *,
                 part: tuple[int, int] | None = None,
                 progress: Callable[[int, int, int], Any] | None = None) -> LabelZarrWriter:
    """Predict the pending chunk rows of ``writer`` (or, on a worker, of ``part`` of the store)."""
    writer = writer if writer is not None else LabelZarrWriter(**setup.writer, part=part)
    target: ChunkWriter = writer if job.class_map is None or setup.grid else _Decoded(writer, job.class_map)
    with open_lazy(setup.path) as lazy:
        skip = tissue_skip(lazy, setup.level) if setup.skip_background else None
        image: RegionSource = _Channels(lazy, job.engine.in_channels)
        normalize, level = setup.normalize, setup.level
        if setup.grid is not None:  # normalised with the source's statistics, then resampled
            image = ResampledImage(image, level, *setup.grid, normalize=normalize)
            skip = None if skip is None else _on_source(skip, image)
            normalize, level = _same, 0
        StreamPredictor(job.predictor).predict_to(image, target, normalize=normalize, progress=progress,
                                                  skip=skip, level=level)
    return writer


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _on_source(skip: Callable[[Any], bool], image: ResampledImage) -> Callable[[Any], bool]:
    return lambda region: skip(image.to_source(region))


def finish_slide(writer: LabelZarrWriter | None, output: Path, output_format: str,
                 setup: SlideSetup | None = None, class_map: ClassMap | None = None) -> list[Path]:
    """Build the pyramid and move the store into place (or convert it to the OME-TIFF asked for). A
    model-grid store (``setup.grid``) is first brought back to the image's grid: its probabilities
    interpolated linearly, as the in-memory path does, then the argmax."""
    if setup is not None and setup.grid is not None and setup.final is not None:
        writer = _back_to_image_grid(writer, setup, class_map)
    assert writer is not None
    store = writer.finish()
    if output_format != "ome-tiff":
        return [store]
    tif = write_ome_tiff_from_zarr(store, output, writer.pixel_size)
    shutil.rmtree(store, ignore_errors=True)  # the OME-TIFF was asked for instead
    return [tif]


def _back_to_image_grid(writer: LabelZarrWriter | None, setup: SlideSetup,
                        class_map: ClassMap | None) -> LabelZarrWriter:
    import zarr

    grid_store = Path(setup.writer["path"])
    if writer is not None:
        writer.finish()
    assert setup.final is not None
    probs = RegriddedProbabilities(zarr.open_array(str(grid_store / "probabilities" / "0"), mode="r"),
                                   setup.final["shape"])
    final = LabelZarrWriter(**setup.final)
    maps = None
    if final.uncertainty:  # linear, not renormalised
        maps = RegriddedProbabilities(zarr.open_array(str(grid_store / "uncertainty" / "0"), mode="r"),
                                      setup.final["shape"], normalise=False)
    out: ChunkWriter = final if class_map is None else _Decoded(final, class_map)
    index = np.uint8 if probs.shape[0] <= 256 else np.uint16
    for box in itertools.product(*(range(0, n, c) for n, c in zip(final.shape, final.chunks, strict=True))):
        region = (slice(None), *(slice(a, a + c) for a, c in zip(box, final.chunks, strict=True)))
        p = probs[region]
        extra = [maps[region]] if maps is not None else []
        out.write(box, p.argmax(axis=0).astype(index), p if final.probabilities else None, *extra)
    shutil.rmtree(grid_store, ignore_errors=True)
    return final


def predict_slide(
    path: Path,
    output: Path,
    job: Any,
    *,
    output_format: str = "ome-zarr",
    level: int | None = None,
    skip_background: bool = False,
    resume: bool = False,
    progress: Callable[[int, int, int], Any] | None = None,
) -> list[Path]:
    """Stream one big image through ``job.predictor`` into ``output``; returns the files written."""
    setup, writer = open_slide(path, output, job, output_format=output_format, level=level,
                               skip_background=skip_background, resume=resume)
    if writer is not None:  # None: resumed with the model-grid store complete
        predict_rows(setup, job, writer, progress=progress)
    return finish_slide(writer, output, output_format, setup, job.class_map)
