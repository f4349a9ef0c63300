"""Tests of ``optuna_ift.integration._sampler``: ``HybridSampler`` and ``record_refined``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)
from optuna.trial import FrozenTrial, TrialState

from optuna_ift.integration import (
    DEFAULT_REFINED_ATTR_PREFIX,
    HybridSampler,
    record_refined,
    refined_key,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Optuna's own generic sampler tests, run on HybridSampler around a model-based and a random
# base sampler (n_startup_trials=0 so that TPE builds its model from the first trial on).
_BASES: dict[str, Callable[[], BaseSampler]] = {
    "tpe": lambda: TPESampler(n_startup_trials=0, seed=0),
    "random": lambda: RandomSampler(seed=0),
}


class TestGenericBasic(BasicSamplerTestCase):
    @pytest.fixture(params=sorted(_BASES))
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], BaseSampler]:
        make_base = _BASES[request.param]
        return lambda: HybridSampler(make_base())


class TestGenericRelative(RelativeSamplerTestCase):
    # Relative sampling needs a relative base sampler (RandomSampler samples nothing
    # relatively): TPE, multivariate by default for one objective, modelling from trial 1.
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: HybridSampler(_BASES["tpe"]())


class TestGenericMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: HybridSampler(seed=0)


# -- helpers --------------------------------------------------------------------------------


def _toy_objective(*, refine: bool, pull: float = 0.5) -> Callable[[optuna.Trial], float]:
    """``x`` (float), ``n`` (log int), ``c`` (categorical); "training" pulls ``x`` a share
    ``pull`` of the way to 3 and multiplies ``n`` by 3, and records both when ``refine``."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10.0, 10.0)
        n = trial.suggest_int("n", 1, 64, log=True)
        c = trial.suggest_categorical("c", ["a", "b"])
        x_refined = x + pull * (3.0 - x)
        if refine:
            record_refined(trial, "x", x_refined)
            record_refined(trial, "n", 3 * n)
        return (x_refined - 3.0) ** 2 + math.log(n) + (c == "b")

    return objective


class _Spy(BaseSampler):
    """Wraps a sampler and records, at each sampling call, the params of the finished trials
    that the study it is handed shows (through both of Optuna's trial queries)."""

    def __init__(self, base: BaseSampler | None = None) -> None:
        self.base = base or RandomSampler(seed=0)
        self.seen: list[list[dict[str, Any]]] = []
        self.seen_cached: list[list[dict[str, Any]]] = []
        self.studies: list[optuna.Study] = []

    def _look(self, study: optuna.Study) -> None:
        self.studies.append(study)
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        self.seen.append([t.params for t in study.get_trials(deepcopy=False, states=states)])
        self.seen_cached.append(
            [t.params for t in study._get_trials(deepcopy=False, states=states, use_cache=True)]
        )

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        self._look(study)
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._look(study)
        return self.base.sample_independent(study, trial, param_name, param_distribution)


# -- reproducibility and reseeding (adapted from Optuna's tests/samplers_tests) --------------


def _suggestions(sampler: BaseSampler, n_trials: int = 15) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=sampler)
    study.optimize(_toy_objective(refine=True), n_trials=n_trials)
    return [t.params for t in study.trials]


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: HybridSampler(seed=seed),
        lambda seed: HybridSampler(TPESampler(seed=seed, n_startup_trials=3, multivariate=True)),
        lambda seed: HybridSampler(RandomSampler(seed=seed)),
    ],
)
def test_same_seed_same_suggestions(make: Callable[[int], BaseSampler]) -> None:
    assert _suggestions(make(1)) == _suggestions(make(1))
    assert _suggestions(make(1)) != _suggestions(make(2))


def test_reseed_rng_reaches_the_base_sampler() -> None:
    base = RandomSampler(seed=0)
    sampler = HybridSampler(base)
    state_before = base._rng.rng.get_state()[1].copy()
    with mock.patch.object(base, "reseed_rng", wraps=base.reseed_rng) as reseed:
        sampler.reseed_rng()
        assert reseed.call_count == 1
    assert not np.array_equal(state_before, base._rng.rng.get_state()[1])


