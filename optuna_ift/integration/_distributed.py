"""Optuna trials that span the processes of a ``torch.distributed`` group.

One trial, many processes: rank 0 talks to the storage, the other ranks follow. The parameters
come from optuna-integration's :class:`~optuna_integration.TorchDistributedTrial` (rank 0
samples, every rank gets the same values; ``report`` and ``should_prune`` are shared the same
way); what :func:`~optuna_ift.integration.run_trainer` adds on top (checkpoints, learned tensors,
warm starts, resumes) goes through a :class:`TrialLink`: rank 0 does the storage work and tells
the others its outcome, an error included, so no rank waits for a message that never comes.

:func:`optimize_distributed` runs a study over the group: rank 0 runs ``study.optimize`` and
tells the followers, before each trial, to run the objective with it, and when to stop.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch

from optuna_ift._validation import ArgumentKindError
from optuna_ift.integration._compat import wrapped_trial

__all__ = ["LeaderError", "TrialLink", "broadcast_object", "broken_group",
           "is_distributed_trial", "optimize_distributed"]

_logger = logging.getLogger(__name__)

_TRIAL, _STOP = "trial", "stop"
_object_group: Any = None


class LeaderError(RuntimeError):
    """Raised on a follower when rank 0 failed at a step of the trial that only it does
    (talking to the storage or the artifact store); rank 0 raises the original error."""


def _distributed_trial_class() -> type | None:
    try:
        from optuna_integration import TorchDistributedTrial
    except ImportError:  # pragma: no cover - optuna-integration is a dependency
        return None
    return TorchDistributedTrial


def is_distributed_trial(trial: Any) -> bool:
    """Whether ``trial`` is an :class:`optuna_integration.TorchDistributedTrial`."""
    cls = _distributed_trial_class()
    return cls is not None and isinstance(trial, cls)


def _objects_group() -> Any:
    """The group to broadcast Python objects over: the default one (``None``) when it is
    gloo, else a gloo group over the same processes (made once; every process makes it at the
    same call, as ``new_group`` requires), so objects never travel through GPU memory.

    The default group is never kept here: a module-level reference to it kept its gloo
    context alive until interpreter exit, where tearing it down killed finished processes
    with ``std::terminate`` (SIGABRT)."""
    global _object_group
    if torch.distributed.get_backend() == "gloo":
        return None
    if _object_group is None:
        _object_group = torch.distributed.new_group(backend="gloo")
    return _object_group


def _broadcast(value: Any) -> Any:
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0, group=_objects_group())
    return box[0]


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank of the initialised group, sent
    over gloo whatever the group's backend; every rank must call it."""
    return _broadcast(value)


def _sendable(error: BaseException) -> BaseException:
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 (anything that does not pickle travels as text)
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


class TrialLink:
    """What :func:`~optuna_ift.integration.run_trainer` needs of a trial, in one process or
    across a process group.

    Args:
        trial: An :class:`optuna.Trial` (one process) or a
            :class:`~optuna_integration.TorchDistributedTrial` (every rank of the group).

    Attributes:
        trial: The trial to report to and ask about pruning (``trial`` itself).
        leader: Whether this process talks to the storage (rank 0, or the only process).
        optuna_trial: The :class:`optuna.Trial` on the leader, ``None`` on the followers.
        world: The number of processes that run the trial.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        if isinstance(trial, optuna.Trial):
            self.leader, self.optuna_trial, self.world = True, trial, 1
        elif is_distributed_trial(trial):
            self.world = torch.distributed.get_world_size()
            self.leader = torch.distributed.get_rank() == 0
            # TorchDistributedTrial keeps rank 0's trial and offers no accessor for it.
            self.optuna_trial = wrapped_trial(trial) if self.leader else None
            if self.leader and not isinstance(self.optuna_trial, optuna.Trial):
                raise TypeError("the TorchDistributedTrial of rank 0 must wrap an "
                                "optuna.Trial (the one study.optimize passes)")
        else:
            raise ArgumentKindError(
                "trial must be an optuna.Trial or, in a process group, an "
                f"optuna_integration.TorchDistributedTrial, got {type(trial).__name__}")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def run(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the leader; its result (or its error) on every process.

        Raises:
            LeaderError: On a follower, when ``work`` raised on the leader (the leader raises
                the error itself).
        """
        if not self.distributed:
            return work()
        error = result = None
        if self.leader:
            try:
                result = work()
            except Exception as caught:  # noqa: BLE001 (told to the followers, then raised)
                error = caught
            _broadcast((None if error is None else _sendable(error), result))
            if error is not None:
                raise error
            return result
        error, result = _broadcast(None)
        if error is not None:
            raise LeaderError(f"rank 0 failed: {type(error).__name__}: {error}") from error
        return result

    def share(self, value: Any) -> Any:
        """The leader's ``value`` on every process."""
        return _broadcast(value) if self.distributed else value


