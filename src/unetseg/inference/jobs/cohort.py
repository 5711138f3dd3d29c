"""Predicting a cohort of files on a dask.distributed cluster (``pip install 'unetseg[dask]'``).

* ``cluster="local:N"`` starts a :class:`distributed.LocalCluster` of N single-threaded worker processes
  on loopback for the call and closes it afterwards, also on errors; ``cluster="tcp://HOST:PORT"`` uses
  a running scheduler (its workers must see the same file system and have unetseg installed).
* **One warm model per worker.** The first task on a worker loads the model and keeps it (engine,
  config, predictor, decoder: the :class:`~unetseg.inference.jobs.file.PredictJob`) on the worker object,
  keyed by the checkpoint and the inference settings; later tasks on that worker reuse it. No module
  global: the cache lives and dies with the worker (a restarted worker loads again).
* **One code path for outputs.** Each task is :func:`~unetseg.inference.jobs.file.predict_one` with the
  outputs planned on the client exactly as ``predict_files`` plans them (the same OutputGuard checks,
  before any work), then :func:`~unetseg.fileio.record_written`: files are identical to a single process.
* **Failures.** A bad input (any UnetsegError: unreadable, wrong size, ...) is returned by its task as
  one line, reported and skipped; it is not retried. Anything else (a worker killed for memory, a
  crash) is retried ``retries`` times by the scheduler, then reported as failed. Neither stops the cohort.
* **Already complete.** An input whose output files all exist and are recorded as unetseg's own (sizes
  and times as written, :func:`~unetseg.fileio.is_ours`) is not submitted again.
* **Regions of one slide.** A streamed input (:mod:`unetseg.inference.stream.slides`: OME, big, or any
  input with
  an OME output format) is split into parts of whole chunk rows, one task each. The client checks the
  slide, computes its normalisation statistics and creates the temporary store; each worker predicts the
  tiles its rows need, in the single-process tile order and batches, and writes its rows into the store
  (distinct chunk files: no locks). The client records the rows of every finished part (verified on disk)
  and then builds the pyramid: labels are those of one process, bit for bit. A failed part leaves the
  others recorded, so ``resume`` redoes only the missing rows. A streamed input of an instance model is
  one task (its objects are stitched band after band, in order).
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.errors import ConfigError, UnetsegError, first_line
from unetseg.fileio import ensure_dir, is_ours, record_written
from unetseg.inference.jobs.file import PredictJob, Routing, make_job, plan_outputs, predict_path
from unetseg.inference.stream.slides import SlideSetup, finish_slide, is_streamed, open_slide, predict_rows
from unetseg.io.images import SkipLog, list_images


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
    tasks: int = 0  # tasks submitted: one per input, one per part of a streamed input


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to build its PredictJob (hashable: the key of the worker's cache):
    the checkpoint, :func:`~unetseg.inference.jobs.file.make_job`'s settings and the routing."""

    checkpoint: str
    settings: tuple[tuple[str, Any], ...] = ()
    routing: Routing = Routing()

    def build(self) -> PredictJob:
        """Load the model and build the job, as ``predict_files`` does."""
        return make_job(self.checkpoint, routing=self.routing, **dict(self.settings))


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
    """One input on a worker: ``predict_path`` with the warm model, then the outputs are recorded as ours.
    A bad input is returned as its one-line message (not raised: retrying would not help)."""
    job, loaded = worker_job(spec)
    try:
        written = predict_path(Path(path), [Path(o) for o in outputs], job)
    except UnetsegError as e:
        return {"error": first_line(e), "loaded": loaded}
    record_written(written)
    return {"written": [str(p) for p in written], "loaded": loaded}


def named(path: str | Path, error: BaseException) -> str:
    """The error's one line, starting with the input's path."""
    line = first_line(error)
    return line if line.startswith(str(path)) else f"{path}: {line}"


