"""Fine-tuning (``train.init_from``): what a new run takes from the model it starts from.

The architecture is the source's (name, dimensionality, depth, widths and every model option), and so is the
way images are normalised (the mode, its percentiles or window: the copied filters expect inputs scaled that
way); statistics that describe data (CT's ``intensity_stats``) come from the new data, as do the image
channels and the class map (the stem and head are new when they differ). A value the user gave that
contradicts the source is one clear error rather than a silently different network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetseg import checkpoint as ckpt
from unetseg.config import Config
from unetseg.errors import ConfigError
from unetseg.planning.rules import Decision

# data options that belong to the model (how its inputs were scaled), taken from the source
DATA_KEYS = ("data.normalization", "data.percentiles", "data.window", "data.preprocessing")
MODEL_KEYS = ("model.name", "model.spatial_dims", "model.base_channels", "model.depth")
# model options the planner would otherwise choose; absent in the source means the architecture's default
PLANNED_OPTIONS = ("channels", "norm", "strides", "kernels")
NOT_TRAINABLE = (".onnx", *ckpt.TORCHSCRIPT_SUFFIXES)


@dataclass(frozen=True)
class Source:
    """The checkpoint a fine-tune starts from and its config."""

    path: Path
    config: Config

    @property
    def where(self) -> str:
        return f"the model in {self.path}"


def open_source(path: str | Path) -> Source:
    """The checkpoint ``--init-from`` names (a run folder, a checkpoint folder or its model.safetensors),
    refused in one line when it cannot start a training run."""
    p = Path(path)
    if p.suffix.lower() in NOT_TRAINABLE:
        raise ConfigError(f"--init-from {p}: an exported model ({p.suffix}) holds no trainable weights; give "
                          "the run folder or checkpoint it was exported from")
    folder = ckpt.find_checkpoint(p)
    config = ckpt.read_config(folder)
    if config.data.prior_channels:
        raise ConfigError(f"--init-from {p}: a cascade's second stage needs its first stage's predictions; "
                          f"fine-tune from its first stage ({folder / ckpt.STAGE1}) instead")
    return Source(folder, config)


def source_values(source: Source) -> dict[str, Any]:
    """The dotted keys a fine-tune takes from ``source`` (model options absent there: None)."""
    cfg = source.config
    values: dict[str, Any] = {key: _get(cfg, key) for key in (*MODEL_KEYS, *DATA_KEYS)}
    options = dict(cfg.model.options)
    for name in sorted({*options, *PLANNED_OPTIONS}):
        values[f"model.options.{name}"] = options.get(name)
    return values


def source_decisions(source: Source) -> list[Decision]:
    """The planner's rows for what the source decides."""
    return [Decision(key, value, f"from {source.where}") for key, value in source_values(source).items()]


def check_conflicts(cfg: Config, given: set[str], source: Source) -> None:
    """Refuse a given value that would build another network than the one the weights come from."""
    for key, theirs in source_values(source).items():
        if key in DATA_KEYS:
            continue  # another normalisation is the user's call (the copied filters will adapt)
        if key in given or (key.startswith("model.options.") and key.rsplit(".", 1)[0] in given):
            mine = _get(cfg, key)
            if mine != theirs:
                raise ConfigError(f"{key} {mine!r} conflicts with --init-from {source.path}, whose model has "
                                  f"{theirs!r}: fine-tuning keeps the source's architecture (leave it out)")


def adopt(cfg: Config, given: set[str], source: Source) -> None:
    """Set what the source decides on ``cfg`` (the unplanned path; the planner does it with reasons)."""
    from unetseg.planning.plan import apply_values

    check_conflicts(cfg, given, source)
    apply_values(cfg, {k: v for k, v in source_values(source).items() if k not in given})


def head_is_new(cfg: Config, source: Source) -> bool:
    """Whether the new run's classes mean something else than the source's outputs (then the head starts
    afresh even when the class count is the same)."""
    src = source.config
    return (cfg.model.num_classes != src.model.num_classes or cfg.data.task != src.data.task
            or (cfg.data.task == "instances" and cfg.data.instance_target != src.data.instance_target))


def _get(cfg: Config, key: str) -> Any:
    parts = key.split(".")
    obj = getattr(cfg, parts[0])
    return obj.options.get(parts[2]) if parts[1] == "options" else getattr(obj, parts[1])
