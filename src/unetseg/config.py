"""The configuration tree: one dataclass per stage, YAML in and out, CLI overrides on top.

The same tree is written as ``config.json`` into every checkpoint, so a checkpoint alone is enough to
predict: the model, the class map, the normalisation and the patch size travel with the weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unetseg.errors import ConfigError


@dataclass
class ModelConfig:
    """Which network to build. ``options`` holds every other keyword of :func:`unetseg.build_model`
    (norm, activation, upsample, padding, dropout, deep_supervision, init, recurrence, ...)."""

    name: str = "unet"
    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 32
    depth: int = 4
    options: dict[str, Any] = field(default_factory=dict)

    def build_kwargs(self) -> dict[str, Any]:
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "base_channels": self.base_channels,
            "depth": self.depth,
            **self.options,
        }


@dataclass
class DataConfig:
    """Where the data is and how it becomes tensors.

    ``class_values`` maps mask values to classes by position (``[0, 255]``: 0 -> class 0, 255 -> class 1);
    a list in it merges several values into one class (``[0, [1, 2, 3, 4]]``); ``None`` means: the sorted
    set of values found in the training masks.
    ``normalization``: ``zscore`` (per image), ``percentile`` (clip to ``percentiles`` then z-score, per
    image), ``window`` (fixed ``window=[lo, hi]`` mapped to [-1, 1], for CT) or ``none``.
    """

    data: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    class_values: list[float | list[float]] | None = None
    normalization: str = "zscore"
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    window: list[float] | None = None
    patch_size: list[int] | None = None
    foreground_fraction: float = 0.33
    cache: str = "auto"  # auto | memory | lazy
    cache_gib: float = 2.0  # "auto" keeps decoded cases in memory up to this size, else reads lazily
    pad_mode: str = "reflect"  # reflect | constant: how patches beyond the image border are filled
    skip_bad: bool = False
    num_workers: int = 2


@dataclass
class AugmentConfig:
    """Augmentations, each with a probability and a range. Image and mask are transformed together;
    masks use nearest interpolation so they never get values outside the class map."""

    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    affine_prob: float = 0.2
    rotation_degrees: float = 15.0
    scale_range: list[float] = field(default_factory=lambda: [0.85, 1.15])
    elastic_prob: float = 0.2
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    brightness_prob: float = 0.15
    brightness_range: list[float] = field(default_factory=lambda: [-0.2, 0.2])
    contrast_prob: float = 0.15
    contrast_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    gamma_prob: float = 0.15
    gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])
    noise_prob: float = 0.1
    noise_std: list[float] = field(default_factory=lambda: [0.0, 0.1])
    blur_prob: float = 0.1
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.0])


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run."""

    out: str | None = None
    epochs: int = 50
    iters_per_epoch: int = 50
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.99
    schedule: str = "poly"  # poly | cosine | constant
    warmup_epochs: int = 1
    grad_clip: float | None = 12.0
    loss: str = "dice_ce"
    loss_options: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto | on | off
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    val_interval: int = 1
    patience: int | None = None
    max_minutes: float | None = None


@dataclass
class InferConfig:
    """Sliding-window prediction. ``tile=None`` means the training patch size."""

    tile: list[int] | None = None
    overlap: float | None = None  # None: 0.25 in 2D, 0.5 in 3D
    blend: str = "gaussian"  # gaussian | constant
    batch_size: int = 4
    tta: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> Config:
        cfg = cls()
        return apply_overrides(cfg, d, source=source)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SECTIONS = ("model", "data", "augment", "train", "infer")


def _section_fields(cfg: Config) -> dict[str, set[str]]:
    return {s: {f.name for f in dataclasses.fields(getattr(cfg, s))} for s in SECTIONS}


def apply_overrides(cfg: Config, values: dict[str, Any], source: str = "config") -> Config:
    """Set values from a nested dict ``{"train": {"lr": 0.01}}`` or dotted keys ``{"train.lr": 0.01}``.

    A flat key that names exactly one field of one section (``lr``) is accepted too, so YAML files may be
    written flat. Unknown keys raise a :class:`ConfigError` naming the key and the source.
    """
    fields_by_section = _section_fields(cfg)
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                _set(cfg, key, sub, v, fields_by_section, source)
        elif key in ("versions", "metrics", "extra"):
            continue  # informational blocks of a checkpoint's config.json
        elif "." in key:
            section, sub = key.split(".", 1)
            if section not in SECTIONS:
                raise ConfigError(
                    f"{source}: unknown section {section!r} in {key!r}; sections: {', '.join(SECTIONS)}"
                )
            _set(cfg, section, sub, value, fields_by_section, source)
        else:
            owners = [s for s, names in fields_by_section.items() if key in names]
            if len(owners) != 1:
                raise ConfigError(
                    f"{source}: unknown option {key!r}"
                    if not owners
                    else f"{source}: option {key!r} is ambiguous; write it as one of "
                    + ", ".join(f"{s}.{key}" for s in owners)
                )
            _set(cfg, owners[0], key, value, fields_by_section, source)
    return cfg


def _set(cfg: Config, section: str, name: str, value: Any, fields_by_section: dict, source: str) -> None:
    if name not in fields_by_section[section]:
        allowed = ", ".join(sorted(fields_by_section[section]))
        raise ConfigError(f"{source}: unknown option {section}.{name}; allowed: {allowed}")
    obj = getattr(cfg, section)
    if name == "options" and isinstance(value, dict):
        obj.options = {**obj.options, **value}
    elif isinstance(value, tuple):
        setattr(obj, name, list(value))
    else:
        setattr(obj, name, value)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with one clear error line when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping of options at the top level")
    return d


def parse_option_value(text: str) -> Any:
    """Parse ``--option KEY=VALUE`` values as YAML: ``3`` -> int, ``0.1`` -> float, ``true`` -> bool."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
