"""Device and precision choices shared by training and inference."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch

from unetseg.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 convolutions natively (AVX-512-bf16 or AMX), so bf16 is the fast path."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``auto`` picks the fast path the hardware has: bf16 on CPUs with AVX-512-bf16/AMX and on CUDA devices
    that support it, fp16 on older CUDA devices, fp32 elsewhere.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ConfigError("precision fp16 is for CUDA; on the CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def use_channels_last(
    setting: str | bool, device: torch.device, spatial_dims: int, *, inference: bool = False
) -> bool:
    """Whether to run the network channels-last; ``auto`` turns it on where it was measured to help
    (BENCHMARKS.md): CUDA; CPUs with fast bf16; and on other CPUs (fp32) for inference, 2D and 3D
    (1.2-1.3x), and for 3D training (1.3x), but not for 2D training (0.75-1.05x: no gain)."""
    if isinstance(setting, bool):
        return setting
    if setting in ("on", "true", "yes"):
        return True
    if setting in ("off", "false", "no"):
        return False
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return True
    return device.type == "cpu" and (inference or spatial_dims == 3)


def memory_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """An autocast context for ``dtype``, or a no-op when it is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
