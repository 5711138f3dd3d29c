"""Real uvicorn servers on free loopback ports for the serve tests, and an RLE decoder written apart from
the server's encoder."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

TOKEN = "test-token-0123456789abcdef"


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a background thread; yields its URL."""
    import uvicorn

    from unetseg.serve.server import listen, url_of

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(60)


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO uncompressed RLE (column-major counts of alternating 0s and 1s, 0s first) -> a bool mask."""
    size, counts = rle["size"], rle["counts"]
    flat = np.zeros(int(np.prod(size)), dtype=bool)
    position = 0
    for k, n in enumerate(counts):
        if k % 2:
            flat[position:position + n] = True
        position += n
    assert position == flat.size
    return flat.reshape(size, order="F")


def wait_for(predicate: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
