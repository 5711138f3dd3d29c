"""Shared parts of ``benchmarks/run.py``: fresh child processes, timing, memory, FLOPs, machine facts.

Every measurement runs in its own child process (``run.py --child KIND --spec JSON``), so a peak RSS
(``ru_maxrss``) belongs to one measurement and allocator settings never leak from one into another.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

RESULT_TAG = "BENCH-RESULT:"
RUN_PY = Path(__file__).resolve().parent / "run.py"


def run_child(kind: str, spec: dict[str, Any], threads: int, timeout: float = 900) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result, or ``{"error": ...}`` when it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    spec = {**spec, "threads": threads}
    cmd = [sys.executable, str(RUN_PY), "--child", kind, "--spec", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}


def emit(result: dict[str, Any]) -> None:
    """A child's last line: its result as JSON (read by :func:`run_child`)."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def child_setup(spec: dict[str, Any]) -> None:
    """First thing in a child: the allocator setting (unetseg's CLI start-up) when asked, then threads."""
    if spec.get("tuned"):
        from unetseg.runtime import tune_allocator

        if not tune_allocator():
            print("warning: the allocator setting could not be applied", file=sys.stderr)
    import torch

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)


def rss_mib() -> float:
    """The current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, list[float], float]:
    """``(median seconds, all timed runs, seconds of the first call)`` after ``warmup`` untimed calls."""
    first = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, first


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median time of each of ``fns``, run in turns (A B C A B C ...) so drifts hit all alike; also the
    first call's time (cold start: e.g. torch.compile's compilation)."""
    first: dict[str, float] = {}
    for name, fn in fns.items():
        for i in range(warmup):
            start = time.perf_counter()
            fn()
            if i == 0:
                first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: {"median_s": statistics.median(v), "first_s": first.get(k, 0.0)} for k, v in times.items()}


def count_flops(model: Any, in_shape: tuple[int, ...], backward: bool) -> float | None:
    """FLOPs (2 per multiply-add) of one forward (and backward) pass, counted by ``torch.utils.flop_counter``
    on the meta device (no compute). ``None`` when the model cannot run on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = copy.deepcopy(model).to("meta")
        x = torch.empty(in_shape, device="meta", requires_grad=False)
        with FlopCounterMode(display=False) as counter:
            out = meta(x)
            out = out[-1] if isinstance(out, (list, tuple)) else out
            if backward:
                out.sum().backward()
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - some third-party layers have no meta kernels
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(threads: int) -> dict[str, str]:
    """What the numbers depend on: CPU, its vector extensions, threads, library versions."""
    import torch

    from unetseg.runtime import cpu_has_fast_bf16

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": f"{cpu_model()}, {cores} cores available, {threads} threads used",
        "vector ISA": f"{torch.backends.cpu.get_cpu_capability()}; fast bf16 (AVX-512-bf16/AMX): "
        f"{'yes' if cpu_has_fast_bf16() else 'no'}",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU run)",
        "Python": platform.python_version(),
        "versions": ", ".join(
            f"{d} {version(d)}"
            for d in ("torch", "numpy", "monai", "segmentation-models-pytorch", "onnxruntime", "unetseg")
        ),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def replace_section(path: Path, tag: str, text: str) -> None:
    """Replace the block between ``<!-- TAG:start -->`` and ``<!-- TAG:end -->`` in ``path`` (appended when
    absent), leaving the rest of the file alone."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text(path, new)


def raw_checkpoint(best: Path, folder: Path) -> Path:
    """A copy of the checkpoint ``best`` at temperature 1 and without post-processing (the same weights):
    what the held-out choices are measured against."""
    from unetseg.checkpoint import copy_checkpoint, read_config, read_metrics, rewrite_config

    twin = copy_checkpoint(best, folder)
    cfg = read_config(best)
    cfg.infer.temperature, cfg.infer.postprocess = 1.0, []
    return rewrite_config(twin, cfg, read_metrics(best))
