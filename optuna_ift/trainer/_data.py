"""Where batches come from: in-memory tensors, DataLoaders, any iterable of batches.

A *source* is anything that iterating gives batches: a :class:`TensorBatches` over in-memory
tensors, a ``torch.utils.data.DataLoader`` (map-style or over an ``IterableDataset``, any
``num_workers``, ``pin_memory``, ``collate_fn``), torchdata's ``StatefulDataLoader``, a list
of batches, or an endless iterator. A batch is a tensor or a tuple, list or dict (nested as
deep as you like) holding tensors; other leaves (strings, numbers) pass through untouched.

:class:`BatchStream` turns a source into the endless stream the trainer draws from: it
restarts the source when a pass ends (an epoch), counts epochs, moves each batch to the device
when it is drawn, and says where it is (``state_dict``) so that a checkpoint can resume at the
same batch. That position is exact when the source itself can say where it is
(``state_dict()`` / ``load_state_dict()``, as :class:`TensorBatches` and ``StatefulDataLoader``
do); any other source restarts its pass on resume, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from optuna_ift._validation import ArgumentKindError, check_bool, check_int

__all__ = ["BatchStream", "TensorBatches", "as_source", "batch_size_of", "check_finite",
           "map_tensors", "move_batch", "tensors_of"]


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors that can say where they are.

    Iterating gives one epoch: ``len(self)`` batches, each a tuple holding the same rows of
    every tensor (the ragged tail is dropped with ``drop_last``). The permutation of the next
    epoch is drawn from ``generator`` as soon as an epoch ends, so :meth:`state_dict` taken
    between any two batches resumes at the very next one, bit for bit. Batches stay on the
    tensors' device; the trainer moves them when it uses them.

    Args:
        *tensors: Tensors sharing their first dimension (the examples).
        batch_size: Rows per batch (capped at the number of rows).
        shuffle: Draw a new random order every epoch; ``False`` keeps the stored order.
        drop_last: Drop the last batch of an epoch when it is smaller than ``batch_size``.
        generator: The random generator of the order; default a CPU generator seeded with
            ``seed``.
        seed: Seed of the default generator.

    Example:
        >>> batches = TensorBatches(X, y, batch_size=128, seed=0)
        >>> trainer = HyperTrainer(model, train_data=batches, ...)
    """

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = True, generator: torch.Generator | None = None,
                 seed: int = 0) -> None:
        self.tensors = check_tensors("tensors", tensors)
        self.n = self.tensors[0].shape[0]
        self.batch_size = min(check_int("batch_size", batch_size, 1), self.n)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ArgumentKindError(f"generator must be a torch.Generator or None (then one "
                                    f"seeded with seed), got {type(generator).__name__} "
                                    f"{generator!r:.60}")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(
            check_int("seed", seed, 0))
        self.epoch = 0
        self.position = 0
        self.order = self._new_order()

    def _new_order(self) -> Tensor:
        if self.shuffle:
            return torch.randperm(self.n, generator=self.generator)
        return torch.arange(self.n)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _take(self) -> tuple[Tensor, ...]:
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        remaining = self.n - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch += 1
            self.position = 0
            self.order = self._new_order()
        index = index.to(self.tensors[0].device)
        return tuple(t[index] for t in self.tensors)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch = self.epoch
        while self.epoch == epoch:
            yield self._take()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "order": self.order.clone(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = state["order"].to("cpu")
        self.generator.set_state(state["generator"].to("cpu"))


def check_tensors(name: str, tensors: Any) -> tuple[Tensor, ...]:
    """``tensors`` as a non-empty tuple of tensors sharing a non-zero first dimension."""
    tensors = tuple(tensors)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"{name} must be one or more tensors, got "
                        f"{[type(t).__name__ for t in tensors]}")
    if any(t.ndim == 0 for t in tensors) or len({t.shape[0] for t in tensors}) != 1:
        raise ValueError(f"{name}: every tensor needs the same first dimension, got "
                         f"{[tuple(t.shape) for t in tensors]}")
    if tensors[0].shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return tensors


