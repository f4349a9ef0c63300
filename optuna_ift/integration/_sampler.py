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

The view is the one part of the sampler that needs Optuna's internals (Optuna's samplers read
trials through the private ``Study._get_trials``); it is made by
:func:`optuna_ift.integration._compat.study_view`, and this module uses only Optuna's public
API. The Lamarckian view is experimental: the first time a sampler shows a refined value in
place of a sampled one it emits an ``optuna.exceptions.ExperimentalWarning``, until a
benchmark (``benchmarks/bench_hybrid.py``) shows that it helps.

The rewritten trials are built once per finished trial object and cached (finished trials
cannot change, and Optuna's storages hand out the same object for a finished trial each time),
so a query costs one dictionary look-up per trial on top of the base query.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import numbers
import threading
import warnings
import weakref
from collections.abc import Sequence
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
from optuna_ift.integration._compat import study_view

__all__ = ["DEFAULT_REFINED_ATTR_PREFIX", "HybridSampler", "record_refined", "refined_key"]

_logger = logging.getLogger(__name__)

#: The user-attribute prefix under which trials record refined parameter values.
DEFAULT_REFINED_ATTR_PREFIX = "ift:refined:"

_MAX_SEED = 2**32 - 1  # the seeds a NumPy ``RandomState`` (TPESampler's) accepts


def _forget(cache: dict[int, Any], key: int, ref: weakref.ref[Any]) -> None:
    """Drop ``cache[key]`` when the trial that ``ref`` referred to is gone (unless the entry
    is already another's)."""
    entry = cache.get(key)
    if entry is not None and entry[0] is ref:
        cache.pop(key, None)


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

    Warning:
        The Lamarckian view is experimental: the first time a sampler shows its base sampler
        a refined value in place of a sampled one, it emits an
        ``optuna.exceptions.ExperimentalWarning``. A study whose trials record no refined
        values (the base sampler then sees the study as it is) emits nothing.

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
        # id(finished trial) -> (weak reference to it, its refined copy or None); an entry
        # goes when its trial does, so an id is never taken for another trial's.
        self._shown: dict[int, tuple[weakref.ref[FrozenTrial], FrozenTrial | None]] = {}
        self._lock = threading.Lock()
        self._warned = False

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

    def refine(self, trial: FrozenTrial) -> FrozenTrial:
        """The trial as the base sampler sees it.

        A finished trial that recorded refined values comes back as a shallow copy with those
        values in ``params``; any other trial comes back as it is. Do not modify the result.
        The copy is made once per trial object and kept while the trial object lives.

        The first refined copy that a sampler makes emits an
        ``optuna.exceptions.ExperimentalWarning`` (the Lamarckian view is experimental).

        Args:
            trial: A trial of the study.
        """
        if not trial.state.is_finished():
            return trial
        key = id(trial)
        hit = self._shown.get(key)
        if hit is not None and hit[0]() is trial:
            return trial if hit[1] is None else hit[1]
        refined_trial: FrozenTrial | None = None
        if any(attr.startswith(self._prefix) for attr in trial.user_attrs):
            refined = self.refined_params(trial)
            if any(trial.params[name] != value for name, value in refined.items()):
                refined_trial = copy.copy(trial)
                refined_trial.params = {**trial.params, **refined}
                self._warn_experimental()
        try:
            ref = weakref.ref(trial, functools.partial(_forget, self._shown, key))
        except TypeError:  # a trial object that cannot be weakly referenced: no cache
            return trial if refined_trial is None else refined_trial
        with self._lock:
            self._shown[key] = (ref, refined_trial)
        return trial if refined_trial is None else refined_trial

    # -- the view of the study ------------------------------------------------------------

    def _warn_experimental(self) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(
            "HybridSampler is showing its base sampler the refined values that trials "
            "recorded with record_refined instead of the sampled ones (the Lamarckian view). "
            "This is an experimental feature: it has not been shown to help (on a toy problem "
            "it made TPE worse; see benchmarks/bench_hybrid.py) and may change.",
            optuna.exceptions.ExperimentalWarning, stacklevel=2,
        )

    def _view(self, study: Study) -> Study:
        """The study as the base sampler sees it: the same object state, refined trials."""
        if not isinstance(study, Study):
            return study
        return study_view(study, owner=self, show=self.refine)

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
