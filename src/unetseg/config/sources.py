"""Where configuration values come from (defaults < plan < YAML < command line), merged and validated once.

Every source is a nested dict (``{"train": {"lr": 0.01}}``), a dotted one (``{"train.lr": 0.01}``) or flat
(``{"lr": 0.01}`` when ``lr`` names exactly one option). Errors are one line naming the source (a file
path, ``command line``, ``--option``) and the key, e.g. ``run.yaml: train.lr: expected a number (got
'fast')``. YAML is read with ``safe_load`` (no ``!!python`` tags), JSON as strict UTF-8.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from unetseg.config.schema import SECTIONS, Config, section_fields, show_value, validation_message
from unetseg.errors import ConfigError

# informational blocks of a checkpoint's config.json
INFORMATIONAL = ("versions", "metrics", "extra", "plan", "fingerprint")
MERGED = ("options", "loss_options")  # dict options: a later source adds keys instead of replacing all

# the options of `unetseg train` (and keywords of `unetseg.train`) that name one config key each; the rest
# (sizes, --classes, --option) are parsed by their callers
TRAIN_KEYS = {
    "data": "data.data",
    "out": "train.out",
    "model": "model.name",
    "val_data": "data.val_data",
    "val_fraction": "data.val_fraction",
    "base_channels": "model.base_channels",
    "depth": "model.depth",
    "epochs": "train.epochs",
    "iters_per_epoch": "train.iters_per_epoch",
    "max_minutes": "train.max_minutes",
    "batch_size": "train.batch_size",
    "loss": "train.loss",
    "lr": "train.lr",
    "optimizer": "train.optimizer",
    "schedule": "train.schedule",
    "device": "train.device",
    "precision": "train.precision",
    "normalization": "data.normalization",
    "task": "data.task",
    "seed": "train.seed",
    "patience": "train.patience",
    "workers": "data.num_workers",
    "max_image_gib": "data.max_image_gib",
    "compile": "train.compile",
    "skip_bad": "data.skip_bad",
    "probe": "train.probe",
    "cascade": "train.cascade",
    "init_from": "train.init_from",
    "log": "train.log",
    "folds": "train.folds",
    "groups": "data.groups",
    "groups_pattern": "data.groups_pattern",
}


def normalise_keys(values: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """``values`` in any of the three spellings -> ``{section: {option: value}}``; unknown keys raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of options at the top level, got "
                          f"{type(values).__name__}")
    fields = section_fields()
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: option names must be text, got {key!r}")
        if key in INFORMATIONAL:
            continue
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key}: expected a mapping of options, got {show_value(value)}")
            for sub, v in value.items():
                _put(out, key, sub, v, fields, source)
        elif "." in key:
            section, sub = key.split(".", 1)
            if section not in SECTIONS:
                raise ConfigError(f"{source}: unknown section {section!r} in {key!r}; sections: "
                                  f"{', '.join(SECTIONS)}")
            _put(out, section, sub, value, fields, source)
        else:
            owners = [s for s, names in fields.items() if key in names]
            if len(owners) != 1:
                raise ConfigError(_unknown(source, key, [f"{s}.{n}" for s, ns in fields.items() for n in ns])
                                  if not owners else f"{source}: option {key!r} is ambiguous; write it as "
                                  + " or ".join(f"{s}.{key}" for s in owners))
            _put(out, owners[0], key, value, fields, source)
    return out


def _put(out: dict, section: str, name: Any, value: Any, fields: dict, source: str) -> None:
    if name not in fields[section]:
        raise ConfigError(_unknown(source, f"{section}.{name}", [f"{section}.{n}" for n in fields[section]]))
    if isinstance(value, tuple):
        value = list(value)
    out.setdefault(section, {})[name] = value


def _unknown(source: str, key: str, known: list[str]) -> str:
    bare = {k.split(".", 1)[1]: k for k in known}
    close = difflib.get_close_matches(str(key), known, n=1) or [
        bare[m] for m in difflib.get_close_matches(str(key).split(".")[-1], list(bare), n=1)]
    hint = f"; did you mean {close[0]}?" if close else f"; see `unetseg train --help` ({len(known)} options)"
    return f"{source}: unknown option {key!r}{hint}"


def merge(base: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``extra`` on top of ``base`` (both normalised); dict options are merged key by key."""
    out = {s: dict(v) for s, v in base.items()}
    for section, values in extra.items():
        target = out.setdefault(section, {})
        for k, v in values.items():
            if k in MERGED and isinstance(v, dict) and isinstance(target.get(k), dict):
                target[k] = {**target[k], **v}
            else:
                target[k] = v
    return out


def build_config(sources: Iterable[tuple[dict[str, Any], str]], base: Config | None = None) -> Config:
    """Merge ``(values, source name)`` pairs in order on top of ``base`` (default: the defaults) and
    validate. Each source is validated as it is added, so an error names the source that caused it."""
    merged = base.to_dict() if base is not None else {}
    for values, source in sources:
        merged = merge(merged, normalise_keys(values, source))
        try:
            Config.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(validation_message(e, source)) from None
    return Config.model_validate(merged)


def given_keys(sources: Iterable[tuple[dict[str, Any], str]]) -> set[str]:
    """The dotted keys the sources set explicitly (what a plan must not override); inside the dict options
    (``model.options``, ``train.loss_options``) each key counts on its own (``model.options.norm``)."""
    keys: set[str] = set()
    for values, source in sources:
        for section, options in normalise_keys(values, source).items():
            for k, v in options.items():
                if k in MERGED and isinstance(v, dict):
                    keys.update(f"{section}.{k}.{sub}" for sub in v)
                else:
                    keys.add(f"{section}.{k}")
    return keys


def apply_overrides(cfg: Config, values: dict[str, Any], source: str = "config") -> Config:
    """Set ``values`` on ``cfg`` in place (validated) and return it."""
    new = build_config([(values, source)], base=cfg)
    for section in SECTIONS:
        setattr(cfg, section, getattr(new, section))
    return cfg


def config_from_dict(values: Any, source: str = "config") -> Config:
    """A validated :class:`Config` from a (checkpoint) dict; informational blocks are ignored."""
    return build_config([(values, source)])


def read_text(path: str | Path, what: str = "config file") -> str:
    """The UTF-8 text of a file, or one ConfigError line (missing, unreadable, not UTF-8)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found" if not p.exists() else f"{p}: not a file")
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (safe loader), one clear error line when it is missing or malformed."""
    p = Path(path)
    text = read_text(p)
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())[:160]})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping of options at the top level, got {type(d).__name__}")
    return d


def load_json(text: str, source: str) -> Any:
    """Strict JSON (NaN/Infinity refused) or one ConfigError line."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except (json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{source}: not valid JSON ({' '.join(str(e).split())[:120]})") from None


def dump_yaml(cfg: Config, header: str = "") -> str:
    """The YAML text of ``cfg`` (``train --config`` reads it back), with an optional comment header."""
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body


def parse_option_value(text: str) -> Any:
    """Parse ``--option KEY=VALUE`` values as YAML: ``3`` -> int, ``0.1`` -> float, ``true`` -> bool."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_classes(text: str) -> list[Any]:
    def number(v: str) -> float | int:
        f = float(v)
        return int(f) if f.is_integer() else f

    try:
        groups = [[number(v) for v in item.split("+")] for item in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--classes {text!r}: expected numbers separated by commas (1+2 merges values into one class)"
        ) from None
    return [g[0] if len(g) == 1 else g for g in groups]
