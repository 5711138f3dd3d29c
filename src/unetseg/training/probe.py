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

from unetseg.config import Config
from unetseg.fileio import write_json

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


@dataclass(frozen=True)
class Start:
    """Where the run continues from: the winning trial's last checkpoint and the minutes already spent."""

    checkpoint: Path
    minutes: float
    name: str


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