def broken_group(error: BaseException) -> bool:
    """Whether ``error`` says that the process group broke (a rank died or hung up): one of
    ``torch.distributed``'s errors, or gloo's or NCCL's transport failure."""
    distributed_error = getattr(torch.distributed, "DistError", None)
    if distributed_error is not None and isinstance(error, distributed_error):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "gloo/transport" in text or "Connection reset by peer" in text
        or "Connection closed by peer" in text or "NCCL" in text)


def _retry(study: optuna.Study, trial: optuna.Trial) -> None:
    """Queue a retry of ``trial`` (failed because a rank died) through the storage's
    failed-trial callback, as the storage does for a trial whose heartbeat stopped; the retry
    keeps the trial's parameters and user attributes, its last checkpoint among them."""
    callback = getattr(trial.storage, "get_failed_trial_callback", lambda: None)()
    if callback is None:
        return
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == trial.number),
                  None)
    if frozen is not None and frozen.state == optuna.trial.TrialState.FAIL:
        _logger.warning("trial %d failed because a rank of its group died; queuing its retry",
                        frozen.number)
        callback(study, frozen)


def optimize_distributed(
    study: optuna.Study | None,
    objective: Callable[[Any], float | Sequence[float]],
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    catch: Sequence[type[Exception]] | type[Exception] = (),
) -> None:
    """Optimise ``study`` with every trial spread over the initialised process group.

    Call it on every rank: with the study on rank 0 and ``None`` on the others (as
    :class:`~optuna_integration.TorchDistributedTrial` takes the trial). Rank 0 runs
    ``study.optimize(n_trials=..., timeout=..., callbacks=..., catch=...)``; before each trial
    it tells the other ranks to run ``objective`` with it, and when it stops, that it stopped.
    ``objective`` gets a :class:`~optuna_integration.TorchDistributedTrial` on every rank, so
    every rank sees the same parameters and the same pruning decisions.

    A follower whose objective raises an error that rank 0 did not also meet (one it met is a
    :class:`LeaderError` or the same pruning) lets it through: its process ends, the group
    breaks, and rank 0's trial fails instead of waiting for it. A trial that fails because its
    group broke (:func:`broken_group`) is retried like the trial of a dead worker: when the
    storage has a failed-trial callback (:func:`~optuna_ift.integration.create_storage` with
    ``max_retry``), a retry is queued, which resumes from the trial's last checkpoint; then
    the error goes on, and the processes of the broken group end. When rank 0 itself dies,
    the others end at their next collective and the trial's heartbeat fails it.

    Raises:
        RuntimeError: If no process group is initialised.
        TypeError: If ``study`` is not a study on rank 0 or not ``None`` on another rank.
    """
    from optuna_integration import TorchDistributedTrial

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("optimize_distributed needs an initialised torch.distributed "
                           "process group (torch.distributed.init_process_group, or torchrun)")
    rank = torch.distributed.get_rank()
    if rank == 0 and not isinstance(study, optuna.Study):
        raise ArgumentKindError(f"study must be the optuna.Study on rank 0, got "
                                f"{type(study).__name__}")
    if rank != 0 and study is not None:
        raise ArgumentKindError(f"study must be None on rank {rank} (only rank 0 talks to "
                                f"the storage), got {type(study).__name__}")
    if not callable(objective):
        raise ArgumentKindError(f"objective must be callable, got {type(objective).__name__}")
    caught = tuple(catch) if isinstance(catch, Sequence) else (catch,)

    def shared(trial: optuna.Trial | None) -> Any:
        with warnings.catch_warnings():  # chosen here, not by the user: no warning per trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return TorchDistributedTrial(trial)

    _objects_group()  # made now, by every rank at the same point

    if rank == 0:
        lost: list[optuna.Trial] = []

        def lead(trial: optuna.Trial) -> Any:
            _broadcast(_TRIAL)
            try:
                return objective(shared(trial))
            except Exception as error:
                if broken_group(error):
                    lost.append(trial)
                raise

        try:
            study.optimize(lead, n_trials=n_trials, timeout=timeout, callbacks=list(callbacks),
                           catch=catch, gc_after_trial=False)
        except Exception:
            for trial in lost:  # failed by Optuna just now: retry it as a dead worker's
                _retry(study, trial)
            raise
        finally:
            try:
                _broadcast(_STOP)
            except Exception:  # a follower died: the error that caused it wins
                _logger.warning("could not tell the other ranks to stop", exc_info=True)
        return
    while _broadcast(None) == _TRIAL:
        try:
            objective(shared(None))
        except (optuna.TrialPruned, LeaderError, *caught):
            continue
