"""The limits of one ``unetseg serve`` process (what the command line sets), without the web framework."""

from __future__ import annotations

from dataclasses import dataclass, replace

from unetseg.errors import ConfigError

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Limits:
    """What one server accepts.

    * ``max_upload_bytes``: the request body, counted while it streams in (413 before anything is decoded).
    * ``max_image_bytes``: what one image may decode to as float32, checked on its header (413); None: the
      readers' decompression-bomb budget of the model, ``data.max_image_gib`` (2 GiB by default).
    * ``queue_size``: requests admitted and not yet running (reading, decoding or waiting); one more is
      answered 503 with ``Retry-After``. Memory held by uploads is at most
      ``(queue_size + max_batch) * max_image_bytes``.
    * ``max_batch``: requests the worker takes at once; ``batch_wait_s``: how long it waits for more once it
      has one and others are on their way.
    * ``upload_seconds``: a body that takes longer to arrive is answered 408 (a slow client holds a slot).
    """

    max_upload_bytes: int = 256 * MIB
    max_image_bytes: float | None = None
    queue_size: int = 16
    max_batch: int = 8
    batch_wait_s: float = 0.005
    upload_seconds: float = 120.0

    def __post_init__(self) -> None:
        checks = {
            "--max-upload-mib": self.max_upload_bytes > 0,
            "--max-image-gib": self.max_image_bytes is None or self.max_image_bytes > 0,
            "--queue-size": self.queue_size >= 1,
            "--max-batch": self.max_batch >= 1,
            "--batch-wait-ms": 0 <= self.batch_wait_s <= 10,
            "upload_seconds": self.upload_seconds > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: expected a positive value (--batch-wait-ms: 0 to 10000)")

    def with_budget(self, max_image_gib: float) -> Limits:
        """These limits with the model's pixel budget where none was given."""
        if self.max_image_bytes is not None:
            return self
        return replace(self, max_image_bytes=max_image_gib * GIB)
