"""Run a :class:`~optuna_ift.HyperTrainer` inside an Optuna trial.

The low-dimensional hyperparameters are the trial's parameters; the high-dimensional ones
(a decay per weight, a distilled data set, ...) are tuned by the trainer inside the trial and
never become Optuna parameters. They travel as *artifacts* instead: files in an Optuna
artifact store (a :class:`optuna.artifacts.FileSystemArtifactStore` by default in the demo)
whose ids, shapes and a small summary are written to the trial's user attributes, where
``optuna-dashboard`` and any later trial can find them.

Design notes:

- Learned tensors are written with ``safetensors`` (no pickle at all) when it is installed,
  otherwise with ``torch.save``; trainer checkpoints are written with ``torch.save``. Every
  ``torch.load`` here passes ``weights_only=True``, so loading an artifact never runs code.
- Everything this module records lives under the ``"ift:"`` user-attribute prefix (the
  constants below), so it survives :class:`optuna.storages.RetryFailedTrialCallback`, which
  copies user attributes into the retried trial: a retried trial finds the last checkpoint of
  the trial it replaces in its own attributes and resumes the inner training from there.
- Optuna's ``report``/``should_prune`` run on every evaluation of the trainer, with the hyper
  step as the step, so any Optuna pruner works unchanged.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import tempfile
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import download_artifact, upload_artifact
from optuna.trial import FrozenTrial, TrialState
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError, check_int
from optuna_ift.hyperparams import HyperParameter, WeightDecay
from optuna_ift.integration._compat import HeartbeatJournalStorage, trial_id
from optuna_ift.integration._distributed import TrialLink, is_distributed_trial
from optuna_ift.integration._previews import check_previews, save_previews
from optuna_ift.trainer import Callback, HyperTrainer

__all__ = [
    "ATTR_CHECKPOINT",
    "ATTR_CHECKPOINT_STEP",
    "ATTR_CHECKPOINT_TRIAL",
    "ATTR_LEARNED",
    "ATTR_RESUMED_AT_STEP",
    "ATTR_RESUMED_FROM",
    "ATTR_WARM_START",
    "create_storage",
    "IFTPruningCallback",
    "learned_hyperparameters",
    "load_checkpoint",
    "load_learned",
    "mask_password",
    "retry_history",
    "run_trainer",
    "save_checkpoint",
    "save_learned",
    "warm_start",
]

_logger = logging.getLogger(__name__)

#: Artifact id of the learned hyperparameter tensors (set by :func:`save_learned`).
ATTR_LEARNED = "ift:learned_artifact"
#: ``{name: shape}`` of the learned tensors, so shapes can be matched without downloading.
ATTR_SHAPES = "ift:shapes"
#: Artifact id of the latest trainer checkpoint (set by :func:`save_checkpoint`).
ATTR_CHECKPOINT = "ift:checkpoint_artifact"
#: Hyper step at which that checkpoint was taken.
ATTR_CHECKPOINT_STEP = "ift:checkpoint_hyper_step"
#: Number of the trial that wrote that checkpoint (a retried trial inherits it).
ATTR_CHECKPOINT_TRIAL = "ift:checkpoint_trial"
#: Set by :func:`run_trainer` on a retried trial that resumed from a checkpoint.
ATTR_RESUMED_FROM = "ift:resumed_from_trial"
ATTR_RESUMED_AT_STEP = "ift:resumed_at_hyper_step"
#: Number of the trial whose learned tensors warm-started this one (``None``: none did).
ATTR_WARM_START = "ift:warm_started_from_trial"

_RETRY_CALLBACK = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or getattr(
    optuna.storages, "RetryFailedTrialCallback")


# -- small pieces ------------------------------------------------------------------------------


def learned_hyperparameters(model: nn.Module) -> dict[str, HyperParameter]:
    """The model's :class:`~optuna_ift.HyperParameter` tensors, keyed by parameter name."""
    if isinstance(model, HyperTrainer):
        model = model.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a HyperTrainer, "
                        f"got {type(model).__name__}")
    return {name: p for name, p in model.named_parameters() if isinstance(p, HyperParameter)}


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def _check_trial(trial: Any) -> None:
    """Refuse anything but a running or a frozen trial."""
    if not isinstance(trial, (optuna.Trial, FrozenTrial)):
        raise ArgumentKindError(
            f"trial must be an optuna.Trial or FrozenTrial, got {_shown(trial)}"
        )


def _check_study(study: Any) -> None:
    """Refuse anything but an Optuna study."""
    if not isinstance(study, optuna.Study):
        raise ArgumentKindError(f"study must be an optuna.Study, got {_shown(study)}")


