"""The whole configuration checked against the registries, once, before any data is read.

The schema (:mod:`unetseg.config.schema`) checks types, ranges and its own choices; this adds what only the
registries know: the architecture and its options (read from the classes' signatures by building the model
on the meta device, where nothing is allocated), the loss and its options, and the rules that tie
sections together. Every source goes through here: the command line and YAML in ``train``, a checkpoint's
``config.json`` and the metadata of an exported model when they are loaded.
"""

from __future__ import annotations

import torch

from unetseg.config import Config
from unetseg.config.schema import instance_classes
from unetseg.errors import ConfigError
from unetseg.losses import build_loss
from unetseg.models import build_model


def check_config(cfg: Config, source: str = "config", *, trained: bool = False, dims: bool = True) -> Config:
    """Raise one ConfigError line (prefixed with ``source``) for anything that cannot work; return ``cfg``.

    ``trained``: the config of a trained model (a checkpoint, an export), which must also know its classes.
    ``dims``: check the per-axis sizes against ``model.spatial_dims`` (False while the planner is still to
    take the dimensionality from the data: it checks them then, :func:`check_axes`).
    """
    try:
        with torch.device("meta"):  # validates the architecture name and options; allocates nothing
            model = build_model(cfg.model.name, **cfg.model.build_kwargs())
        opts = {k: v for k, v in cfg.train.loss_options.items() if k != "weight_map"}
        build_loss(cfg.train.loss, cfg.model.num_classes, **opts)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    wm = cfg.train.loss_options.get("weight_map")
    numbers = isinstance(wm, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                           for v in wm.values())
    if wm not in (None, False, True) and not (numbers and set(wm) <= {"w0", "sigma"}):
        raise ConfigError(
            f"{source}: train.loss_options.weight_map: expected true or {{w0: 10, sigma: 5}}, got {wm!r}"
        )
    if dims:
        check_axes(cfg, cfg.model.spatial_dims, f"{source}: ", "the model is")
    if trained:
        _check_trained(cfg, source)
    del model
    return cfg


def check_axes(cfg: Config, dims: int, prefix: str = "", what: str = "the model is") -> None:
    """The options with one value per axis (patch, tile, resolution) have ``dims`` of them."""
    for name, size in (("data.patch_size", cfg.data.patch_size), ("infer.tile", cfg.infer.tile),
                       ("data.downsample", cfg.data.downsample)):
        if size is not None and len(size) != dims:
            raise ConfigError(f"{prefix}{name} {list(size)} has {len(size)} values but {what} {dims}D")


def _check_trained(cfg: Config, source: str) -> None:
    values, k = cfg.data.class_values, cfg.model.num_classes
    if values is None:
        raise ConfigError(f"{source}: data.class_values is missing; a trained model must record its classes")
    if cfg.data.task == "semantic" and len(values) != max(k, 2):
        raise ConfigError(
            f"{source}: data.class_values lists {len(values)} classes but model.num_classes is {k}"
        )
    if cfg.data.task == "instances" and k != instance_classes(cfg.data.instance_target):
        raise ConfigError(
            f"{source}: data.instance_target {cfg.data.instance_target!r} needs "
            f"{instance_classes(cfg.data.instance_target)} classes but model.num_classes is {k}"
        )
    if cfg.data.patch_size is None and cfg.infer.tile is None:
        raise ConfigError(f"{source}: neither data.patch_size nor infer.tile is set")
    for i, step in enumerate(cfg.infer.postprocess):
        if max(step.classes) >= max(k, 2):
            raise ConfigError(f"{source}: infer.postprocess.{i}: class {max(step.classes)} is not a "
                              f"foreground class of this {max(k, 2)}-class model")
    prior = cfg.data.prior_channels
    if prior and (cfg.data.task != "semantic" or prior != k - 1 or cfg.model.in_channels <= prior):
        raise ConfigError(
            f"{source}: data.prior_channels {prior} does not fit a cascade's second stage (a semantic model "
            f"with {k} classes takes {k - 1} prior channels after its image channels; model.in_channels is "
            f"{cfg.model.in_channels})"
        )
