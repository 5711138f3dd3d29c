"""The batcher on its own: grouping by shape, the bounded queue, one failure failing one request."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from unetseg.serve.batching import Batcher, Busy


def _sums(calls: list):
    def run(images, spacing):
        calls.append(([im.shape for im in images], spacing))
        if any(np.isnan(im).any() for im in images):
            raise ValueError("a NaN image")
        return [float(im.sum()) for im in images]

    return run


def test_jobs_waiting_together_run_in_groups_of_one_shape_and_spacing():
    calls: list = []
    batcher = Batcher(_sums(calls), queue_size=10, max_batch=8, wait_s=0.0)
    shapes = [(1, 4, 4)] * 3 + [(1, 5, 5)] * 2 + [(1, 4, 4)]
    futures = []
    for k, shape in enumerate(shapes):  # all queued before the worker starts: one round of 6
        with batcher.admit() as ticket:
            futures.append(ticket.submit(np.full(shape, k, np.float32), (1.0, 1.0)))
    with batcher.admit() as ticket:
        futures.append(ticket.submit(np.ones((1, 4, 4), np.float32), (2.0, 1.0)))  # another spacing
    batcher.start()
    results = [f.result(10) for f in futures]
    batcher.close(10)
    assert results == [16.0 * k if k < 3 or k == 5 else 25.0 * k for k in range(6)] + [16.0]
    assert calls == [([(1, 4, 4)] * 4, (1.0, 1.0)), ([(1, 5, 5)] * 2, (1.0, 1.0)), ([(1, 4, 4)], (2.0, 1.0))]
    assert batcher.stats()["largest_batch"] == 7 and batcher.stats()["batches"] == 1


def test_a_full_queue_refuses_at_once_and_a_ticket_left_unused_frees_its_place():
    batcher = Batcher(_sums([]), queue_size=2, max_batch=1, wait_s=0.0)
    first, second = batcher.admit(), batcher.admit()
    with pytest.raises(Busy) as busy:
        batcher.admit()
    assert busy.value.retry_after >= 1 and "queue is full" in str(busy.value)
    with second:  # a request that failed before its image was queued
        pass
    with batcher.admit():
        pass
    first.submit(np.ones((1, 2, 2), np.float32), None)
    batcher.start()
    batcher.close(10)  # answers what was queued, then admits nothing more
    with pytest.raises(Busy, match="shutting down"):
        batcher.admit()


def test_a_failing_image_fails_only_its_own_request():
    calls: list = []
    batcher = Batcher(_sums(calls), queue_size=10, max_batch=4, wait_s=0.0)
    images = [np.ones((1, 3, 3), np.float32) for _ in range(3)]
    images[1][0, 0, 0] = np.nan
    futures = []
    for image in images:
        with batcher.admit() as ticket:
            futures.append(ticket.submit(image, None))
    batcher.start()
    assert futures[0].result(10) == 9.0 and futures[2].result(10) == 9.0
    with pytest.raises(ValueError, match="NaN"):
        futures[1].result(10)
    batcher.close(10)
    assert [len(shapes) for shapes, _ in calls] == [3, 1, 1, 1]  # the batch, then one by one
    assert batcher.stats()["worker_alive"] is False


def test_a_lone_request_does_not_wait_for_company():
    batcher = Batcher(_sums([]), queue_size=4, max_batch=8, wait_s=5.0)
    batcher.start()
    done = threading.Event()
    with batcher.admit() as ticket:
        future = ticket.submit(np.ones((1, 2, 2), np.float32), None)
    future.add_done_callback(lambda _: done.set())
    assert done.wait(2.0)  # far less than wait_s: nobody else was admitted
    batcher.close(10)