#: The methods of Optuna's artifact-store protocol (``optuna.artifacts``).
_ARTIFACT_STORE_METHODS = ("write", "open_reader", "remove")


def _check_artifact_store(artifact_store: Any) -> None:
    """Refuse an object without the methods of an Optuna artifact store, before any work is
    done (a string there would otherwise fail only when the first artifact is written)."""
    missing = [m for m in _ARTIFACT_STORE_METHODS
               if not callable(getattr(artifact_store, m, None))]
    if missing:
        raise ArgumentKindError(
            "artifact_store must be an Optuna artifact store with the methods write, "
            "open_reader and remove (e.g. optuna.artifacts.FileSystemArtifactStore(folder)), "
            f"got {_shown(artifact_store)} (lacks {', '.join(missing)})"
        )


def _storage_of(trial: optuna.Trial | FrozenTrial, storage: Any) -> Any:
    _check_trial(trial)
    if storage is None and isinstance(trial, optuna.Trial):
        storage = trial.storage
    if storage is None:
        raise ValueError("storage is required when trial is a FrozenTrial")
    return storage


def _set_user_attr(trial: optuna.Trial | FrozenTrial, storage: Any, key: str,
                   value: Any) -> None:
    if isinstance(trial, optuna.Trial):
        trial.set_user_attr(key, value)
    else:
        storage.set_trial_user_attr(trial_id(trial), key, value)
        trial.user_attrs[key] = value


def _upload(trial: optuna.Trial | FrozenTrial, storage: Any, artifact_store: Any,
            filename: str, write: Any) -> str:
    with tempfile.TemporaryDirectory(prefix="optuna_ift_") as folder:
        path = os.path.join(folder, filename)
        write(path)
        return upload_artifact(artifact_store=artifact_store, file_path=path,
                               study_or_trial=trial, storage=storage)


def _download(artifact_store: Any, artifact_id: str, read: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="optuna_ift_") as folder:
        path = os.path.join(folder, "artifact")
        download_artifact(artifact_store=artifact_store, file_path=path,
                          artifact_id=artifact_id)
        return read(path)


def _get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    _check_study(study)
    number = check_int("trial_number", number, 0)
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise ValueError(f"trial_number {number} is not a trial of study {study.study_name!r}")


def _summary(tensors: Mapping[str, Tensor], model: nn.Module | None) -> dict[str, Any]:
    """Count, norms and (for weight decays) the mean decay, as JSON-able user attributes."""
    norms = {name: float(torch.linalg.vector_norm(t.detach().double()))
             for name, t in tensors.items()}
    summary: dict[str, Any] = {
        "ift:num_hyperparameters": int(sum(t.numel() for t in tensors.values())),
        "ift:num_tensors": len(tensors),
        "ift:hyperparameter_norm": math.sqrt(sum(n * n for n in norms.values())),
        "ift:hyperparameter_norms": norms,
    }
    decays = [m for m in model.modules() if isinstance(m, WeightDecay)] if model else []
    if decays:
        values = torch.cat([p.detach().double().exp().flatten()
                            for m in decays for p in m.log_decays])
        summary["ift:mean_decay"] = float(values.mean())
        summary["ift:median_decay"] = float(values.median())
    return summary


# -- pruning -----------------------------------------------------------------------------------


class IFTPruningCallback(Callback):
    """Report each evaluation of the trainer to ``trial`` and prune through the study's pruner.

    The value reported is ``record[monitor]`` (``"val_loss"`` for ``eval_data={"val": ...}``)
    at step ``trainer.hyper_step``; when ``trial.should_prune()`` says so, the callback raises
    :class:`optuna.TrialPruned`, which the trainer lets through to Optuna.

    Args:
        trial: The running trial.
        monitor: Key of the evaluation record to report, ``"<eval_data name>_loss"`` or
            ``"<eval_data name>_metric"``.
    """

    def __init__(self, trial: optuna.Trial, *, monitor: str = "val_loss") -> None:
        if not (isinstance(trial, optuna.Trial) or is_distributed_trial(trial)):
            raise TypeError(f"trial must be an optuna.Trial or a TorchDistributedTrial, got "
                            f"{type(trial).__name__}")
        if not isinstance(monitor, str):
            raise ArgumentKindError(f"monitor must be a str, an evaluation key such as "
                                    f"'val_loss', got {_shown(monitor)}")
        self.trial = trial
        self.monitor = monitor

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if self.monitor not in record:
            raise KeyError(f"monitor {self.monitor!r} is not in the evaluation record "
                           f"(keys: {sorted(record)}); name an eval_data entry, e.g. "
                           "eval_data={'val': ...} gives 'val_loss'")
        value = float(record[self.monitor])
        step = int(trainer.hyper_step)
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at hyper step {step} ({self.monitor}={value:.4g})")


