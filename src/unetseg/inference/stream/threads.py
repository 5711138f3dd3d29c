"""Helper threads with bounded queues for streamed prediction: a reader running ahead of the compute loop
and a writer behind it, whose exceptions reach the caller as the original exceptions."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_END = object()


class Pipe:
    """A helper thread and its bounded queue (2 items). The thread's exception is kept and re-raised in
    the caller, as the original exception, by :meth:`get` / :meth:`put` / :meth:`close`."""

    def __init__(self, name: str, target: Callable[[Pipe], None]) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _main(self, target: Callable[[Pipe], None]) -> None:
        try:
            target(self)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            self.error = e

    @classmethod
    def reading(cls, items: Iterator) -> Pipe:
        """A thread running ``items`` ahead of the caller's :meth:`get`."""
        def produce(pipe: Pipe) -> None:
            try:
                for item in items:
                    if pipe.stop.is_set():
                        return
                    pipe.queue.put(item)
            except BaseException as e:  # noqa: BLE001 - kept before the end mark, so get() raises it
                pipe.error = e
            pipe.queue.put(_END)
        return cls("unetseg-prefetch", produce)

    @classmethod
    def writing(cls, writer: Any) -> Pipe:
        """A thread calling ``writer.write(*item)`` for every :meth:`put` item; after an error it keeps
        draining the queue, so a put never blocks for good."""
        def consume(pipe: Pipe) -> None:
            while (item := pipe.queue.get()) is not _END:
                if pipe.error is None:
                    try:
                        writer.write(*item)
                    except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                        pipe.error = e
        return cls("unetseg-writer", consume)

    def get(self) -> Any:
        item = self.queue.get()
        if item is _END:
            self.queue.put(_END)  # later calls see the end too
            raise self.error or RuntimeError("the band reader ended early")
        return item

    def put(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self, *, drain: bool, raise_error: bool = False) -> None:
        """Join the thread: a reader is stopped and drained; a writer first writes what is queued."""
        if drain:
            self.stop.set()
            while self.thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self.queue.get(timeout=0.05)
        else:
            self.queue.put(_END)
        self.thread.join()
        if raise_error and self.error is not None:
            raise self.error
