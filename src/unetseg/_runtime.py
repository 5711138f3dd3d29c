"""Process-wide runtime settings the command line applies at start-up (measured in BENCHMARKS.md).

**Allocator.** glibc serves every allocation above its mmap threshold (128 KiB, adaptive up to 32 MiB) with
a fresh ``mmap`` and returns it with ``munmap`` when freed. A U-Net's activations are larger than that, so
each forward/backward pass maps, page-faults in (zeroing every 4 KiB page) and unmaps them again: about
300k minor faults and a fifth of the CPU time of a 256x256 batch-4 training step on the CPU. Turning mmap
off (``M_MMAP_MAX=0``) and never trimming the heap top (``M_TRIM_THRESHOLD``) makes the second and later
passes reuse the same heap pages: no faults, 1.2-1.35x faster CPU training and inference, for a peak RSS
up to ~10% higher (heap fragmentation). Memory freed is kept by the process until it exits, which suits a
command-line run; that is why the library never does this on import, only :func:`unetseg.cli.main`.
``UNETSEG_MALLOC=system`` keeps glibc's defaults. Other C libraries (musl, macOS) are left alone.

**cuDNN autotuning.** Tiles and training patches have fixed shapes, so ``cudnn.benchmark`` pays off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def configure_device(device: torch.device) -> None:
    """Per-device switches: cuDNN autotuning on CUDA (fixed tile/patch shapes make it pay off)."""
    if device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True