# -- learned tensors ---------------------------------------------------------------------------


def _save_tensors(tensors: Mapping[str, Tensor], path: str) -> None:
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(plain, path)
    else:
        torch.save(plain, path)


def _load_tensors(path: str) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        head = f.read(16)
    # A torch.save file is a zip archive ("PK"); anything else is read as safetensors.
    if head[:2] == b"PK":
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        tensors = load_file(path, device="cpu")
    if not isinstance(tensors, dict) or not all(isinstance(t, Tensor) for t in tensors.values()):
        raise ValueError("artifact does not hold a {name: tensor} mapping")
    return dict(tensors)


def _tensor_filename() -> str:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return "learned_hyperparameters.pt"
    return "learned_hyperparameters.safetensors"


def save_learned(
    trial: optuna.Trial | FrozenTrial,
    trainer: HyperTrainer | nn.Module,
    artifact_store: Any,
    *,
    storage: Any = None,
) -> str:
    """Store the model's hyperparameter tensors as an artifact of ``trial``; summarise them.

    The tensors (every :class:`~optuna_ift.HyperParameter` of the model, keyed by parameter
    name) go to one safetensors file. The trial gets the user attributes ``ift:learned_artifact``
    (the artifact id), ``ift:shapes``, ``ift:num_hyperparameters``, ``ift:num_tensors``,
    ``ift:hyperparameter_norm`` (overall L2 norm), ``ift:hyperparameter_norms`` (per tensor)
    and, when the model holds :class:`~optuna_ift.hyperparams.WeightDecay` modules,
    ``ift:mean_decay`` and ``ift:median_decay`` (of the decays themselves, not their logs).

    Args:
        trial: The trial (a :class:`~optuna.trial.FrozenTrial` needs ``storage``).
        trainer: The trainer, or the model itself.
        artifact_store: An Optuna artifact store, e.g. ``FileSystemArtifactStore(folder)``.
        storage: The study's storage, only for a ``FrozenTrial``.

    Returns:
        The artifact id.

    Raises:
        TypeError: If ``trial`` is not a trial, ``trainer`` neither a trainer nor a model, or
            ``artifact_store`` not an artifact store.
        ValueError: If ``trial`` is a ``FrozenTrial`` without ``storage``, or the model
            declares no hyperparameter.
    """
    storage = _storage_of(trial, storage)
    model = trainer.model if isinstance(trainer, HyperTrainer) else trainer
    tensors = learned_hyperparameters(model)
    _check_artifact_store(artifact_store)
    if not tensors:
        raise ValueError("the model declares no HyperParameter: nothing to save")
    artifact_id = _upload(trial, storage, artifact_store, _tensor_filename(),
                          lambda path: _save_tensors(tensors, path))
    _set_user_attr(trial, storage, ATTR_LEARNED, artifact_id)
    _set_user_attr(trial, storage, ATTR_SHAPES,
                   {name: list(t.shape) for name, t in tensors.items()})
    for key, value in _summary(tensors, model).items():
        _set_user_attr(trial, storage, key, value)
    return artifact_id


def load_learned(study: optuna.Study, trial_number: int,
                 artifact_store: Any) -> dict[str, Tensor]:
    """The learned hyperparameter tensors of trial ``trial_number`` (on the CPU).

    Raises:
        TypeError: If ``study`` is not a study, ``trial_number`` not an integer, or
            ``artifact_store`` not an artifact store.
        ValueError: If the trial does not exist or stored no learned tensors.
    """
    trial = _get_trial(study, trial_number)
    _check_artifact_store(artifact_store)
    artifact_id = trial.user_attrs.get(ATTR_LEARNED)
    if artifact_id is None:
        raise ValueError(f"trial {trial_number} has no learned tensors "
                         f"(no {ATTR_LEARNED!r} user attribute)")
    return _download(artifact_store, artifact_id, _load_tensors)


