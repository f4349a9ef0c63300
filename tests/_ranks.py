"""Processes of a gloo group on 127.0.0.1 for the data-parallel and distributed-trial tests."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable[[int, int, str], None], folder: str | Path) -> None:
    """``worker(rank, port, folder)`` in :data:`WORLD` spawned processes; returns when all
    ended (an error in one is raised here)."""
    mp.start_processes(worker, args=(free_port(), str(folder)), nprocs=WORLD, join=True,
                       start_method="spawn")


@contextmanager
def gloo_group(rank: int, port: int) -> Iterator[None]:
    """The default gloo group of :data:`WORLD` processes on 127.0.0.1 for the block; left the
    way ``run_worker`` leaves it: together (a barrier, when the block ended without error),
    then destroyed, then the reference cycles that still hold its gloo context freed. Torn
    down at interpreter exit instead, that context killed a finished process with
    ``std::terminate`` (SIGABRT) now and then."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    finished = False
    try:
        yield
        finished = True
    finally:
        if finished:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
