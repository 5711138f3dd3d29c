"""The Python entry points: :func:`predict` (the contract's ``unetseg.predict``) and :func:`predictor_for`,
the ONE place where a config plus a caller's overrides become a :class:`Predictor` (used by ``predict``,
by validation during training and by ``evaluate``, so every inference option applies the same way)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetseg.config import Config
from unetseg.config.schema import PostprocessStep
from unetseg.errors import ConfigError, DataError
from unetseg.inference.engines import Engine, Stage, as_engine, load_engine
from unetseg.inference.predictor import Predictor, Progress


def predictor_for(
    engine: Engine,
    config: Config | None,
    *,
    tile: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    batch_size: int | None = None,
    tta: bool | None = None,
    temperature: float | None = None,
) -> Predictor:
    """A :class:`Predictor` with the config's inference settings, each overridden when given (not None).

    Defaults: tile = ``config.infer.tile`` or the training patch size (``None`` without a config: the whole
    image in one pass), overlap = ``config.infer.overlap`` or 0.25 (2D) / 0.5 (3D), blend, batch size,
    TTA and temperature from ``config.infer``.
    """
    infer = config.infer if config is not None else None
    if tile is None and config is not None:
        tile = config.infer.tile or config.data.patch_size
    return Predictor(
        engine,
        tile=tile,
        overlap=overlap if overlap is not None else (infer.overlap if infer else None),
        blend=blend or (infer.blend if infer else "gaussian"),
        batch_size=batch_size or (infer.batch_size if infer else 4),
        tta=bool(tta if tta is not None else (infer.tta if infer else False)),
        temperature=temperature if temperature is not None else (infer.temperature if infer else 1.0),
    )


@dataclass
class Prediction:
    """What :func:`predict_full` returns, on the image's own grid: class indices (post-processed as the
    config says), and when asked for the probabilities ``(C, *spatial)`` float32 and the uncertainty map
    ``(2, *spatial)`` float32 (entropy of the mean probability, mutual information; each / log C)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def postprocessing_of(config: Config | None) -> list[PostprocessStep]:
    """The post-processing steps a config asks for (semantic models; instance models have their own)."""
    if config is None or config.data.task != "semantic":
        return []
    return list(config.infer.postprocess)


def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    spacing: Sequence[float] | None,
    config: Config | None,
    *,
    probabilities: bool = False,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels, probabilities or None)`` of a normalised ``(C, *spatial)`` image (:func:`predict_full`)."""
    out = predict_full(predictor, image, spacing, config, probabilities=probabilities, progress=progress)
    return out.labels, out.probabilities


def predict_full(
    predictor: Predictor,
    image: np.ndarray,
    spacing: Sequence[float] | None,
    config: Config | None,
    *,
    probabilities: bool = False,
    uncertainty: bool = False,
    progress: Progress | None = None,
    postprocess: bool = True,
) -> Prediction:
    """The prediction of a normalised ``(C, *spatial)`` image, on the image's own grid.

    When the model works on another grid (trained at ``config.data.spacing`` and the image's ``spacing``
    differs, or at a coarser resolution, ``config.data.downsample``:
    :func:`~unetseg.data.resample.model_grid`),
    the image is resampled to it (third-order spline), predicted there, and the probabilities are resampled
    back to the image's grid (linear) before the argmax, as nnU-Net does. A cascade's second stage
    (``engine.previous``) also sees its first stage's prediction on that grid (:func:`prior_of`).
    The labels then go through the config's post-processing (``infer.postprocess``; ``postprocess=False``:
    the raw argmax), the probabilities and the uncertainty map stay as predicted."""
    return predict_images(predictor, [image], spacing, config, probabilities=probabilities,
                          uncertainty=uncertainty, progress=progress, postprocess=postprocess)[0]


def predict_images(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    spacing: Sequence[float] | None,
    config: Config | None,
    *,
    probabilities: bool = False,
    uncertainty: bool = False,
    progress: Progress | None = None,
    postprocess: bool = True,
) -> list[Prediction]:
    """:func:`predict_full` of several normalised images of one shape and spacing, their tiles sharing
    the forward passes (:meth:`Predictor.predict_many`; a server's micro-batch)."""
    from unetseg.data.resample import model_grid, resample_image

    grid = model_grid(spacing, config.data, images[0].ndim - 1) if config is not None else None
    xs = [image if grid is None else resample_image(image, *grid) for image in images]
    stage = predictor.engine.previous
    if stage is not None:
        xs = [np.concatenate([x, prior_of(stage, x, spacing if grid is None else grid[1], predictor)])
              for x in xs]
    elif config is not None and config.data.prior_channels:
        raise ConfigError("a cascade's second stage needs its first stage: load the model from its "
                          "checkpoint folder or export (unetseg.predict(path, image))")
    shape = None if grid is None else tuple(images[0].shape[1:])
    if uncertainty:
        outs = [_uncertain_on(predictor, x, shape, probabilities, progress) for x in xs]
    elif shape is None:
        many = predictor.predict_many(xs, probabilities=probabilities, progress=progress)
        outs = [Prediction(labels, probs) for labels, probs in many]
    else:
        outs = [Prediction(*from_model_grid(p, shape, probabilities=probabilities))
                for p in predictor.predict_proba_many(xs, progress)]
    steps = postprocessing_of(config) if postprocess else []
    if steps:
        from unetseg.postprocess.semantic import apply_postprocessing

        for out in outs:
            out.labels = apply_postprocessing(out.labels, steps)
    return outs


def _uncertain_on(predictor: Predictor, x: np.ndarray, shape: tuple[int, ...] | None, probabilities: bool,
                  progress: Progress | None) -> Prediction:
    """Predict ``x`` with its uncertainty map and bring both to the image's grid ``shape`` (None: ``x`` is
    on it)."""
    labels, probs, maps = predictor.predict_uncertain(x, progress)
    if shape is None:
        return Prediction(labels, probs if probabilities else None, maps)
    from unetseg.data.resample import resample_maps

    back = from_model_grid(probs, shape, probabilities=probabilities)
    return Prediction(*back, resample_maps(maps, shape))


def prior_of(stage: Stage, image: np.ndarray, spacing: Sequence[float] | None,
             like: Predictor | None = None) -> np.ndarray:
    """A cascade's prior for a normalised ``(C, *spatial)`` image on the second stage's grid (``spacing``:
    that grid's): the first stage's labels there (predicted on its own, coarser grid and brought back), one
    channel per foreground class, 0/1 float32. ``like``: the second stage's predictor, whose TTA and batch
    size the first stage uses too."""
    predictor = predictor_for(stage.engine, stage.config, tta=like.tta if like else None,
                              batch_size=like.batch_size if like else None)
    labels = predict_image(predictor, image, spacing, stage.config)[0]
    return one_hot_prior(labels, stage.engine.num_classes)


def one_hot_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes - 1, *spatial)`` float32: 1 where ``labels`` is the class, for every class but 0."""
    return np.stack([labels == c for c in range(1, max(2, num_classes))]).astype(np.float32)


def from_model_grid(probs: np.ndarray, shape: Sequence[int], *,
                    probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels, probabilities or None)`` on an image's grid ``shape`` from the model grid's probabilities:
    linear per class (as the streamed path's :class:`~unetseg.data.regrid.RegriddedProbabilities`), then
    the argmax."""
    from unetseg.data.resample import resample_probabilities

    probs = resample_probabilities(probs, tuple(shape))
    labels = probs.argmax(axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)
    return labels, probs if probabilities else None


