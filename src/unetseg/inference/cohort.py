"""Predicting a cohort of files on a dask.distributed cluster (``pip install 'unetseg[dask]'``).

* ``cluster="local:N"`` starts a :class:`distributed.LocalCluster` of N single-threaded worker processes
  on loopback for the call and closes it afterwards, also on errors; ``cluster="tcp://HOST:PORT"`` uses
  a running scheduler (its workers must see the same file system and have unetseg installed).
* **One warm model per worker.** The first task on a worker loads the model and keeps it (engine,
  config, predictor, decoder: the :class:`~unetseg.inference.batch.PredictJob`) on the worker object,
  keyed by the checkpoint and the inference settings; later tasks on that worker reuse it. No module
  global: the cache lives and dies with the worker (a restarted worker loads again).
* **One code path for outputs.** Each task is :func:`~unetseg.inference.batch.predict_one` with the
  outputs planned on the client exactly as ``predict_files`` plans them (the same OutputGuard checks,
  before any work), then :func:`~unetseg.fileio.record_written`: files are identical to a single process.
* **Failures.** A bad input (any UnetsegError: unreadable, wrong size, ...) is returned by its task as
  one line, reported and skipped; it is not retried. Anything else (a worker killed for memory, a
  crash) is retried ``retries`` times by the scheduler, then reported as failed. Neither stops the cohort.
* **Already complete.** An input whose output files all exist and are recorded as unetseg's own (sizes
  and times as written, :func:`~unetseg.fileio.is_ours`) is not submitted again.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.data.io import SkipLog, list_images
from unetseg.errors import ConfigError, UnetsegError, first_line
from unetseg.fileio import ensure_dir, is_ours, record_written
from unetseg.inference.api import predictor_for
from unetseg.inference.batch import GIB, PredictJob, _decoder, _plan_outputs, predict_one
from unetseg.inference.engines import load_engine


@dataclass
class CohortResult:
    """What :func:`predict_cohort` did, per input path (as given)."""

    output: str
    done: list[str] = field(default_factory=list)  # predicted in this run
    written: list[str] = field(default_factory=list)  # the files they wrote
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, one-line reason): bad inputs
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason): failed after retries
    complete: list[str] = field(default_factory=list)  # complete before the run: not redone
    model_loads: int = 0  # models loaded by workers in this run (one per worker used)


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to build its PredictJob (hashable: the key of the worker's cache)."""

    checkpoint: str
    device: str = "cpu"
    precision: str = "auto"
    trust_torchscript: bool = False
    tile: tuple[int, ...] | None = None
    overlap: float | None = None
    blend: str | None = None
    batch_size: int | None = None
    tta: bool = False
    probabilities: bool = False
    overlay: bool = False
    mask_values: str = "index"
    max_image_gib: float | None = None

    def build(self) -> PredictJob:
        """Load the model and build the job, as ``predict_files`` does."""
        engine, config = load_engine(self.checkpoint, self.device, self.precision,
                                     trust_torchscript=self.trust_torchscript)
        predictor = predictor_for(engine, config, tile=self.tile, overlap=self.overlap, blend=self.blend,
                                  batch_size=self.batch_size, tta=True if self.tta else None)
        return PredictJob(engine, config, predictor, _decoder(config, self.mask_values), self.probabilities,
                          self.overlay, (self.max_image_gib or config.data.max_image_gib) * GIB)


def worker_job(spec: JobSpec) -> tuple[PredictJob, bool]:
    """The warm job of the current dask worker for ``spec`` (built on first use; True when built now).

    The cache is an attribute of the worker object and holds one model: a task for another checkpoint
    or other settings replaces it, so a worker never holds two models."""
    from distributed import get_worker

    worker = get_worker()
    lock = worker.__dict__.setdefault("_unetseg_lock", threading.Lock())  # setdefault is atomic
    with lock:
        cache: dict[JobSpec, PredictJob] = worker.__dict__.setdefault("_unetseg_jobs", {})
        if spec in cache:
            return cache[spec], False
        cache.clear()
        cache[spec] = spec.build()
        return cache[spec], True


def predict_file_task(spec: JobSpec, path: str, outputs: list[str]) -> dict[str, Any]:
    """One input on a worker: ``predict_one`` with the warm model, then the outputs are recorded as ours.
    A bad input is returned as its one-line message (not raised: retrying would not help)."""
    job, loaded = worker_job(spec)
    try:
        written = predict_one(Path(path), [Path(o) for o in outputs], job)
    except UnetsegError as e:
        return {"error": first_line(e), "loaded": loaded}
    record_written(written)
    return {"written": [str(p) for p in written], "loaded": loaded}


