"""The timed probe: when the planner's rules cannot be sure of the resolution (a coarse grid that sees large
objects whole, or full resolution with a smaller view), each candidate trains for the same short share of
the budget on the training split, with the learning rate the whole run would have at that time, and is
scored on the validation images at their own grid; the winner's trial then continues as the run for the
rest of the budget, so only the losers' minutes are spent on the question. nnU-Net settles it by five-fold
cross-validation of every configuration over days; this does it in minutes, and says what it tried.

Each trial is an ordinary run in ``RUN/probe/<name>`` (log, curves, checkpoints) with a ``result.json``
when it finished: a resumed run reuses finished trials and redoes only an interrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from unetseg.config import Config, dump_yaml
from unetseg.fileio import write_json
from unetseg.training.distributed import DistInfo, synchronize
from unetseg.training.interrupt import Termination
from unetseg.training.run import RunFolder, write_plan
from unetseg.training.runlog import RunLogger
from unetseg.training.trainer import Start, Trainer
from unetseg.validate import check_config

PROBE_SHARE = 0.15  # of the budget, per candidate (the winner's share is not lost: it continues)
MIN_BUDGET = 4.0  # minutes; below it a probe would leave too little for the winner: the rules decide
RESULT = "result.json"


@dataclass
class Trial:
    """One candidate: its planned values and, once trained, what it scored."""

    name: str
    values: dict[str, Any]
    summary: str = ""
    header: str = ""  # the plan's reasons, for plan.yaml
    score: float | None = None  # validation score at the images' own grid (mean foreground Dice, or DSB)
    steps: int = 0
    minutes: float = 0.0  # wall minutes the trial took, data preparation and validation included


def skip_reason(cfg: Config, candidates: int) -> str | None:
    """Why no probe runs (None: it runs): one candidate, ``train.probe: off``, no validation images, or
    (``auto``) too small a budget."""
    if candidates < 2:
        return "one candidate"
    if cfg.train.probe == "off":
        return "train.probe is off"
    if not (cfg.data.val_data or cfg.data.val_fraction > 0):
        return "no validation images to score the candidates on"
    budget = float(cfg.train.max_minutes or 0.0)
    if cfg.train.probe == "auto" and budget < MIN_BUDGET:
        return f"a {budget:g}-minute budget leaves no room for a probe (it needs {MIN_BUDGET:g})"
    return None


def trial_config(cfg: Config, trial: Trial, folder: Path, minutes: float) -> Config:
    """The config one trial trains with: the candidate's values, a budget of ``minutes`` (its learning rate
    follows the whole run's budget: the winner goes on without a restart), one validation at its end, no
    warm-up (a trial is short), no early stop."""
    from unetseg.planning.plan import apply_values

    c = apply_values(cfg.copy_deep(), trial.values)
    c.train.out = str(folder)
    c.train.max_minutes = minutes
    c.train.val_interval = 10**6
    c.train.warmup_epochs = 0
    c.train.patience = None
    return c


def load_result(folder: Path) -> dict[str, Any] | None:
    """A finished trial's record, or None (absent, unreadable, or its checkpoint is gone)."""
    try:
        data = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and (folder / "last").is_dir() else None


def save_result(folder: Path, trial: Trial) -> None:
    write_json(folder / RESULT, asdict(trial))


def fresh(folder: Path) -> None:
    """An interrupted trial starts again from nothing (its folder is ours: RUN/probe/<name>)."""
    if folder.exists():
        shutil.rmtree(folder)


def choose(trials: list[Trial]) -> Trial:
    """The best score; a tie (or no score) keeps the rules' own choice, the first."""
    best = trials[0]
    for t in trials[1:]:
        if t.score is not None and (best.score is None or t.score > best.score):
            best = t
    return best


def report(trials: list[Trial], winner: Trial) -> list[str]:
    """One line per trial for the log and ``plan.yaml``: what it was, its score, why it won or lost."""
    lines = []
    for t in trials:
        score = "no score" if t.score is None else f"validation {t.score:.4f}"
        verdict = "kept" if t is winner else (
            f"lost by {winner.score - t.score:.4f}" if t.score is not None and winner.score is not None
            else "lost")
        lines.append(f"probe {t.name}: {t.summary}; {t.steps} steps in {t.minutes:.1f} min, {score}: "
                     f"{verdict}")
    return lines


def elapsed_minutes(since: float) -> float:
    return (time.monotonic() - since) / 60.0


def run_probe(cfg: Config, trials: list[Trial], device: torch.device, info: DistInfo, run: RunFolder,
              quiet: bool, stop: Termination, hint: str | None, fixed: set[str]) -> Start | None:
    """Train each candidate for :data:`PROBE_SHARE` of the budget, score it on the
    validation images, apply the winner's values to ``cfg`` and return where its trial stopped (None: no
    probe). Finished trials of an interrupted run are reused."""
    from unetseg.planning.plan import apply_values

    if not trials:
        return None
    log = RunLogger(run.path, enabled=info.is_main, quiet=quiet)
    why = skip_reason(cfg, len(trials))
    if why is not None:
        log.log(f"probe: not run ({why}); the plan's choice trains")
        return None
    share = PROBE_SHARE * float(cfg.train.max_minutes or 0.0)
    log.log(f"probe: {len(trials)} candidates, {share:.1f} min each on the training split, scored on the "
            "validation images: " + "; ".join(f"{t.name}: {t.summary}" for t in trials))
    for trial in trials:
        folder = run.path / "probe" / trial.name
        done = load_result(folder)
        if done is not None:
            trial.score, trial.steps = done.get("score"), int(done["steps"])
            trial.minutes = float(done["minutes"])
            trial.summary = trial.summary or str(done.get("summary", ""))
            continue
        t0 = time.monotonic()
        if info.is_main:
            fresh(folder)
        synchronize(info)
        sub = trial_config(cfg, trial, folder, share)
        trainer = Trainer(sub, device, info, RunFolder(folder), resume=False, quiet=quiet, stop=stop,
                          hint=hint, fixed=fixed, lr_minutes=float(cfg.train.max_minutes or share))
        trainer.fit()
        trial.score, trial.steps, trial.minutes = trainer.last_score, trainer.step, elapsed_minutes(t0)
        if info.is_main:
            save_result(folder, trial)
    winner = choose(trials)
    lines = report(trials, winner)
    for line in lines:
        log.log(line)
    apply_values(cfg, winner.values)
    check_config(cfg, "the probe's choice")
    if info.is_main:
        write_plan(run, dump_yaml(cfg, "\n".join([*lines, winner.header])))
    spent = sum(t.minutes for t in trials)
    return Start(run.path / "probe" / winner.name / "last", spent, winner.name)
