"""Distributed helpers that do nothing when the run is not distributed.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them
and starts a process group (NCCL on CUDA, gloo on CPU). Every other helper degrades to the
single-process behaviour when no group is initialised.

Devices: NCCL only moves CUDA tensors and gloo is only sure to handle CPU ones, so every tensor
helper here copies its input to :func:`collective_device` (``cuda:<current device>`` under NCCL,
the CPU otherwise), runs the collective there and hands the result back on the caller's device.
Call sites may therefore pass a CPU flag tensor or CUDA embeddings under either backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_HOST_GROUP = None  # a gloo group beside an NCCL one: host values exchanged without waiting for the GPU


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistInfo:
    """Start the process group when launched by torchrun; otherwise return a single-process info.

    Under NCCL the process is bound to GPU ``LOCAL_RANK`` before the group starts: object
    collectives and barriers use ``torch.cuda.current_device()``, and without the binding every
    rank would talk through GPU 0.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        kwargs = {}
        if use_cuda:
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30), **kwargs)
    global _HOST_GROUP
    if dist.get_backend() == "nccl" and _HOST_GROUP is None:
        # Every rank creates it, in the same order, right after the default group.
        _HOST_GROUP = dist.new_group(backend="gloo", timeout=timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def collective_device() -> torch.device:
    """Where tensors must live for the default group's collectives.

    ``cuda:<current device>`` under NCCL (which rejects CPU tensors), the CPU under any other
    backend (gloo's CUDA support covers only some collectives).
    """
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if not is_dist():
        return
    device = collective_device()
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])  # the rank's own GPU, never a guessed one
    else:
        dist.barrier()


def cleanup() -> None:
    global _HOST_GROUP
    if is_dist():
        dist.destroy_process_group()  # every group, the host one included
    _HOST_GROUP = None


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (plain values only: strings, numbers, lists, dicts)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=collective_device())
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (plain values); ``[obj]`` when not distributed.

    Under NCCL torch serialises the objects into tensors on ``torch.cuda.current_device()``,
    which :func:`init_distributed` set to this rank's GPU.
    """
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks, on ``value``'s device (a new tensor; ``value`` itself unchanged)."""
    if not is_dist():
        return value.detach().clone()
    out = value.detach().to(collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(value.device)


def all_reduce_sum_host(value: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a CPU tensor that the host computed (a flag, a count), without a GPU sync.

    Under NCCL a collective queues behind the GPU's work, so reading its result waits for the
    step before it; this one goes through a gloo group of CPU processes, so the host learns the
    sum while the GPU keeps running. Under gloo it is the default group.
    """
    if value.device.type != "cpu":
        raise ValueError("all_reduce_sum_host takes a CPU tensor; use all_reduce_sum for device tensors")
    out = value.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=_HOST_GROUP)
    return out


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B_r, ...) of every rank in rank order; gradients flow to the local part.

    Ranks may hold different numbers of rows (a batch that lost unreadable images): sizes are
    exchanged first and rows are padded for the collective, then the padding is cut away, so no
    rank hangs or fails. The local slice is ``x`` itself, so its autograd graph is kept; the
    other ranks' rows come back on ``x``'s device.
    """
    if not is_dist():
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    device = collective_device()
    size = torch.tensor([x.shape[0]], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(n) for n in torch.cat(sizes).tolist()]  # one device-to-host copy
    max_rows = max(sizes)
    padded = x.detach().to(device)
    if x.shape[0] < max_rows:
        pad = padded.new_zeros((max_rows - x.shape[0], *x.shape[1:]))
        padded = torch.cat([padded, pad], dim=0)
    chunks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded.contiguous())
    parts = [x if r == rank else chunks[r][: sizes[r]].to(x.device) for r in range(world)]
    return torch.cat(parts, dim=0)
