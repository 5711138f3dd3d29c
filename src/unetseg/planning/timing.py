"""Measuring the device: seconds per training step of candidate widths (what the plan's width and step
count come from), and seconds per inference tile (what validation will cost). A few real steps each, on
the actual device, in the precision and layout the run will use; at most ~20 s in all."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from unetseg.config import Config
from unetseg.losses import build_loss
from unetseg.models import build_model
from unetseg.runtime import autocast, autocast_dtype, memory_format, to_channels_last, use_channels_last

TIME_CAP_S = 20.0


@dataclass
class Timing:
    """Measured seconds per training step for each candidate width (missing: not measured in time, or
    out of memory), and per inference tile of the chosen one."""

    step_s: dict[int, float] = field(default_factory=dict)
    tile_s: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _model(cfg: Config, base: int, device: torch.device) -> torch.nn.Module:
    kw = cfg.model.build_kwargs()
    kw["base_channels"] = base
    return build_model(cfg.model.name, **kw).to(device)


def _steps(cfg: Config, base: int, device: torch.device, n: int) -> float:
    """Median seconds of ``n`` training steps (after one warm-up) at ``base`` width."""
    model = _model(cfg, base, device)
    patch = cfg.data.patch_size
    assert patch is not None  # planned before the timing
    dims = cfg.model.spatial_dims
    dtype = autocast_dtype(cfg.train.precision, device)
    layout = use_channels_last(cfg.train.channels_last, device, dims)
    if layout:
        to_channels_last(model, dims)
    x = torch.randn(cfg.train.batch_size, cfg.model.in_channels, *patch, device=device)
    if layout:
        x = x.contiguous(memory_format=memory_format(dims))
    y = torch.randint(
        0, max(2, cfg.model.num_classes), (cfg.train.batch_size, *patch), device=device
    )
    opts = {k: v for k, v in cfg.train.loss_options.items() if k != "weight_map"}
    loss_fn = build_loss(cfg.train.loss, cfg.model.num_classes, **opts)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(n + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            out = model(x)
        out = out[-1] if isinstance(out, list) else out
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def _tile(cfg: Config, base: int, device: torch.device) -> float:
    """Seconds of one inference tile (a batch of ``infer.batch_size``, divided) at ``base`` width."""
    model = _model(cfg, base, device).eval()
    tile = cfg.infer.tile or cfg.data.patch_size
    assert tile is not None  # planned before the timing
    x = torch.randn(cfg.infer.batch_size, cfg.model.in_channels, *tile, device=device)
    dtype = autocast_dtype(cfg.train.precision, device)
    with torch.inference_mode(), autocast(device, dtype):
        model(x)
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / cfg.infer.batch_size


def measure(cfg: Config, widths: list[int], device: torch.device, steps: int = 2) -> Timing:
    """Time the candidate ``widths`` (ascending) until :data:`TIME_CAP_S` is spent; wider ones are then
    taken as too slow. Out of memory (CUDA) ends the search too."""
    out = Timing()
    start = time.perf_counter()
    for base in widths:
        if time.perf_counter() - start > TIME_CAP_S:
            out.notes.append(f"base {base}: not timed (the {TIME_CAP_S:g} s timing cap)")
            break
        try:
            out.step_s[base] = _steps(cfg, base, device, steps)
        except torch.OutOfMemoryError:
            out.notes.append(f"base {base}: out of device memory")
            torch.cuda.empty_cache()
            break
    out.seconds = time.perf_counter() - start
    return out


def measure_tile(cfg: Config, base: int, device: torch.device, timing: Timing) -> None:
    timing.tile_s = _tile(cfg, base, device)
