"""Tiny models and checkpoints shared by the inference and export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetseg.checkpoint import save_checkpoint
from unetseg.config import Config
from unetseg.models import build_model


def calibrate(model: nn.Module, size: tuple[int, ...], steps: int = 3, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers data statistics, as training would (fresh ones let activations grow through
    recurrent blocks until float32 rounding alone exceeds the 1e-4 parity bound)."""
    gen = torch.Generator().manual_seed(seed)
    size = model.valid_input_size(size)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(2, model.in_channels, *size, generator=gen))
        model.eval()
        head = getattr(model, "head", None)
        if head is not None and model.num_classes > 1:  # shift the biases so every class gets predicted
            logits = model(torch.randn(2, model.in_channels, *size, generator=gen)).transpose(0, 1)
            logits = logits.reshape(model.num_classes, -1)
            head.bias -= (logits - logits[:1]).median(dim=1).values
    return model


def tiny_config(name: str = "unet", spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                **options: Any) -> Config:
    cfg = Config()
    m = cfg.model
    m.name, m.spatial_dims, m.in_channels, m.num_classes = name, spatial_dims, in_channels, num_classes
    m.base_channels, m.depth, m.options = 4, 2, dict(options)
    cfg.data.patch_size = [16] * spatial_dims
    cfg.data.class_values = [0.0, 255.0] if num_classes <= 2 else [float(v) for v in range(num_classes)]
    return cfg


def tiny_model(cfg: Config, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, **cfg.model.build_kwargs())
    return calibrate(model, (20,) * cfg.model.spatial_dims if cfg.model.spatial_dims == 2 else (12, 12, 12))


def make_checkpoint(folder: Path, name: str = "unet", spatial_dims: int = 2, **kw: Any) -> Path:
    """A checkpoint folder of a base-4, depth-2 model with calibrated BatchNorm."""
    cfg = tiny_config(name, spatial_dims, **kw)
    return save_checkpoint(folder, tiny_model(cfg), cfg)
