"""The scikit-learn estimators: the estimator contract, the usual tools, bad input, and the
hypergradient loop against closed forms."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from optuna_ift.sklearn import IFTLogisticRegression, IFTRidge, validation_split_curve

# Small budgets keep each of the many checks' fits quick; the defaults are tested below.
_FAST = dict(max_iter=10, device="cpu")


@parametrize_with_checks(
    [IFTLogisticRegression(**_FAST), IFTLogisticRegression(weight_decay="per_weight", **_FAST),
     IFTRidge(**_FAST)]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16.0, y[:600]


def test_learned_attributes_and_methods(digits):
    X, y = digits
    clf = IFTLogisticRegression(max_iter=20, random_state=0, device="cpu").fit(X, y)
    assert clf.coef_.shape == (10, 64) and clf.intercept_.shape == (10,)
    assert list(clf.classes_) == list(range(10)) and clf.n_features_in_ == 64
    assert isinstance(clf.weight_decay_, float) and clf.weight_decay_ > 0
    assert 0.8 < clf.validation_score_ <= 1.0
    assert clf.n_iter_ == len(clf.history_["val_loss"]) >= 1
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(np.log(proba), clf.predict_log_proba(X), atol=1e-10)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X))
    assert clf.score(X, y) > 0.95
    # the learned decay improved the validation loss over the initial one
    assert min(clf.history_["val_loss"]) < clf.history_["val_loss"][0]

    per = IFTLogisticRegression(weight_decay="per_weight", max_iter=5, random_state=0,
                                device="cpu").fit(X, y)
    assert per.weight_decay_.shape == per.coef_.shape and (per.weight_decay_ > 0).all()


def test_binary_string_labels_and_feature_names(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    keep = y < 2
    labels = np.where(y[keep] == 0, "zero", "one")
    frame = pd.DataFrame(X[keep], columns=[f"px{k}" for k in range(64)])
    clf = IFTLogisticRegression(random_state=0, device="cpu").fit(frame, labels)
    assert clf.coef_.shape == (1, 64) and list(clf.classes_) == ["one", "zero"]
    assert list(clf.feature_names_in_) == list(frame.columns)
    assert set(clf.predict(frame)) <= {"one", "zero"} and clf.score(frame, labels) > 0.95
    assert clf.decision_function(frame).shape == (keep.sum(),)


def test_fixed_decay_matches_sklearn_logistic_regression(digits):
    """With no hyper step, the weights are scikit-learn's with C = 1 / weight_decay_init."""
    X, y = digits
    clf = IFTLogisticRegression(max_iter=1, weight_decay_init=5.0, random_state=0,
                                device="cpu").fit(X, y)
    ref = LogisticRegression(C=0.2, tol=1e-10, max_iter=5000).fit(X, y)
    # the multinomial parameterisation is defined up to a constant per feature
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=2e-4)


