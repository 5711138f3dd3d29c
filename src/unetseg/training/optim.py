"""Optimisers and learning-rate schedules (stepped once per iteration)."""

from __future__ import annotations

import math

import torch

from unetseg.config import TrainConfig
from unetseg.config.schema import OPTIMIZERS, SCHEDULES
from unetseg.errors import ConfigError


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with Nesterov momentum (nnU-Net's choice: momentum 0.99)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    raise ConfigError(f"optimizer {cfg.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: linear warm-up, then the schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "poly":
        return (1.0 - progress) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
