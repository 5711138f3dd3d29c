"""Segmenting files: one image or a folder of them, one mask per input (what ``unetseg predict`` runs).

Outputs (README, "Use it on your data"): ``OUT/<stem>.png`` for 2D, ``OUT/<stem>.nii.gz`` (NIfTI inputs) or
``OUT/<stem>.tif`` (other 3D inputs) holding uint8 class indices (or the original mask values with
``mask_values="original"``), the input's spatial size and spacing; optionally ``OUT/<stem>_probs.tif``
(float32 ``(C, *spatial)``) and ``OUT/<stem>_overlay.png``. Every output is planned before the first
image is read: none may replace an input, two inputs may not produce the same file, and files in ``OUT``
that unetseg did not write are kept unless ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.config import Config
from unetseg.data.io import (
    SkipLog,
    list_images,
    match_channels,
    read_image,
    stem_of,
    suffix_of,
    write_mask,
    write_probabilities,
)
from unetseg.data.labels import ClassMap
from unetseg.data.normalize import normalize
from unetseg.errors import ConfigError, DataError, UnetsegError
from unetseg.fileio import OutputGuard, ensure_dir, record_written
from unetseg.inference.api import predict_image, predictor_for
from unetseg.inference.engines import Engine, load_engine
from unetseg.inference.predictor import Predictor

MASK_VALUES = ("index", "original")
GIB = 2**30


def output_name(path: Path, spatial_dims: int) -> str:
    """The mask file name for input ``path``: ``<stem>.png`` in 2D; in 3D ``<stem>.nii.gz`` for NIfTI
    inputs and ``<stem>.tif`` otherwise."""
    if spatial_dims == 2:
        return f"{stem_of(path)}.png"
    return f"{stem_of(path)}{'.nii.gz' if suffix_of(path) in ('.nii', '.nii.gz') else '.tif'}"


def outputs_of(
    path: Path, out_dir: Path, spatial_dims: int, *, probabilities: bool, overlay: bool
) -> list[Path]:
    """Every file ``predict`` writes for input ``path``, mask first."""
    stem = stem_of(path)
    names = [output_name(path, spatial_dims)]
    names += [f"{stem}_probs.tif"] if probabilities else []
    names += [f"{stem}_overlay.png"] if overlay else []
    return [out_dir / n for n in names]


def _decoder(config: Config, mask_values: str) -> ClassMap | None:
    if mask_values not in MASK_VALUES:
        raise ConfigError(f"--mask-values {mask_values!r}: expected one of {', '.join(MASK_VALUES)}")
    if mask_values == "index":
        return None
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


def predict_one(path: Path, outputs: list[Path], job: PredictJob) -> list[Path]:
    """Read, normalise, predict and write the outputs of one image; returns the files written.
    Any user-facing problem is raised as an UnetsegError whose message starts with ``path``."""
    engine = job.engine
    image, meta = read_image(path, max_bytes=job.max_bytes)
    dims = int(meta.get("spatial_dims", image.ndim - 1))
    if dims != engine.spatial_dims or image.ndim != dims + 1:
        raise DataError(f"{path}: a {dims}D image, but the model is {engine.spatial_dims}D")
    try:
        x = normalize(match_channels(image, engine.in_channels, path), job.config.data)
        if not job.overlay:
            del image  # large images: keep only the normalised copy while predicting
        labels, probs = predict_image(job.predictor, x, meta.get("spacing"), job.config,
                                      probabilities=job.probabilities)
    except UnetsegError as e:
        raise type(e)(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    values = job.class_map.decode(labels) if job.class_map is not None else labels
    written = [write_mask(outputs[0], values, meta)]
    if probs is not None:
        written.append(write_probabilities(outputs[1], probs, meta))
    if job.overlay:
        from unetseg.data.overlay import save_overlay

        written.append(save_overlay(outputs[-1], image, labels))
    return written


@dataclass
class PredictResult:
    output: str
    images: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:  # the dict interface of earlier versions
        return getattr(self, key)


def predict_files(
    checkpoint: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    tile: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: bool = False,
    probabilities: bool = False,
    overlay: bool = False,
    mask_values: str = "index",
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    trust_torchscript: bool = False,
    max_image_gib: float | None = None,
) -> PredictResult:
    """Segment an image or every image of a folder with a checkpoint / ``.onnx`` / TorchScript model.

    Args:
        checkpoint: checkpoint folder, run folder (-> ``best/``), ``.onnx`` or (trusted) TorchScript file.
        input: an image file or a folder of images (nnU-Net ``_0000`` channel files are grouped per case).
        output: folder for the outputs (created).
        tile, overlap, blend, tta, batch_size: sliding-window settings; ``None`` takes the checkpoint's.
        probabilities: also write ``<stem>_probs.tif`` (float32, one plane per class).
        overlay: also write ``<stem>_overlay.png``.
        mask_values: ``index`` (0..C-1) or ``original`` (the training mask values, e.g. 0/255).
        device, precision: where and how the model runs.
        skip_bad: report unreadable inputs, go on, and print how many were skipped (exit status stays 0);
            otherwise the first bad input stops with a DataError naming it.
        progress: show a progress bar.
        overwrite: replace existing output files that unetseg did not write (never an input).
        trust_torchscript: allow a TorchScript file (it is code; see :mod:`unetseg.inference.engines`).
        max_image_gib: the largest float32 image to decode (default: the checkpoint's data.max_image_gib).
    """
    engine, config = load_engine(checkpoint, device, precision, trust_torchscript=trust_torchscript)
    files = list_images(input)
    out_dir = Path(output)
    plan = _plan_outputs(files, out_dir, engine.spatial_dims, checkpoint, input, probabilities, overlay)
    plan[1].check(overwrite=overwrite)
    job = PredictJob(
        engine,
        config,
        predictor_for(
            engine,
            config,
            tile=tile,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            tta=True if tta else None,
        ),
        _decoder(config, mask_values),
        probabilities,
        overlay,
        (max_image_gib or config.data.max_image_gib) * GIB,
    )
    ensure_dir(out_dir, "--output")
    result = PredictResult(str(out_dir), len(files))
    _run(files, plan[0], job, result, skip_bad, progress)
    return result


def _run(
    files: list[Path],
    outputs: dict[Path, list[Path]],
    job: PredictJob,
    result: PredictResult,
    skip_bad: bool,
    progress: bool,
) -> None:
    """Every input in turn, under a progress bar; bad inputs are reported and skipped with ``skip_bad``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    log = SkipLog()
    columns = (
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("", total=len(files))
        for path in files:
            bar.update(task, description=path.name)
            try:
                written = predict_one(path, outputs[path], job)
                record_written(written)
                result.written += [str(p) for p in written]
            except UnetsegError as e:
                if not skip_bad:
                    raise
                log.skip(e)
            bar.advance(task)
    result.skipped = list(log.messages)
    log.summary("input")


def _plan_outputs(
    files: list[Path],
    out_dir: Path,
    dims: int,
    checkpoint: str | Path,
    input: str | Path,
    probabilities: bool,
    overlay: bool,
) -> tuple[dict[Path, list[Path]], OutputGuard]:
    guard = OutputGuard()
    guard.read(input, "--input")
    guard.read_all(files, "--input")
    guard.read_all({f.parent for f in files}, "--input")
    guard.read(checkpoint, "--checkpoint")
    if Path(checkpoint).is_dir():
        guard.read_all([p for p in Path(checkpoint).rglob("*") if p.is_dir()], "--checkpoint")
    outputs: dict[Path, list[Path]] = {}
    for f in files:
        outputs[f] = outputs_of(f, out_dir, dims, probabilities=probabilities, overlay=overlay)
        for o in outputs[f]:
            guard.write(o, "--output", f)
    return outputs, guard