def test_reseed_rng_default_tpe() -> None:
    sampler = HybridSampler(seed=0)
    tpe = sampler.base_sampler
    assert isinstance(tpe, TPESampler)
    state_before = tpe._rng.rng.get_state()[1].copy()
    sampler.reseed_rng()
    assert not np.array_equal(state_before, tpe._rng.rng.get_state()[1])


def test_parallel_optimize_reseeds_and_completes() -> None:
    sampler = HybridSampler(RandomSampler(seed=0))
    study = optuna.create_study(sampler=sampler)
    with mock.patch.object(
        sampler.base_sampler, "reseed_rng", wraps=sampler.base_sampler.reseed_rng
    ) as reseed:
        study.optimize(_toy_objective(refine=True), n_trials=8, n_jobs=2)
    assert reseed.call_count >= 1
    assert len(study.trials) == 8
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


# -- the Lamarckian view --------------------------------------------------------------------


def test_base_sampler_sees_refined_values_and_storage_keeps_sampled_ones() -> None:
    spy = _Spy()
    study = optuna.create_study(sampler=HybridSampler(spy))
    study.optimize(_toy_objective(refine=True, pull=0.5), n_trials=6)

    stored = study.trials
    expected = [
        {"x": t.params["x"] + 0.5 * (3.0 - t.params["x"]), "n": min(3 * t.params["n"], 64),
         "c": t.params["c"]}
        for t in stored
    ]
    # The last sampling call (trial 5) saw trials 0..4, refined, through both queries.
    for seen in (spy.seen[-1], spy.seen_cached[-1]):
        assert len(seen) == 5
        for params, want in zip(seen, expected):
            assert params["x"] == pytest.approx(want["x"])
            assert params["n"] == want["n"] and isinstance(params["n"], int)
            assert params["c"] == want["c"]
    # The storage keeps what was sampled; the refined values are in the user attributes.
    for t in stored:
        assert t.params["x"] != pytest.approx(t.params["x"] + 0.5 * (3.0 - t.params["x"]))
        assert t.user_attrs[refined_key("x")] == pytest.approx(
            t.params["x"] + 0.5 * (3.0 - t.params["x"])
        )
    # The view shares the study's state and is a Study, but the real study is untouched.
    view = spy.studies[-1]
    assert isinstance(view, optuna.Study) and view is not study
    assert view.__dict__ is study.__dict__
    assert study.trials[0].params == stored[0].params


def test_without_refined_values_the_base_sees_the_same_trial_objects() -> None:
    spy = _Spy()
    study = optuna.create_study(sampler=HybridSampler(spy))
    study.optimize(_toy_objective(refine=False), n_trials=4)
    view = spy.studies[-1]
    raw = study._storage.get_all_trials(study._study_id, deepcopy=False)
    shown = view._get_trials(deepcopy=False)
    assert all(a is b for a, b in zip(raw, shown))


def test_refined_trials_are_built_once_and_deepcopied_on_request() -> None:
    spy = _Spy()
    study = optuna.create_study(sampler=HybridSampler(spy))
    study.optimize(_toy_objective(refine=True), n_trials=4)
    view = spy.studies[-1]
    first = view._get_trials(deepcopy=False)
    again = view._get_trials(deepcopy=False, use_cache=True)
    assert all(a is b for a, b in zip(first, again))  # cached, not rebuilt
    copies = view.get_trials(deepcopy=True)
    assert all(a is not b and a.params == b.params for a, b in zip(first, copies))
    assert view.trials[0].params == first[0].params


def test_pruned_trials_are_refined_and_running_ones_are_not() -> None:
    spy = _Spy()
    study = optuna.create_study(sampler=HybridSampler(spy))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        record_refined(trial, "x", 0.5)
        trial.report(x, 0)
        if trial.number == 0:
            raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=2)
    view = spy.studies[-1]
    pruned = view.get_trials(states=(TrialState.PRUNED,))
    assert pruned[0].params["x"] == 0.5
    running = study.ask()
    running.suggest_float("x", 0.0, 1.0)
    record_refined(running, "x", 0.25)
    shown = HybridSampler(spy)._view(study).get_trials(states=(TrialState.RUNNING,))
    assert shown[0].params["x"] == running.params["x"]


