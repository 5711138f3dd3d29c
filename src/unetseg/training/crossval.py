"""K-fold cross-validation in one budget (``train --folds K``): K models, each trained on all folds but one
and scored on that one, sharing the run's minutes; the out-of-fold predictions of every training case; one
report; and the folds as one ensemble for ``predict``, ``evaluate`` and ``export``. Layout::

    RUN/folds.json        the split (stems and groups of each fold), the budget, each fold's state, and
                          ``pooled``: the ensemble's post-processing and members' temperature, chosen on
                          all the out-of-fold predictions together (:func:`_pooled_fit`)
    RUN/fold_<k>/         an ordinary run folder (best/, last/, log, curves) and held_out.json
    RUN/oof/<stem>.npz    every training case predicted by the fold that held it out
                          (format: :mod:`unetseg.evaluation.crossval`)
    RUN/cv.json, cv.html  per fold, and mean +/- sd across folds, of every metric ``evaluate`` computes
    RUN/log.txt, plan.yaml

The split is made once and kept in ``folds.json`` (a resumed run never splits again): whole groups, each
fold balanced by the classes its cases hold (:func:`~unetseg.data.splits.fold_cases`). The class values
come from every case, so every fold has the same classes. The plan is made once, for one fold's share of
the budget (``train.max_minutes``, given or planned, is the whole run's); a fold that ran over shortens
the folds after it, not the deadline (each gets its share of what is left, at most the planned share).
A fold validates on the cases it holds out and keeps its best checkpoint on them, as nnU-Net scores the
checkpoint it keeps (which makes a cross-validated score slightly optimistic). ``--resume`` continues the
fold it stopped in from its own ``last/`` (or scores it, when only that was left). Under torchrun every
rank runs the same folds and scores its share of the held-out cases.

A K-fold run refuses ``--val-data`` (each fold's held-out cases are its validation), a resolution probe and
a cascade (each fold trains the plan's first choice in one stage); a fine-tune (``--init-from``) is
cross-validated like any run: every fold starts from the same model.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from unetseg import checkpoint as ckpt
from unetseg.calibration import fit_heldout
from unetseg.config import Config, config_from_dict
from unetseg.config.schema import PostprocessStep
from unetseg.data.cases import Case, find_cases
from unetseg.data.prepare import class_map_of
from unetseg.data.splits import case_groups, fold_cases, grouping, mask_facts, strata
from unetseg.errors import CheckpointError, ConfigError
from unetseg.evaluation.crossval import (
    OOF,
    SUMMARY,
    load_fold,
    oof_pairs,
    pooled,
    save_fold,
    score_held_out,
    summary,
)
from unetseg.evaluation.report import write_report
from unetseg.evaluation.result import EvaluationResult, ImageResult, mean_sd
from unetseg.fileio import ensure_dir, write_json
from unetseg.io.images import SkipLog
from unetseg.planning.plan import FoldBudget, fold_budget
from unetseg.training.distributed import DistInfo, gather_objects, on_main, synchronize
from unetseg.training.heldout import summary as summary_line
from unetseg.training.heldout import what_to_fit
from unetseg.training.interrupt import Termination, caused_by_ctrl_c
from unetseg.training.run import RunFolder, TrainingInterrupted, interrupted_message
from unetseg.training.runlog import RunLogger
from unetseg.training.trainer import Trainer, keep_saved

STATES = ("pending", "training", "trained", "done")  # trained: the model is final, its scores are not yet
REPORT = "cv.html"
MIN_SHARE = 0.5  # of the planned per-fold minutes: what a fold gets when the folds before it ran over


@dataclass
class Fold:
    """One fold: the cases it holds out (and their groups), its budget and where it is."""

    cases: list[str]
    groups: list[str]  # the group of each case (empty: images taken as independent)
    minutes_budget: float | None = None
    state: str = "pending"
    minutes: float = 0.0  # training (its clock, across resumes), data preparation and scoring
    validation_score: float | None = None  # the best validation score on its held-out cases


@dataclass
class FoldRun:
    """``RUN/folds.json``: the split, the budget, the fold runs' config and each fold's state."""

    folds: list[Fold]
    split_seed: int
    grouping: str
    stratified_by: str
    whole_minutes: float | None
    per_fold_minutes: float | None
    budget: str
    config: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    # what the ensemble predicts with, chosen on the pooled out-of-fold predictions (a semantic run): the
    # temperature of every member and the post-processing (None: not chosen here; ``fit``: the record)
    pooled: dict[str, Any] | None = None

    def save(self, run: Path, info: DistInfo) -> None:
        if info.is_main:
            write_json(run / ckpt.FOLDS_FILE, asdict(self))

    @classmethod
    def load(cls, run: Path) -> FoldRun:
        path = run / ckpt.FOLDS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["folds"] = [Fold(**f) for f in data["folds"]]
            record = cls(**data)
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path}: damaged or unreadable; start afresh with --overwrite") from None
        if any(f.state not in STATES for f in record.folds):
            raise CheckpointError(f"{path}: unknown fold state; start afresh with --overwrite")
        return record


def check_request(cfg: Config) -> None:
    """What a K-fold run refuses, in one line, before any data is read."""
    if cfg.train.folds < 2:
        return
    if cfg.data.val_data:
        raise ConfigError("--folds validates each fold on the cases it holds out; --val-data has no place "
                          "in a K-fold run (evaluate its ensemble on them afterwards: unetseg evaluate "
                          "--checkpoint RUN --data VAL)")
    if cfg.train.probe == "on":
        raise ConfigError("--folds trains the plan's first choice in every fold; a K-fold run runs no "
                          "resolution probe (--probe auto or off)")
    if cfg.train.cascade == "on":
        raise ConfigError("--folds trains one stage per fold; a K-fold run is never a cascade (--cascade "
                          "auto or off)")


def requested(cfg: Config, run: Path, resume: bool) -> bool:
    """Whether this is a K-fold run: ``--folds K`` (K > 1), or ``--resume`` of a K-fold run. Resuming with
    another K, or a single-model run with ``--folds``, is refused."""
    if resume and ckpt.is_fold_run(run):
        k = len(FoldRun.load(run).folds)
        if cfg.train.folds not in (1, k):
            raise ConfigError(f"{run}: a {k}-fold run; --folds {cfg.train.folds} cannot resume it (start "
                              "afresh with --overwrite, or choose another --out)")
        return True
    if resume and cfg.train.folds > 1 and any((run / n).exists() for n in ("last", "best", "last.old")):
        raise ConfigError(f"{run}: a single-model run; --folds {cfg.train.folds} cannot continue it (start "
                          "afresh with --overwrite, or choose another --out)")
    return cfg.train.folds > 1


Planner = Callable[..., tuple[list[Any], Any]]  # session._plan


def cross_validate(cfg: Config, run: RunFolder, device: torch.device, info: DistInfo, *, quiet: bool,
                   stop: Termination, hint: str | None, given: set[str] | None, resume: bool,
                   plan: Planner) -> Path:
    """Train (or go on training) every fold, score it on its held-out cases, then write the report (see the
    module doc). ``plan``: the session's planner (``plan(cfg, given, run, info, quiet, budget)``)."""
    log = RunLogger(run.path, enabled=info.is_main, quiet=quiet)
    where = run.path
    try:
        if resume and ckpt.is_fold_run(run.path):
            record = FoldRun.load(run.path)
            cfg = _resumed(cfg, record, given, run.path)
            log.log("cross-validation: resuming; folds " + ", ".join(
                f"{k} {f.state}" for k, f in enumerate(record.folds)))
        else:
            record, cfg = _begin(cfg, given, run, info, quiet, plan, log)
        quiet_skip = SkipLog(stream=io.StringIO())  # bad files were reported when the folds were made
        assert cfg.data.data is not None  # train checked --data
        cases = {c.name: c for c in find_cases(cfg.data.data, skip_bad=cfg.data.skip_bad, skip=quiet_skip)}
        for k, fold in enumerate(record.folds):
            if fold.state == "done":
                continue
            where = run.path / f"fold_{k}"
            if stop.requested:  # SIGTERM between two folds: nothing to save
                raise TrainingInterrupted(interrupted_message(where, hint, "SIGTERM", False), 143)
            _run_fold(cfg, record, k, cases, run, device, info, quiet=quiet, stop=stop, hint=hint,
                      given=given, log=log)
        where = run.path
        _finish(cfg, record, run.path, info, log)
        return run.path
    except BaseException as e:
        if isinstance(e, TrainingInterrupted) or not caused_by_ctrl_c(e):
            raise
        message = interrupted_message(where, hint, "interrupted (Ctrl-C)", False)
        raise TrainingInterrupted(message, 130) from None


