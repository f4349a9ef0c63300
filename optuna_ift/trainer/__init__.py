"""Training with hyperparameters: ``HyperTrainer`` (Algorithm 1), the ``HyperStep`` it is built
on, the data sources it draws from and the callbacks it calls.

- :class:`HyperTrainer` owns the loop: ``inner_steps`` weight steps, then one hyper step,
  with evaluation, callbacks, progress, checkpoints and exact resume; weights-only when the
  model has no hyperparameters (or ``hyper_optimizer=None``).
- :class:`HyperStep` is one guarded hyper step from two loss tensors, for your own loop (and
  the Lightning callback in :mod:`optuna_ift.lightning`).
- :class:`TensorBatches` batches in-memory tensors resumably; any ``DataLoader`` or iterable of
  batches works as well.
- :class:`Callback` and the ready :class:`LRScheduler`, :class:`EarlyStopping`,
  :class:`KeepBest`, :class:`HyperparameterSchedule` (record and replay for re-training);
  :func:`evaluate` is the one evaluation function of the project.
"""

from __future__ import annotations

from optuna_ift.trainer._callbacks import (
    Callback,
    EarlyStopping,
    HyperparameterSchedule,
    KeepBest,
    LRScheduler,
    check_callbacks,
)
from optuna_ift.trainer._data import (
    BatchStream,
    TensorBatches,
    as_source,
    batch_size_of,
    move_batch,
)
from optuna_ift.trainer._step import DEFAULT_SOLVER, HyperStep, Unrolled, rmsprop
from optuna_ift.trainer._trainer import (
    History,
    HyperTrainer,
    NonFiniteLossError,
    accuracy,
    adam,
    evaluate,
    process_is_alive,
    read_checkpoint,
    resolve_device,
)

__all__ = [
    "DEFAULT_SOLVER",
    "BatchStream",
    "Callback",
    "EarlyStopping",
    "History",
    "HyperStep",
    "HyperTrainer",
    "HyperparameterSchedule",
    "KeepBest",
    "LRScheduler",
    "NonFiniteLossError",
    "TensorBatches",
    "Unrolled",
    "accuracy",
    "adam",
    "as_source",
    "batch_size_of",
    "check_callbacks",
    "evaluate",
    "move_batch",
    "process_is_alive",
    "read_checkpoint",
    "resolve_device",
    "rmsprop",
]
