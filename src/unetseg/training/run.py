"""The run folder a training writes: when it may be (re)used, and how ``--overwrite`` keeps the old run
until the new one has a checkpoint; the one line an interrupted run leaves behind.

``train --out RUN`` refuses an existing run unless ``--resume`` (continue it) or ``--overwrite`` (start
afresh: the old run is moved aside to ``.RUN.previous``, removed once the new run has written its first
checkpoint, and put back if the new run fails before that). A folder that holds files but is not a run is
never touched, and a run folder never replaces a file the command reads (``--config RUN/config.yaml``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from unetseg.errors import ConfigError, OutputError, UnetsegError
from unetseg.fileio import ensure_dir, printable, write_text

RUN_MARKERS = ("log.txt", "last", "best", "metrics.csv", "config.yaml", "last.old", "best.old", "last.tmp",
               "folds.json")


class TrainingInterrupted(UnetsegError):
    """Ctrl-C or SIGTERM: the message says where the last checkpoint is and how to resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _inside(path: Path, folder: Path) -> bool:
    a, b = os.path.realpath(path), os.path.realpath(folder)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


@dataclass
class RunFolder:
    """The folder of one training run, opened by :func:`open_run`."""

    path: Path
    previous: Path | None = None
    keep: set[str] = field(default_factory=set)  # run files that are also inputs: never rewritten

    def may_write(self, path: Path) -> bool:
        return os.path.realpath(path) not in self.keep

    def committed(self) -> None:
        """The new run has a checkpoint: the old one moved aside by --overwrite can go."""
        if self.previous is not None and self.previous.exists():
            shutil.rmtree(self.previous, ignore_errors=True)
        self.previous = None

    def roll_back(self) -> None:
        """The new run failed before its first checkpoint: put the old run back."""
        if self.previous is None or not self.previous.exists():
            return
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.previous, self.path)
        self.previous = None


def is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / m).exists() for m in RUN_MARKERS)


def open_run(
    out: str | Path, *, resume: bool, overwrite: bool, inputs: list[tuple[str | Path | None, str]],
    main: bool = True,
) -> RunFolder:
    """Check and prepare ``out`` for a run, before any data is read (OutputError lines name the option).

    ``inputs``: ``(path, option)`` pairs the command reads (data folders, the YAML recipe; None: not given).
    ``main``: this process writes files (rank 0 under torchrun); others only check.
    """
    p = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume continues RUN and --overwrite replaces it; give one of them")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: exists and is not a folder; choose another --out")
    previous = p.with_name(f".{p.name}.previous")
    if overwrite and previous.exists():
        raise OutputError(
            f"{previous}: an earlier --overwrite of {p} was interrupted and kept the run before "
            "it there; move it back or delete it first"
        )
    holds = p.is_dir() and any(p.iterdir())
    if holds and not is_run(p):
        raise OutputError(f"{p}: holds files and is not a unetseg run folder; choose another --out")
    if is_run(p) and not (resume or overwrite):
        raise OutputError(
            f"{p}: holds an earlier run; pass --resume to continue it, --overwrite to start "
            "afresh, or choose another --out"
        )
    keep = set()
    for path, option in inputs:
        if path is None or not _inside(Path(path), p):
            continue
        if overwrite or not resume:
            raise OutputError(
                f"{p}: {option} {printable(path)} lies inside the run folder that --out would "
                "replace; move it out of the run folder first"
            )
        keep.add(os.path.realpath(path))
    run = RunFolder(p, keep=keep)
    if main and overwrite and is_run(p):
        os.replace(p, previous)  # the run folder itself is made by the first line of the new log
        run.previous = previous
    return run


def interrupted_message(run: Path, resume_hint: str | None, signal_name: str, saved_now: bool) -> str:
    """One line: what happened, where the last complete checkpoint is, the exact command to resume."""
    from unetseg.checkpoint import CONFIG_FILE

    last = run / "last"
    where = (
        f"checkpoint of the current step saved in {last}"
        if saved_now
        else f"the last complete checkpoint is {last}"
        if (last / CONFIG_FILE).is_file()
        else "no checkpoint was written yet"
    )
    how = resume_hint or "train(cfg, resume=True)"
    return f"{signal_name}: training stopped; {where}; resume with: {how}"


def write_plan(run: RunFolder, text: str) -> None:
    """``RUN/plan.yaml``: the recipe the plan (and the probe) chose, never over a file the command reads."""
    target = run.path / "plan.yaml"
    if run.may_write(target):
        ensure_dir(run.path, "--out")
        write_text(target, text)
