"""Device policy (which device, precision and memory layout) and the ONE place that changes process-wide
settings, :func:`configure_process`, which only the CLI and the trainer call (measured in BENCHMARKS.md).

**Allocator.** glibc serves every allocation above its mmap threshold (128 KiB, adaptive up to 32 MiB) with
a fresh ``mmap`` and returns it with ``munmap`` when freed. A U-Net's activations are larger than that, so
each forward/backward pass maps, page-faults in (zeroing every 4 KiB page) and unmaps them again: about
300k minor faults and a fifth of the CPU time of a 256x256 batch-4 training step on the CPU. Turning mmap
off (``M_MMAP_MAX=0``) and never trimming the heap top (``M_TRIM_THRESHOLD``) makes the second and later
passes reuse the same heap pages: no faults, 1.2-1.35x faster CPU training and inference, for a peak RSS
up to ~10-20% higher (heap fragmentation). Memory freed is kept by the process until it exits, which suits
a command-line run; that is why the library never does this on import. ``UNETSEG_MALLOC=system`` keeps
glibc's defaults. Other C libraries (musl, macOS) are left alone.

**cuDNN autotuning.** Tiles and training patches have fixed shapes, so ``cudnn.benchmark`` pays off; it is a
process-wide switch, set here and nowhere else (``unetseg.predict`` leaves the caller's process alone).

**Leaving a torchrun process.** torch (2.13) keeps a process group that DistributedDataParallel used, with
its communication threads, alive past ``destroy_process_group`` until the interpreter is torn down, and that
teardown can abort a rank that finished its work (``terminate called without an active exception``,
SIGABRT, torchrun exit 1): :func:`leave_process` ends such a process without it.

**Libraries' loggers.** tifffile logs a warning per damaged tag of a corrupt file; the command line turns
them off (each bad file already becomes one error line). Library users keep their own logging.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys
import threading
from typing import Any, NoReturn

import torch

from unetseg.config.schema import PRECISIONS
from unetseg.errors import ConfigError

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, i.e. keep the heap


@functools.lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Keep large buffers on glibc's heap between passes (see the module docstring).

    Returns ``True`` when the setting was applied (Linux with glibc, not switched off by
    ``UNETSEG_MALLOC=system``). Call it once, early, before large tensors exist; later calls do nothing.
    """
    if os.environ.get("UNETSEG_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; both must hold, or freed memory would be trimmed and faulted in again
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_MAX, 0))


def configure_process(device: torch.device | None = None, *, allocator: bool = False,
                      quiet_readers: bool = False) -> None:
    """The process-wide settings of a command-line run: cuDNN autotuning on CUDA, the allocator (only
    before large tensors exist, so only :func:`unetseg.cli.main` asks for it) and quiet file readers."""
    if allocator:
        tune_allocator()
    if quiet_readers:
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    if device is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def launched_by_torchrun() -> bool:
    """Started by torchrun (it sets ``TORCHELASTIC_RUN_ID`` in every process, also with one process)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def leave_process(code: int) -> NoReturn:
    """End the process with ``code`` as an orderly exit would, less the interpreter's teardown (see the
    module docstring): other threads are joined, exit handlers run, the standard streams flushed. For the
    entry point of a torchrun-launched process only; every file it keeps is already written and fsynced."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing more can be said
            stream.flush()
    os._exit(code)


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


def rank_device(name: str = "auto") -> str:
    """Under ``torchrun`` (WORLD_SIZE > 1) ``auto`` / ``cuda`` mean this process's GPU,
    ``cuda:LOCAL_RANK`` (round robin when there are fewer GPUs); anything else as given."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or name not in ("auto", "cuda"):
        return name
    if not torch.cuda.is_available():
        return name
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 convolutions natively (AVX-512-bf16 or AMX), so bf16 is the fast path
    (measured 2-3x over fp32 on such CPUs; emulated bf16 elsewhere is many times slower)."""
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


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def use_channels_last(setting: str | bool, device: torch.device, spatial_dims: int, *,
                      inference: bool = False) -> bool:
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


def to_channels_last(model: torch.nn.Module, spatial_dims: int) -> None:
    """Put ``model``'s weights in the channels-last layout of its dimensionality, in place."""
    # Module.to takes memory_format (and documents it), but torch's typed overloads of it leave it out
    model.to(memory_format=memory_format(spatial_dims))  # type: ignore[call-overload]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """An autocast context for ``dtype``, or a no-op when it is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
