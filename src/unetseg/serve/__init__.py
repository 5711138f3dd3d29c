"""``unetseg serve``: one warm model behind HTTP (FastAPI + uvicorn; ``pip install 'unetseg[serve]'``).

``settings`` (the limits) and ``codecs`` (uploads decoded by the project's readers, results encoded by its
writers or as JSON with COCO-style run-length masks) -> ``batching`` (the bounded queue and the worker
that micro-batches requests through the one predictor) and ``upload`` (the body within its limit) ->
``app`` (the routes) -> ``server`` (token file, loopback check, uvicorn). Only this package imports the
web framework, and ``import unetseg`` never imports this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetseg.errors import ConfigError
from unetseg.serve.settings import Limits

__all__ = ["Limits", "serve"]


def serve(checkpoint: str | Path, **options: Any) -> None:
    """Serve a model until SIGINT/SIGTERM (:func:`unetseg.serve.server.run`'s options); a missing extra is
    one clear error."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"unetseg serve needs FastAPI, uvicorn and python-multipart ({e.name} is missing): "
                          "pip install 'unetseg[serve]'") from None
    from unetseg.serve.server import run

    run(checkpoint, **options)
