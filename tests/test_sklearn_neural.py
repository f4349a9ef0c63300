"""The neural scikit-learn estimators: the estimator contract, module__ parameters, the usual
tools (Pipeline, GridSearchCV, OptunaSearchCV), determinism, re-training and bad input."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from optuna_ift.sklearn import MLP, IFTNeuralNetClassifier, IFTNeuralNetRegressor

# Small budgets keep each of the many checks' fits quick; nothing else is changed for them.
_FAST = {"module__width": 16, "max_iter": 20, "inner_steps": 5, "inner_learning_rate": 1e-2,
         "device": "cpu"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small networks run fastest on one thread (and machines running tests are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@parametrize_with_checks([
    IFTNeuralNetClassifier(**_FAST),
    IFTNeuralNetClassifier(**_FAST, module__dropout=0.1, weight_decay="per_layer"),
    IFTNeuralNetRegressor(**_FAST),
])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X[:800] / 16.0).astype(np.float32), y[:800]


class Tiny(nn.Module):
    """A user's module: takes in_features / out_features and its own arguments."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(),
                                  nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.body(x)


def test_classifier_learns_digits_with_per_weight_decays(digits):
    X, y = digits
    clf = IFTNeuralNetClassifier(module__width=32, max_iter=40, inner_learning_rate=1e-2,
                                 random_state=0,
                                 device="cpu").fit(X[:600], y[:600])
    assert list(clf.classes_) == list(range(10)) and clf.n_features_in_ == 64
    assert clf.score(X[600:], y[600:]) > 0.85 and 0.85 < clf.validation_score_ <= 1
    # one decay per weight of each weight matrix (biases are not decayed)
    assert set(clf.weight_decay_) == {"layers.0.weight", "layers.2.weight"}
    assert clf.weight_decay_["layers.0.weight"].shape == (32, 64)
    decays = np.concatenate([d.ravel() for d in clf.weight_decay_.values()])
    assert (decays > 0).all() and decays.std() > 0  # they were learned, not left at the init
    proba = clf.predict_proba(X[600:])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.log(proba), clf.predict_log_proba(X[600:]), atol=1e-6)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X[600:]))
    assert 1 <= clf.best_iter_ <= clf.n_iter_ == len(clf.history_["val_loss"])
    assert isinstance(clf.module_, MLP) and not clf.module_.training
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_string_labels_binary_and_concrete_dropout(digits):
    X, y = digits
    keep = y < 2
    labels = np.where(y[keep] == 0, "zero", "one")
    clf = IFTNeuralNetClassifier(module__width=16, module__dropout=0.2, max_iter=10,
                                 random_state=0, device="cpu").fit(X[keep], labels)
    assert list(clf.classes_) == ["one", "zero"]
    assert set(clf.predict(X[keep])) <= {"one", "zero"} and clf.score(X[keep], labels) > 0.95
    assert clf.predict_proba(X[keep]).shape == (keep.sum(), 2)
    (rate,) = clf.dropout_rate_.values()
    assert rate.shape == (16,) and ((0 < rate) & (rate < 1)).all()
    assert not np.allclose(rate, 0.2)  # the rates were tuned with the decays


def test_any_module_and_module_params_are_parameters(digits):
    X, y = digits
    clf = IFTNeuralNetClassifier(module=Tiny, module__hidden=6, max_iter=5, device="cpu")
    params = clf.get_params()
    assert params["module__hidden"] == 6 and params["module"] is Tiny
    twin = clone(clf)
    assert twin.get_params() == params and twin is not clf
    clf.set_params(module__hidden=4, max_iter=3)
    assert clf.get_params()["module__hidden"] == 4 and clf.max_iter == 3
    assert "module__hidden=4" in repr(clf)
    clf.fit(X, y)
    assert clf.module_.body[0].out_features == 4
    # a factory that takes no in/out sizes gets only its module__ arguments
    factory = IFTNeuralNetClassifier(
        module=lambda width: nn.Sequential(nn.Linear(64, width), nn.ReLU(),
                                           nn.Linear(width, 10)),
        module__width=5, max_iter=3, random_state=0, device="cpu").fit(X, y)
    assert factory.module_[0].out_features == 5
    # an instance is copied, never trained in place
    instance = Tiny(64, 10)
    before = [p.detach().clone() for p in instance.parameters()]
    IFTNeuralNetClassifier(module=instance, max_iter=3, device="cpu").fit(X, y)
    assert all(torch.equal(a, b) for a, b in zip(before, instance.parameters()))