def test_ridge_learns_per_feature_decays():
    """Irrelevant features get larger decays (on average) than relevant ones."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    y = X[:, :3] @ np.array([3.0, -2.0, 1.0]) + 0.5 * rng.normal(size=200)
    reg = IFTRidge(max_iter=100, learning_rate=0.3, random_state=0, device="cpu").fit(X, y)
    assert reg.weight_decay_.shape == (10,)
    log_decay = np.log(reg.weight_decay_)
    assert log_decay[3:].mean() > log_decay[:3].mean() + 2.0  # typically 10x larger, or more
    assert reg.validation_score_ > 0.9 and reg.score(X, y) > 0.9
    glob = IFTRidge(weight_decay="global", random_state=0, device="cpu").fit(X, y)
    ref = Ridge(alpha=glob.weight_decay_).fit(X, y)  # the penalty is Ridge's alpha
    np.testing.assert_allclose(glob.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(glob.intercept_, ref.intercept_, rtol=1e-8)


def test_refit_and_random_state(digits):
    X, y = digits
    a = IFTLogisticRegression(max_iter=5, random_state=3, refit=False, device="cpu").fit(X, y)
    b = IFTLogisticRegression(max_iter=5, random_state=3, refit=False, device="cpu").fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    c = IFTLogisticRegression(max_iter=5, random_state=3, refit=True, device="cpu").fit(X, y)
    assert c.weight_decay_ == a.weight_decay_ and not np.allclose(a.coef_, c.coef_)
    refitted = a._refit_on(X, y)
    np.testing.assert_allclose(refitted.predict_proba(X), c.predict_proba(X), atol=1e-4)


def test_clone_pickle_pipeline_grid_search_cross_val(digits):
    X, y = digits
    X, y = X[:300], y[:300]
    clf = IFTLogisticRegression(max_iter=10, random_state=0, device="cpu")
    assert clone(clf).get_params() == clf.get_params()
    fitted = clf.fit(X, y)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X), fitted.predict(X))
    pipe = make_pipeline(StandardScaler(), IFTLogisticRegression(max_iter=10, random_state=0,
                                                                 device="cpu"))
    assert pipe.fit(X, y).score(X, y) > 0.9
    grid = GridSearchCV(clf, {"validation_fraction": [0.2, 0.4]}, cv=2).fit(X, y)
    assert grid.best_params_["validation_fraction"] in (0.2, 0.4)
    scores = cross_val_score(clf, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85
    assert cross_val_score(IFTRidge(max_iter=10, device="cpu"), *make_regression(
        n_samples=60, n_features=5, noise=1.0, random_state=0), cv=3).mean() > 0.9


def test_optuna_search_cv_tunes_fraction_and_learning_rate(digits):
    optuna = pytest.importorskip("optuna")
    optuna_integration = pytest.importorskip("optuna_integration")
    X, y = digits
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # OptunaSearchCV is marked experimental
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        search = optuna_integration.OptunaSearchCV(
            IFTLogisticRegression(max_iter=10, random_state=0, device="cpu"),
            {
                "validation_fraction": optuna.distributions.FloatDistribution(0.1, 0.5),
                "learning_rate": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
            },
            n_trials=4, cv=2, random_state=0,
        )
        search.fit(X[:300], y[:300])
    assert len(search.trials_) == 4
    assert set(search.best_params_) == {"validation_fraction", "learning_rate"}
    assert 0.1 <= search.best_params_["validation_fraction"] <= 0.5
    assert search.score(X[300:], y[300:]) > 0.8


@pytest.mark.parametrize("Estimator", [IFTLogisticRegression, IFTRidge])
def test_bad_input_errors(Estimator):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    est = Estimator(max_iter=2, device="cpu")
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[0, 0] = bad
        with pytest.raises(ValueError, match="NaN|infinity"):
            est.fit(Xb, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    with pytest.raises(ValueError, match="2D array"):
        est.fit(X[:, 0], y)
    with pytest.raises(TypeError, match="[Ss]parse"):
        est.fit(sp.csr_matrix(X), y)
    fitted = est.fit(X, y)
    with pytest.raises(ValueError, match="3 features"):
        fitted.predict(X[:, :2])


def test_classifier_specific_errors():
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="only one class"):
        IFTLogisticRegression(device="cpu").fit(X, np.ones(10))
    with pytest.raises(ValueError, match="Unknown label type"):
        IFTLogisticRegression(device="cpu").fit(X, np.linspace(0, 1, 10))


@pytest.mark.parametrize("param, value", [
    ("weight_decay", "per_layer"), ("validation_fraction", 1.0), ("validation_fraction", 0),
    ("solver", "lbfgs"), ("solver_steps", 0), ("learning_rate", -1.0), ("max_iter", 0),
    ("tol", -1.0), ("inner_steps", 0), ("weight_decay_init", 0.0), ("refit", "yes"),
])
def test_bad_parameters_name_the_argument(param, value):
    X, y = np.random.default_rng(0).normal(size=(10, 2)), np.arange(10) % 2
    with pytest.raises(ValueError, match=param):
        IFTLogisticRegression(**{param: value}).fit(X, y)


def test_validation_split_curve(digits):
    X, y = digits
    result = validation_split_curve(
        X[:300], y[:300], X[300:], y[300:], sizes=[80, 200], fractions=[0.2, 0.5],
        seeds=[0, 1], estimator=IFTLogisticRegression(max_iter=3, device="cpu"),
    )
    assert len(result["records"]) == 2 * 2 * 2 * 2
    for mode in ("global", "per_weight"):
        for key in ("refit", "no_refit"):
            curve = result["summary"][mode][key]["200"]
            assert len(curve["mean"]) == 2 and all(0.5 < a <= 1 for a in curve["mean"])
    with pytest.raises(ValueError, match="sizes"):
        validation_split_curve(X, y, X, y, sizes=[10**6], fractions=[0.5])
    with pytest.raises(ValueError, match="fractions"):
        validation_split_curve(X, y, X, y, sizes=[100], fractions=[1.5])


def test_per_weight_from_global_starts_at_the_learned_global_decay(digits):
    """The third mode is the per-weight estimator started from the decay the global one learned
    on the same split: the same run as fitting the two by hand, and not the per-weight run from
    the default start. The global fit is made for it when "global" is not asked for."""
    X, y = digits
    X_pool, y_pool, X_test, y_test = X[:300], y[:300], X[300:], y[300:]
    template = IFTLogisticRegression(max_iter=4, device="cpu")
    order = np.random.default_rng(0).permutation(300)
    Xs, ys = X_pool[order[:120]], y_pool[order[:120]]
    split = {"validation_fraction": 0.3, "refit": False, "random_state": 0}
    learned = clone(template).set_params(weight_decay="global", **split).fit(Xs, ys)
    assert not np.isclose(learned.weight_decay_, template.weight_decay_init)  # it moved
    by_hand = clone(template).set_params(weight_decay="per_weight",
                                         weight_decay_init=float(learned.weight_decay_),
                                         **split).fit(Xs, ys)
    for modes in (("per_weight_from_global",), ("per_weight", "per_weight_from_global",
                                                "global")):
        result = validation_split_curve(X_pool, y_pool, X_test, y_test, sizes=[120],
                                        fractions=[0.3], seeds=[0], weight_decays=modes,
                                        estimator=template)
        assert result["weight_decays"] == list(modes)
        by_mode = {r["weight_decay"]: r for r in result["records"]}
        assert set(by_mode) == set(modes)
        ours = by_mode["per_weight_from_global"]
        assert ours["decay_geometric_mean"] == pytest.approx(
            float(np.exp(np.log(by_hand.weight_decay_).mean())))
        assert ours["test_accuracy"] == pytest.approx(by_hand.score(X_test, y_test))
        assert ours["n_iter"] == by_hand.n_iter_
        if "global" in by_mode:
            assert by_mode["global"]["decay_geometric_mean"] == pytest.approx(
                float(learned.weight_decay_))
            assert by_mode["per_weight"]["decay_geometric_mean"] != pytest.approx(
                ours["decay_geometric_mean"])