def check_finite(name: str, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``tensors``, if every floating-point one is free of NaN and infinity; otherwise a
    ``ValueError`` naming ``name``, the tensor and the first row that holds such a value."""
    for k, t in enumerate(tensors):
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = ~torch.isfinite(t.reshape(t.shape[0], -1) if t.ndim else t.reshape(1, 1))
            row = int(bad.any(dim=1).nonzero()[0, 0])
            raise ValueError(f"{name}: tensor {k} holds a non-finite value (NaN or infinity), "
                             f"first at row {row}; training on it would make every weight NaN")
    return tensors


def _holds_tensor(batch: Any) -> bool:
    if isinstance(batch, Tensor):
        return True
    if isinstance(batch, Mapping):
        return any(_holds_tensor(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return any(_holds_tensor(v) for v in batch)
    return False


_KINDS = ("a tensor, a tuple of tensors, a TensorDataset, a TensorBatches, a DataLoader or "
          "another iterable of batches")


def tensors_of(name: str, data: Any) -> tuple[Tensor, ...] | None:
    """``data`` as checked in-memory tensors, if it is a tensor, a tuple or list of tensors or
    a ``TensorDataset`` (same first dimension, not empty, no NaN or infinity); ``None`` for
    any other kind of source."""
    if isinstance(data, TensorDataset):
        data = data.tensors
    if isinstance(data, Tensor):
        data = (data,)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        return check_finite(name, check_tensors(name, data))
    return None


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "__array__")


def as_source(name: str, data: Any, *, batch_size: int, seed: int, shuffle: bool = True,
              drop_last: bool = True, device: torch.device | None = None) -> Any:
    """The source behind a ``train_data`` / ``val_data`` / ``eval_data`` argument.

    Tensors (a tensor, a tuple or list of tensors, a ``TensorDataset``) become a
    :class:`TensorBatches` of ``batch_size`` rows, moved to ``device`` once (they are in
    memory already); anything else iterable is used as it is. ``None`` stays ``None``.
    """
    if data is None:
        return None
    if _is_numpy(data) or (isinstance(data, (tuple, list)) and data and all(
            _is_numpy(d) for d in data)):
        raise ArgumentKindError(f"{name} holds NumPy arrays: convert them to tensors first, "
                                f"e.g. (torch.as_tensor(X, dtype=torch.float32), "
                                f"torch.as_tensor(y))")
    tensors = tensors_of(name, data)
    if tensors is not None:
        if device is not None:
            tensors = tuple(t.to(device) for t in tensors)
        return TensorBatches(*tensors, batch_size=batch_size, shuffle=shuffle,
                             drop_last=drop_last, seed=seed)
    if isinstance(data, TensorBatches):
        check_finite(name, data.tensors)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        raise ArgumentKindError(f"{name} is a map-style Dataset ({type(data).__name__}), whose "
                                f"items are single examples: wrap it in "
                                f"torch.utils.data.DataLoader(dataset, batch_size=...)")
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise ArgumentKindError(f"{name} must be {_KINDS}, got {type(data).__name__}")
    if isinstance(data, (tuple, list)):
        if not data:
            raise ValueError(f"{name} is empty: it holds no batch")
        if not _holds_tensor(data[0]):
            raise ArgumentKindError(f"{name} must be {_KINDS}; its first batch holds no tensor: "
                            f"{data[0]!r:.80}")
    return data


def map_tensors(fn: Callable[[Tensor], Any], batch: Any) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it: tuples (named ones too), lists and
    dicts are rebuilt around the results, any other leaf is kept as it is."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(fn, v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(map_tensors(fn, v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(fn, v) for v in batch)
    return batch


def move_batch(batch: Any, device: torch.device, *, name: str = "batch") -> Any:
    """``batch`` with every tensor in it on ``device`` (``non_blocking`` from pinned memory).

    Tuples (named ones too), lists and dicts are rebuilt around the moved tensors; any other
    leaf is returned as it is. A batch without a single tensor is an error naming ``name``.
    """
    found = False

    def move(x: Tensor) -> Tensor:
        nonlocal found
        found = True
        return x.to(device, non_blocking=device.type == "cuda" and x.is_pinned())

    try:
        moved = map_tensors(move, batch)
    except (RuntimeError, TypeError) as error:
        raise RuntimeError(f"{name}: a batch could not be moved to {device}: {error}") from error
    if not found:
        raise TypeError(f"{name} yielded a batch with no tensor in it ({type(batch).__name__}: "
                        f"{batch!r:.80}); a batch is a tensor or a tuple, list or dict of tensors")
    return moved


def batch_size_of(batch: Any) -> int:
    """Examples in ``batch``: the first dimension of its first tensor (1 for a scalar)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, (list, tuple)) or isinstance(batch, Mapping):
        for v in values:
            if _holds_tensor(v):
                return batch_size_of(v)
    raise TypeError(f"a batch with no tensor in it: {type(batch).__name__}")


