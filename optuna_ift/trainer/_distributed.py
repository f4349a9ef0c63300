"""Data-parallel training over a ``torch.distributed`` process group (NCCL on GPUs, gloo on
the CPU): what the trainer needs, and nothing when no group is initialised.

Every process holds the whole model. Tensor data is drawn identically on every process (the
same generator) and each takes its contiguous share of the global batch; weight gradients,
the validation gradient, every Hessian-vector product and the mixed product are averaged over
the processes, so each process takes the step one process would take on the global batch,
to rounding, and all of them stay identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from optuna_ift.trainer._data import map_tensors

__all__ = ["ProcessGroup", "process_group"]


class ProcessGroup:
    """The initialised default process group, as the trainer uses it.

    Attributes:
        rank: This process's rank.
        world: The number of processes.
    """

    def __init__(self) -> None:
        self.rank = torch.distributed.get_rank()
        self.world = torch.distributed.get_world_size()

    def mean(self, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Each tensor averaged over the processes, in one all-reduce."""
        tensors = tuple(tensors)
        if not tensors:
            return ()
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        return tuple(part.view_as(t) for part, t in
                     zip(flat.split([t.numel() for t in tensors]), tensors))

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's."""
        with torch.no_grad():
            for t in tensors:
                torch.distributed.broadcast(t.data, src=0)

    def all_agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (the same answer everywhere)."""
        value = torch.tensor([0.0 if flag else 1.0])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() == 0.0)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def shard(self, batch: Any, name: str) -> Any:
        """This process's contiguous share of every tensor of a global ``batch``."""

        def cut(x: Tensor) -> Tensor:
            if not x.ndim:
                return x
            n = x.shape[0]
            if n % self.world:
                raise ValueError(f"{name}: a batch of {n} examples cannot be shared by "
                                 f"{self.world} processes; make the batch size a multiple of "
                                 f"the world size")
            share = n // self.world
            return x[self.rank * share:(self.rank + 1) * share]

        return map_tensors(cut, batch)


def process_group() -> ProcessGroup | None:
    """The process group when ``torch.distributed`` is initialised with more than one
    process, else ``None``."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized() and (
            distributed.get_world_size() > 1):
        return ProcessGroup()
    return None
