"""Training and evaluation. Imported lazily so that ``import unetseg`` stays light."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unetseg.config import Config


def train(cfg: Config, resume: bool = False, quiet: bool = False) -> Path:
    """Train the model ``cfg`` describes; see :func:`unetseg.training.trainer.train`."""
    from unetseg.training.trainer import train as _train

    return _train(cfg, resume=resume, quiet=quiet)


__all__ = ["train"]
