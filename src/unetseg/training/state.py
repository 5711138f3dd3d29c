"""What a run carries across a resume or a rank boundary: the random-number states, the last checkpoint to
resume from, and the clock (minutes since the run began) with the stop request, agreed across ranks."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg import checkpoint as ckpt
from unetseg.config import Config
from unetseg.errors import CheckpointError
from unetseg.training.distributed import DistInfo, broadcast_values
from unetseg.training.interrupt import Termination
from unetseg.training.runlog import RunLogger


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global RandomState is an MT19937: its legacy state is a tuple
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumable(
    run: Path, log: RunLogger
) -> tuple[Path, Config, dict[str, Any], dict[str, torch.Tensor]] | None:
    """The last checkpoint of ``run`` with its config, training state and weights, all read and checked
    before any data is (so a damaged checkpoint is one line at once), or None (start afresh)."""
    try:
        folder = ckpt.find_checkpoint(run / "last")
    except CheckpointError:
        log.log(f"--resume: no complete checkpoint in {run / 'last'}; starting a new run")
        return None
    config, state = ckpt.read_config(folder), ckpt.load_training_state(folder)
    return folder, config, state, ckpt.read_weights(folder / ckpt.MODEL_FILE)


class Clock:
    """Minutes since the run began (across resumes) and the stop request; under DDP rank 0's values rule
    every rank (same learning rate, same last step), shared in one broadcast per step."""

    def __init__(self, before: float, info: DistInfo, budget: bool, stop: Termination) -> None:
        self.start, self.before, self.info, self.budget, self.stop = (
            time.monotonic(),
            before,
            info,
            budget,
            stop,
        )

    def read(self, reserve: float = 0.0) -> tuple[float, bool, float]:
        """``(minutes, stop requested, reserve)``: rank 0's values on every rank (``reserve``: minutes the
        caller keeps back, e.g. the last validation's length, which each rank measures itself)."""
        minutes = self.before + (time.monotonic() - self.start) / 60
        if not self.info.enabled:
            return minutes, self.stop.requested, reserve
        minutes, stop, reserve = broadcast_values([minutes, float(self.stop.requested), reserve], self.info)
        return minutes, stop > 0, reserve
