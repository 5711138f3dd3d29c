"""unetseg: biomedical image segmentation with the U-Net family.

The stable Python API (see CONTRACT.md)::

    import unetseg
    unetseg.available_models()
    model = unetseg.build_model("unet", spatial_dims=2, in_channels=1, num_classes=2)
    model, config = unetseg.load_checkpoint("RUN")
    labels = unetseg.predict(model, image, config=config)
"""

from __future__ import annotations

__version__ = "0.1.0"

from unetseg.errors import CheckpointError, ConfigError, DataError, UnetsegError  # noqa: E402
from unetseg.models import available_models, build_model  # noqa: E402
from unetseg.training.checkpoint import load_checkpoint  # noqa: E402


def predict(model, image, *, config=None, tile=None, overlap=0.25, tta=False, **kwargs):
    """Segment one image (``(*spatial)`` for a one-channel model or ``(C, *spatial)``); return class indices.

    With ``config`` (from :func:`load_checkpoint`) the checkpoint's normalisation and tile size apply;
    without it the image is fed as given and ``tile=None`` means one pass over the whole image.
    """
    from unetseg.inference import predict as _predict

    return _predict(model, image, config=config, tile=tile, overlap=overlap, tta=tta, **kwargs)


__all__ = [
    "__version__",
    "available_models",
    "build_model",
    "load_checkpoint",
    "predict",
    "UnetsegError",
    "DataError",
    "ConfigError",
    "CheckpointError",
]