def _split(cfg: Config, given: set[str] | None) -> dict[str, Any]:
    """Rank 0's part of a new K-fold run: the groups, the budget (refused when too small), the masks'
    classes and the folds, as plain data."""
    d, k = cfg.data, cfg.train.folds
    assert d.data is not None  # train checked --data
    cases = find_cases(d.data, skip_bad=d.skip_bad)
    groups = case_groups(cases, d)
    units = len(set(groups.values())) if groups is not None else len(cases)
    if k > units:  # before the budget (which may fingerprint every image) or any mask is read
        fold_cases(cases, k, d.split_seed, groups, what=str(d.data))
    budget = fold_budget(cfg, given)
    skip = SkipLog() if d.skip_bad else None
    facts = mask_facts(cases, d, skip)
    cases, holds = [f.case for f in facts], strata(facts, d.task)
    folds = fold_cases(cases, k, d.split_seed, groups, holds, what=str(d.data))
    values = class_map_of(cfg, [(f.case.mask_path, f.dtype, f.values) for f in facts])
    return {
        "folds": [Fold([c.name for c in f], [groups[c.name] for c in f] if groups else []) for f in folds],
        "grouping": grouping(d, groups),
        "stratified_by": "whether a case holds objects" if d.task == "instances" else
                         "the mask values each case holds",
        "class_values": values.config_values() if d.task == "semantic" else None,
        "budget": budget,
    }