def test_best_trial_of_the_view_is_refined() -> None:
    spy = _Spy()
    study = optuna.create_study(sampler=HybridSampler(spy))
    study.optimize(_toy_objective(refine=True), n_trials=5)
    view = spy.studies[-1]
    best = study.best_trial
    assert view.best_trial.number == best.number
    assert view.best_trial.params["x"] == pytest.approx(best.user_attrs[refined_key("x")])


def test_a_stop_from_the_base_sampler_stops_the_study() -> None:
    class Stopper(RandomSampler):
        def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
            study.stop()

    study = optuna.create_study(sampler=HybridSampler(Stopper(seed=0)))
    study.optimize(_toy_objective(refine=True), n_trials=10)
    assert len(study.trials) == 1


def test_custom_prefix() -> None:
    spy = _Spy()
    study = optuna.create_study(sampler=HybridSampler(spy, refined_attr_prefix="mine:"))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        record_refined(trial, "x", 0.75, prefix="mine:")
        trial.set_user_attr(refined_key("x"), 0.1)  # the default prefix: not this sampler's
        return x

    study.optimize(objective, n_trials=2)
    assert spy.seen[-1] == [{"x": 0.75}]


def test_wrapping_the_default_tpe_runs_a_study() -> None:
    study = optuna.create_study(sampler=HybridSampler(seed=0))
    study.optimize(_toy_objective(refine=True), n_trials=20)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 20
    assert str(study.sampler).startswith("HybridSampler(TPESampler")


# -- fitting refined values into distributions ----------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "sampled", "refined", "expected"),
    [
        (FloatDistribution(0.0, 1.0), 0.5, 0.3, 0.3),
        (FloatDistribution(0.0, 1.0), 0.5, 1.7, 1.0),  # clipped
        (FloatDistribution(0.0, 1.0), 0.5, -2.0, 0.0),
        (FloatDistribution(1e-6, 1e-1, log=True), 1e-3, 3e-5, 3e-5),
        (FloatDistribution(1e-6, 1e-1, log=True), 1e-3, 1e-9, 1e-6),
        (FloatDistribution(1e-6, 1e-1, log=True), 1e-3, -1.0, 1e-6),  # <= 0 on a log scale
        (FloatDistribution(1e-6, 1e-1, log=True), 1e-3, 5.0, 1e-1),
        (FloatDistribution(0.0, 1.0, step=0.25), 0.5, 0.3, 0.25),  # snapped to the step
        (FloatDistribution(0.0, 1.0, step=0.25), 0.5, 0.9, 1.0),
        (IntDistribution(1, 10), 5, 7.4, 7),  # rounded
        (IntDistribution(1, 10), 5, 12.0, 10),
        (IntDistribution(0, 10, step=2), 4, 6.9, 6),
        (IntDistribution(0, 10, step=2), 4, 7.1, 8),
        (IntDistribution(1, 100, log=True), 50, 7.4, 7),
        (IntDistribution(1, 100, log=True), 50, 7.49, 8),  # sqrt(7*8) = 7.48 < 7.49
        (IntDistribution(1, 100, log=True), 50, 1.45, 2),  # sqrt(1*2) = 1.41 < 1.45
        (IntDistribution(1, 100, log=True), 50, 0.001, 1),
    ],
)
def test_refined_values_are_fitted_into_the_distribution(
    distribution: BaseDistribution, sampled: Any, refined: float, expected: Any
) -> None:
    trial = optuna.create_trial(
        params={"p": sampled}, distributions={"p": distribution}, value=0.0,
        user_attrs={refined_key("p"): refined},
    )
    shown = HybridSampler(RandomSampler()).refine(trial)
    assert shown.params["p"] == pytest.approx(expected)
    assert type(shown.params["p"]) is type(sampled)
    assert distribution._contains(distribution.to_internal_repr(shown.params["p"]))
    assert trial.params["p"] == sampled  # the original is not modified


def test_categorical_and_bad_refined_values_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trial = optuna.create_trial(
        params={"c": "a", "x": 0.5},
        distributions={"c": CategoricalDistribution(["a", "b"]), "x": FloatDistribution(0, 1)},
        value=0.0,
        user_attrs={refined_key("c"): 1.0, refined_key("x"): "oops", refined_key("gone"): 1.0,
                    "other": 3},
    )
    with caplog.at_level(logging.WARNING):
        shown = HybridSampler(RandomSampler()).refine(trial)
    assert shown is trial
    assert caplog.text.count("ignoring refined value") == 3


