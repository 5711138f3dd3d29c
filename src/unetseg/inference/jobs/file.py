"""Segmenting files: one image or a folder of them, one output per input (what ``unetseg predict`` runs).

Outputs (README, "Use it on your data"): ``OUT/<stem>.png`` for 2D, ``OUT/<stem>.nii.gz`` (NIfTI inputs) or
``OUT/<stem>.tif`` (other 3D inputs) holding uint8 class indices (or the original mask values with
``mask_values="original"``), the input's spatial size and spacing; optionally ``OUT/<stem>_probs.tif``
(float16 ``(C, *spatial)``, calibrated by the model's temperature), ``OUT/<stem>_uncertainty.tif`` (float16
``(2, *spatial)``: entropy of the mean probability, mutual information) and ``OUT/<stem>_overlay.png``.
Big and OME inputs are streamed instead (:mod:`unetseg.inference.stream.slides`): ``OUT/<stem>.ome.zarr``
(or ``.ome.tif``), the probabilities and the uncertainty beside the labels in the store. The checkpoint's
post-processing (``infer.postprocess``) applies to every in-memory image; a streamed one skips it with a
warning (a connected component may span the whole slide). Every output is planned before
the first image is read: none may replace an input, two inputs may not produce the same file, and files in
``OUT`` that unetseg did not write are kept unless ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.config import Config
from unetseg.data.labels import ClassMap
from unetseg.data.normalize import normalize
from unetseg.errors import ConfigError, DataError, UnetsegError
from unetseg.fileio import OutputGuard
from unetseg.inference.api import predict_full, predictor_for
from unetseg.inference.engines import Engine, load_engine
from unetseg.inference.predictor import Predictor
from unetseg.inference.stream.slides import STREAM_BYTES, is_streamed, predict_slide, slide_output
from unetseg.io.images import (
    match_channels,
    read_image,
    stem_of,
    suffix_of,
    write_instances,
    write_mask,
    write_probabilities,
    write_uncertainty,
)
from unetseg.runtime import rank_device

MASK_VALUES = ("index", "original")
GIB = 2**30


@dataclass(frozen=True)
class Routing:
    """How inputs become outputs: ``output_format`` (``auto``: big and OME inputs are streamed to
    OME-Zarr, the rest written as today; ``ome-zarr`` / ``ome-tiff``: every input streamed), the pyramid
    ``level`` (None: the one matching the training pixel size), ``skip_background`` and ``resume``
    (continue interrupted slides; inputs whose outputs are complete are not redone)."""

    output_format: str = "auto"
    level: int | None = None
    skip_background: bool = False
    resume: bool = False


def output_name(path: Path, spatial_dims: int) -> str:
    """The mask file name for input ``path``: ``<stem>.png`` in 2D; in 3D ``<stem>.nii.gz`` for NIfTI
    inputs and ``<stem>.tif`` otherwise."""
    if spatial_dims == 2:
        return f"{stem_of(path)}.png"
    return f"{stem_of(path)}{'.nii.gz' if suffix_of(path) in ('.nii', '.nii.gz') else '.tif'}"


def outputs_of(
    path: Path,
    out_dir: Path,
    spatial_dims: int,
    *,
    probabilities: bool,
    overlay: bool,
    routing: Routing = Routing(),
    instances: bool = False,
    uncertainty: bool = False,
) -> list[Path]:
    """Every file ``predict`` writes for input ``path``, the labels first (an instance model: ``<stem>.tif``
    with the object ids, then ``<stem>_objects.csv``), then probabilities, uncertainty and overlay."""
    stem = stem_of(path)
    if is_streamed(path, routing.output_format):
        objects = [out_dir / f"{stem}_objects.csv"] if instances else []
        return [slide_output(stem, out_dir, routing.output_format), *objects]
    names = [f"{stem}.tif", f"{stem}_objects.csv"] if instances else [output_name(path, spatial_dims)]
    names += [f"{stem}_probs.tif"] if probabilities else []
    names += [f"{stem}_uncertainty.tif"] if uncertainty else []
    names += [f"{stem}_overlay.png"] if overlay else []
    return [out_dir / n for n in names]


def _decoder(config: Config, mask_values: str) -> ClassMap | None:
    if mask_values not in MASK_VALUES:
        raise ConfigError(f"--mask-values {mask_values!r}: expected one of {', '.join(MASK_VALUES)}")
    if mask_values == "index":
        return None
    if config.data.task == "instances":
        raise ConfigError("--mask-values does not apply to an instance model: its outputs are object ids")
    if not config.data.class_values:
        raise ConfigError("this checkpoint does not record its mask values; use --mask-values index")
    return ClassMap(list(config.data.class_values))


@dataclass
class PredictJob:
    """What one ``predict`` run does to every input (built once, before the first image)."""

    engine: Engine
    config: Config
    predictor: Predictor
    class_map: ClassMap | None
    probabilities: bool = False
    overlay: bool = False
    max_bytes: float | None = None
    routing: Routing = field(default_factory=Routing)
    uncertainty: bool = False


def make_job(
    checkpoint: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    trust_torchscript: bool = False,
    folds: Sequence[int] | None = None,
    **settings: Any,
) -> PredictJob:
    """Load the model and fix every setting of a prediction run (the CLI, the cohort workers); ``folds``:
    the members of a K-fold run's ensemble (None: all); ``settings``: :func:`job_for`'s."""
    device = rank_device(device)  # torchrun: one GPU per process
    engine, config = load_engine(checkpoint, device, precision, trust_torchscript=trust_torchscript,
                                 folds=tuple(folds) if folds is not None else None)
    return job_for(engine, config, **settings)


def job_for(
    engine: Engine,
    config: Config,
    *,
    tile: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    probabilities: bool = False,
    uncertainty: bool = False,
    overlay: bool = False,
    mask_values: str = "index",
    max_image_gib: float | None = None,
    routing: Routing = Routing(),
) -> PredictJob:
    """Every setting of a prediction run around a loaded model (:func:`make_job`, ``Segmenter``)."""
    predictor = predictor_for(
        engine,
        config,
        tile=tile,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        tta=True if tta else None,
    )
    return PredictJob(
        engine,
        config,
        predictor,
        _decoder(config, mask_values),
        probabilities,
        overlay,
        (max_image_gib or config.data.max_image_gib) * GIB,
        routing,
        uncertainty,
    )


def predict_one(path: Path, outputs: list[Path], job: PredictJob) -> list[Path]:
    """Read, normalise, predict and write the outputs of one image held in memory; returns the files
    written. Any user-facing problem is raised as an UnetsegError whose message starts with ``path``."""
    engine = job.engine
    image, meta = read_image(path, max_bytes=job.max_bytes)
    dims = int(meta.get("spatial_dims", image.ndim - 1))
    if dims != engine.spatial_dims or image.ndim != dims + 1:
        raise DataError(f"{path}: a {dims}D image, but the model is {engine.spatial_dims}D")
    instances = job.config.data.task == "instances"
    try:
        x = normalize(match_channels(image, engine.image_channels, path), job.config.data)
        if not (job.overlay or instances):
            del image  # large images: keep only the normalised copy while predicting
        out = predict_full(job.predictor, x, meta.get("spacing"), job.config,
                           probabilities=job.probabilities or instances, uncertainty=job.uncertainty)
    except UnetsegError as e:
        raise type(e)(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    if instances:
        return _write_instances(path, outputs, job, image, meta, out.probabilities, out.uncertainty)
    labels = out.labels
    values = job.class_map.decode(labels) if job.class_map is not None else labels
    written = [write_mask(outputs[0], values, meta), *_write_maps(outputs[1:], job, meta, out.probabilities,
                                                                  out.uncertainty)]
    if job.overlay:
        from unetseg.data.overlay import save_overlay

        written.append(save_overlay(outputs[-1], image, labels))
    return written


def _write_maps(outputs: list[Path], job: PredictJob, meta: dict[str, Any], probs: Any,
               maps: Any) -> list[Path]:
    """The probabilities and the uncertainty map, when asked for (``outputs``: the files after the labels,
    in :func:`outputs_of`'s order)."""
    written = []
    if job.probabilities:
        written.append(write_probabilities(outputs[0], probs, meta))
    if job.uncertainty:
        written.append(write_uncertainty(outputs[int(job.probabilities)], maps, meta))
    return written


def _write_instances(path: Path, outputs: list[Path], job: PredictJob, image: Any, meta: dict[str, Any],
                     probs: Any, maps: Any) -> list[Path]:
    """The object ids (uint16, uint32 when needed), the per-object table and the optional extras."""
    from unetseg.inference.instances import instances_of, write_objects_csv

    ids = instances_of(probs, job.config)
    written = [
        write_instances(outputs[0], ids, meta),
        write_objects_csv(outputs[1], ids, image, meta.get("spacing")),
        *_write_maps(outputs[2:], job, meta, probs, maps),
    ]
    if job.overlay:
        from unetseg.data.overlay import save_overlay

        written.append(save_overlay(outputs[-1], image, ids, objects=True))
    return written


def check_streamable(path: Path, job: PredictJob) -> None:
    """A cascade predicts in memory only (its second stage reads the first stage's whole prediction); a
    streamed uncertainty map goes into an OME-Zarr output of a semantic model."""
    if job.uncertainty and job.routing.output_format == "ome-tiff":
        raise ConfigError(f"{path}: streamed with --output-format ome-tiff, which holds the labels only; "
                          "--uncertainty needs --output-format ome-zarr (or auto)")
    if job.uncertainty and job.config.data.task == "instances":
        raise ConfigError(f"{path}: streamed, and a streamed instance model writes object ids only; "
                          "--uncertainty works for in-memory images (or a semantic model)")
    if job.engine.previous is not None:
        raise DataError(
            f"{path}: streamed (a big or OME input, or --output-format {job.routing.output_format}), but a "
            "cascade's two stages predict only in memory; use --output-format auto with an image under "
            f"{STREAM_BYTES // 2**20} MiB as float32, or predict with its first stage (the checkpoint's "
            "stage1 folder)"
        )


def predict_path(path: Path, outputs: list[Path], job: PredictJob, progress: Any = None) -> list[Path]:
    """One input, in memory or streamed (see :class:`Routing`)."""
    r = job.routing
    if is_streamed(path, r.output_format):
        check_streamable(path, job)
        fmt = "ome-tiff" if r.output_format == "ome-tiff" else "ome-zarr"
        options = {"output_format": fmt, "level": r.level, "skip_background": r.skip_background,
                   "resume": r.resume, "progress": progress}
        try:
            if job.config.data.task == "instances":
                from unetseg.inference.stream.slide_instances import predict_slide_instances

                return predict_slide_instances(path, outputs, job, **options)
            return predict_slide(path, outputs[0], job, **options)
        except UnetsegError as e:
            raise type(e)(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    return predict_one(path, outputs, job)


def plan_outputs(
    files: list[Path], out_dir: Path, job: PredictJob, checkpoint: str | Path, input: str | Path | None
) -> tuple[dict[Path, list[Path]], OutputGuard]:
    """Every output of every input, and the guard that checks them against the inputs (before any work)."""
    guard = OutputGuard()
    if input is not None:
        guard.read(input, "--input")
    guard.read_all(files, "--input")
    guard.read_all({f.parent for f in files}, "--input")
    guard.read(checkpoint, "--checkpoint")
    if Path(checkpoint).is_dir():
        guard.read_all([p for p in Path(checkpoint).rglob("*") if p.is_dir()], "--checkpoint")
    outputs: dict[Path, list[Path]] = {}
    for f in files:
        if is_streamed(f, job.routing.output_format):
            check_streamable(f, job)
        outputs[f] = outputs_of(
            f,
            out_dir,
            job.engine.spatial_dims,
            probabilities=job.probabilities,
            overlay=job.overlay,
            routing=job.routing,
            instances=job.config.data.task == "instances",
            uncertainty=job.uncertainty,
        )
        for o in outputs[f]:
            guard.write(o, "--output", f)
    return outputs, guard
