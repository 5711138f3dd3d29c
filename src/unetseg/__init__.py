"""unetseg: biomedical image segmentation with the U-Net family.

The stable Python API (README, "Use it on your data")::

    import unetseg
    unetseg.available_models()
    model = unetseg.build_model("unet", spatial_dims=2, in_channels=1, num_classes=2)
    model, config = unetseg.load_checkpoint("RUN")
    labels = unetseg.predict(model, image, config=config)

Importing the package changes nothing in the caller's process (no allocator, cuDNN, logger or matplotlib
settings); only the ``unetseg`` command does that, in :func:`unetseg.runtime.configure_process`. No module
of the package imports this one (the version comes from the installed metadata), so there is no cycle.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from unetseg.checkpoint import load_checkpoint
from unetseg.errors import CheckpointError, ConfigError, DataError, OutputError, UnetsegError
from unetseg.inference.api import predict
from unetseg.models import available_models, build_model

try:
    __version__ = _metadata.version("unetseg")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__", "available_models", "build_model", "load_checkpoint", "predict", "UnetsegError",
    "DataError", "ConfigError", "CheckpointError", "OutputError",
]
