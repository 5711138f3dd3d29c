"""``unetseg.train(data=..., out=..., max_minutes=...)``: training from a notebook the way the command line
trains, planned from the data, returning the run::

    run = unetseg.train(data="DATA", out="RUN", max_minutes=10)
    run.best, run.metrics[-1]          # the best validation score, the last epoch's row of metrics.csv
    seg = run.load()                   # a Segmenter (unetseg.load(run.path))
    cv = unetseg.train(data="DATA", out="CV", max_minutes=20, folds=5)   # 5 folds sharing 20 minutes
    cv.cv["mean_foreground_dice"]      # {"mean": ..., "sd": ...} across folds (RUN/cv.json)

Keywords are ``unetseg train``'s options (``model``, ``epochs``, ``patch_size``, ``classes``, ...) or any
config key, flat (``lr``) or dotted (``augment.flip_prob``); ``config``: a YAML recipe or a
:class:`~unetseg.config.Config` they are laid over. Every option not given is planned (``plan=False``: the
built-in defaults), as ``unetseg train`` does.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.config import Config, build_config, given_keys, load_yaml
from unetseg.config.sources import TRAIN_KEYS, parse_classes
from unetseg.inference.segmenter import Segmenter, load
from unetseg.training.interrupt import Termination
from unetseg.training.session import train as train_config


@dataclass
class TrainedRun:
    """A finished (or stopped) run: its folder, best validation score and the rows of ``metrics.csv``; a
    K-fold run: the cross-validated mean score (``best``), one row per fold and ``cv`` (``RUN/cv.json``)."""

    path: Path
    best: float | None = None
    metrics: list[dict[str, str]] = field(default_factory=list)
    cv: dict[str, Any] | None = None

    def __fspath__(self) -> str:
        return str(self.path)

    def load(self, **options: Any) -> Segmenter:
        """The run's model (its ``best``), ready to predict (:func:`unetseg.load`'s options)."""
        return load(self.path, **options)

    @classmethod
    def read(cls, path: str | Path) -> TrainedRun:
        """What a run folder says about itself."""
        path = Path(path)
        if (path / "cv.json").is_file():
            return cls._read_cv(path)
        try:
            with open(path / "metrics.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            rows = []
        key = "val_dsb" if rows and "val_dsb" in rows[0] else "val_dice"  # an instance model: the DSB score
        scores = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        return cls(path, max(scores) if scores else None, rows)


    @classmethod
    def _read_cv(cls, path: Path) -> TrainedRun:
        try:
            cv = json.loads((path / "cv.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(path)
        dsb = cv.get("objects", {}).get("dsb")
        score = (dsb or cv["mean_foreground_dice"])["mean"]
        rows = [{"fold": str(f["fold"]), "val_dice": "" if f["mean_foreground_dice"] is None
                 else str(f["mean_foreground_dice"])} for f in cv["per_fold"]]
        return cls(path, score, rows, cv)


def option_values(options: dict[str, Any]) -> dict[str, Any]:
    """Keywords -> dotted config keys: ``unetseg train``'s option names, ``classes`` (``"0,1+2"`` or a
    list), ``options`` (model options), and config keys as they are."""
    values: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name == "classes":
            values["data.class_values"] = parse_classes(value) if isinstance(value, str) else list(value)
        elif name == "options":
            values["model.options"] = dict(value)
        elif name in TRAIN_KEYS:
            values[TRAIN_KEYS[name]] = os.fspath(value) if isinstance(value, os.PathLike) else value
        else:
            values[name] = value
    return values


def train(data: str | Path | None = None, out: str | Path | None = None, *,
          config: str | Path | Config | None = None, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, plan: bool = True, cancel: Termination | None = None,
          **options: Any) -> TrainedRun:
    """Train on the dataset folder ``data`` into the run folder ``out`` and return the run (see the module
    doc). ``resume`` continues ``out``; ``overwrite`` replaces an earlier run there; ``cancel.request(0)``
    from another thread stops the run after its current step (raising ``TrainingInterrupted``)."""
    base, recipe = (config, None) if isinstance(config, Config) else (None, config)
    sources = [(load_yaml(recipe), str(recipe))] if recipe is not None else []
    sources.append((option_values({"data": data, "out": out, **options}), "unetseg.train"))
    cfg = build_config(sources, base=base)
    given = given_keys(sources) | (_set_keys(base) if base is not None else set())
    path = train_config(cfg, resume=resume, quiet=quiet, overwrite=overwrite, config_file=recipe,
                        given=given if plan else None, cancel=cancel)
    return TrainedRun.read(path)


def _set_keys(cfg: Config) -> set[str]:
    """The keys a given Config sets away from the defaults (the plan leaves them alone)."""
    default, own = Config().to_dict(), cfg.to_dict()
    return {f"{s}.{k}" for s, section in own.items() if isinstance(section, dict)
            for k, v in section.items() if default.get(s, {}).get(k) != v}
