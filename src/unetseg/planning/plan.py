"""``make_plan``: the fingerprint, the device and the time budget become a recipe, each value with its
reason; values the user gave (command line > YAML) are kept and the rules build on them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.config import Config, build_config, dump_yaml
from unetseg.config.schema import instance_classes
from unetseg.data.cases import find_cases
from unetseg.data.prepare import check_geometry
from unetseg.errors import ConfigError, DataError
from unetseg.planning import rules
from unetseg.planning.finetune import (
    Source,
    check_conflicts,
    head_is_new,
    open_source,
    source_decisions,
    source_values,
)
from unetseg.planning.fingerprint import Fingerprint
from unetseg.planning.fingerprint_cache import cached_fingerprint
from unetseg.planning.rules import Decision, Device
from unetseg.planning.timing import Timing, measure, measure_tile
from unetseg.runtime import resolve_device
from unetseg.validate import check_axes

MIN_STEPS = {2: 800, 3: 800}  # optimizer steps a width must reach in the budget to be chosen (see README)
WIDTHS = {"cpu": [8, 16, 32], "cuda": [16, 32, 48]}
BATCH = {("cpu", 2): 4, ("cpu", 3): 2, ("cuda", 2): 12, ("cuda", 3): 2}
STEP_OVERHEAD = 1.2  # data loading and logging on top of the timed model step (measured on 2 CPU cores)
VAL_SHARE = 0.1  # validation may take at most this share of the budget


@dataclass
class Plan:
    """The planned recipe: ``decisions`` in the order they were made (given values included, marked)."""

    fingerprint: Fingerprint
    device: Device
    decisions: list[Decision] = field(default_factory=list)
    given: set[str] = field(default_factory=set)
    timing: Timing = field(default_factory=Timing)
    estimate: str = ""
    name: str = "full"  # the resolution planned (:func:`unetseg.planning.rules.resolution`)
    alternatives: list[Plan] = field(default_factory=list)  # what a timed probe tries against this plan
    fine: Plan | None = None  # a coarse plan's full-resolution twin: a cascade's second stage

    def planned(self) -> dict[str, Any]:
        """The values the planner chose (not the ones the user gave), as dotted keys."""
        return {d.key: d.value for d in self.decisions if d.key not in self.given}

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with the planned values set (validated); what the user gave is left alone."""
        return apply_values(cfg, self.planned())

    def recipe(self, cfg: Config, notes: list[str] | None = None) -> str:
        """A YAML recipe ``train --config`` accepts: every planned value with its reason as a comment
        (``notes``: lines to put first, e.g. what a probe measured)."""
        return dump_yaml(cfg, self.header(notes))

    def header(self, notes: list[str] | None = None) -> str:
        """The comment block of :meth:`recipe`."""
        lines = [f"{d.key}: {d.reason}" + (" (given)" if d.key in self.given else "") for d in self.decisions]
        return "\n".join([*(notes or []), "unetseg plan: " + self.estimate, *lines])

    def explain(self, key: str, reason: str) -> None:
        """Give the decision on ``key`` another reason (the caller decided it: a K-fold run's share of the
        budget), shown as planned."""
        self.decisions = [Decision(d.key, d.value, reason) if d.key == key else d for d in self.decisions]
        self.given = self.given - {key}

    def rows(self) -> list[tuple[str, str, str]]:
        return [
            (d.key, _show(d.value), d.reason + (" [given]" if d.key in self.given else ""))
            for d in self.decisions
        ]


def apply_values(cfg: Config, planned: dict[str, Any]) -> Config:
    """Set planned values (dotted keys) on ``cfg`` in place, validated."""
    merged = build_config([(_nested(planned), "plan")], base=cfg)
    for section in ("model", "data", "augment", "train", "infer"):
        setattr(cfg, section, getattr(merged, section))
    return cfg


def _show(v: Any) -> str:
    return "-" if v is None else str(v)


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> the nested form, ``model.options.X`` merged into ``model.options``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        if parts[:2] == ["model", "options"]:
            opts = out.setdefault("model", {}).setdefault("options", {})
            if value is not None:
                opts[parts[2]] = value
            continue
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


