"""Stopping a run cleanly on SIGTERM (what cluster schedulers send before they kill a job).

:func:`termination` installs a handler for the duration of a training run (main thread only) and restores
the previous one afterwards; the trainer polls :attr:`Termination.requested` after each step, saves a
checkpoint of the current step when that fits in the grace period, and stops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

GRACE_S = 25.0  # SLURM's KillWait and Kubernetes' grace period are 30 s by default


@dataclass
class Termination:
    requested: bool = False
    signum: int | None = None

    def request(self, signum: int, _frame: object = None) -> None:
        self.requested, self.signum = True, signum


@contextlib.contextmanager
def termination(state: Termination | None = None) -> Iterator[Termination]:
    """A :class:`Termination` set by SIGTERM while the block runs (no handler outside the main thread);
    ``state``: the caller's, so that it can stop the run from another thread (a viewer's cancel button)."""
    state = state or Termination()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.signal(signal.SIGTERM, state.request)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


def caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is anywhere in the error's chain: Ctrl-C that lands while a C extension
    initialises comes back as ``ImportError: initialization failed`` raised from the KeyboardInterrupt."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
