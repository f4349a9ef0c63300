"""Data-parallel training over a ``torch.distributed`` process group (NCCL on GPUs, gloo on
the CPU): what the trainer needs, and nothing when no group is initialised.

Every process holds the whole model. Tensor data is drawn identically on every process (the
same generator) and each takes its contiguous share of the global batch; weight gradients,
the validation gradient, every Hessian-vector product and the mixed product are averaged over
the processes, so each process takes the step one process would take on the global batch,
to rounding, and all of them stay identical.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from optuna_ift.trainer._data import map_tensors

__all__ = ["ProcessGroup", "process_group"]

_logger = logging.getLogger(__name__)

#: Loader classes rebuilt with a DistributedSampler (torchdata's stateful one takes the same
#: arguments as PyTorch's).
_REBUILT = ("torch.utils.data.dataloader.DataLoader",
            "torchdata.stateful_dataloader.stateful_dataloader.StatefulDataLoader")


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


    def distribute(self, name: str, source: Any, *, seed: int) -> Any:
        """``source`` with this process's part of every epoch.

        A ``DataLoader`` (or torchdata ``StatefulDataLoader``) over a map-style dataset that
        has no ``DistributedSampler`` is rebuilt with one (shuffled when the loader shuffled,
        ``seed`` for the order, the loader's ``drop_last``), and the loader's other settings;
        its ``batch_size`` stays the batch of each process, as with a ``DistributedSampler``
        of one's own. Anything else is returned as it is.
        """
        if not isinstance(source, DataLoader) or isinstance(source.dataset, IterableDataset):
            return source
        if isinstance(source.sampler, DistributedSampler):
            return source
        kind = f"{type(source).__module__}.{type(source).__qualname__}"
        plain_batches = (type(source.batch_sampler) is BatchSampler
                         and source.batch_size is not None)
        if (kind not in _REBUILT or not plain_batches
                or type(source.sampler) not in (RandomSampler, SequentialSampler)):
            warnings.warn(f"{name}: a {type(source).__name__} with its own sampler but no "
                          f"DistributedSampler: each of the {self.world} processes iterates "
                          "all of it; give it a DistributedSampler", RuntimeWarning,
                          stacklevel=3)
            return source
        sampler = DistributedSampler(source.dataset, num_replicas=self.world, rank=self.rank,
                                     shuffle=isinstance(source.sampler, RandomSampler),
                                     seed=seed, drop_last=source.drop_last)
        options = {"batch_size": source.batch_size, "drop_last": source.drop_last,
                   "num_workers": source.num_workers, "collate_fn": source.collate_fn,
                   "pin_memory": source.pin_memory, "timeout": source.timeout,
                   "worker_init_fn": source.worker_init_fn,
                   "multiprocessing_context": source.multiprocessing_context,
                   "generator": source.generator,
                   "persistent_workers": source.persistent_workers}
        if source.num_workers > 0:
            options["prefetch_factor"] = source.prefetch_factor
        _logger.info("%s: each of the %d processes draws its part of the data set through a "
                     "DistributedSampler", name, self.world)
        return type(source)(source.dataset, sampler=sampler, **options)


def process_group() -> ProcessGroup | None:
    """The process group when ``torch.distributed`` is initialised with more than one
    process, else ``None``."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized() and (
            distributed.get_world_size() > 1):
        return ProcessGroup()
    return None