class _Work:
    """The config as decided so far: given values win, planned ones fill the rest."""

    def __init__(self, cfg: Config, given: set[str], source: Source | None = None) -> None:
        self.cfg, self.given, self.source = cfg.copy_deep(), given, source
        self.fixed: set[str] = set()  # decided by a fine-tune's source: later rules leave them alone
        self.decisions: list[Decision] = []

    def fork(self) -> _Work:
        """An independent copy (the decisions so far included), to plan an alternative from."""
        other = _Work(self.cfg, self.given, self.source)
        other.fixed, other.decisions = set(self.fixed), list(self.decisions)
        return other

    def kept(self, key: str) -> bool:
        """Whether a rule may not change ``key``: the user gave it or a fine-tune's source decides it."""
        return key in self.given or key in self.fixed

    def get(self, key: str) -> Any:
        parts = key.split(".")
        obj = getattr(self.cfg, parts[0])
        if parts[1] == "options":
            return obj.options.get(parts[2])
        return getattr(obj, parts[1])

    def minutes(self) -> float:
        """The time budget: given, or :func:`~unetseg.planning.rules.default_budget`'s."""
        minutes = self.cfg.train.max_minutes
        assert minutes is not None  # planned before the width and the schedule
        return float(minutes)

    def take(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.key in self.fixed:
                continue
            if d.key in self.given:
                self.decisions.append(Decision(d.key, self.get(d.key), "given"))
                continue
            if isinstance(d.value, dict):  # a dict option: the keys the user gave stay theirs
                mine = {k for g in self.given if g.startswith(d.key + ".") for k in [g[len(d.key) + 1 :]]}
                d = Decision(
                    d.key,
                    {**self.get(d.key), **{k: v for k, v in d.value.items() if k not in mine}},
                    d.reason,
                )
            self.decisions.append(d)
            parts = d.key.split(".")
            obj = getattr(self.cfg, parts[0])
            if parts[1] == "options":
                opts = {k: v for k, v in obj.options.items() if k != parts[2]}
                obj.options = {**opts, **({parts[2]: d.value} if d.value is not None else {})}
            else:
                setattr(obj, parts[1], d.value)


def device_of(cfg: Config) -> tuple[torch.device, Device]:
    dev = resolve_device(cfg.train.device)
    mem = torch.cuda.get_device_properties(dev).total_memory / 2**30 if dev.type == "cuda" else 0.0
    return dev, Device(dev.type, mem)


@dataclass(frozen=True)
class FoldBudget:
    """A K-fold run's minutes: the whole run's, each fold's (None: the folds train their epochs), why."""

    whole: float | None
    per_fold: float | None
    reason: str


def fold_budget(cfg: Config, given: set[str] | None) -> FoldBudget:
    """The budget of a ``train.folds``-fold run: ``train.max_minutes`` (given, or the planner's default for
    the data and device) is for the whole run, shared by the folds
    (:func:`unetseg.planning.rules.fold_budget`: a given budget too small for the folds is refused).
    ``given``: the keys the user set (None: unplanned, where only a given budget is shared)."""
    k = cfg.train.folds
    given_minutes = cfg.train.max_minutes if given is None or "train.max_minutes" in given else None
    _, device = device_of(cfg)
    if given is None:
        if given_minutes is None:
            return FoldBudget(None, None, f"no --max-minutes: each of {k} folds trains its epochs")
        whole, d = rules.fold_budget(k, device, cfg.model.spatial_dims, given_minutes, None)
    else:
        fp = _fingerprint(cfg, None)
        default = rules.default_budget(fp, device, fine_tune=bool(cfg.train.init_from))
        whole, d = rules.fold_budget(k, device, fp.spatial_dims, given_minutes, default)
    return FoldBudget(whole, float(d.value), d.reason)


def make_plan(cfg: Config, given: set[str], *, cache_dir: str | Path | None = None,
              fingerprint: Fingerprint | None = None) -> Plan:
    """Plan every option of ``cfg`` that is not in ``given`` from ``cfg.data.data``'s fingerprint (or the
    ``fingerprint`` given), the device (``cfg.train.device``) and the budget (``cfg.train.max_minutes`` or
    a default for the device). When the rules cannot be sure of the resolution
    (:func:`unetseg.planning.rules.resolution`), the plan's ``alternatives`` hold the other candidates, each
    planned whole, for a timed probe in ``train``."""
    fp = fingerprint if fingerprint is not None else _fingerprint(cfg, cache_dir)
    check_axes(cfg, fp.spatial_dims, what=f"the images in {cfg.data.data} are")  # before any rule uses them
    torch_dev, device = device_of(cfg)
    source = open_source(cfg.train.init_from) if cfg.train.init_from else None
    work = _Work(cfg, given, source)
    if source is not None:  # a fine-tune: the source's architecture and input scaling, before any rule
        check_conflicts(cfg, given, source)
        work.take(source_decisions(source))
        work.fixed = set(source_values(source)) - given
    work.take(
        [
            Decision("model.spatial_dims", fp.spatial_dims, "the data"),
            Decision("model.in_channels", fp.channels, "the data"),
        ]
    )
    work.take(rules.instance_target(cfg.data.task))
    work.cfg.model.num_classes = _num_classes(work.cfg, fp)
    work.take(rules.normalization(fp))
    work.take(rules.spacing(fp))
    options = _resolutions(work, fp, device, cfg.data.task)
    if source is not None:  # a trial of each would train the source's copy: the rules' choice alone
        options = options[:1]
    plans = [_finish(work.fork(), fp, device, torch_dev, option) for option in options]
    plans[0].alternatives = plans[1:]
    if plans[0].name == "coarse" and source is None and _may_cascade(cfg, fp.spatial_dims):
        plans[0].fine = next((p for p in plans if p.name == "full"), None) or _finish(
            work.fork(), fp, device, torch_dev, rules.Resolution(
                "full", None, rules.PATCH_VOXELS[(device.kind, fp.spatial_dims)],
                "full resolution (a cascade's second stage)"))
    return plans[0]


def _fingerprint(cfg: Config, cache_dir: str | Path | None) -> Fingerprint:
    data = cfg.data.data
    if data is None:
        raise DataError("no dataset given (--data DIR)")
    cases = find_cases(data, skip_bad=cfg.data.skip_bad)
    instances = cfg.data.task == "instances"
    return cached_fingerprint(
        data,
        cases,
        cache_dir=cache_dir,
        class_values=None if instances else cfg.data.class_values,
        max_bytes=cfg.data.max_image_gib * 2**30,
        instances=instances,
    )


def _may_cascade(cfg: Config, dims: int) -> bool:
    """Whether a coarse plan needs its full-resolution twin (``train.cascade``: auto tries it in 3D)."""
    return cfg.data.task == "semantic" and (cfg.train.cascade == "on" or (
        cfg.train.cascade == "auto" and dims == 3))


def _resolutions(work: _Work, fp: Fingerprint, device: Device, task: str) -> list[rules.Resolution]:
    """The resolutions to plan: the rules' (the first is their choice); the user's when they gave the
    resolution or the patch (nothing to probe then)."""
    if {"data.downsample", "data.patch_size"} & work.given:
        why = "given" if "data.downsample" in work.given else "data.patch_size is given: no other resolution"
        budget = rules.PATCH_VOXELS[(device.kind, fp.spatial_dims)]
        _check_downsample(work.get("data.downsample"), fp, work.get("data.spacing"), str(work.cfg.data.data))
        return [rules.Resolution("given", work.get("data.downsample"), budget, why)]
    return rules.resolution(fp, device, work.get("data.spacing"), task)


MIN_GRID = 16  # px per axis a given resolution must leave the median image: a network needs room to pool


def _check_downsample(factor: list[float] | None, fp: Fingerprint, target: list[float] | None,
                      data: str) -> None:
    """A given ``data.downsample`` that shrinks the median image under :data:`MIN_GRID` px on an axis it
    coarsens is refused with the largest factors that would not."""
    if not factor:
        return
    median = np.median(np.asarray(rules.model_shapes(fp, target)), axis=0)
    if any(f > 1 and m / f < MIN_GRID for m, f in zip(median, factor, strict=True)):  # thin axes stay
        most = [max(1.0, round(float(m) / MIN_GRID, 2)) for m in median]
        raise ConfigError(f"data.downsample {list(factor)} leaves the median image of {data} "
                          f"{[max(1, round(m / f)) for m, f in zip(median, factor, strict=True)]} px at the "
                          f"model's grid; at most {most} keeps {MIN_GRID} px per axis")


def _finish(work: _Work, fp: Fingerprint, device: Device, torch_dev: torch.device,
            option: rules.Resolution) -> Plan:
    """Everything after the resolution: geometry, sampling, loss, augmentation, inference, batch, budget,
    width (timed) and schedule."""
    work.take([Decision("data.downsample", option.downsample, option.reason)])
    target = work.get("data.spacing")
    work.take(rules.geometry(fp, device, target, work.get("data.downsample"), option.voxels,
                             pools=_pools_of(work) if work.source is not None else None))
    patch = list(work.get("data.patch_size"))
    factor = work.get("data.downsample") or [1.0] * fp.spatial_dims
    shapes = [tuple(s) for s in rules.model_shapes(fp, target, work.get("data.downsample"))]
    # given values too
    check_geometry(tuple(patch), int(work.get("model.depth")), shapes, str(work.cfg.data.data))
    work.take(rules.norm_layer(fp, patch, factor))
    work.take(rules.sampling(fp, patch, factor))
    work.take(rules.loss(fp, work.cfg.data.task))
    work.take(rules.augmentation(fp))
    divisor = _divisor(work)
    work.take(rules.inference(fp, device, patch, divisor, factor))
    work.take(
        [
            Decision(
                "train.batch_size",
                BATCH[(device.kind, fp.spatial_dims)],
                "at least 2; " + ("nnU-Net's" if device.gpu else "what a CPU step affords"),
            )
        ]
    )
    work.take([rules.default_budget(fp, device, fine_tune=work.source is not None)])
    plan = Plan(fp, device, given=work.given, name=option.name)
    _width_and_schedule(work, plan, torch_dev)
    plan.decisions = work.decisions
    return plan


def _num_classes(cfg: Config, fp: Fingerprint) -> int:
    """The model's outputs: those of the instance target, or one per class value (at least 2)."""
    if cfg.data.task == "instances":
        return instance_classes(cfg.data.instance_target)
    return max(2, len(cfg.data.class_values or fp.class_values))


def _pools_of(work: _Work) -> list[list[int]]:
    return work.get("model.options.strides") or [[2] * work.cfg.model.spatial_dims] * work.cfg.model.depth


def _divisor(work: _Work) -> list[int]:
    strides = _pools_of(work)
    return [math.prod(s[a] for s in strides) for a in range(work.cfg.model.spatial_dims)]


def _width_and_schedule(work: _Work, plan: Plan, device: torch.device) -> None:
    """Time the candidate widths, choose the widest that still reaches MIN_STEPS in the budget, then the
    epoch length, the validation interval and TTA so validation stays within VAL_SHARE of the budget."""
    cfg, fp = work.cfg, plan.fingerprint
    minutes = work.minutes()
    given_width = work.kept("model.base_channels")
    widths = [cfg.model.base_channels] if given_width else WIDTHS[plan.device.kind]
    plan.timing = measure(cfg, widths, device)
    if not plan.timing.step_s:  # not even the narrowest fits in memory: plan it anyway, say so
        plan.timing.step_s[widths[0]] = float("inf")
    base, steps, why = choose_width(plan.timing.step_s, minutes, fp.spatial_dims)
    work.take([Decision("model.base_channels", base, why)])
    cap = rules.MAX_WIDTH[fp.spatial_dims]
    capped = any(base * 2**i > cap for i in range(cfg.model.depth + 1))
    channels = [min(base * 2**i, cap) for i in range(cfg.model.depth + 1)] if capped else None
    why = f"widths capped at {cap} (nnU-Net)" if capped else "base doubled per level"
    work.take([Decision("model.options.channels", channels, why)])
    measure_tile(work.cfg, work.cfg.model.base_channels, device, plan.timing)
    _schedule(work, plan, steps)


def choose_width(step_s: dict[int, float], minutes: float, dims: int) -> tuple[int, int, str]:
    """The widest measured width whose steps in the budget reach MIN_STEPS (else the fastest), the steps it
    makes, and the reason. A width is worth more than steps only once training has enough steps to
    converge: a few hundred optimizer steps (BENCHMARKS.md: the recipes' 600 steps beat MONAI)."""
    usable = minutes * 60 * (1 - VAL_SHARE)
    steps = {b: int(usable / (t * STEP_OVERHEAD)) if t < float("inf") else 0 for b, t in step_s.items()}
    need = MIN_STEPS[dims]
    fit = [b for b, n in steps.items() if n >= need]
    base = max(fit) if fit else min(steps, key=lambda b: step_s[b])
    timed = ", ".join(f"base {b}: {t:.2f} s/step" for b, t in step_s.items())
    why = (
        f"{timed}; the widest with >= {need} steps in {minutes:g} min"
        if fit
        else f"{timed}; none reaches {need} steps in {minutes:g} min: the fastest"
    )
    return base, steps[base], why


def _schedule(work: _Work, plan: Plan, steps: int) -> None:
    cfg, fp = work.cfg, plan.fingerprint
    minutes = work.minutes()
    iters = int(np.clip(round(steps / 12), 20, 250))
    epochs = max(1, math.ceil(steps / iters))
    tiles = _tiles_per_image(fp, cfg)
    # a K-fold run validates each fold on its held-out share
    share = 1 / cfg.train.folds if cfg.train.folds > 1 else cfg.data.val_fraction
    n_val = max(1, round(fp.n_cases * share)) if share > 0 else 0
    val_s = n_val * tiles * plan.timing.tile_s * 1.3
    flips = 2**fp.spatial_dims
    tta = val_s * flips <= 0.01 * minutes * 60
    val_s *= flips if tta else 1
    interval = max(1, math.ceil(epochs * val_s / (VAL_SHARE * minutes * 60))) if val_s else 1
    decisions = [
        Decision("train.iters_per_epoch", iters, f"~{steps} steps in the budget: about 12 epochs"),
        Decision("train.epochs", 3 * epochs, "an upper bound: the clock ends the run"),
        Decision("train.lr", 2e-3, "AdamW 2e-3, poly decay that follows the clock to 0 at the deadline"),
        Decision("train.schedule", "poly", "nnU-Net's schedule"),
        Decision(
            "train.warmup_epochs",
            1 if iters <= 0.02 * steps else 0,
            "a warm-up of at most 2% of the steps",
        ),
        Decision(
            "train.val_interval",
            interval,
            f"{n_val} validation image(s), ~{val_s:.0f} s each time: "
            f"<= {100 * VAL_SHARE:.0f}% of the budget",
        ),
        Decision(
            "infer.tta",
            tta,
            "flip TTA: validation with it stays under 1% of the budget"
            if tta
            else "no TTA: it would cost more than 1% of the budget per validation",
        ),
    ]
    if work.source is not None:
        tuned = rules.fine_tune(2e-3, max(1, fp.n_cases - n_val), new_layers(work.cfg, work.source))
        decisions = [d for d in decisions if d.key not in {t.key for t in tuned}] + tuned
    work.take(decisions)
    step_s = plan.timing.step_s.get(cfg.model.base_channels, 0.0) * STEP_OVERHEAD
    plan.estimate = (
        f"about {minutes:g} min on {plan.device.kind}: ~{steps} steps of {step_s:.2f} s "
        f"(timing took {plan.timing.seconds:.0f} s) and a validation every {interval} epoch(s)"
    )


def new_layers(cfg: Config, source: Source) -> list[str]:
    """The parts of a fine-tuned network that start afresh: the stem (other image channels) and the head
    (other classes)."""
    return (["stem"] if cfg.model.in_channels != source.config.model.in_channels else []) + (
        ["head"] if head_is_new(cfg, source) else [])


def _tiles_per_image(fp: Fingerprint, cfg: Config) -> int:
    tile = cfg.infer.tile or cfg.data.patch_size
    assert tile is not None  # rules.geometry planned the patch
    overlap = cfg.infer.overlap if cfg.infer.overlap is not None else (0.25 if fp.spatial_dims == 2 else 0.5)
    median = np.median(np.asarray(fp.shapes), axis=0) / np.asarray(cfg.data.downsample or [1.0] * len(tile))
    return int(
        math.prod(
            max(1, math.ceil((m - t) / max(1, t * (1 - overlap)))) + (m > t)
            for m, t in zip(median, tile, strict=True)
        )
    )