# -- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(
    trial: optuna.Trial | FrozenTrial,
    trainer: HyperTrainer,
    artifact_store: Any,
    *,
    storage: Any = None,
    remove_previous: bool = True,
) -> str:
    """Store ``trainer.state_dict()`` (``torch.save``) as an artifact of ``trial``.

    The trial's user attributes ``ift:checkpoint_artifact``, ``ift:checkpoint_hyper_step`` and
    ``ift:checkpoint_trial`` point at it. With ``remove_previous`` the checkpoint that the trial
    itself wrote before is deleted from the store (a retried trial never deletes the checkpoint
    of the trial it replaces), so a trial keeps one checkpoint, not one per save.

    Returns:
        The artifact id.
    """
    if not isinstance(trainer, HyperTrainer):
        raise TypeError(f"trainer must be a HyperTrainer, got {type(trainer).__name__}")
    storage = _storage_of(trial, storage)
    _check_artifact_store(artifact_store)
    return _store_checkpoint(trial, storage, artifact_store, trainer.state_dict(),
                             int(trainer.hyper_step), remove_previous=remove_previous)


def _store_checkpoint(trial: optuna.Trial | FrozenTrial, storage: Any, artifact_store: Any,
                      state: dict[str, Any], hyper_step: int, *,
                      remove_previous: bool = True) -> str:
    previous = trial.user_attrs.get(ATTR_CHECKPOINT)
    previous_owner = trial.user_attrs.get(ATTR_CHECKPOINT_TRIAL)
    artifact_id = _upload(trial, storage, artifact_store, "trainer_checkpoint.pt",
                          lambda path: torch.save(state, path))
    _set_user_attr(trial, storage, ATTR_CHECKPOINT, artifact_id)
    _set_user_attr(trial, storage, ATTR_CHECKPOINT_STEP, hyper_step)
    _set_user_attr(trial, storage, ATTR_CHECKPOINT_TRIAL, int(trial.number))
    if remove_previous and previous is not None and previous_owner == trial.number:
        try:
            artifact_store.remove(previous)
        except Exception:  # a missing file is no reason to fail the trial
            _logger.debug("could not remove checkpoint artifact %s", previous, exc_info=True)
    return artifact_id


def _load_checkpoint_into(trainer: HyperTrainer, artifact_store: Any, artifact_id: str) -> int:
    def read(path: str) -> int:
        trainer.resume(path)  # torch.load(..., weights_only=True) inside
        return int(trainer.hyper_step)

    return _download(artifact_store, artifact_id, read)


def load_checkpoint(
    study: optuna.Study,
    trial_number: int,
    trainer: HyperTrainer,
    artifact_store: Any,
) -> int | None:
    """Load the latest checkpoint of trial ``trial_number`` into ``trainer`` (built the same
    way as the one that wrote it) and return its hyper step; ``None`` if there is none."""
    artifact_id = _get_trial(study, trial_number).user_attrs.get(ATTR_CHECKPOINT)
    _check_artifact_store(artifact_store)
    if artifact_id is None:
        return None
    return _load_checkpoint_into(trainer, artifact_store, artifact_id)


# -- warm start --------------------------------------------------------------------------------


def _shapes_of(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in learned_hyperparameters(model).items()}


def warm_start(
    model: nn.Module | HyperTrainer,
    study: optuna.Study,
    artifact_store: Any,
    *,
    exclude: int | None = None,
) -> int | None:
    """Copy the learned tensors of the best finished trial whose shapes match into ``model``.

    Candidates are the study's ``COMPLETE`` trials that stored learned tensors
    (:func:`save_learned`) with exactly the names and shapes of ``model``'s hyperparameters
    (read from their ``ift:shapes`` attribute, without downloading anything); the best by the
    study's direction is used. Single-objective studies only.

    Args:
        model: The model (or trainer) whose :class:`~optuna_ift.HyperParameter` tensors are
            overwritten in place (optimizers holding them keep working).
        study: The study to take the trial from.
        artifact_store: The artifact store the tensors were saved to.
        exclude: A trial number never to use (the running trial itself).

    Returns:
        The number of the trial used, or ``None`` when no trial matched (nothing is changed).

    Raises:
        TypeError: If ``model`` is neither a model nor a trainer, ``study`` not a study,
            ``artifact_store`` not an artifact store, or ``exclude`` neither ``None`` nor an
            integer.
        ValueError: If the study has several objectives.
    """
    if isinstance(model, HyperTrainer):
        model = model.model
    targets = learned_hyperparameters(model)
    _check_study(study)
    _check_artifact_store(artifact_store)
    if exclude is not None and (isinstance(exclude, bool)
                                or not isinstance(exclude, numbers.Integral)):
        raise ArgumentKindError(
            f"exclude must be None or an integer (a trial number), got {_shown(exclude)}"
        )
    if len(study.directions) > 1:
        raise ValueError("warm_start needs a single-objective study")
    if not targets:
        return None
    shapes = _shapes_of(model)
    candidates = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number != exclude and ATTR_LEARNED in t.user_attrs
        and t.user_attrs.get(ATTR_SHAPES) == shapes and t.value is not None
        and math.isfinite(t.value)
    ]
    if not candidates:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    best = min(candidates, key=lambda t: (sign * t.value, t.number))
    tensors = load_learned(study, best.number, artifact_store)
    with torch.no_grad():
        for name, p in targets.items():
            source = tensors.get(name)
            if source is None or source.shape != p.shape:  # stale attribute: leave p alone
                _logger.warning("warm start: trial %d has no tensor %r shaped %s; skipped",
                                best.number, name, tuple(p.shape))
                return None
        for name, p in targets.items():
            p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))
    return best.number


