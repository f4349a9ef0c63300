"""Every use of Optuna's internals, in one place, for the Optuna versions it was tested with.

Optuna's public API covers all that ``optuna_ift`` needs but three things, and this module is
where those three reach into Optuna (``tests/test_compat.py`` fails if any other module of the
package uses a private Optuna name):

1. Showing a sampler a study with other parameter values (the view of
   :class:`~optuna_ift.integration.HybridSampler`). Optuna's own samplers read a study's
   trials through the private ``Study._get_trials`` (and ``best_trial`` goes through
   ``Study._get_best_trial``), so a view that overrides only the public ``get_trials`` would
   change nothing for them: :func:`study_view` overrides the two private methods.
2. The storage id of a trial, which every method of the public
   :class:`optuna.storages.BaseStorage` takes but which ``optuna.Trial`` and
   ``optuna.trial.FrozenTrial`` keep as the private ``_trial_id``: :func:`trial_id`. (The
   public constructor of ``FrozenTrial`` takes it; only reading it back is private.)
3. Heartbeats for a journal storage. ``study.optimize`` runs its heartbeat thread and fails
   stale trials only for a storage that is an instance of the private
   ``optuna.storages._heartbeat.BaseHeartbeat``, whose abstract ``_get_stale_trial_ids`` is
   private too: :class:`HeartbeatJournalStorage`. (optuna-integration's
   ``TorchDistributedTrial`` similarly keeps rank 0's trial private: :func:`wrapped_trial`.)

At import the module checks the installed Optuna against :data:`SUPPORTED_OPTUNA`, the range
that CI runs (its oldest and newest release; ``pyproject.toml`` declares the same range): a
version outside it gets an :class:`OptunaVersionWarning`, and an Optuna that lacks one of the
internals above raises ``ImportError`` naming it, rather than letting the view silently show
the sampled values or the heartbeats silently stop.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
import warnings
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from optuna_ift._validation import ArgumentKindError

__all__ = [
    "HEARTBEAT_ATTR",
    "SUPPORTED_OPTUNA",
    "HeartbeatJournalStorage",
    "OptunaVersionWarning",
    "check_optuna_internals",
    "check_optuna_version",
    "study_view",
    "trial_id",
    "view_owner",
    "wrapped_trial",
]

#: The Optuna releases this package is tested with (CI runs the oldest and the newest).
SUPPORTED_OPTUNA = ">=4.8,<6"

#: System attribute in which :class:`HeartbeatJournalStorage` records a trial's heartbeat.
HEARTBEAT_ATTR = "ift:heartbeat"


class OptunaVersionWarning(UserWarning):
    """The installed Optuna is outside :data:`SUPPORTED_OPTUNA`."""


def check_optuna_version(version: str) -> bool:
    """Whether ``version`` is in :data:`SUPPORTED_OPTUNA`; warns when it is not.

    Pre-releases count as the release they precede (``5.1.0.dev0`` is supported).

    Args:
        version: An Optuna version string, e.g. ``optuna.__version__``.

    Returns:
        ``True`` inside the range; ``False`` (after an :class:`OptunaVersionWarning`) outside.

    Raises:
        TypeError: If ``version`` is not a string.
        ValueError: If ``version`` is not a PEP 440 version.
    """
    if not isinstance(version, str):
        raise ArgumentKindError(
            f"version must be a version string, got {type(version).__name__} {version!r:.60}")
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise ValueError(f"version must be a PEP 440 version such as '5.0.0', "
                         f"got {version!r}") from None
    if SpecifierSet(SUPPORTED_OPTUNA).contains(parsed, prereleases=True):
        return True
    warnings.warn(
        f"optuna_ift.integration is tested with optuna{SUPPORTED_OPTUNA}, found optuna "
        f"{version}. HybridSampler's view of the study and the journal heartbeats rely on "
        f"Optuna internals that may differ in this release; install a supported Optuna "
        f"(pip install 'optuna{SUPPORTED_OPTUNA}').",
        OptunaVersionWarning, stacklevel=2,
    )
    return False


# -- 1. the view of a study -------------------------------------------------------------------


def view_owner(study: Any) -> object | None:
    """The ``owner`` of a view made by :func:`study_view`; ``None`` for anything else."""
    return getattr(study, "_ift_view_owner", None)


@functools.cache
def _view_class(study_class: type) -> type:
    """A subclass of ``study_class`` whose trial queries pass through a function (one class
    per study class, made once)."""

    class StudyView(study_class):  # type: ignore[misc, valid-type]
        # Slots, so that the view's own state lives beside the shared ``__dict__``.
        __slots__ = ("_ift_view_owner", "_ift_view_show")

        def _get_trials(
            self,
            deepcopy: bool = True,
            states: Container[TrialState] | None = None,
            use_cache: bool = False,
        ) -> list[FrozenTrial]:
            trials = super()._get_trials(deepcopy=False, states=states, use_cache=use_cache)
            shown = [self._ift_view_show(t) for t in trials]
            return copy.deepcopy(shown) if deepcopy else shown

        def _get_best_trial(self, deepcopy: bool) -> FrozenTrial:
            best = self._ift_view_show(super()._get_best_trial(deepcopy=False))
            return copy.deepcopy(best) if deepcopy else best

    StudyView.__name__ = StudyView.__qualname__ = f"StudyView[{study_class.__name__}]"
    return StudyView


def study_view(study: Study, *, owner: object,
               show: Callable[[FrozenTrial], FrozenTrial]) -> Study:
    """``study`` with every trial that its queries return passed through ``show``.

    The view is an instance of a subclass of ``type(study)`` that shares the study's
    ``__dict__`` (not a copy: the storage, the trial cache of ``use_cache=True`` queries and
    the stop flag stay the study's), so anything a sampler does to it, it does to the study.
    Only the queries differ: ``trials``, ``get_trials``, the private ``_get_trials`` that
    Optuna's samplers call, ``best_trial`` and ``best_trials`` return ``show(trial)`` for each
    trial. ``show`` gets the storage's own objects and must not modify them.

    Args:
        study: The study.
        owner: Who makes the view; a view of ``owner``'s is returned as it is.
        show: Maps a trial to the trial that the view shows.

    Returns:
        The view.

    Raises:
        TypeError: If ``study`` is not an ``optuna.Study`` or ``show`` is not callable.
    """
    if not isinstance(study, Study):
        raise ArgumentKindError(f"study must be an optuna.Study, got {type(study).__name__}")
    if not callable(show):
        raise ArgumentKindError(f"show must be callable, got {type(show).__name__}")
    if view_owner(study) is owner:
        return study
    view = object.__new__(_view_class(type(study)))
    view.__dict__ = study.__dict__  # shared, not copied
    view._ift_view_owner = owner
    view._ift_view_show = show
    return view


# -- 2. trial ids -----------------------------------------------------------------------------


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage id of ``trial`` (what the methods of ``optuna.storages.BaseStorage`` take).

    Raises:
        TypeError: If ``trial`` is neither an ``optuna.Trial`` nor a ``FrozenTrial``.
    """
    if not isinstance(trial, (optuna.Trial, FrozenTrial)):
        raise ArgumentKindError(f"trial must be an optuna.Trial or a FrozenTrial, "
                                f"got {type(trial).__name__}")
    return trial._trial_id


def wrapped_trial(trial: Any) -> optuna.Trial | None:
    """The ``optuna.Trial`` that an ``optuna_integration.TorchDistributedTrial`` wraps (rank
    0's; ``None`` on the other ranks).

    Raises:
        TypeError: If ``trial`` is not a ``TorchDistributedTrial``.
    """
    from optuna_integration import TorchDistributedTrial

    if not isinstance(trial, TorchDistributedTrial):
        raise ArgumentKindError(f"trial must be an optuna_integration.TorchDistributedTrial, "
                                f"got {type(trial).__name__}")
    return trial._delegate


# -- 3. heartbeats for a journal storage ------------------------------------------------------

try:
    from optuna.storages._heartbeat import BaseHeartbeat
except ImportError:  # reported by check_optuna_internals
    BaseHeartbeat = None

_HeartbeatBase: type = BaseHeartbeat if BaseHeartbeat is not None else object


class HeartbeatJournalStorage(optuna.storages.JournalStorage, _HeartbeatBase):
    """A journal storage with Optuna's heartbeat protocol, which ``JournalStorage`` lacks.

    The heartbeat is a trial system attribute (:data:`HEARTBEAT_ATTR`, a Unix time) written
    every ``heartbeat_interval`` seconds by Optuna's heartbeat thread; a running trial whose
    last heartbeat (or start, before the first) is older than ``grace_period`` seconds is
    stale, and ``study.optimize`` fails it and calls the stale-trial callback, as with
    :class:`optuna.storages.RDBStorage`. Journal replay makes failing a trial atomic: when two
    workers fail the same trial, one of them gets ``UpdateFinishedTrialError``, which Optuna
    ignores, so the trial is retried once. The workers' clocks must agree (one machine, or
    NTP) since the time is compared across processes.

    Args:
        backend: The journal backend (e.g. ``JournalFileBackend(path)``).
        heartbeat_interval: Seconds between heartbeats.
        grace_period: Seconds without a heartbeat after which a running trial is stale;
            ``None``: twice ``heartbeat_interval``.
        heartbeat_stale_trial_callback: Called with the study and each trial failed as stale
            (e.g. an ``optuna.storages.RetryFailedTrialCallback``), or ``None``.
    """

    def __init__(self, backend: Any, *, heartbeat_interval: int, grace_period: int | None,
                 heartbeat_stale_trial_callback: Any) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * heartbeat_interval
        self._stale_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker already failed it as stale

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False,
                                         states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(HEARTBEAT_ATTR)
            if last is None and trial.datetime_start is not None:
                last = trial.datetime_start.timestamp()
            if last is not None and now - float(last) > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._stale_callback

    def get_failed_trial_callback(self) -> Any:  # the name before Optuna 4.9
        return self._stale_callback


# -- the check at import ----------------------------------------------------------------------


def _parameters(function: Any) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def check_optuna_internals() -> None:
    """Check that the installed Optuna has every internal this module uses, as it is used.

    Raises:
        ImportError: Naming each internal that is missing or has another shape.
    """
    problems = []
    for name, wanted in (("_get_trials", {"deepcopy", "states", "use_cache"}),
                         ("_get_best_trial", {"deepcopy"})):
        method = getattr(Study, name, None)
        if method is None or not wanted <= _parameters(method):
            problems.append(f"optuna.study.Study.{name}({', '.join(sorted(wanted))})")
    if not hasattr(optuna.trial.create_trial(value=0.0), "_trial_id"):
        problems.append("optuna.trial.FrozenTrial._trial_id")
    if BaseHeartbeat is None:
        problems.append("optuna.storages._heartbeat.BaseHeartbeat")
    elif HeartbeatJournalStorage.__abstractmethods__:
        problems.append("optuna.storages._heartbeat.BaseHeartbeat with the abstract methods "
                        "that HeartbeatJournalStorage implements (it now also requires "
                        f"{', '.join(sorted(HeartbeatJournalStorage.__abstractmethods__))})")
    if problems:
        raise ImportError(
            f"optuna_ift.integration needs Optuna internals that optuna {optuna.__version__} "
            f"lacks: {'; '.join(problems)}. It is tested with optuna{SUPPORTED_OPTUNA}; "
            f"install one of those (pip install 'optuna{SUPPORTED_OPTUNA}')."
        )


check_optuna_version(optuna.__version__)
check_optuna_internals()
