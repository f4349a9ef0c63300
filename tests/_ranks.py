"""Processes of a gloo group on 127.0.0.1 for the data-parallel and distributed-trial tests."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

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