_warm_start = warm_start  # run_trainer's argument of the same name shadows it


# -- everything together -----------------------------------------------------------------------


def retry_history(trial: optuna.Trial | FrozenTrial) -> list[int]:
    """Numbers of the failed trials that ``trial`` retries, oldest first (empty if none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        frozen = trial if isinstance(trial, FrozenTrial) else _Attrs(
            trial.storage.get_trial_system_attrs(trial_id(trial)))
        history = list(_RETRY_CALLBACK.retry_history(frozen))
        first = _RETRY_CALLBACK.retried_trial_number(frozen)
    if first is not None and not history:
        history = [first]
    return history


class _Attrs:
    """Just enough of a FrozenTrial for the retry callback's static readers."""

    def __init__(self, system_attrs: dict[str, Any]) -> None:
        self.system_attrs = system_attrs


class _Checkpointer(Callback):
    """Checkpoint every ``every`` hyper steps (not at the last one). When the trainer also
    evaluates at that step (which it does after the hyper-step callbacks), the checkpoint
    waits for the evaluation, so a resumed run has the evaluation in its history. In a process
    group every rank takes the state (which checks that the hyperparameters agree); rank 0
    stores it."""

    def __init__(self, link: TrialLink, store: Any, every: int, last: int) -> None:
        self.link, self.store, self.every, self.last = link, store, every, last
        self.pending = False

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        step = trainer.hyper_step
        if step % self.every or step >= self.last:
            return
        if trainer.eval_data and trainer.eval_every and step % trainer.eval_every == 0:
            self.pending = True
        else:
            self._save(trainer)

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if self.pending:
            self.pending = False
            self._save(trainer)

    def _save(self, trainer: HyperTrainer) -> None:
        state, step = trainer.state_dict(), int(trainer.hyper_step)
        trial = self.link.optuna_trial
        self.link.run(lambda: _store_checkpoint(trial, trial.storage, self.store, state, step))


def _resume(link: TrialLink, trainer: HyperTrainer, artifact_store: Any,
            artifact_id: str | None) -> int:
    """Load the checkpoint ``artifact_id`` (known on the leader) into ``trainer`` on every
    process: the leader downloads it and, in a group, sends the others its bytes."""
    with tempfile.TemporaryDirectory(prefix="optuna_ift_") as folder:
        path = os.path.join(folder, "trainer_checkpoint.pt")

        def fetch() -> bytes | None:
            download_artifact(artifact_store=artifact_store, file_path=path,
                              artifact_id=artifact_id)
            return Path(path).read_bytes() if link.distributed else None

        data = link.run(fetch)
        if not link.leader:
            Path(path).write_bytes(data)
        trainer.resume(path)  # torch.load(..., weights_only=True) inside
    return int(trainer.hyper_step)


def _check_group(link: TrialLink, trainer: HyperTrainer) -> None:
    world = 1 if trainer.group is None else trainer.group.world
    if world == link.world:
        return
    if link.world == 1:
        raise ValueError(
            f"the trainer runs data-parallel over {world} processes but trial is an "
            "optuna.Trial of one process: wrap it in optuna_integration.TorchDistributedTrial "
            "on every rank (the optuna.Trial on rank 0, None elsewhere), e.g. through "
            "optuna_ift.integration.optimize_distributed, so that every rank trains the same "
            "parameters")
    raise ValueError(
        f"trial spans {link.world} processes but the trainer runs on {world}: build the "
        "trainer after torch.distributed.init_process_group, on every rank")