def _begin(cfg: Config, given: set[str] | None, run: RunFolder, info: DistInfo, quiet: bool, plan: Planner,
           log: RunLogger) -> tuple[FoldRun, Config]:
    """A new K-fold run: split (rank 0), share the budget, plan once, write ``folds.json``."""
    split = on_main(lambda: _split(cfg, given), info)
    budget: FoldBudget = split["budget"]
    folds: list[Fold] = split["folds"]
    log.log(f"cross-validation: {len(folds)} folds of {', '.join(str(len(f.cases)) for f in folds)} cases; "
            f"{split['grouping']}; balanced by {split['stratified_by']}")
    log.log(f"cross-validation: {budget.reason}")
    cfg.train.max_minutes = budget.per_fold
    cfg.train.probe = cfg.train.cascade = "off"
    if given is not None:
        candidates, _ = plan(cfg, given | {"train.max_minutes"}, run, info, quiet, budget)
        if candidates:
            log.log("probe: not run (a K-fold run trains the plan's first choice in every fold)")
    if split["class_values"] is not None and cfg.data.class_values is None:
        cfg.data.class_values = split["class_values"]  # every fold gets the classes of every case
    record = FoldRun(folds, cfg.data.split_seed, split["grouping"], split["stratified_by"], budget.whole,
                     budget.per_fold, budget.reason, cfg.to_dict())
    record.save(run.path, info)
    synchronize(info)
    return record, cfg


def _resumed(cfg: Config, record: FoldRun, given: set[str] | None, run: Path) -> Config:
    """The config of a resumed K-fold run: the one it began with (the plan, the classes), with what the
    resume command gives (a device, workers) on top."""
    saved = config_from_dict(record.config, source=str(run / ckpt.FOLDS_FILE))
    keep_saved(cfg, saved, planned=given is not None, given=given or set())
    cfg.train.folds = len(record.folds)
    return cfg


