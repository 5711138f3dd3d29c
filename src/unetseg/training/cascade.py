"""A cascade in one budget (nnU-Net's ``3d_lowres`` then ``3d_cascade_fullres``): when the run trains on a
coarse grid so large structures are seen whole, a second stage at full resolution also sees the coarse
model's prediction (one-hot, brought to its grid) and refines the borders the coarse grid blurs.

The first stage is the run itself (``RUN``), stopped at :data:`STAGE1_SHARE` of the minutes left after the
probe; the second trains in ``RUN/cascade`` for the rest, from the first stage's best checkpoint (copied to
``RUN/cascade/stage1``, and saved inside every checkpoint of the second stage so each is whole on its own).
Its training images carry the first stage's prediction on themselves, damaged as nnU-Net's cascade does
(:func:`~unetseg.data.augment.perturb_prior`), since predictions on training images are better than on
new ones. When the probe trained the full-resolution plan, the second stage starts from that trial's
weights (the prior's input weights at zero), so the probe's minutes on it are not lost.
Both stages are scored on the same validation images at their own grid: the second replaces
``RUN/best`` only when it scores higher ("the probe says it helps"), else the coarse model stays and the
log says by how much the cascade lost. ``RUN/cascade.json`` records where the run is, so ``--resume``
continues the stage it stopped in.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg import checkpoint as ckpt
from unetseg.config import Config
from unetseg.fileio import write_json
from unetseg.inference.api import prior_of
from unetseg.inference.engines import Stage, load_engine
from unetseg.training.distributed import DistInfo, synchronize
from unetseg.training.interrupt import Termination
from unetseg.training.run import RunFolder
from unetseg.training.runlog import RunLogger
from unetseg.training.trainer import Trainer

CASCADE_MINUTES = 15.0  # auto: minutes the probe must leave for both stages (7.5 each: ~400 3D CPU steps)
# auto: the coarse grid has at least this many times fewer voxels than full resolution (nnU-Net makes a
# 3d_lowres stage when the full-resolution patch covers under a quarter of the median image; on BraTS at
# 1.41x (2.8x fewer voxels) the coarse model trained 30 minutes beat the cascade: BENCHMARKS.md)
CASCADE_MIN_GAIN = 4.0
STAGE1_SHARE = 0.5  # of the minutes left after the probe, for the coarse first stage (nnU-Net: equal epochs)
STATE = "cascade.json"
FOLDER = "cascade"


@dataclass
class CascadeState:
    """Where a cascade run is: ``stage`` "1" (the coarse first stage trains in RUN), "2" (the second in
    RUN/cascade) or "done"; what each scored and which was kept."""

    values: dict[str, Any] = field(default_factory=dict)  # the second stage's planned values
    stage1_until: float | None = None  # the clock's minute the first stage stops at (None: its epochs)
    stage: str = "1"
    stage1_minutes: float = 0.0
    stage1_score: float | None = None
    stage2_score: float | None = None
    kept: str | None = None

    def save(self, run: Path, info: DistInfo) -> None:
        if info.is_main:
            write_json(run / STATE, asdict(self))


def load_state(run: Path) -> CascadeState | None:
    """The cascade record of a run, or None (not a cascade, or unreadable: the run goes on without)."""
    try:
        data = json.loads((run / STATE).read_text(encoding="utf-8"))
        return CascadeState(**data)
    except (OSError, ValueError, TypeError):
        return None


def coarse(cfg: Config) -> bool:
    return any(f > 1 for f in cfg.data.downsample or [])


def skip_reason(cfg: Config, spent: float) -> str | None:
    """Why a coarse run trains no second stage (None: it does)."""
    c = cfg.train.cascade
    if cfg.data.task != "semantic":
        return "instance models train one stage"
    if cfg.train.init_from:
        return "a fine-tune trains the model it starts from"
    if not (cfg.data.val_data or cfg.data.val_fraction > 0):
        return "no validation images to choose between the stages"
    if c == "auto" and cfg.model.spatial_dims != 3:
        return "2D (train.cascade: on tries one)"
    gain = math.prod(cfg.data.downsample or [1.0])
    if c == "auto" and gain < CASCADE_MIN_GAIN:
        return (f"the coarse grid has {gain:.2g}x fewer voxels; a cascade pays from {CASCADE_MIN_GAIN:g}x "
                "(nnU-Net's 3d_lowres rule; train.cascade: on tries one)")
    left = float(cfg.train.max_minutes or 0.0) - spent
    if c == "auto" and left < CASCADE_MINUTES:
        return (f"{max(left, 0.0):.1f} minutes left after the probe; a cascade needs {CASCADE_MINUTES:g} "
                "(train.cascade: on tries one whatever the budget)")
    return None


def plan_cascade(cfg: Config, run: RunFolder, info: DistInfo, quiet: bool, *, fine: dict[str, Any] | None,
                 spent: float, fresh: bool) -> CascadeState | None:
    """The cascade of this run: the record of an earlier start (``--resume``), or, for a fresh decision
    (``fresh``: the run was planned now), a new one when the (probe's) choice is a coarse grid and
    :func:`skip_reason` allows; None otherwise. ``fine``: the full-resolution plan's values."""
    state = load_state(run.path)
    if state is not None or not fresh or cfg.train.cascade == "off" or not coarse(cfg):
        return state
    log = RunLogger(run.path, enabled=info.is_main, quiet=quiet)
    why = skip_reason(cfg, spent)
    if why is not None:
        log.log(f"cascade: not run ({why})")
        return None
    budget = cfg.train.max_minutes
    until = spent + STAGE1_SHARE * (budget - spent) if budget else None
    state = CascadeState(values=dict(fine or {}), stage1_until=until)
    log.log("cascade: the coarse model trains " + (f"until minute {until:.1f}" if until else "its epochs")
            + ", then a full-resolution stage that also sees its prediction; the better one on the "
            "validation images is kept")
    state.save(run.path, info)
    return state


class PriorChannels:
    """The first stage's one-hot prediction of a prepared case (its image on the second stage's grid)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.channels = max(2, stage.engine.num_classes) - 1

    def __call__(self, image: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        return prior_of(self.stage, image, meta.get("spacing"))


def stage2_config(cfg: Config, state: CascadeState, run: Path) -> Config:
    """The second stage's config: the first stage's (every planned value and the data's facts) at full
    resolution with the full-resolution plan's values, the prior's channels, the minutes left."""
    from unetseg.planning.plan import apply_values

    c = apply_values(ckpt.read_config(run / FOLDER / ckpt.STAGE1), state.values)
    c.data.downsample = None
    c.data.prior_channels = max(2, c.model.num_classes) - 1
    c.train.out = str(run / FOLDER)
    c.train.device, c.train.precision = cfg.train.device, cfg.train.precision
    c.train.probe = c.train.cascade = "off"
    # the first stage's temperature and post-processing were chosen for it: the second chooses its own
    c.infer.temperature, c.infer.postprocess = cfg.infer.temperature, list(cfg.infer.postprocess)
    if cfg.train.max_minutes:
        c.train.max_minutes = max(cfg.train.max_minutes - state.stage1_minutes, 0.1)
    else:
        c.train.max_minutes, c.train.epochs = None, cfg.train.epochs
    return c


def second_stage(cfg: Config, state: CascadeState, run: RunFolder, device: torch.device, info: DistInfo,
                 quiet: bool, stop: Termination, hint: str | None) -> None:
    """Train (or go on training) the second stage, then keep the better stage as ``RUN/best``."""
    log = RunLogger(run.path, enabled=info.is_main, quiet=quiet)
    folder = run.path / FOLDER
    began = state.stage == "1"
    if began:
        if info.is_main:
            if folder.exists():
                shutil.rmtree(folder)  # ours (RUN/cascade): an interrupted start
            ckpt.copy_checkpoint(run.path, folder / ckpt.STAGE1)
        state.stage = "2"
        state.save(run.path, info)
        synchronize(info)
    t0 = time.monotonic()
    c = stage2_config(cfg, state, run.path)
    first = Stage(*load_engine(folder / ckpt.STAGE1, device, c.train.precision))
    log.log(f"cascade: second stage at full resolution in {folder}, {c.train.max_minutes or 0:.1f} min")
    trial = run.path / "probe" / "full" / "last"  # the probe's full-resolution trial: a head start
    trainer = Trainer(c, device, info, RunFolder(folder), resume=not began, quiet=quiet, stop=stop, hint=hint,
                      extra=PriorChannels(first), previous=folder / ckpt.STAGE1,
                      init=trial if (trial / ckpt.MODEL_FILE).is_file() else None, calibrate=True)
    trainer.minutes_before += (time.monotonic() - t0) / 60  # the first stage's predictions count
    trainer.fit()
    keep(state, trainer.best if trainer.best >= 0 else None, run.path, info, log)


def keep(state: CascadeState, score: float | None, run: Path, info: DistInfo, log: RunLogger) -> None:
    """The second stage replaces ``RUN/best`` when it scored higher than the first."""
    first = state.stage1_score
    state.stage2_score = score
    wins = score is not None and (first is None or score > first)
    if wins and info.is_main:
        ckpt.copy_checkpoint(run / FOLDER, run / "best")
    state.kept, state.stage = ("cascade" if wins else "first stage"), "done"
    state.save(run, info)
    shown = [("-" if v is None else f"{v:.4f}") for v in (first, score)]
    verdict = (f"kept: {run / 'best'} is the cascade (its first stage inside)" if wins else
               f"the coarse first stage stays in {run / 'best'}")
    log.log(f"cascade: validation {shown[1]} against the first stage's {shown[0]}; {verdict}")
    synchronize(info)