def _is_stateful(source: Any) -> bool:
    return callable(getattr(source, "state_dict", None)) and callable(
        getattr(source, "load_state_dict", None))


class BatchStream:
    """The endless stream of batches the trainer draws from one source.

    :meth:`next` gives the next batch on ``device`` and whether it ended an epoch. A pass that
    ends (``StopIteration``) is followed by a new one, so epochs cycle; the epoch counter moves
    at the last batch of a pass when the source has a length, otherwise when the pass ends.

    Args:
        name: The argument the source came from, for error messages.
        source: What :func:`as_source` returned.
        device: Where batches go.
    """

    def __init__(self, name: str, source: Any, device: torch.device, *,
                 shard: Callable[[Any, str], Any] | None = None) -> None:
        self.name, self.source, self.device = name, source, device
        self.shard = shard  # data-parallel: this process's share of each global batch
        try:
            self.length: int | None = len(source)
        except TypeError:  # an IterableDataset's loader, a generator: length unknown
            self.length = None
        self.epoch = 0
        self.batches = 0  # drawn in the current pass
        self._iterator: Iterator | None = None
        self._fresh = False  # the current pass was started here and has yielded nothing yet
        self._resumed = False  # the next pass continues a checkpointed one (it may be at its end)
        self._warned = False
        self._generator_state: Tensor | None = None

    def _restart(self) -> Iterator:
        sampler = getattr(self.source, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):  # a DistributedSampler: a new order
            sampler.set_epoch(self.epoch)
        if self._resumed:
            # A DataLoader draws the seed of its workers and samplers from its generator (or
            # the global one) when an iterator starts; a resumed pass did not start here, so
            # that draw must leave both generators where the checkpoint had them.
            rng = torch.get_rng_state()
            iterator = iter(self.source)
            torch.set_rng_state(rng)
            if self._generator_state is not None:
                self.source.generator.set_state(self._generator_state)
        else:
            iterator = iter(self.source)
        if iterator is self.source and self._iterator is not None:
            raise ValueError(f"{self.name} is an iterator and it is exhausted: pass a re-iterable "
                             "source (a DataLoader, a TensorBatches, a list of batches) so that "
                             "epochs can restart, or an endless iterator")
        self._iterator = iterator
        self._fresh, self._resumed = not self._resumed, False
        return iterator

    def next(self) -> tuple[Any, bool]:
        """``(batch on the device, whether this batch completed an epoch)``."""
        iterator = self._iterator if self._iterator is not None else self._restart()
        try:
            batch = next(iterator)
        except StopIteration:
            if self._fresh:
                raise ValueError(f"{self.name} yielded no batch") from None
            if self.batches > 0:  # a pass of unknown length ended here
                self.epoch += 1
                self.batches = 0
            try:
                batch = next(self._restart())
            except StopIteration:
                raise ValueError(f"{self.name} yielded no batch") from None
        self._fresh = False
        self.batches += 1
        finished = self.length is not None and self.batches >= self.length
        if finished:
            self.epoch += 1
            self.batches = 0
        batch = move_batch(batch, self.device, name=self.name)
        if self.shard is not None:
            batch = self.shard(batch, self.name)
        return batch, finished

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "batches": self.batches}
        if _is_stateful(self.source):
            state["source"] = self.source.state_dict()
            generator = getattr(self.source, "generator", None)
            if isinstance(generator, torch.Generator):
                state["generator"] = generator.get_state()
        else:
            self._warn_inexact()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        if _is_stateful(self.source) and "source" in state:
            self.source.load_state_dict(state["source"])
            self.batches = int(state["batches"])
            self._resumed = True
            saved = state.get("generator")
            self._generator_state = None if saved is None else saved.to("cpu")
        else:
            self._warn_inexact()
            self.batches = 0
        self._iterator = None

    def _warn_inexact(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.name} ({type(self.source).__name__}) cannot say where it is (it has no "
                "state_dict()/load_state_dict()): a run resumed from a checkpoint starts a new "
                "pass over it instead of continuing at the batch where the checkpoint was "
                "taken. Use TensorBatches or torchdata's StatefulDataLoader for an exact resume.",
                stacklevel=4)