def _share(record: FoldRun, k: int) -> float | None:
    """Fold ``k``'s minutes: the planned share, or less when the folds before it ran over (what they left,
    split evenly over it and the folds after it; at least :data:`MIN_SHARE` of the planned share). Minutes
    a fold did not use (its epochs ended first) are not handed on: the folds stay alike."""
    if record.whole_minutes is None or record.per_fold_minutes is None:
        return None
    left = record.whole_minutes - sum(f.minutes for f in record.folds[:k])
    per = record.per_fold_minutes
    return min(per, max(left / (len(record.folds) - k), MIN_SHARE * per))


def _fold_config(cfg: Config, fold: Fold, folder: Path) -> Config:
    c = cfg.copy_deep()
    c.train.out, c.train.folds, c.train.max_minutes = str(folder), 1, fold.minutes_budget
    c.train.probe = c.train.cascade = "off"
    return c


def _run_fold(cfg: Config, record: FoldRun, k: int, cases: dict[str, Case], run: RunFolder,
              device: torch.device, info: DistInfo, *, quiet: bool, stop: Termination, hint: str | None,
              given: set[str] | None, log: RunLogger) -> None:
    """Train fold ``k`` (or go on training it), then score it on its held-out cases."""
    fold, folder, t0 = record.folds[k], run.path / f"fold_{k}", time.monotonic()
    if fold.state in ("pending", "training"):
        if fold.state == "pending":
            fold.minutes_budget, fold.state = on_main(lambda: _share(record, k), info), "training"
            record.save(run.path, info)
        held, total = len(fold.cases), sum(len(f.cases) for f in record.folds)
        groups = f" ({len(set(fold.groups))} groups)" if fold.groups else ""
        log.log(f"fold {k} of {len(record.folds)}: {total - held} training, {held} held-out cases{groups} "
                f"in {folder}; "
                + (f"{fold.minutes_budget:.2f} min" if fold.minutes_budget else "its epochs"))
        sub = RunFolder(folder, previous=run.previous, keep=run.keep)  # the first checkpoint commits the run
        trainer = Trainer(_fold_config(cfg, fold, folder), device, info, sub, resume=_has_checkpoint(folder),
                          quiet=quiet, stop=stop, hint=hint, fixed=given, holdout=fold.cases,
                          cache=run.path / "cache")
        prepared = time.monotonic()
        trainer.fit()
        fold.validation_score = trainer.best if trainer.best >= 0 else None
        fold.minutes = trainer.minutes_done + (prepared - t0) / 60
        fold.state = "trained"
        record.save(run.path, info)
    t1 = time.monotonic()
    result = _score(cfg, fold, k, cases, run.path, device, info)
    fold.minutes += (time.monotonic() - t1) / 60
    fold.state = "done"
    record.save(run.path, info)
    log.log(f"fold {k}: mean foreground Dice {result.mean_foreground_dice:.4f} on its {result.num_images} "
            f"held-out cases; {fold.minutes:.2f} min in all")


def _has_checkpoint(folder: Path) -> bool:
    try:
        ckpt.find_checkpoint(folder / "last")
        return True
    except CheckpointError:
        return False


def _score(cfg: Config, fold: Fold, k: int, cases: dict[str, Case], run: Path, device: torch.device,
           info: DistInfo) -> EvaluationResult:
    """The fold's best checkpoint on its held-out cases (each rank its share): ``RUN/oof/<stem>.npz`` and
    the fold's ``held_out.json``."""
    folder = run / f"fold_{k}"
    missing = [s for s in fold.cases if s not in cases]
    if missing:
        raise CheckpointError(f"{run / ckpt.FOLDS_FILE}: held-out case {missing[0]!r} of fold {k} is not in "
                              f"{cfg.data.data} any more; start afresh with --overwrite")
    oof = ensure_dir(run / OOF, "--out")
    mine = [cases[s] for s in fold.cases[info.rank :: info.world_size]]
    part = score_held_out(folder, mine, fold=k, oof_dir=oof, data=str(cfg.data.data), device=device,
                          precision=cfg.train.precision)
    parts = cast("list[list[ImageResult]]", gather_objects(part.per_image, info))  # each rank's rows
    rows = sorted((r for p in parts for r in p), key=lambda r: r.case)
    result = EvaluationResult(str(folder), str(cfg.data.data), part.class_values, rows)
    if info.is_main:
        save_fold(folder, result)
    synchronize(info)
    return result