def run_trainer(
    trial: optuna.Trial | Any,
    trainer: HyperTrainer,
    *,
    hyper_steps: int,
    artifact_store: Any,
    checkpoint_every: int | None = 10,
    warm_start: bool = True,
    prune: bool = True,
    monitor: str = "val_loss",
    previews: bool | Collection[str] = True,
) -> float:
    """Train ``trainer`` inside ``trial`` and return the final ``monitor`` value.

    In order:

    1. If ``trial`` retries a failed trial (:class:`optuna.storages.RetryFailedTrialCallback`)
       and that trial left a checkpoint, the trainer resumes from it, and the trial records
       ``ift:resumed_from_trial`` and ``ift:resumed_at_hyper_step``; the evaluations done before
       the checkpoint are reported again, so the pruner sees the whole curve. Otherwise, with
       ``warm_start``, the hyperparameters start from the best finished trial whose shapes
       match (:func:`warm_start`), recorded in ``ift:warm_started_from_trial``.
    2. ``trainer.fit(hyper_steps)`` with an :class:`IFTPruningCallback` (if ``prune``) and a
       checkpoint (:func:`save_checkpoint`) every ``checkpoint_every`` hyper steps.
    3. The learned tensors are saved (:func:`save_learned`), also when the trial is pruned;
       ``ift:hyper_steps``, ``ift:skipped_hyper_steps`` and the last evaluation (as
       ``ift:final_<key>``) are recorded.
    4. With ``previews``, files that ``optuna-dashboard`` shows are stored beside the tensors
       (:func:`save_previews`: image grids, histograms, a CSV summary); one that fails is
       logged and skipped, never failing the trial.

    Data-parallel (a trainer built in an initialised process group): call it on every rank
    with an :class:`optuna_integration.TorchDistributedTrial` (see
    :func:`optimize_distributed`). Rank 0 alone reads and writes the storage and the artifact
    store and sends the others what they need (the checkpoint to resume from, the warm-start
    tensors, its errors); evaluations are reported and pruning decided once, for every rank.

    Args:
        trial: The running trial: an :class:`optuna.Trial`, or a ``TorchDistributedTrial``
            on every rank of a process group.
        trainer: A trainer with ``eval_data`` holding the set that ``monitor`` names (the
            trainer evaluates it every epoch or ``eval_every`` hyper steps).
        hyper_steps: Hyper steps to train in total.
        artifact_store: Where learned tensors and checkpoints go (rank 0's, in a group).
        checkpoint_every: Hyper steps between checkpoints; ``None`` for none.
        warm_start: Start from the best matching finished trial.
        prune: Report evaluations and prune through the study's pruner.
        monitor: The evaluation key reported and returned, ``"<eval_data name>_loss"``.
        previews: ``True`` (every preview the model has something for), ``False`` (none),
            or a collection of kinds from :data:`PREVIEW_KINDS`.

    Returns:
        The final value of ``monitor`` (the trainer evaluates once more at the end if its last
        evaluation was earlier); the same on every rank.

    Raises:
        ValueError: If the trainer is data-parallel and ``trial`` is not shared by the same
            processes (an ``optuna.Trial`` would let each rank sample its own parameters).
    """
    link = TrialLink(trial)
    if not isinstance(trainer, HyperTrainer):
        raise TypeError(f"trainer must be a HyperTrainer, got {type(trainer).__name__}")
    _check_group(link, trainer)
    hyper_steps = check_int("hyper_steps", hyper_steps, 1)
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    if not isinstance(monitor, str):
        raise ArgumentKindError(f"monitor must be an evaluation key such as 'val_loss', got "
                                f"{type(monitor).__name__}")
    name, sep, key = monitor.rpartition("_")
    if not sep or name not in trainer.eval_data or key not in ("loss", "metric"):
        raise ValueError(f"monitor must be '<name>_loss' or '<name>_metric' for a name in the "
                         f"trainer's eval_data {sorted(trainer.eval_data)}, got {monitor!r}")
    _check_artifact_store(artifact_store)  # now, not when the trained tensors are saved
    preview_kinds = check_previews(previews)
    leader = link.optuna_trial  # None on the other ranks

    def plan() -> tuple[str | None, int | None]:
        attrs = leader.user_attrs
        if retry_history(leader) and ATTR_CHECKPOINT in attrs:
            return attrs[ATTR_CHECKPOINT], attrs.get(ATTR_CHECKPOINT_TRIAL,
                                                     retry_history(leader)[-1])
        return None, None

    checkpoint, source = link.run(plan)
    if checkpoint is not None:
        resumed_step = _resume(link, trainer, artifact_store, checkpoint)

        def record_resume() -> None:
            leader.set_user_attr(ATTR_RESUMED_FROM, int(source))
            leader.set_user_attr(ATTR_RESUMED_AT_STEP, resumed_step)
            _logger.info("trial %d resumes trial %s from hyper step %d", leader.number,
                         source, resumed_step)

        link.run(record_resume)
        if prune:
            for record in trainer.history.evaluations:
                if monitor in record:
                    link.trial.report(float(record[monitor]), int(record["hyper_step"]))
    elif warm_start:
        def start_warm() -> int | None:
            found = _warm_start(trainer.model, leader.study, artifact_store,
                                exclude=leader.number)
            leader.set_user_attr(ATTR_WARM_START, found)
            return found

        if link.run(start_warm) is not None and trainer.group is not None:
            trainer.group.broadcast_(trainer.hyperparameters)  # rank 0's warm start

    added: list[Callback] = []
    if prune:
        added.append(IFTPruningCallback(link.trial, monitor=monitor))
    if checkpoint_every is not None:
        added.append(_Checkpointer(link, artifact_store, checkpoint_every, hyper_steps))
    trainer.callbacks.extend(added)

    def record_end() -> None:
        save_learned(leader, trainer, artifact_store)
        leader.set_user_attr("ift:hyper_steps", int(trainer.hyper_step))
        leader.set_user_attr("ift:skipped_hyper_steps", int(trainer.history.skipped))
        if preview_kinds:
            save_previews(leader, trainer, artifact_store, kinds=preview_kinds)

    try:
        trainer.fit(hyper_steps)
    finally:
        for callback in added:
            trainer.callbacks.remove(callback)
        link.run(record_end)

    evaluations = trainer.history.evaluations
    if evaluations and evaluations[-1]["hyper_step"] == trainer.hyper_step:
        final = dict(evaluations[-1])
    else:
        final = {"hyper_step": trainer.hyper_step}
        for set_name, data in trainer.eval_data.items():
            final |= {f"{set_name}_{k}": v for k, v in trainer.evaluate(data).items()}
        if prune:
            link.trial.report(float(final[monitor]), int(trainer.hyper_step))
    def record_final() -> None:
        for k, v in final.items():
            leader.set_user_attr(f"ift:final_{k}", float(v))

    link.run(record_final)
    return float(final[monitor])


