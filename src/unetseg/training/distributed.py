"""DistributedDataParallel plumbing for ``torchrun --nproc_per_node N -m unetseg train ...``.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE and the rendezvous variables; multi-node runs work the same
way through its rendezvous. NCCL is used on CUDA, gloo on the CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from unetseg.runtime import launched_by_torchrun

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    torchrun: bool = False  # launched by torchrun, even with one process (its path runs on one GPU too)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (info, this process's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = launched_by_torchrun()  # a 1-process torchrun run uses NCCL too
    if world <= 1 and not launched:
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local, world_size=world, torchrun=launched), device


def _comm_device() -> torch.device:
    """Where collectives need their tensors: NCCL moves only CUDA tensors, gloo reduces on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op when not distributed); the result is on ``t``'s device."""
    if not info.enabled:
        return t
    buf = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def broadcast_values(values: list[float], info: DistInfo) -> list[float]:
    """Rank 0's ``values`` on every rank (a no-op when not distributed).

    The trainer shares rank 0's clock and stop request this way, so that with a time budget every rank sets
    the same learning rate and leaves the loop at the same step (a rank stopping alone would hang the
    others).
    """
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src=0)
    return [float(v) for v in t.tolist()]


def broadcast_object(value: object, info: DistInfo) -> object:
    """Rank 0's ``value`` (a plain dict of the job's own making, e.g. the plan) on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: object, info: DistInfo) -> list[object]:
    """Every rank's ``value`` (plain data), in rank order, on every rank (``[value]`` alone when not
    distributed)."""
    if not info.enabled:
        return [value]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """``fn()`` run by rank 0 alone, its result (plain data) on every rank; a user error it raises is
    raised on every rank (so no rank waits for a result that never comes)."""
    from unetseg.errors import UnetsegError

    outcome: object = None
    if info.is_main:
        try:
            outcome = ("ok", fn())
        except UnetsegError as e:
            if not info.enabled:
                raise
            outcome = ("error", e)
    shared = broadcast_object(outcome, info)
    assert isinstance(shared, tuple)  # rank 0's ("ok" | "error", value)
    kind, value = shared
    if kind == "error":
        raise value
    return value


def broadcast_value(value: float, info: DistInfo) -> float:
    """Rank 0's ``value`` on every rank (see :func:`broadcast_values`)."""
    return broadcast_values([value], info)[0]


def synchronize(info: DistInfo) -> None:
    """Wait for every rank (a no-op when not distributed): a rank that tears gloo down while rank 0 still
    writes its last files can abort (``terminate called without an active exception``)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo, *, finished: bool = False) -> None:
    """Leave the process group. ``finished``: every rank got to the end, so wait for the others first (a
    rank that tears gloo down while another still talks can abort the process). A group DDP used keeps its
    threads until the process ends: an entry point ends with :func:`unetseg.runtime.leave_process`."""
    if info.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def average_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (batch-norm running statistics) over ranks.

    DDP keeps parameters in step but each rank updates its own running statistics; averaging them before
    validation and checkpointing leaves every replica identical and the statistics use all ranks' data.
    """
    if not info.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.copy_(all_reduce_sum(buf, info) / info.world_size)