@contextmanager
def open_client(cluster: str, *, timeout: float = 30.0) -> Iterator[Any]:
    """A ``distributed.Client`` for ``local:N`` (a LocalCluster started and closed here) or
    ``tcp://HOST:PORT`` (an existing scheduler). Not set as the process's default client."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--cluster needs dask.distributed: pip install 'unetseg[dask]'") from None
    if cluster.startswith("local:"):
        n = cluster[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"cluster {cluster!r}: expected local:N with N >= 1 workers")
        with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as local, Client(local, set_as_default=False) as client:
            yield client
    elif cluster.startswith("tcp://"):
        try:
            client = Client(cluster, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"cluster {cluster}: cannot reach the scheduler ({first_line(e)})") from None
        with client:
            yield client
    else:
        raise ConfigError(f"cluster {cluster!r}: expected local:N or tcp://HOST:PORT")


def predict_cohort(
    checkpoint: str | Path,
    files: str | Path | Sequence[str | Path],
    outputs: str | Path,
    *,
    cluster: str = "local:2",
    retries: int = 2,
    tile: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: bool = False,
    probabilities: bool = False,
    overlay: bool = False,
    mask_values: str = "index",
    batch_size: int | None = None,
    device: str = "cpu",
    precision: str = "auto",
    overwrite: bool = False,
    trust_torchscript: bool = False,
    max_image_gib: float | None = None,
    log: Callable[[str], Any] | None = None,
) -> CohortResult:
    """Segment many images on a dask cluster, one task per image, with the outputs of ``predict_files``.

    Args:
        checkpoint: checkpoint folder, run folder, ``.onnx`` or (trusted) TorchScript file.
        files: a folder (listed as ``predict`` lists it), one image, or a list of image paths.
        outputs: the output folder (created).
        cluster: ``local:N`` or ``tcp://HOST:PORT`` (see the module doc).
        retries: extra attempts for a task that fails for a reason other than a bad input.
        tile ... max_image_gib: as :func:`~unetseg.inference.batch.predict_files` (device: the workers').
        log: called with one line per finished input (default: nothing; bad inputs go to stderr).
    Returns a :class:`CohortResult`; a bad input or a failed task never raises.
    """
    engine, config = load_engine(checkpoint, "cpu", precision, trust_torchscript=trust_torchscript)
    _decoder(config, mask_values)  # an invalid option fails here, before any work
    listed = isinstance(files, (str, Path))
    paths = list_images(files) if listed else [Path(f) for f in files]
    out_dir = Path(outputs)
    planned, guard = _plan_outputs(paths, out_dir, engine.spatial_dims, checkpoint, files if listed else None,
                                   probabilities, overlay)
    guard.check(overwrite=overwrite)
    ensure_dir(out_dir, "--output")
    result = CohortResult(str(out_dir))
    result.complete = [str(p) for p in paths if all(is_ours(o) for o in planned[p])]
    todo = [p for p in paths if str(p) not in result.complete]
    if not todo:
        return result
    spec = JobSpec(os.path.abspath(checkpoint), device, precision, trust_torchscript,
                   tuple(tile) if tile is not None else None, overlap, blend, batch_size, tta, probabilities,
                   overlay, mask_values, max_image_gib)
    with open_client(cluster) as client:
        _run(client, spec, todo, planned, retries, result, log or (lambda line: None))
    return result


def _run(client: Any, spec: JobSpec, todo: list[Path], planned: dict[Path, list[Path]], retries: int,
         result: CohortResult, log: Callable[[str], Any]) -> None:
    """Submit one task per input and collect the outcomes as they finish."""
    from distributed import as_completed

    token = secrets.token_hex(4)
    futures = {
        client.submit(predict_file_task, spec, os.path.abspath(p), [os.path.abspath(o) for o in planned[p]],
                      key=f"unetseg-predict-{token}-{i}", retries=retries, pure=False): p
        for i, p in enumerate(todo)
    }
    skips = SkipLog()
    for future in as_completed(list(futures), loop=client.loop):
        path = futures[future]
        if future.status != "finished":  # erred after its retries, or cancelled
            why = first_line(future.exception()) if future.status == "error" else future.status
            line = f"{path}: failed after {retries + 1} attempt(s) ({why})"
            result.failed.append((str(path), line))
            skips.skip(line)
        else:
            outcome = future.result()
            result.model_loads += bool(outcome["loaded"])
            if "error" in outcome:
                result.skipped.append((str(path), outcome["error"]))
                skips.skip(outcome["error"])
            else:
                result.done.append(str(path))
                result.written += outcome["written"]
                log(f"{path}: done")
        future.release()
    result.done.sort()
    skips.summary("input")