def as_channels_first(image: np.ndarray | torch.Tensor, engine: Engine, source: str = "image") -> np.ndarray:
    """``(*spatial)`` (one-channel models) or ``(C, *spatial)`` -> ``(C, *spatial)``; DataError otherwise."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    dims, channels = engine.spatial_dims, engine.image_channels
    if arr.ndim == dims:
        if channels != 1:
            raise DataError(
                f"{source}: shape {arr.shape} has no channel axis but the model expects "
                f"{channels} channels; pass (C, *spatial)"
            )
        arr = arr[None]
    if arr.ndim != dims + 1:
        raise DataError(f"{source}: shape {arr.shape} is not a {dims}D image ((*spatial) or (C, *spatial))")
    if arr.shape[0] != channels:
        raise DataError(f"{source}: {arr.shape[0]} channels, the model expects {channels}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: unsupported pixel type {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataError(f"{source}: {int((~np.isfinite(arr)).sum())} NaN/inf pixel value(s)")
    return arr


def predict(
    model_or_engine: nn.Module | Engine | str | Path,
    image: np.ndarray | torch.Tensor,
    *,
    config: Config | None = None,
    tile: Sequence[int] | None = None,
    overlap: float | None = 0.25,
    tta: bool = False,
    blend: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    return_probabilities: bool = False,
    spacing: Sequence[float] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment one image; returns class indices with the image's spatial shape (uint8).

    Args:
        model_or_engine: a model (e.g. from :func:`unetseg.build_model` / :func:`unetseg.load_checkpoint`),
            an engine, or a path to a checkpoint / ``.onnx`` file (its config is then used). A module is run
            from an internal copy (BatchNorm folded, the fastest layout): the caller's module is unchanged.
        image: ``(*spatial)`` for a one-channel model or ``(C, *spatial)``; the model's ``spatial_dims``
            decides which.
        config: the checkpoint's config: its normalisation, tile size and inference settings apply.
            Without it the image is fed as given and ``tile=None`` means one pass over the whole image.
        tile, overlap, tta, blend, batch_size: sliding-window settings (see :class:`Predictor`); ``tta``
            also applies when the config asks for it.
        device: where a module runs (``None``: where it is); precision: ``auto|fp32|bf16|fp16``.
        return_probabilities: also return the ``(max(2, C), *spatial)`` float32 probabilities.
        spacing: the image's voxel spacing (3D): with a config trained at another spacing the image is
            resampled for the network and the result brought back to the image's grid (as it is for a
            model trained at a coarser resolution, ``config.data.downsample``, whatever the spacing).
    """
    if isinstance(model_or_engine, (str, Path)):
        engine, file_config = load_engine(model_or_engine, device or "auto", precision)
        config = config or file_config
    else:
        engine = as_engine(model_or_engine, device, precision)
        if config is None:
            unknown = "no normalisation (the image is used as given)" + ("" if tile else ", one pass")
            warnings.warn(f"unetseg.predict without config=: {unknown}; unetseg.load(RUN).predict(image) "
                          "applies what the model was trained with", UserWarning, stacklevel=2)
    arr = as_channels_first(image, engine)
    if config is not None:
        from unetseg.data.normalize import normalize

        arr = normalize(arr, config.data)
    predictor = predictor_for(
        engine,
        config,
        tile=tile,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        tta=True if tta else None,
    )
    labels, probs = predict_image(predictor, arr, spacing, config, probabilities=return_probabilities)
    if not return_probabilities:
        return labels
    assert probs is not None  # asked for
    return labels, probs
