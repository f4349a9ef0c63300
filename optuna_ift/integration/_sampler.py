"""``HybridSampler``: any Optuna sampler for the few low-dimensional hyperparameters, taught
by the values that the trials refined with hypergradients.

Design. An Optuna study samples the low-dimensional hyperparameters (learning rate, width, a
global weight decay); inside each trial a :class:`~optuna_ift.HyperTrainer` tunes the
high-dimensional ones by implicit hypergradients. Those tensors never become Optuna
parameters (they are stored as artifacts by the trial helpers). A continuous parameter that
Optuna sampled may also be *refined* by the trainer (a global decay that the trainer keeps
tuning, say): the trial then records the value it ended with, ``record_refined(trial, name,
value)``, as the user attribute ``"ift:refined:<name>"``.

:class:`HybridSampler` wraps a base sampler the way ``optuna.samplers.PartialFixedSampler``
does and hands every hook through to it. The one difference is the study that the base
sampler is given: a *view* of the study, identical to it in every attribute (it shares the
study's ``__dict__``, so the storage, caches and stop flag are the same objects), whose trial
queries return each finished trial that recorded refined values with those values in place
of the sampled ones ("Lamarckian" inheritance: the base sampler learns from where the
gradient took a trial, not only from where the trial started). Refined values are fitted into
the parameter's distribution: clipped into its range, snapped to its step, rounded to an
integer for ``IntDistribution`` (in log space for log-scaled ones); categorical parameters are
never refined. The storage is never written: ``study.trials`` still holds the sampled values.

The rewritten trials are built once per finished trial and cached (finished trials cannot
change), so a query costs one dictionary look-up per trial on top of the base query.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import numbers
import threading
import weakref
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import BaseTrial, FrozenTrial, TrialState

from optuna_ift._validation import ArgumentKindError

__all__ = ["DEFAULT_REFINED_ATTR_PREFIX", "HybridSampler", "record_refined", "refined_key"]

_logger = logging.getLogger(__name__)

#: The user-attribute prefix under which trials record refined parameter values.
DEFAULT_REFINED_ATTR_PREFIX = "ift:refined:"

_MAX_SEED = 2**32 - 1  # the seeds a NumPy ``RandomState`` (TPESampler's) accepts


def refined_key(name: str, *, prefix: str = DEFAULT_REFINED_ATTR_PREFIX) -> str:
    """The user-attribute key under which the refined value of parameter ``name`` is stored."""
    return f"{prefix}{name}"


def _as_finite_float(value: Any) -> float | None:
    """``value`` as a finite ``float``, or ``None`` if it is not a finite real number.

    Accepts Python and NumPy numbers and one-element tensors (anything with ``__float__``),
    but not ``bool``.
    """
    if isinstance(value, bool) or not hasattr(type(value), "__float__"):
        return None
    if not isinstance(value, numbers.Real):
        if hasattr(value, "detach"):  # a tensor that may carry a graph
            value = value.detach()
        try:
            value = float(value)
        except (TypeError, ValueError, RuntimeError):
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def record_refined(
    trial: BaseTrial,
    name: str,
    value: Any,
    *,
    prefix: str = DEFAULT_REFINED_ATTR_PREFIX,
) -> None:
    """Record that the trial refined its sampled parameter ``name`` to ``value``.

    The value is stored as the user attribute ``prefix + name`` (a ``float``), as given: it is
    fitted into the parameter's distribution only when :class:`HybridSampler` shows the trial
    to its base sampler, so the attribute keeps what the trainer actually reached.

    Args:
        trial: The running trial (an ``optuna.Trial``, or any ``BaseTrial`` such as a
            ``FixedTrial`` or ``FrozenTrial``).
        name: A parameter the trial has already suggested with ``suggest_float`` or
            ``suggest_int``.
        value: The refined value: a finite real number (Python or NumPy scalar, or a
            one-element tensor).
        prefix: The attribute prefix; must match the ``refined_attr_prefix`` of the
            :class:`HybridSampler` that should learn from it.

    Raises:
        TypeError: If ``trial`` is not an Optuna trial, ``prefix`` is not a string, or
            ``value`` is not a number at all (a string, a bool, ``None``).
        ValueError: If the trial has no parameter ``name``, the parameter is categorical,
            ``prefix`` is empty, or ``value`` is not finite (or a tensor of several elements).
    """
    if not isinstance(trial, BaseTrial):
        raise TypeError(f"trial must be an optuna trial, got {type(trial).__name__}")
    _check_prefix("prefix", prefix)
    distributions = trial.distributions
    if name not in distributions:
        raise ValueError(
            f"name must be a parameter the trial has suggested; trial has "
            f"{sorted(distributions)}, got {name!r}"
        )
    if isinstance(distributions[name], CategoricalDistribution):
        raise ValueError(  # noqa: TRY004 - the value of `name` is wrong, not a type
            f"parameter {name!r} is categorical; only float and int parameters can be refined"
        )
    refined = _as_finite_float(value)
    if refined is None:
        message = f"value must be a finite real number, got {type(value).__name__} {value!r:.60}"
        if isinstance(value, bool) or not hasattr(type(value), "__float__"):
            raise ArgumentKindError(message)  # a string, a bool, None: not a number at all
        raise ValueError(message)
    trial.set_user_attr(refined_key(name, prefix=prefix), refined)


def _check_prefix(name: str, prefix: Any) -> str:
    """``prefix``, if it is a non-empty string (``ArgumentKindError`` for another kind)."""
    if not isinstance(prefix, str):
        raise ArgumentKindError(
            f"{name} must be a non-empty string, got {type(prefix).__name__} {prefix!r:.60}"
        )
    if not prefix:
        raise ValueError(f"{name} must be a non-empty string, got {prefix!r}")
    return prefix


def _fit_to_distribution(value: float, distribution: BaseDistribution) -> float | int | None:
    """``value`` moved to the nearest value that ``distribution`` can take (``None`` when the
    distribution cannot be refined: categorical or unknown)."""
    if isinstance(distribution, FloatDistribution):
        low, high = distribution.low, distribution.high
        if distribution.step is not None:
            k = round((min(max(value, low), high) - low) / distribution.step)
            return float(min(max(low + k * distribution.step, low), high))
        return float(min(max(value, low), high))  # also maps value <= 0 to low when log
    if isinstance(distribution, IntDistribution):
        low, high = distribution.low, distribution.high
        clipped = min(max(value, float(low)), float(high))
        if distribution.log:  # step is 1; the nearer of floor and ceil in log space
            below, above = math.floor(clipped), math.ceil(clipped)
            return int(above if clipped * clipped > below * above else below)
        k = round((clipped - low) / distribution.step)
        return int(min(max(low + k * distribution.step, low), high))
    return None


@functools.cache
@functools.lru_cache(maxsize=None)
def _view_class(study_class: type) -> type:
    """A subclass of ``study_class`` whose trial queries show refined parameter values (one
    class per study class, made once)."""

    class RefinedStudyView(study_class):  # type: ignore[misc, valid-type]
        # A slot, so that the sampler lives beside the shared ``__dict__``, not in it.
        __slots__ = ("_hybrid_sampler",)

        def _get_trials(
            self,
            deepcopy: bool = True,
            states: Container[TrialState] | None = None,
            use_cache: bool = False,
        ) -> list[FrozenTrial]:
            trials = super()._get_trials(deepcopy=False, states=states, use_cache=use_cache)
            trials = self._hybrid_sampler._refine_all(self, trials)
            return copy.deepcopy(trials) if deepcopy else trials

        def _get_best_trial(self, deepcopy: bool) -> FrozenTrial:
            best = self._hybrid_sampler.refine(super()._get_best_trial(deepcopy=False),
                                               study=self)
            return copy.deepcopy(best) if deepcopy else best

    RefinedStudyView.__name__ = RefinedStudyView.__qualname__ = (
        f"RefinedStudyView[{study_class.__name__}]"
    )
    return RefinedStudyView


class HybridSampler(BaseSampler):
    """Wraps any Optuna sampler so that it learns from hypergradient-refined parameter values.

    Every sampler hook (``infer_relative_search_space``, ``sample_relative``,
    ``sample_independent``, ``before_trial``, ``after_trial``, ``reseed_rng``) goes to the
    base sampler. The study it is handed is a view in which each finished trial that recorded
    refined values with :func:`record_refined` shows them in its ``params`` instead of the
    sampled ones, fitted into the parameter's distribution (clipped, snapped to its step,
    rounded to an integer for ``IntDistribution``, in log space for log-scaled integers;
    categorical parameters are never refined). Trials without refined values are unchanged,
    and the storage is never written: ``study.trials`` keeps the sampled values.

    Note:
        Replacing sampled values by refined ones narrows the region the base sampler has
        observed. TPE then finds its "good" and "bad" densities both concentrated there and
        may prefer the unobserved edges of the range, whose density ratio is set by its
        priors: on a toy where refinement pulls ``x`` 60 % of the way to the optimum, TPE
        with refined values did worse than TPE on the sampled ones (10 seeds, 30 trials).
        Measure on your problem (``benchmarks/bench_hybrid.py``).

    Example:
        .. code-block:: python

            import optuna
            from optuna_ift.integration import HybridSampler, record_refined

            def objective(trial):
                lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
                decay = trial.suggest_float("decay", 1e-6, 1e-1, log=True)
                ...  # train; a HyperTrainer tunes the decay (and a decay per weight)
                record_refined(trial, "decay", learned_decay)
                return val_loss

            study = optuna.create_study(sampler=HybridSampler(seed=0))
            study.optimize(objective, n_trials=20)

    Args:
        base_sampler: The sampler that samples the low-dimensional parameters; ``None``
            means ``optuna.samplers.TPESampler(seed=seed)``.
        seed: Seed of the default TPE sampler. Only used when ``base_sampler`` is ``None``
            (seed a sampler you pass yourself).
        refined_attr_prefix: The user-attribute prefix under which trials record refined
            values (the ``prefix`` of :func:`record_refined`).

    Raises:
        TypeError: If ``base_sampler`` is not an Optuna sampler, ``seed`` is neither ``None``
            nor an integer, or the prefix is not a string.
        ValueError: If ``seed`` is given along with a ``base_sampler`` or is outside
            ``[0, 2**32 - 1]``, or the prefix is empty.
    """

    def __init__(
        self,
        base_sampler: BaseSampler | None = None,
        *,
        seed: int | None = None,
        refined_attr_prefix: str = DEFAULT_REFINED_ATTR_PREFIX,
    ) -> None:
        if seed is not None:
            allowed = f"None or an integer in [0, {_MAX_SEED}] (a NumPy seed)"
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise ArgumentKindError(
                    f"seed must be {allowed}, got {type(seed).__name__} {seed!r:.60}"
                )
            if not 0 <= seed <= _MAX_SEED:
                raise ValueError(f"seed must be {allowed}, got {seed!r}")
            seed = int(seed)
        _check_prefix("refined_attr_prefix", refined_attr_prefix)
        if base_sampler is None:
            base_sampler = optuna.samplers.TPESampler(seed=seed)
        elif not isinstance(base_sampler, BaseSampler):
            raise TypeError(
                f"base_sampler must be an optuna.samplers.BaseSampler or None, "
                f"got {type(base_sampler).__name__}"
            )
        elif seed is not None:
            raise ValueError(
                "seed seeds the default TPESampler and is only allowed with base_sampler=None; "
                "seed the sampler you pass instead"
            )
        self._base_sampler = base_sampler
        self._prefix = refined_attr_prefix
        # storage -> {trial_id: (number, datetime_complete, refined trial or None)}
        self._cache: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, ...]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    # -- public helpers -------------------------------------------------------------------

    @property
    def base_sampler(self) -> BaseSampler:
        """The wrapped sampler."""
        return self._base_sampler

    @property
    def refined_attr_prefix(self) -> str:
        """The user-attribute prefix of refined values."""
        return self._prefix

    def __str__(self) -> str:
        return f"{type(self).__name__}({self._base_sampler})"

    def refined_params(self, trial: FrozenTrial) -> dict[str, float | int]:
        """The refined values the trial recorded, fitted into their distributions.

        Only numeric parameters the trial has are included; attributes naming an unknown or
        categorical parameter, or holding a non-finite value, are ignored with a warning.
        """
        refined: dict[str, float | int] = {}
        for key, raw in trial.user_attrs.items():
            if not key.startswith(self._prefix):
                continue
            name = key[len(self._prefix):]
            distribution = trial.distributions.get(name)
            value = _as_finite_float(raw)
            fitted = (None if distribution is None or value is None
                      else _fit_to_distribution(value, distribution))
            if fitted is None:
                _logger.warning(
                    "Trial %d: ignoring refined value %r of %r (the trial has no float or int "
                    "parameter of that name, or the value is not a finite number).",
                    trial.number, raw, name,
                )
                continue
            refined[name] = fitted
        return refined

    def refine(self, trial: FrozenTrial, *, study: Study | None = None) -> FrozenTrial:
        """The trial as the base sampler sees it.

        A finished trial that recorded refined values comes back as a shallow copy with those
        values in ``params``; any other trial comes back as it is. Do not modify the result.

        Args:
            trial: A trial of the study.
            study: The study (or its view); used to cache the result per storage.
        """
        if not trial.state.is_finished():
            return trial
        storage = getattr(study, "_storage", None)
        cache = self._storage_cache(storage) if storage is not None else None
        if cache is not None:
            hit = cache.get(trial._trial_id)
            if hit is not None and hit[0] == trial.number and hit[1] == trial.datetime_complete:
                return trial if hit[2] is None else hit[2]
        refined_trial: FrozenTrial | None = None
        if any(key.startswith(self._prefix) for key in trial.user_attrs):
            refined = self.refined_params(trial)
            if any(trial.params[name] != value for name, value in refined.items()):
                refined_trial = copy.copy(trial)
                refined_trial._params = {**trial.params, **refined}
        if cache is not None:
            with self._lock:
                cache[trial._trial_id] = (trial.number, trial.datetime_complete, refined_trial)
        return trial if refined_trial is None else refined_trial

    # -- the view of the study ------------------------------------------------------------

    def _storage_cache(self, storage: Any) -> dict[int, tuple[Any, ...]] | None:
        try:
            with self._lock:
                return self._cache.setdefault(storage, {})
        except TypeError:  # a storage that cannot be weakly referenced: no cache
            return None

    def _refine_all(self, study: Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        return [self.refine(t, study=study) for t in trials]

    def _view(self, study: Study) -> Study:
        """The study as the base sampler sees it: the same object state, refined trials."""
        if not isinstance(study, Study) or getattr(study, "_hybrid_sampler", None) is self:
            return study
        view = object.__new__(_view_class(type(study)))
        view.__dict__ = study.__dict__  # shared, not copied: stop flag and caches stay one
        view._hybrid_sampler = self  # a slot: the study's own __dict__ is not touched
        return view

    # -- the hooks, all passed through ----------------------------------------------------

    def reseed_rng(self) -> None:
        self._base_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._base_sampler.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._base_sampler.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._base_sampler.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._base_sampler.before_trial(self._view(study), trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._base_sampler.after_trial(self._view(study), trial, state, values)
