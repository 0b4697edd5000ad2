"""Worker pools: spawned processes that each use one core and leave Ctrl-C to the parent."""

from __future__ import annotations

import multiprocessing as mp
import signal
from typing import Callable

import torch


def _start_worker(init: Callable, args: tuple) -> None:
    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the pool
    init(*args)


def worker_pool(processes: int, init: Callable, args: tuple) -> mp.pool.Pool:
    """A pool of `processes` spawned workers, each running `init(*args)` once (load models, make envs)."""
    # spawn, not fork: forking a process that has started torch's thread pools can deadlock
    return mp.get_context("spawn").Pool(processes, _start_worker, (init, args))