ENSEMBLE_TEMPERATURE_NOTE = (
    "the temperature calibrates one fold's model (each fold applies its own, fitted on the cases it held "
    "out); the ensemble averages its members' probabilities at temperature 1: the mean of several models "
    "is less sure than each, and members softened by a single model's temperature made the ensemble "
    "under-confident on unseen video sequences (on images like the training ones it helped a little; "
    "BENCHMARKS.md, cross-validation); `unetseg calibrate --data CAL` fits the ensemble's own temperature on "
    "labelled images no fold saw")


def _pooled_fit(cfg: Config, record: FoldRun, run: Path, log: RunLogger) -> dict[str, Any] | None:
    """nnU-Net's choice on all the out-of-fold predictions together (rank 0): the ensemble's
    post-processing, and the members' temperature in the ensemble, into ``record.pooled``; its record (for
    ``cv.json`` and the report), or None for an instance model or ``train.calibrate: false``.

    The temperature is fitted too, but only as a measure of how over-confident one fold's model is: no
    held-out image is unseen by the whole ensemble, so its own temperature cannot be fitted, and the
    members' temperature in it is 1 (:data:`ENSEMBLE_TEMPERATURE_NOTE`)."""
    temperature, postprocess = what_to_fit(cfg)
    if not (temperature or postprocess):
        return None
    t0 = time.monotonic()
    fit = fit_heldout(oof_pairs(run), temperature=temperature, postprocess=postprocess, source="out-of-fold",
                      seed=record.split_seed)
    record.pooled = {"temperature": 1.0 if temperature else None,  # None: the members' own (the user's)
                     "postprocess": fit.postprocess if postprocess else None,
                     "fit": {**fit.to_dict(), "ensemble_temperature": 1.0 if temperature else None,
                             "ensemble_temperature_note": ENSEMBLE_TEMPERATURE_NOTE if temperature else ""}}
    steps = [PostprocessStep(**s) for s in fit.postprocess]
    log.log(summary_line(fit, steps, time.monotonic() - t0, "out-of-fold predictions")
            + ("; the ensemble averages its members at temperature 1" if temperature else ""))
    return record.pooled["fit"]


def _finish(cfg: Config, record: FoldRun, run: Path, info: DistInfo, log: RunLogger) -> None:
    """The pooled out-of-fold choices (``folds.json``), ``RUN/cv.json`` and ``RUN/cv.html`` from the folds'
    scores; the summary line."""
    if info.is_main:
        fit = _pooled_fit(cfg, record, run, log)
        record.save(run, info)
        results = [load_fold(run / f"fold_{k}") for k in range(len(record.folds))]
        records = [{"cases": len(f.cases), "groups": len(set(f.groups)) or None,
                    "minutes": round(f.minutes, 3), "minutes_budget": f.minutes_budget,
                    "validation_score": f.validation_score}
                   for f in record.folds]
        about = {"grouping": record.grouping, "stratified_by": record.stratified_by,
                 "split_seed": record.split_seed, "whole_minutes": record.whole_minutes}
        cv = summary(results, records, about)
        if fit is not None:
            cv["pooled_fit"] = fit
        write_json(run / SUMMARY, cv)
        every = pooled(results, str(run), str(cfg.data.data))
        every.heldout = fit
        write_report(run / REPORT, every, checkpoint=run)
        dsb = cv.get("objects", {}).get("dsb")
        extra = f", DSB score {mean_sd(dsb)}" if dsb else ""
        log.log(f"cross-validation over {len(record.folds)} folds: mean foreground Dice "
                f"{mean_sd(cv['mean_foreground_dice'])}{extra} (sd "
                f"across folds; {run / SUMMARY}, {run / REPORT}); {run} predicts with the mean of its folds' "
                "probabilities (predict --folds picks some)")
    synchronize(info)
