"""Optuna's generic sampler test suites (``optuna.testing.pytest_samplers``, Optuna 4.8 and
newer) run on ``HybridSampler`` as OptunaHub loads it, around a model-based (TPE) and a random
base sampler. Run from the registry root's parent or anywhere: ``pytest tests/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import optunahub
import pytest
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)

HybridSampler = optunahub.load_local_module(
    package="samplers/hybrid_ift", registry_root=str(Path(__file__).resolve().parents[3])
).HybridSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

_BASES: dict[str, Callable[[], BaseSampler]] = {
    "tpe": lambda: TPESampler(n_startup_trials=0, seed=0),
    "random": lambda: RandomSampler(seed=0),
}


class TestBasic(BasicSamplerTestCase):
    @pytest.fixture(params=sorted(_BASES))
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], BaseSampler]:
        make_base = _BASES[request.param]
        return lambda: HybridSampler(make_base())


class TestRelative(RelativeSamplerTestCase):
    # RandomSampler samples nothing relatively: TPE (multivariate for one objective).
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: HybridSampler(_BASES["tpe"]())


class TestMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: HybridSampler(seed=0)
