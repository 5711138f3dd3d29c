"""``predict_files``: one image or a folder of them through one model, each input to its outputs
(:mod:`unetseg.inference.jobs.file`), in this process, its ``torchrun`` share, or on a Dask cluster
(:mod:`unetseg.inference.jobs.cohort`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetseg.errors import UnetsegError
from unetseg.fileio import ensure_dir, is_ours, record_written
from unetseg.inference.jobs.file import PredictJob, Routing, make_job, plan_outputs, predict_path
from unetseg.io.images import SkipLog, list_images

if TYPE_CHECKING:  # loaded only when a cluster is asked for (dask=)
    from unetseg.inference.jobs.cohort import CohortResult


@dataclass
class PredictResult:
    output: str
    images: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)  # outputs complete already (--resume): not redone
    done: list[str] = field(default_factory=list)  # inputs predicted by this process (its torchrun share)

    def __getitem__(self, key: str) -> Any:  # the dict interface of earlier versions
        return getattr(self, key)


def shard(files: list[Path]) -> list[Path]:
    """This process's share of the inputs under ``torchrun`` (every WORLD_SIZE-th from RANK), else all."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return files[rank::world] if world > 1 else files


def predict_files(
    checkpoint: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    routing: Routing = Routing(),
    dask: str | None = None,
    **settings: Any,
) -> PredictResult | CohortResult:
    """Segment an image or every image of a folder with a checkpoint / ``.onnx`` / TorchScript model.

    Args:
        checkpoint: checkpoint folder, run folder (-> ``best/``), ``.onnx`` or (trusted) TorchScript file.
        input: an image file, an OME-Zarr store or a folder of images (nnU-Net ``_0000`` channel files are
            grouped per case).
        output: folder for the outputs (created).
        skip_bad: report unreadable inputs, go on, and print how many were skipped (exit status stays 0);
            otherwise the first bad input stops with a DataError naming it.
        progress: show a progress bar.
        overwrite: replace existing output files that unetseg did not write (never an input).
        routing: streamed outputs, pyramid level, background skipping, resume (:class:`Routing`).
        dask: ``local:N`` or ``tcp://HOST:PORT``: run on a dask.distributed cluster
            (:func:`unetseg.inference.jobs.cohort.predict_cohort`, which returns its ``CohortResult``); bad
            inputs are then always skipped.
        **settings: :func:`make_job`'s: ``tile``, ``overlap``, ``blend``, ``tta``, ``batch_size``
            (``None``: the checkpoint's), ``probabilities``, ``overlay``, ``mask_values`` (``index`` |
            ``original``), ``device``, ``precision``, ``trust_torchscript``, ``max_image_gib``.
    Under ``torchrun`` every process predicts its share of the inputs (:func:`shard`).
    """
    if dask:
        from unetseg.inference.jobs.cohort import predict_cohort

        return predict_cohort(
            checkpoint, input, output, cluster=dask, overwrite=overwrite, routing=routing, **settings
        )
    job = make_job(checkpoint, routing=routing, **settings)
    return run_job(job, checkpoint, input, output, skip_bad=skip_bad, progress=progress, overwrite=overwrite)


def run_job(job: PredictJob, checkpoint: str | Path, input: str | Path, output: str | Path, *,
            skip_bad: bool = False, progress: bool = True, overwrite: bool = False) -> PredictResult:
    """:func:`predict_files` with the model already loaded (``job``; ``checkpoint``: where it came from,
    never written over)."""
    routing = job.routing
    files = list_images(input)
    out_dir = Path(output)
    planned, guard = plan_outputs(files, out_dir, job, checkpoint, input)
    todo = shard(files)
    # Every output is checked against every input; existing files only among this process's outputs
    # (under torchrun another process may be writing its own already).
    guard.check(overwrite=overwrite, among=[o for p in todo for o in planned[p]])
    ensure_dir(out_dir, "--output")
    result = PredictResult(str(out_dir), len(files))
    if routing.resume:
        result.complete = [str(p) for p in todo if all(is_ours(o) for o in planned[p])]
        todo = [p for p in todo if str(p) not in result.complete]
    _run(todo, planned, job, result, skip_bad, progress)
    return result


def _run(
    files: list[Path],
    outputs: dict[Path, list[Path]],
    job: PredictJob,
    result: PredictResult,
    skip_bad: bool,
    progress: bool,
) -> None:
    """Every input in turn, under a progress bar (tiles, MB and ETA for a streamed slide); bad inputs are
    reported and skipped with ``skip_bad``."""
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
            tiles = bar.add_task(f"  {path.name}: tiles", total=None, visible=False)

            def on_tiles(done: int, total: int, read: int, tiles: Any = tiles) -> None:
                bar.update(
                    tiles,
                    completed=done,
                    total=total,
                    visible=True,
                    description=f"  tiles ({read / 2**20:.0f} MB read)",
                )

            try:
                written = predict_path(path, outputs[path], job, on_tiles)
                record_written(written)
                result.written += [str(p) for p in written]
                result.done.append(str(path))
            except UnetsegError as e:
                if not skip_bad:
                    raise
                log.skip(e)
            bar.remove_task(tiles)
            bar.advance(task)
    result.skipped = list(log.messages)
    log.summary("input")
