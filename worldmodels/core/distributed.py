"""Data-parallel training under torchrun: process-group set-up, rank 0's duties, and the global-batch conventions.

A global batch of B frames (or sequences) is split across W processes by interleaving: process r holds
the batch's rows r, r + W, r + 2W, ... This module keeps that convention in one place so that the data
(`interleave`), the noise (`randn_like`) and batch-wide statistics (`gather_batch`) agree, which is what
makes W processes train the same parameters as one process with the same global batch.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

from worldmodels.core.errors import WorldModelsError

T = TypeVar("T")


def launched() -> bool:
    """True when torchrun (or any launcher setting WORLD_SIZE > 1) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_and_size() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0 alone logs, prints and writes checkpoints."""
    return rank_and_size()[0] == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on CUDA, gloo otherwise); returns this process's device."""
    if device.type == "cuda":  # each process its own GPU, whatever index the recipe names
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # a rank that fails before a collective leaves the others waiting: time out rather than hang for the default 30 min
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return device


def shutdown() -> None:
    """Leave the process group, and give gloo's worker threads the moment they need before this process exits."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # A worker thread frees the last collective's work only once it holds the GIL (the work keeps a Python
        # object); an interpreter that starts its exit before that kills the thread inside the destructor, and
        # the process dies of SIGABRT after its job is done (pytorch/pytorch#179291). Sleeping releases the GIL.
        time.sleep(0.1)


def local_batch(global_batch: int, key: str) -> int:
    """This process's share of the recipe's (global) batch size."""
    _, size = rank_and_size()
    if global_batch % size:
        raise WorldModelsError(f"{key} = {global_batch} does not split evenly over {size} processes")
    return global_batch // size


def interleave(items: Iterable[T]) -> Iterator[T]:
    """This process's items of a stream every process reads alike: item r of each group of W; a last short group
    is dropped.

    Dropping it keeps every process at the same number of batches, which DDP's collectives need.
    """
    rank, size = rank_and_size()
    if size == 1:
        yield from items
        return
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group[rank]
            group = []


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise for this process's rows of a global batch (dim 0), drawn as one process would draw it."""
    rank, size = rank_and_size()
    # drawn in logical (not memory) order, so a channels-last x gets the same numbers on W processes as on one
    return torch.randn((len(x) * size, *x.shape[1:]), dtype=x.dtype, device=x.device)[rank::size]


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch from every process's rows (dim 0), in global order; no gradient flows back."""
    _, size = rank_and_size()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)  # row j of process r is global row j * W + r


def process_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) batch statistic over the processes: with equal shares, the global batch's value."""
    _, size = rank_and_size()
    if size == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total / size


def from_main(load: Callable[[], T]) -> T:
    """Run `load` on rank 0 and hand its result to every process; an error there is raised everywhere."""
    rank, size = rank_and_size()
    if size == 1:
        return load()
    box: list = [None]
    if rank == 0:
        try:
            box[0] = ("ok", load())
        except Exception as exc:  # the others must not wait for a broadcast that never comes
            box[0] = ("error", str(exc) if isinstance(exc, WorldModelsError) else f"rank 0 failed: {exc!r}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise WorldModelsError(value)
    return value


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()
