"""Training: the loader, the trainer, validation, DDP plumbing and the run folder."""

from __future__ import annotations

from unetseg.training.run import TrainingInterrupted
from unetseg.training.session import train

__all__ = ["train", "TrainingInterrupted"]