def predict_part_task(spec: JobSpec, setup: SlideSetup, part: tuple[int, int]) -> dict[str, Any]:
    """Chunk rows ``part`` of one streamed slide on a worker; returns the rows it wrote."""
    job, loaded = worker_job(spec)
    try:
        writer = predict_rows(setup, job, part=part)
    except UnetsegError as e:
        return {"error": named(setup.path, e), "loaded": loaded}
    return {"rows": writer.part_rows(), "loaded": loaded}


def split_rows(pending: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Runs of consecutive pending chunk rows, cut into about ``parts`` pieces of at least two rows
    (the tiles on a cut are computed by both sides: fewer, longer parts waste less)."""
    runs: list[list[int]] = []
    for r in pending:
        if runs and runs[-1][-1] + 1 == r:
            runs[-1].append(r)
        else:
            runs.append([r])
    size = max(2, -(-len(pending) // max(1, parts)))
    return [(run[i], run[min(i + size, len(run)) - 1] + 1) for run in runs for i in range(0, len(run), size)]


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
        # each worker's torch gets its share of the cores (N processes x all cores would oversubscribe);
        # the cores this process may use where the OS says (os.sched_getaffinity exists on Linux only)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = str(max(1, cores // int(n)))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, env=env) as local, \
                Client(local, set_as_default=False) as client:
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


def predict_cohort(checkpoint: str | Path, files: str | Path | Sequence[str | Path], outputs: str | Path, *,
                   cluster: str = "local:2", retries: int = 2, overwrite: bool = False,
                   routing: Routing = Routing(), log: Callable[[str], Any] | None = None,
                   **settings: Any) -> CohortResult:
    """Segment many images on a dask cluster, one task per image, with the outputs of ``predict_files``.

    Args:
        checkpoint: checkpoint folder, run folder, ``.onnx`` or (trusted) TorchScript file.
        files: a folder (listed as ``predict`` lists it), one image, or a list of image paths.
        outputs: the output folder (created).
        cluster: ``local:N`` or ``tcp://HOST:PORT`` (see the module doc).
        retries: extra attempts for a task that fails for a reason other than a bad input.
        overwrite, routing, settings: as :func:`~unetseg.inference.jobs.folder.predict_files` (``device``: the
            workers'; default cpu).
        log: called with one line per finished input (default: nothing; bad inputs go to stderr).
    Returns a :class:`CohortResult`; a bad input or a failed task never raises.
    """
    settings.setdefault("device", "cpu")
    probe = make_job(checkpoint, routing=routing, **{**settings, "device": "cpu"})  # options fail here
    listed: str | Path | None = None  # a folder or one image, listed as predict lists it
    if isinstance(files, (str, Path)):
        listed, paths = files, list_images(files)
    else:
        paths = [Path(f) for f in files]
    out_dir = Path(outputs)
    planned, guard = plan_outputs(paths, out_dir, probe, checkpoint, listed)
    guard.check(overwrite=overwrite)
    ensure_dir(out_dir, "--output")
    result = CohortResult(str(out_dir))
    result.complete = [str(p) for p in paths if all(is_ours(o) for o in planned[p])]
    todo = [p for p in paths if str(p) not in result.complete]
    if not todo:
        return result
    spec = JobSpec(os.path.abspath(checkpoint), tuple(sorted(_hashable(settings).items())), routing)
    with open_client(cluster) as client:
        _Run(client, spec, probe, planned, retries, result, log or (lambda line: None)).execute(todo)
    return result


def _hashable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


@dataclass
class _Slide:
    """A streamed input in flight: its store (created here) and its parts still running."""

    outputs: list[Path]
    setup: SlideSetup
    writer: Any
    running: int = 0
    problem: tuple[str, str] | None = None  # ("skipped" | "failed", one line)


class _Run:
    """Submit one task per input (one per part of a streamed input) and collect them as they finish."""

    def __init__(self, client: Any, spec: JobSpec, probe: PredictJob, planned: dict[Path, list[Path]],
                 retries: int, result: CohortResult, log: Callable[[str], Any]) -> None:
        self.client, self.spec, self.probe, self.planned = client, spec, probe, planned
        self.retries, self.result, self.log = retries, result, log
        self.token, self.skips, self.count = secrets.token_hex(4), SkipLog(), itertools.count()
        self.futures: dict[Any, tuple[Path, tuple[int, int] | None]] = {}
        self.slides: dict[Path, _Slide] = {}
        self.fmt = "ome-tiff" if spec.routing.output_format == "ome-tiff" else "ome-zarr"

    def execute(self, todo: list[Path]) -> None:
        from distributed import as_completed

        workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        for p in todo:
            if is_streamed(p, self.spec.routing.output_format) and self.probe.config.data.task != "instances":
                self._submit_slide(p, 2 * workers)
            else:
                outs = [os.path.abspath(o) for o in self.planned[p]]
                self._submit(p, None, predict_file_task, os.path.abspath(p), outs)
        for future in as_completed(list(self.futures), loop=self.client.loop):
            path, part = self.futures.pop(future)
            if future.status != "finished":  # erred after its retries, or cancelled
                why = first_line(future.exception()) if future.status == "error" else future.status
                self._outcome(path, part, {"failed": f"{path}: failed after {self.retries + 1} attempt(s) "
                                                     f"({why})", "loaded": False})
            else:
                self._outcome(path, part, future.result())
            future.release()
        self.result.done.sort()
        self.skips.summary("input")

    def _submit(self, path: Path, part: tuple[int, int] | None, task: Callable, *args: Any) -> None:
        key = f"unetseg-predict-{self.token}-{next(self.count)}"
        future = self.client.submit(task, self.spec, *args, key=key, retries=self.retries, pure=False)
        self.futures[future] = (path, part)
        self.result.tasks += 1

    def _submit_slide(self, path: Path, parts: int) -> None:
        """Check the slide and create its store here, then one task per part of its pending rows."""
        r = self.spec.routing
        try:
            setup, writer = open_slide(path, self.planned[path][0], self.probe, output_format=self.fmt,
                                       level=r.level, skip_background=r.skip_background, resume=r.resume)
        except UnetsegError as e:
            self._report(path, ("skipped", named(path, e)))
            return
        slide = self.slides[path] = _Slide(self.planned[path], setup, writer)
        for part in split_rows(writer.pending_rows() if writer is not None else [], parts):
            slide.running += 1
            self._submit(path, part, predict_part_task, setup, part)
        if not slide.running:  # every row was written before (resume): only the pyramid is left
            self._finish_slide(path, slide)

    def _outcome(self, path: Path, part: tuple[int, int] | None, outcome: dict[str, Any]) -> None:
        self.result.model_loads += bool(outcome["loaded"])
        problem = ("skipped", outcome["error"]) if "error" in outcome else (
            ("failed", outcome["failed"]) if "failed" in outcome else None)
        if part is None:
            if problem is not None:
                self._report(path, problem)
            else:
                self._done(path, outcome["written"])
            return
        slide = self.slides[path]
        slide.running -= 1
        if problem is not None:
            slide.problem = slide.problem or problem
        else:
            slide.writer.record_rows(outcome["rows"])
        if not slide.running:
            if slide.problem is not None:
                self._report(path, slide.problem)  # the rows written are kept for --resume
            else:
                self._finish_slide(path, slide)

    def _finish_slide(self, path: Path, slide: _Slide) -> None:
        try:
            written = finish_slide(slide.writer, slide.outputs[0], self.fmt, slide.setup,
                                   self.probe.class_map)
        except UnetsegError as e:
            self._report(path, ("failed", named(path, e)))
            return
        record_written(written)
        self._done(path, [str(p) for p in written])

    def _done(self, path: Path, written: list[str]) -> None:
        self.result.done.append(str(path))
        self.result.written += written
        self.log(f"{path}: done")

    def _report(self, path: Path, problem: tuple[str, str]) -> None:
        kind, line = problem
        (self.result.skipped if kind == "skipped" else self.result.failed).append((str(path), line))
        self.skips.skip(line)
