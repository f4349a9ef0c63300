"""The Optuna face: a sampler for hybrid studies and the helpers that run a ``HyperTrainer``
inside a trial (pruning, learned tensors and checkpoints as artifacts, previews of them for
optuna-dashboard, warm start, resume)."""

from __future__ import annotations

from optuna_ift.integration._compat import SUPPORTED_OPTUNA, OptunaVersionWarning
from optuna_ift.integration._distributed import (
    LeaderError,
    broadcast_object,
    optimize_distributed,
)
from optuna_ift.integration._previews import (
    ATTR_PREVIEWS,
    PREVIEW_KINDS,
    preview_files,
    save_previews,
)
from optuna_ift.integration._sampler import (
    DEFAULT_REFINED_ATTR_PREFIX,
    HybridSampler,
    record_refined,
    refined_key,
)
from optuna_ift.integration._trial import (
    ATTR_CHECKPOINT,
    ATTR_CHECKPOINT_STEP,
    ATTR_CHECKPOINT_TRIAL,
    ATTR_LEARNED,
    ATTR_RESUMED_AT_STEP,
    ATTR_RESUMED_FROM,
    ATTR_WARM_START,
    IFTPruningCallback,
    create_storage,
    learned_hyperparameters,
    load_checkpoint,
    load_learned,
    mask_password,
    retry_history,
    run_trainer,
    save_checkpoint,
    save_learned,
    warm_start,
)

__all__ = [
    "ATTR_CHECKPOINT",
    "ATTR_CHECKPOINT_STEP",
    "ATTR_CHECKPOINT_TRIAL",
    "ATTR_LEARNED",
    "ATTR_PREVIEWS",
    "ATTR_RESUMED_AT_STEP",
    "ATTR_RESUMED_FROM",
    "ATTR_WARM_START",
    "DEFAULT_REFINED_ATTR_PREFIX",
    "PREVIEW_KINDS",
    "SUPPORTED_OPTUNA",
    "HybridSampler",
    "IFTPruningCallback",
    "LeaderError",
    "OptunaVersionWarning",
    "broadcast_object",
    "create_storage",
    "learned_hyperparameters",
    "load_checkpoint",
    "load_learned",
    "mask_password",
    "optimize_distributed",
    "preview_files",
    "record_refined",
    "refined_key",
    "retry_history",
    "run_trainer",
    "save_checkpoint",
    "save_learned",
    "save_previews",
    "warm_start",
]