# -- record_refined -------------------------------------------------------------------------


def test_record_refined_stores_a_float_user_attr() -> None:
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("decay", 1e-6, 1.0, log=True)
    trial.suggest_int("width", 8, 64)
    record_refined(trial, "decay", torch.tensor(2e-3))
    record_refined(trial, "width", np.int64(17))
    study.tell(trial, 0.0)
    attrs = study.trials[0].user_attrs
    assert attrs == {DEFAULT_REFINED_ATTR_PREFIX + "decay": pytest.approx(2e-3),
                     DEFAULT_REFINED_ATTR_PREFIX + "width": 17.0}
    assert all(type(v) is float for v in attrs.values())


def test_record_refined_on_a_fixed_trial() -> None:
    trial = optuna.trial.FixedTrial({"x": 0.5})
    trial.suggest_float("x", 0.0, 1.0)
    record_refined(trial, "x", 0.25)
    assert trial.user_attrs[refined_key("x")] == 0.25


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("missing", 0.1, "has suggested"),
        ("c", 0.1, "categorical"),
        ("x", float("nan"), "finite"),
        ("x", float("inf"), "finite"),
        ("x", True, "finite"),
        ("x", "0.1", "finite"),
        ("x", torch.ones(3), "finite"),
    ],
)
def test_record_refined_errors(name: str, value: Any, match: str) -> None:
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("c", ["a", "b"])
    with pytest.raises(ValueError, match=match):
        record_refined(trial, name, value)


def test_record_refined_rejects_a_non_trial() -> None:
    with pytest.raises(TypeError, match="trial"):
        record_refined({"x": 1.0}, "x", 0.5)  # type: ignore[arg-type]


def test_constructor_errors() -> None:
    with pytest.raises(TypeError, match="base_sampler"):
        HybridSampler("tpe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        HybridSampler(RandomSampler(), seed=0)
    with pytest.raises(ValueError, match="refined_attr_prefix"):
        HybridSampler(refined_attr_prefix="")
    with pytest.raises(TypeError):
        HybridSampler(None, 0)  # type: ignore[misc]


# -- with the trainer: a decay refined by hypergradient is what TPE learns from --------------


def test_trainer_refines_a_sampled_decay_and_tpe_learns_the_refined_value() -> None:
    from torch import nn
    from torch.nn import functional as F

    from optuna_ift import Neumann
    from optuna_ift.hyperparams import WeightDecay
    from optuna_ift.trainer import HyperTrainer

    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(8, 1, generator=g)
    x_train, x_val = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    y_train = x_train @ w_true + 0.1 * torch.randn(64, 1, generator=g)
    y_val = x_val @ w_true + 0.1 * torch.randn(64, 1, generator=g)

    class Model(nn.Module):
        def __init__(self, decay: float) -> None:
            super().__init__()
            self.net = nn.Linear(8, 1)
            self.decay = WeightDecay(self.net, mode="global", init=decay)

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(trial.number)
        model = Model(trial.suggest_float("decay", 1e-4, 10.0, log=True))
        trainer = HyperTrainer(
            model,
            train_loss=lambda m, b: F.mse_loss(m.net(b[0]), b[1]) + m.decay(m.net),
            val_loss=lambda m, b: F.mse_loss(m.net(b[0]), b[1]),
            train_data=(x_train, y_train), val_data=(x_val, y_val), batch_size=64,
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
            hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.2),
            solver=Neumann(steps=3, alpha=0.1), inner_steps=5, device="cpu", progress=False,
        )
        trainer.fit(15)
        record_refined(trial, "decay", float(model.decay.log_decays[0].detach().exp()))
        with torch.no_grad():
            return float(F.mse_loss(model.net(x_val), y_val))

    spy = _Spy(TPESampler(seed=0, n_startup_trials=2))
    study = optuna.create_study(sampler=HybridSampler(spy))
    study.optimize(objective, n_trials=3)
    seen = spy.seen[-1]
    for trial, shown in zip(study.trials, seen):
        refined = trial.user_attrs[refined_key("decay")]
        assert refined != pytest.approx(trial.params["decay"])  # the trainer moved it
        assert shown["decay"] == pytest.approx(min(max(refined, 1e-4), 10.0))