# -- storages with heartbeats ------------------------------------------------------------------

# A journal storage has no heartbeats of its own: HeartbeatJournalStorage (in _compat, since
# Optuna's heartbeat protocol is private) gives it Optuna's.


#: ``?password=...`` (and its spellings) in a URL's query, which libpq and others accept.
_QUERY_PASSWORD = re.compile(r"([?&;](?:password|passwd|pwd)=)[^&;#]*", re.IGNORECASE)


def mask_password(url: str | os.PathLike[str]) -> str:
    """``url`` with its password replaced by ``***``, for printing, logging and saving.

    ``postgresql+psycopg2://user:secret@host/db`` becomes
    ``postgresql+psycopg2://user:***@host/db``; a ``password=`` query parameter is masked too.
    Everything else is kept character for character, and a string without ``://`` (a journal
    file path) is returned unchanged.

    The user information is taken to end at the *last* ``@`` of the URL, so an unescaped
    ``@`` or ``/`` in a password never lets part of it through (an ``@`` later in the query
    hides more than the password, never less).

    Args:
        url: A storage URL or a file path.

    Returns:
        The masked string.

    Raises:
        TypeError: If ``url`` is not a string or a path.
    """
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"url must be a string or a path, got {type(url).__name__}")
    text = os.fspath(url)
    if not isinstance(text, str):
        raise TypeError(f"url must be a text path, got {type(text).__name__}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        rest = f"{user}:***@{host}"
    return _QUERY_PASSWORD.sub(r"\1***", f"{scheme}{sep}{rest}")


def _one_line(error: BaseException) -> str:
    """The driver's message of a SQLAlchemy error (without SQLAlchemy's footer), on one line."""
    text = str(getattr(error, "orig", None) or error)
    return " ".join(text.split()) or type(error).__name__


def _connect_rdb(url: str, engine_kwargs: dict | None, kwargs: dict[str, Any],
                 attempts: int = 5) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried: workers that start together on a new database race to
    create its tables, and all but one of them see a unique-key violation the first time; a
    server that is starting up refuses connections for a moment.

    Raises:
        ConnectionError: If the database cannot be reached (a SQLAlchemy ``OperationalError``
            on every attempt: server down, wrong host, port or password).
    """
    import random
    import time

    import sqlalchemy.exc

    shown = mask_password(url)
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as error:
            if attempt == attempts:
                if isinstance(error, sqlalchemy.exc.OperationalError):
                    raise ConnectionError(
                        f"storage {shown!r}: cannot connect to the database "
                        f"({attempts} attempt{'s' * (attempts > 1)}): {_one_line(error)}"
                    ) from error
                raise
            _logger.info("connecting to %s failed (attempt %d of %d: %s), retrying", shown,
                         attempt, attempts, _one_line(error))
            time.sleep(0.2 * attempt + 0.3 * random.random())
    raise AssertionError("unreachable")


def _check_database_url(url: str) -> None:
    """Parse ``url`` as a SQLAlchemy URL and load its dialect and driver, so that a typo is a
    ``ValueError`` naming ``storage`` now rather than a driver error at the first query. A
    SQLite database's folder is created, as a journal file's is."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    shown = mask_password(url)
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise ValueError(
            f"storage {shown!r} is not a database URL ({error}); use "
            "dialect[+driver]://user:password@host[:port]/database (e.g. sqlite:///study.db, "
            "postgresql+psycopg2://user@host/db) or the path of a journal file") from None
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ValueError(
            f"storage {shown!r} names the unknown database {parsed.drivername!r}; use sqlite, "
            "postgresql, mysql (each with an optional +driver) or the path of a journal "
            "file") from None
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise ValueError(
            f"storage {shown!r} needs the database driver of {parsed.drivername!r}, which is "
            f"not installed ({error}); install it or name an installed driver, e.g. "
            "postgresql+psycopg2://...") from None
    database = parsed.database
    if (parsed.get_backend_name() == "sqlite" and database and database != ":memory:"
            and not database.startswith("file:")):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_storage(
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    connect_attempts: int = 5,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``storage``, with heartbeats and retries when asked.

    Passwords never reach the log: every URL this function logs or puts in an error message
    goes through :func:`mask_password`.

    Args:
        storage: A database URL (``sqlite:///study.db``, ``postgresql+psycopg2://...``,
            ``mysql+pymysql://...``: an :class:`~optuna.storages.RDBStorage`; a SQLite
            database's folder is created), the path of a journal file (anything without
            ``://``; ``journal:///path`` works too: a
            :class:`~optuna.storages.JournalStorage` on a
            :class:`~optuna.storages.journal.JournalFileBackend`; its folder is created), or a
            storage object, returned unchanged.
        heartbeat_interval: Seconds between heartbeats of a running trial; ``None``: no
            heartbeats (a killed worker's trial then stays ``RUNNING``).
        grace_period: Seconds without a heartbeat after which a running trial is failed;
            ``None``: twice ``heartbeat_interval``.
        max_retry: With heartbeats, a failed stale trial is retried (a copy is queued with
            :class:`optuna.storages.RetryFailedTrialCallback`) at most this many times;
            ``None``: without limit.
        connect_attempts: Tries to open a database (a short, growing pause between them);
            each failed one but the last is logged at INFO level.

    Raises:
        TypeError: If ``storage`` is neither a string, a path nor a storage.
        ValueError: If an argument is out of range, or ``storage`` is not a database URL, names
            an unknown database or a driver that is not installed.
        ConnectionError: If the database cannot be reached in ``connect_attempts`` tries.
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, (str, os.PathLike)):
        raise TypeError(f"storage must be a URL, a path or an Optuna storage, "
                        f"got {type(storage).__name__}")
    for name, value in (("heartbeat_interval", heartbeat_interval),
                        ("grace_period", grace_period), ("max_retry", max_retry)):
        if value is not None:
            check_int(name, value, 0 if name == "max_retry" else 1)
    check_int("connect_attempts", connect_attempts, 1)
    url = os.fspath(storage)
    if not url.strip():
        raise ValueError("storage must be a database URL or a journal file path, got ''")
    callback = None
    if heartbeat_interval is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            callback = _RETRY_CALLBACK(max_retry=max_retry)
    if url.startswith("journal://"):
        url = url[len("journal://"):]
    elif "://" in url:
        _check_database_url(url)
        kwargs: dict[str, Any] = {}
        if heartbeat_interval is not None:
            kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                      "failed_trial_callback": callback}
            import inspect

            if "heartbeat_stale_trial_callback" in inspect.signature(
                    optuna.storages.RDBStorage).parameters:
                kwargs["heartbeat_stale_trial_callback"] = kwargs.pop("failed_trial_callback")
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        _logger.debug("opening the database %s", mask_password(url))
        return _connect_rdb(url, engine_kwargs, kwargs, attempts=connect_attempts)
    from optuna.storages.journal import JournalFileBackend

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(url)
    if heartbeat_interval is None:
        return optuna.storages.JournalStorage(backend)
    return HeartbeatJournalStorage(backend, heartbeat_interval=heartbeat_interval,
                                   grace_period=grace_period,
                                   heartbeat_stale_trial_callback=callback)
