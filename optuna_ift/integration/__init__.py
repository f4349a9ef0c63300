"""The Optuna face: a sampler for hybrid studies and the helpers that run a ``HyperTrainer``
inside a trial (pruning, learned tensors and checkpoints as artifacts, warm start, resume)."""

from __future__ import annotations

from optuna_ift.integration._sampler import HybridSampler, record_refined
from optuna_ift.integration._trial import (
    IFTPruningCallback,
    create_storage,
    learned_hyperparameters,
    load_checkpoint,
    load_learned,
    retry_history,
    run_trainer,
    save_checkpoint,
    save_learned,
    warm_start,
)

__all__ = [
    "HybridSampler",
    "IFTPruningCallback",
    "create_storage",
    "learned_hyperparameters",
    "load_checkpoint",
    "load_learned",
    "record_refined",
    "retry_history",
    "run_trainer",
    "save_checkpoint",
    "save_learned",
    "warm_start",
]
