"""Micro-batching: one worker thread owns the warm model and runs what the requests queue.

A request is **admitted** before its body is read (:meth:`Batcher.admit`); at most ``queue_size`` requests
are admitted and not yet running (reading, decoding or waiting), so memory held by uploads is bounded and
one more is answered at once with :class:`Busy` (503 and ``Retry-After``). The worker takes the first
waiting job, then, while other admitted requests are on their way, whatever arrives within ``wait_s``, up
to ``max_batch`` jobs; jobs of one image shape and spacing run as one call of the model (their tiles share
the forward passes, :meth:`unetseg.inference.segmenter.Segmenter.predict_many`), other shapes one group
after another. A lone request runs at once (no wait). A failing group is retried job by job, so one bad
image fails only its own request. :meth:`Batcher.close` admits no more and returns when every job taken
has been answered.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

R = TypeVar("R")
Spacing = tuple[float, ...] | None
Run = Callable[[Sequence[np.ndarray], Spacing], Sequence[R]]
log = logging.getLogger("unetseg.serve")


class Busy(Exception):
    """The queue is full (or the server is stopping): answer 503 and ask to retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Job(Generic[R]):
    image: np.ndarray
    spacing: Spacing
    future: Future[R] = field(default_factory=Future)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.image.shape, self.spacing)


class Ticket(Generic[R]):
    """An admitted request's place in the queue: :meth:`submit` its image once, or leave (``with`` exit)."""

    def __init__(self, batcher: Batcher[R]) -> None:
        self._batcher, self._open = batcher, True

    def submit(self, image: np.ndarray, spacing: Spacing) -> Future[R]:
        if not self._open:
            raise RuntimeError("a ticket submits one image")
        self._open = False
        job: _Job[R] = _Job(image, spacing)
        self._batcher._queue.put(job)
        return job.future

    def __enter__(self) -> Ticket[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:  # the request failed before its image was queued: free its place
            self._open = False
            self._batcher._left(1)


class Batcher(Generic[R]):
    """The bounded queue and its worker thread around ``run(images, spacing) -> results`` (module doc)."""

    def __init__(self, run: Run[R], *, queue_size: int, max_batch: int, wait_s: float) -> None:
        self._run, self.queue_size, self.max_batch, self.wait_s = run, queue_size, max_batch, wait_s
        self._queue: queue.SimpleQueue[_Job[R] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = self._running = self._served = self._batches = self._largest = 0
        self._batch_seconds = 0.0  # moving average of one batch, for Retry-After
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="unetseg-serve-batcher", daemon=True)

    # ---------------------------------------------------------------- the requests' side
    def admit(self) -> Ticket[R]:
        """A place in the queue, or :class:`Busy` when ``queue_size`` requests wait already."""
        with self._lock:
            if self._closed:
                raise Busy("the server is shutting down", 5)
            if self._waiting >= self.queue_size:
                raise Busy(f"the queue is full ({self.queue_size} requests waiting); retry later",
                           self._retry_after())
            self._waiting += 1
        return Ticket(self)

    def _retry_after(self) -> int:
        rounds = (self._waiting + self._running) / self.max_batch + 1
        return max(1, math.ceil(rounds * self._batch_seconds))

    def _left(self, n: int) -> None:
        with self._lock:
            self._waiting -= n

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"queued": self._waiting, "running": self._running, "served": self._served,
                    "batches": self._batches, "largest_batch": self._largest,
                    "worker_alive": self._thread.is_alive(), "stopping": self._closed}

    # ---------------------------------------------------------------- lifetime
    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Admit no more; answer every job queued, then stop the worker."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the worker's side
    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs = [job, *self._gather()]
            with self._lock:
                self._waiting -= len(jobs)
                self._running = len(jobs)
            start = time.perf_counter()
            groups: dict[tuple[Any, ...], list[_Job[R]]] = {}
            for j in jobs:
                if j.future.set_running_or_notify_cancel():  # a client that went away is skipped
                    groups.setdefault(j.key, []).append(j)
            for group in groups.values():
                self._answer(group)
            seconds = time.perf_counter() - start
            with self._lock:
                self._running = 0
                self._served += len(jobs)
                self._batches += 1
                self._largest = max(self._largest, len(jobs))
                self._batch_seconds = seconds if not self._batch_seconds else \
                    0.8 * self._batch_seconds + 0.2 * seconds

    def _gather(self) -> list[_Job[R]]:
        """More jobs for this batch: those queued already, and while other admitted requests are on their
        way, those that arrive within ``wait_s``."""
        jobs: list[_Job[R]] = []
        deadline = time.monotonic() + self.wait_s
        while len(jobs) + 1 < self.max_batch:
            with self._lock:
                coming = self._waiting - 1 - len(jobs) > 0
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if coming and left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: keep the sentinel for the loop, after this batch
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _answer(self, group: list[_Job[R]]) -> None:
        try:
            results = self._run([j.image for j in group], group[0].spacing)
        except Exception as e:
            if len(group) > 1:  # find the one that fails; the others are answered
                for j in group:
                    self._answer([j])
                return
            group[0].future.set_exception(e)
            return
        except BaseException as e:  # noqa: B036 - the worker must answer before it dies
            for j in group:
                j.future.set_exception(RuntimeError(f"prediction interrupted ({type(e).__name__})"))
            raise
        for j, result in zip(group, results, strict=True):
            j.future.set_result(result)
