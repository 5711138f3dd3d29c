"""unetseg: biomedical image segmentation with the U-Net family.

The Python API (README, "Python")::

    import unetseg
    run = unetseg.train(data="DATA", out="RUN", max_minutes=10)   # planned from the data, as the CLI
    seg = unetseg.load("RUN")                                     # run/checkpoint folder or .onnx
    labels = seg.predict(image)                                   # any size; the model's normalisation
    probs = seg.predict_proba(image)
    ids, table = seg.predict_instances(image)                     # instance models
    seg.predict_file("slide.ome.tif", "out/")                     # what `unetseg predict` does

and the building blocks: ``available_models()``, ``build_model(...)``, ``load_checkpoint(path)`` ->
``(model, config)``, ``predict(model_or_path, image, config=...)``.

Importing the package imports nothing heavy (torch comes with the first name that needs it) and changes
nothing in the caller's process (no allocator, cuDNN, logger or matplotlib settings); only the ``unetseg``
command does that, in :func:`unetseg.runtime.configure_process`. No module of the package imports this one
(the version comes from the installed metadata), so there is no cycle.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from unetseg.errors import CheckpointError, ConfigError, DataError, OutputError, UnetsegError

if TYPE_CHECKING:
    from unetseg.checkpoint import load_checkpoint
    from unetseg.inference.api import predict
    from unetseg.inference.segmenter import Segmenter, load
    from unetseg.models import available_models, build_model
    from unetseg.training.api import TrainedRun, train

try:
    __version__ = _metadata.version("unetseg")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

_LAZY = {  # name -> the module that defines it, imported on first use
    "load": "unetseg.inference.segmenter",
    "Segmenter": "unetseg.inference.segmenter",
    "train": "unetseg.training.api",
    "TrainedRun": "unetseg.training.api",
    "predict": "unetseg.inference.api",
    "load_checkpoint": "unetseg.checkpoint",
    "available_models": "unetseg.models",
    "build_model": "unetseg.models",
}

__all__ = [
    "__version__", "load", "Segmenter", "train", "TrainedRun", "available_models", "build_model",
    "load_checkpoint", "predict", "UnetsegError", "DataError", "ConfigError", "CheckpointError",
    "OutputError",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'unetseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