def test_random_state_refit_and_global_rng(digits):
    X, y = digits
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    kw = {"module__width": 16, "max_iter": 8, "random_state": 3, "device": "cpu"}
    a = IFTNeuralNetClassifier(refit=False, **kw).fit(X, y)
    b = IFTNeuralNetClassifier(refit=False, **kw).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), state)  # torch's global state untouched
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = IFTNeuralNetClassifier(refit=True, **kw).fit(X, y)
    for name, decay in a.weight_decay_.items():  # the same search, then a re-training
        np.testing.assert_array_equal(decay, c.weight_decay_[name])
    assert a.validation_score_ == c.validation_score_
    assert not np.allclose(a.predict_proba(X), c.predict_proba(X))
    d = IFTNeuralNetClassifier(refit=False, **{**kw, "random_state": 4}).fit(X, y)
    assert not np.allclose(a.predict_proba(X), d.predict_proba(X))


def test_regressor_single_and_multi_output():
    X, y = make_regression(n_samples=300, n_features=6, n_targets=2, noise=5.0,
                           random_state=0)
    reg = IFTNeuralNetRegressor(module__width=32, max_iter=30, inner_learning_rate=1e-2,
                                random_state=0, device="cpu").fit(X, y)
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (300, 2)
    assert reg.score(X, y) > 0.9 and reg.validation_score_ > 0.8
    single = IFTNeuralNetRegressor(module__width=32, max_iter=30, inner_learning_rate=1e-2,
                                   random_state=0, device="cpu").fit(X, y[:, 0] * 1000 + 5e4)
    pred = single.predict(X)
    assert pred.shape == (300,) and pred.dtype == np.float64  # targets' scale restored
    assert single.score(X, y[:, 0] * 1000 + 5e4) > 0.9


def test_pipeline_and_grid_search_over_module_width(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), IFTNeuralNetClassifier(
        module__width=8, max_iter=10, inner_learning_rate=1e-2, random_state=0, device="cpu"))
    grid = GridSearchCV(pipe, {"iftneuralnetclassifier__module__width": [4, 16]}, cv=2)
    grid.fit(X[:400], y[:400])
    assert grid.best_params_["iftneuralnetclassifier__module__width"] in (4, 16)
    best = grid.best_estimator_[-1]
    assert best.module_.layers[0].out_features == grid.best_params_[
        "iftneuralnetclassifier__module__width"]
    assert grid.score(X[400:], y[400:]) > 0.8


def test_optuna_search_cv_tunes_width_and_learning_rate(digits):
    optuna = pytest.importorskip("optuna")
    optuna_integration = pytest.importorskip("optuna_integration")
    X, y = digits
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # OptunaSearchCV is marked experimental
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        search = optuna_integration.OptunaSearchCV(
            IFTNeuralNetClassifier(max_iter=8, random_state=0, device="cpu"),
            {
                "module__width": optuna.distributions.IntDistribution(4, 32, log=True),
                "inner_learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-2,
                                                                              log=True),
            },
            n_trials=3, cv=2, random_state=0,
        )
        search.fit(X[:400], y[:400])
    assert len(search.trials_) == 3
    assert set(search.best_params_) == {"module__width", "inner_learning_rate"}
    assert search.best_estimator_.module_.layers[0].out_features == \
        search.best_params_["module__width"]
    assert search.score(X[400:], y[400:]) > 0.7


@pytest.mark.parametrize("param, value, error", [
    ("module", "mlp", TypeError), ("module__width", 0, ValueError),
    ("module__activation", "swish", ValueError), ("weight_decay", "per_unit", ValueError),
    ("validation_fraction", 1.0, ValueError), ("solver", "lbfgs", ValueError),
    ("solver_steps", 0, ValueError), ("learning_rate", 0.0, ValueError),
    ("inner_steps", 0, ValueError), ("inner_learning_rate", -1.0, ValueError),
    ("batch_size", 0, ValueError), ("max_iter", 0, ValueError), ("tol", -1.0, ValueError),
    ("weight_decay_init", 0.0, ValueError), ("refit", "yes", ValueError),
    ("device", "tpu", ValueError), ("module__nonsense", 1, TypeError),
])
def test_bad_parameters_name_the_argument(param, value, error):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(error, match=param.replace("module__nonsense", "nonsense")):
        IFTNeuralNetClassifier(**{"max_iter": 1, param: value}).fit(X, y)


def test_bad_input_errors():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    est = IFTNeuralNetClassifier(module__width=4, max_iter=2, device="cpu")
    with pytest.raises(TypeError, match="unexpected keyword argument 'width'"):
        IFTNeuralNetClassifier(width=4).fit(X, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    with pytest.raises(ValueError, match="X must be a 2D array"):
        est.fit(X[:, 0], y)
    with pytest.raises(ValueError, match="only one class"):
        est.fit(X, np.ones(20))
    with pytest.raises(ValueError, match="Unknown label type"):
        est.fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="3 features"):
        est.fit(X, y).predict(X[:, :2])
    with pytest.raises(ValueError, match="could not convert string to float|y must hold"):
        IFTNeuralNetRegressor(max_iter=1).fit(X, np.array(["a"] * 20, dtype=object))
