"""scikit-learn estimators whose weight decays are learned by implicit differentiation.

:class:`IFTLogisticRegression` and :class:`IFTRidge` are linear models with an L2 penalty whose
strength (one global decay, or one decay per coefficient) is not searched over a grid but
learned by gradient descent on the loss of an internal validation split, with the implicit
hypergradient of :func:`optuna_ift.hypergradient`; :func:`validation_split_curve` measures how
the size of that split matters (Fig. 9 of Lorraine, Vicol & Duvenaud, 2020).

:class:`IFTNeuralNetClassifier` and :class:`IFTNeuralNetRegressor` wrap any torch module
(skorch-like: ``module=`` and ``module__<name>=`` parameters; an :class:`MLP` by default) and
train it with :class:`optuna_ift.HyperTrainer`, a decay per weight and any dropout rates of the
module being tuned on the validation split as it trains.

Why the linear models do not use :class:`optuna_ift.HyperTrainer` for their loop (they share
its :class:`~optuna_ift.trainer.HyperStep`): the trainer is built for stochastic, minibatch
training of neural networks. These models are convex and their data fit in memory, so a direct
loop is both faster and more exact: every outer iteration warm-starts a full-batch L-BFGS solve
of the training problem (the logistic loss; the ridge problem is solved in closed form), so the
weights really sit at the optimum the implicit function theorem assumes, and the
inverse-Hessian-vector product is taken by conjugate gradient, which is exact on a positive
definite Hessian after few products.

The objective, in the units of scikit-learn's ``C`` (``weight_decay = 1 / C``)::

    L_T(w; lambda) = ( sum_i loss(x_i, y_i; w) + sum_j lambda_j w_j**2 / 2 ) / n_train
    L_V(w)         =   mean_i loss(x_i, y_i; w)  over the validation split

with ``lambda = exp(theta)`` (log-parameterised, so it stays positive and a step changes it by a
factor). The penalty is per data set, not per example, so the learned decays carry over
unchanged when the model is re-trained on all the data (``refit=True``). Intercepts are never
decayed.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError
from optuna_ift._validation import check_bool as _check_bool
from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift._validation import check_real as _check_real
from optuna_ift.hypergrad import (
    ConjugateGradient,
    Exact,
    Identity,
    Neumann,
    NeumannDivergenceWarning,
)
from optuna_ift.hyperparams import ConcreteDropout, WeightDecay, split_parameters
from optuna_ift.trainer import EarlyStopping, HyperStep, HyperTrainer, KeepBest, resolve_device

__all__ = ["CURVE_DECAY_MODES", "MLP", "IFTLogisticRegression", "IFTNeuralNetClassifier",
           "IFTNeuralNetRegressor", "IFTRidge", "validation_split_curve"]

_logger = logging.getLogger(__name__)

_SOLVERS = ("cg", "neumann", "identity", "exact")
# log-decays are kept in this box: beyond it the penalty is either nothing or everything.
_LOG_DECAY_BOUNDS = (math.log(1e-8), math.log(1e8))
# L-BFGS iterations of the last weight solve (on all data with refit=True).
_FINAL_STEPS = 300


# ------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------
def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


def _check_fraction(name: str, value: Any) -> float:
    allowed = f"{name} must be a number in the open interval (0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentKindError(f"{allowed}, got {_shown(value)}")
    if not 0 < value < 1:
        raise ValueError(f"{allowed}, got {value!r}")
    return float(value)


def _check_sequence(name: str, value: Any, of: str) -> list[Any]:
    """``value`` as a list, if it is a sequence (a list, a tuple, an array), not a string."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ArgumentKindError(f"{name} must be a sequence of {of} (a list, a tuple or an "
                                f"array), got {_shown(value)}")
    return list(value)


def _check_verbose(value: Any) -> None:
    allowed = "verbose must be an integer >= 0 or a bool"
    if isinstance(value, (bool, np.bool_)):
        return
    if not isinstance(value, numbers.Integral):
        raise ArgumentKindError(f"{allowed}, got {_shown(value)}")
    if value < 0:
        raise ValueError(f"{allowed}, got {value!r}")


# The messages of scikit-learn's input validation that name neither X nor y, and what to say
# before them.
_SKLEARN_MESSAGES = (
    ("inconsistent numbers of samples",
     "X and y must have the same number of samples (rows of X, entries of y)"),
    ("Expected 2D array", "X must be a 2D array (n_samples, n_features)"),
)


def _validate(estimator: BaseEstimator, *args: Any, **kwargs: Any) -> Any:
    """scikit-learn's ``validate_data``, with the errors that name neither ``X`` nor ``y``
    re-raised (same type, chained) with a message that does."""
    try:
        return validate_data(estimator, *args, **kwargs)
    except ValueError as error:
        text = str(error)
        for needle, prefix in _SKLEARN_MESSAGES:
            if needle in text:
                raise type(error)(f"{prefix}: {text}") from error
        raise


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _make_solver(solver: str, steps: int):
    if solver == "cg":
        return ConjugateGradient(steps=steps, tol=1e-10)
    if solver == "neumann":
        return Neumann(steps=steps, alpha="auto")
    if solver == "identity":
        return Identity()
    return Exact(max_size=20000)


def _classes_of(estimator: Any, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's ``(X, y)`` validated, ``classes_`` set and ``y`` encoded as their indices;
    a ``y`` of one class is refused."""
    X, y = _validate(estimator, X, y, dtype=[np.float64, np.float32], accept_sparse=False)
    check_classification_targets(y)
    estimator.classes_, encoded = np.unique(y, return_inverse=True)
    if len(estimator.classes_) < 2:
        raise ValueError(
            f"{type(estimator).__name__} needs samples of at least 2 classes in y, but y "
            f"contains only one class: {estimator.classes_[0]!r}"
        )
    return X, encoded


def _check_random_state(random_state: Any) -> None:
    """Refuse a ``random_state`` that is neither None, an integer >= 0, a ``RandomState`` nor a
    ``Generator`` (without drawing from it)."""
    if random_state is None or isinstance(random_state,
                                          (np.random.RandomState, np.random.Generator)):
        return
    allowed = ("random_state must be None, an integer or a numpy RandomState (or Generator), "
               "an integer >= 0")
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise ArgumentKindError(f"{allowed}, got {_shown(random_state)}")
    if random_state < 0:
        raise ValueError(f"{allowed}, got {random_state!r}")


def _seed_of(random_state: Any) -> np.random.Generator:
    """A numpy Generator from scikit-learn's ``random_state`` (None, int or RandomState)."""
    _check_random_state(random_state)
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(int(random_state))


def _split(
    n: int, fraction: float, rng: np.random.Generator, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)``; stratified by ``labels`` when given.

    Every class keeps at least one example in the training part; both parts get at least one.
    """
    if n < 2:
        raise ValueError(
            f"n_samples={n}: an internal validation split needs at least 2 samples"
        )
    if labels is None:
        order = rng.permutation(n)
        n_val = min(max(int(round(fraction * n)), 1), n - 1)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        take = min(int(round(fraction * len(members))), len(members) - 1)
        val.append(members[:take])
    val = np.concatenate(val)
    if len(val) == 0:  # tiny data: take one example of the largest class
        counts = np.bincount(labels)
        c = int(np.argmax(counts))
        if counts[c] < 2:
            raise ValueError(
                f"validation_fraction={fraction} leaves no validation example: every class "
                "has a single sample, which must stay in the training part"
            )
        val = rng.permutation(np.flatnonzero(labels == c))[:1]
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _to_tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
    # torch.tensor copies, so read-only and memory-mapped arrays are fine.
    return torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


def _torch_dtype(X: np.ndarray) -> torch.dtype:
    return torch.float32 if X.dtype == np.float32 else torch.float64


# ------------------------------------------------------------------------------------------
# The outer loop, shared by both estimators
# ------------------------------------------------------------------------------------------


def _hyper_loop(
    *,
    log_decay: Tensor,
    params: list[Tensor],
    inner_solve: Callable[[Tensor], None],
    losses: Callable[[Tensor], tuple[Tensor, Tensor]],
    val_score: Callable[[], float],
    solver: Any,
    learning_rate: float,
    max_iter: int,
    tol: float,
    n_iter_no_change: int,
    verbose: int,
    name: str,
) -> tuple[Tensor, list[Tensor], int, dict[str, list[float]], float]:
    """Algorithm 1 with exact inner solves: returns the best decays and weights by val loss.

    The hyper step is the trainer's :class:`~optuna_ift.trainer.HyperStep` (hypergradient,
    non-finite guard, Adam step); only the inner solve (exact, not stochastic) is this loop's.
    """
    step = HyperStep((params, [log_decay]), solver=solver,
                     optimizer=lambda hp: torch.optim.Adam(hp, lr=learning_rate))
    history: dict[str, list[float]] = {
        "train_loss": [], "val_loss": [], "val_score": [], "weight_decay": [],
        "hypergradient_norm": [],
    }
    best_val, best_score = math.inf, float("nan")
    best_log_decay = log_decay.detach().clone()
    best_params = [p.detach().clone() for p in params]
    stale, it = 0, 0
    for it in range(1, max_iter + 1):
        inner_solve(log_decay.detach())
        train_loss, val_loss = losses(log_decay)
        val_value, score = float(val_loss.detach()), val_score()
        history["train_loss"].append(float(train_loss.detach()))
        history["val_loss"].append(val_value)
        history["val_score"].append(score)
        # geometric mean: the typical decay, whatever the mode
        history["weight_decay"].append(float(log_decay.detach().mean().exp()))
        if val_value < best_val - tol * max(1.0, abs(best_val) if math.isfinite(best_val) else 1):
            stale = 0
        else:
            stale += 1
        if val_value < best_val:
            best_val, best_score = val_value, score
            best_log_decay = log_decay.detach().clone()
            best_params = [p.detach().clone() for p in params]
        if verbose and (it == 1 or it % 10 == 0):
            print(f"[{name}] iter {it:4d}  val loss {val_value:.5f}  val score {score:.4f}  "
                  f"decay (geo. mean) {history['weight_decay'][-1]:.4g}")
        if stale >= n_iter_no_change or it == max_iter:
            history["hypergradient_norm"].append(float("nan"))
            break
        record = step(train_loss, val_loss)
        history["hypergradient_norm"].append(record["hypergradient_norm"])
        with torch.no_grad():
            log_decay.clamp_(*_LOG_DECAY_BOUNDS)
    if step.skipped:
        _logger.warning("%s: %d non-finite hypergradient(s) skipped", name, step.skipped)
    return best_log_decay, best_params, it, history, best_score


class _IFTBase(BaseEstimator):
    """Argument checks and shared pieces of the two estimators."""

    _decay_modes: tuple[str, ...] = ()

    def _check_params(self) -> None:
        _check_choice("weight_decay", self.weight_decay, self._decay_modes)
        _check_fraction("validation_fraction", self.validation_fraction)
        _check_bool("refit", self.refit)
        _check_choice("solver", self.solver, _SOLVERS)
        _check_int("solver_steps", self.solver_steps, 1)
        _check_positive("learning_rate", self.learning_rate)
        _check_int("max_iter", self.max_iter, 1)
        _check_real("tol", self.tol, low=0.0)
        _check_int("n_iter_no_change", self.n_iter_no_change, 1)
        _check_positive("weight_decay_init", self.weight_decay_init)
        _check_verbose(self.verbose)
        _check_random_state(self.random_state)

    def _decay_value(self, log_decay: Tensor) -> float | np.ndarray:
        decay = log_decay.detach().exp().cpu().double().numpy()
        return float(decay) if self.weight_decay == "global" else decay


# ------------------------------------------------------------------------------------------
# Logistic regression
# ------------------------------------------------------------------------------------------


def _logits(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    return X @ W.T + b


def _data_loss(logits: Tensor, y: Tensor, binary: bool, reduction: str) -> Tensor:
    if binary:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y, reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


class IFTLogisticRegression(ClassifierMixin, _IFTBase):
    """Logistic regression whose L2 weight decay is learned by implicit differentiation.

    Binary targets get one logistic output (``coef_`` of shape ``(1, n_features)``), more
    classes a multinomial (softmax) model (``coef_`` of shape ``(n_classes, n_features)``), as
    in :class:`sklearn.linear_model.LogisticRegression`. ``fit`` holds out a stratified
    ``validation_fraction`` of the data, then alternates (Algorithm 1 of Lorraine et al.,
    2020): an L-BFGS solve of the penalised training loss, warm-started, of at most
    ``inner_steps`` iterations; and one Adam step of size ``learning_rate`` on the log-decays
    along the implicit hypergradient of the validation cross-entropy. It keeps the decays with
    the lowest validation loss, stops after ``max_iter`` hyper steps or when the validation
    loss has not improved by ``tol`` (relative) for ``n_iter_no_change`` of them, and with
    ``refit=True`` re-trains the weights on all the data with the learned decays.

    The penalty is ``sum(weight_decay * coef**2) / 2`` on top of the summed (not averaged)
    loss, so a global ``weight_decay`` is ``1 / C`` of scikit-learn's ``LogisticRegression``.

    Args:
        weight_decay: ``"global"`` (one decay) or ``"per_weight"`` (one per coefficient).
        validation_fraction: Share of the data held out to learn the decays, in (0, 1).
        refit: Re-train on all the data with the learned decays (else keep the model trained
            on the training part).
        solver: Inverse-Hessian-vector product of the hypergradient: ``"cg"`` (conjugate
            gradient), ``"neumann"``, ``"identity"`` or ``"exact"`` (dense, small problems).
        solver_steps: Hessian-vector products per hypergradient (``"cg"``, ``"neumann"``).
        inner_steps: L-BFGS iterations per hyper step (warm-started).
        inner_learning_rate: Step scale of L-BFGS (its line search starts there).
        learning_rate: Adam step size on the log-decays (a step of 0.1 changes a decay by
            about 10 per cent).
        weight_decay_init: Initial decay (``1 / C``); a number > 0.
        max_iter: Most hyper steps.
        tol: Relative improvement of the validation loss that resets the patience.
        n_iter_no_change: Patience, in hyper steps.
        random_state: Seed of the validation split (None, an int or a RandomState).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or a torch device.
        verbose: Print progress every 10 hyper steps when > 0.

    Attributes:
        coef_: Coefficients, ``(1, n_features)`` for two classes, else
            ``(n_classes, n_features)``.
        intercept_: Intercepts, ``(1,)`` or ``(n_classes,)``.
        classes_: The class labels.
        n_features_in_: Number of features seen in ``fit``.
        feature_names_in_: Feature names, when ``X`` had string column names.
        weight_decay_: Learned decay: a float (``"global"``) or an array shaped like ``coef_``.
        validation_score_: Accuracy on the validation split at the learned decays (of the
            model trained on the training part).
        n_iter_: Hyper steps taken.
        history_: Per hyper step: ``train_loss``, ``val_loss``, ``val_score``,
            ``weight_decay`` (geometric mean) and ``hypergradient_norm``.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> X, y = load_digits(return_X_y=True)
        >>> clf = IFTLogisticRegression(weight_decay="global", random_state=0).fit(X / 16, y)
        >>> clf.score(X / 16, y) > 0.95
        True
    """

    _decay_modes = ("global", "per_weight")

    def __init__(
        self,
        *,
        weight_decay: str = "global",
        validation_fraction: float = 0.2,
        refit: bool = True,
        solver: str = "cg",
        solver_steps: int = 20,
        inner_steps: int = 10,
        inner_learning_rate: float = 1.0,
        learning_rate: float = 0.2,
        weight_decay_init: float = 1.0,
        max_iter: int = 50,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        random_state: Any = None,
        device: str | torch.device = "auto",
        verbose: int = 0,
    ) -> None:
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.refit = refit
        self.solver = solver
        self.solver_steps = solver_steps
        self.inner_steps = inner_steps
        self.inner_learning_rate = inner_learning_rate
        self.learning_rate = learning_rate
        self.weight_decay_init = weight_decay_init
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _check_params(self) -> None:
        super()._check_params()
        _check_int("inner_steps", self.inner_steps, 1)
        _check_positive("inner_learning_rate", self.inner_learning_rate)

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> IFTLogisticRegression:
        """Learn the decays on a validation split and the coefficients.

        Args:
            X: Training data, ``(n_samples, n_features)``, dense.
            y: Class labels, ``(n_samples,)``, of any type.

        Returns:
            self
        """
        self._check_params()
        X, encoded = _classes_of(self, X, y)
        device = resolve_device(self.device)
        dtype = _torch_dtype(X)
        binary = len(self.classes_) == 2
        rng = _seed_of(self.random_state)
        train_idx, val_idx = _split(len(encoded), self.validation_fraction, rng, encoded)

        Xt = _to_tensor(X, dtype, device)
        yt = torch.tensor(encoded, device=device)
        if binary:
            yt = yt.to(dtype)
        X_tr, y_tr, X_va, y_va = Xt[train_idx], yt[train_idx], Xt[val_idx], yt[val_idx]

        n_out = 1 if binary else len(self.classes_)
        W = torch.zeros(n_out, X.shape[1], dtype=dtype, device=device, requires_grad=True)
        b = torch.zeros(n_out, dtype=dtype, device=device, requires_grad=True)
        shape = () if self.weight_decay == "global" else tuple(W.shape)
        log_decay = torch.full(shape, math.log(self.weight_decay_init), dtype=dtype,
                               device=device, requires_grad=True)

        def train_loss(Xs: Tensor, ys: Tensor, decay_log: Tensor) -> Tensor:
            data = _data_loss(_logits(Xs, W, b), ys, binary, "sum")
            return (data + 0.5 * (decay_log.exp() * W**2).sum()) / Xs.shape[0]

        # Start at the optimum for the initial decays; then warm-started short solves suffice.
        self._run_lbfgs(self._lbfgs([W, b], _FINAL_STEPS, dtype), [W, b],
                        lambda: train_loss(X_tr, y_tr, log_decay.detach()))
        lbfgs = self._lbfgs([W, b], self.inner_steps, dtype)

        def inner_solve(decay_log: Tensor) -> None:
            self._run_lbfgs(lbfgs, [W, b], lambda: train_loss(X_tr, y_tr, decay_log))

        def losses(decay_log: Tensor) -> tuple[Tensor, Tensor]:
            return (train_loss(X_tr, y_tr, decay_log),
                    _data_loss(_logits(X_va, W, b), y_va, binary, "mean"))

        def val_score() -> float:
            with torch.no_grad():
                logits = _logits(X_va, W, b)
                pred = (logits[:, 0] > 0).to(y_va.dtype) if binary else logits.argmax(1)
                return float((pred == y_va).to(dtype).mean())

        best_log_decay, (W_best, b_best), n_iter, history, score = _hyper_loop(
            log_decay=log_decay, params=[W, b], inner_solve=inner_solve, losses=losses,
            val_score=val_score, solver=_make_solver(self.solver, self.solver_steps),
            learning_rate=self.learning_rate, max_iter=self.max_iter, tol=self.tol,
            n_iter_no_change=self.n_iter_no_change, verbose=self.verbose,
            name=type(self).__name__,
        )
        with torch.no_grad():
            W.copy_(W_best)
            b.copy_(b_best)
        # The last solve: on all the data (refit) or on the training part, to convergence.
        X_fin, y_fin = (Xt, yt) if self.refit else (X_tr, y_tr)
        self._run_lbfgs(self._lbfgs([W, b], _FINAL_STEPS, dtype), [W, b],
                        lambda: train_loss(X_fin, y_fin, best_log_decay))

        self.coef_ = W.detach().cpu().double().numpy()
        self.intercept_ = b.detach().cpu().double().numpy()
        self.weight_decay_ = self._decay_value(best_log_decay)
        self.validation_score_ = score
        self.n_iter_ = n_iter
        self.history_ = history
        return self

    def _lbfgs(self, params: list[Tensor], steps: int, dtype: torch.dtype):
        return torch.optim.LBFGS(
            params, lr=self.inner_learning_rate, max_iter=steps, history_size=10,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-5 if dtype == torch.float32 else 1e-8,
            tolerance_change=1e-7 if dtype == torch.float32 else 1e-12,
        )

    @staticmethod
    def _run_lbfgs(lbfgs, params: list[Tensor], loss: Callable[[], Tensor]) -> None:
        def closure() -> Tensor:
            for p in params:
                p.grad = None
            value = loss()
            value.backward()
            return value

        lbfgs.step(closure)
        for p in params:
            p.grad = None

    def _refit_on(self, X: Any, y: Any) -> IFTLogisticRegression:
        """A copy re-trained on ``(X, y)`` with this model's learned decays (no new search).

        Used by :func:`validation_split_curve` to get the model with and without re-training
        from one decay search.
        """
        check_is_fitted(self)
        X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
        encoded = np.searchsorted(self.classes_, np.asarray(y))
        other = copy.deepcopy(self)
        device, dtype = resolve_device(self.device), _torch_dtype(X)
        binary = len(self.classes_) == 2
        Xt = _to_tensor(X, dtype, device)
        yt = torch.tensor(encoded, device=device)
        if binary:
            yt = yt.to(dtype)
        W = torch.tensor(self.coef_, dtype=dtype, device=device, requires_grad=True)
        b = torch.tensor(self.intercept_, dtype=dtype, device=device, requires_grad=True)
        decay = torch.as_tensor(self.weight_decay_, dtype=dtype, device=device)

        def loss() -> Tensor:
            data = _data_loss(_logits(Xt, W, b), yt, binary, "sum")
            return (data + 0.5 * (decay * W**2).sum()) / Xt.shape[0]

        self._run_lbfgs(self._lbfgs([W, b], _FINAL_STEPS, dtype), [W, b], loss)
        other.coef_ = W.detach().cpu().double().numpy()
        other.intercept_ = b.detach().cpu().double().numpy()
        other.refit = True
        return other

    # -- prediction -------------------------------------------------------------------------

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores: ``(n_samples,)`` for two classes (positive means ``classes_[1]``), else
        ``(n_samples, n_classes)``."""
        check_is_fitted(self)
        X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(n_samples, n_classes)``, columns in the order of
        ``classes_``."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1.0 - p, p])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithms of :meth:`predict_proba`, computed stably."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = np.column_stack([np.zeros_like(scores), scores])
        return log_softmax(scores, axis=1)


# ------------------------------------------------------------------------------------------
# Ridge regression
# ------------------------------------------------------------------------------------------


class IFTRidge(RegressorMixin, _IFTBase):
    """Linear least squares with one L2 decay per feature learned by implicit differentiation.

    ``fit`` holds out ``validation_fraction`` of the data and alternates an exact solve of
    the penalised least squares problem on the rest (a linear system) with one Adam step on
    the log-decays along the implicit hypergradient of the validation mean squared error; it
    keeps the decays with the lowest validation error and, with ``refit=True``, re-solves on
    all the data with them. The penalty is ``sum(weight_decay * coef**2) / 2`` on top of half
    the summed squared error, so a global decay is :class:`sklearn.linear_model.Ridge`'s
    ``alpha``. The intercept is not decayed.

    Args:
        weight_decay: ``"per_weight"`` (one decay per coefficient, as in
            :class:`IFTLogisticRegression`; ``"per_feature"`` is the same) or ``"global"``.
        validation_fraction: Share of the data held out to learn the decays, in (0, 1).
        refit: Re-solve on all the data with the learned decays.
        solver: Inverse-Hessian-vector product: ``"cg"``, ``"neumann"``, ``"identity"`` or
            ``"exact"``.
        solver_steps: Hessian-vector products per hypergradient.
        learning_rate: Adam step size on the log-decays.
        weight_decay_init: Initial decay (``alpha``); a number > 0.
        max_iter: Most hyper steps.
        tol: Relative improvement of the validation loss that resets the patience.
        n_iter_no_change: Patience, in hyper steps.
        random_state: Seed of the validation split.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a torch device.
        verbose: Print progress every 10 hyper steps when > 0.

    Attributes:
        coef_: Coefficients, ``(n_features,)``.
        intercept_: The intercept, a float.
        n_features_in_: Number of features seen in ``fit``.
        feature_names_in_: Feature names, when ``X`` had string column names.
        weight_decay_: Learned decays, ``(n_features,)``, or a float for ``"global"``.
        validation_score_: R^2 on the validation split at the learned decays.
        n_iter_: Hyper steps taken.
        history_: Per hyper step: ``train_loss``, ``val_loss``, ``val_score`` (R^2),
            ``weight_decay`` (geometric mean) and ``hypergradient_norm``.
    """

    _decay_modes = ("per_weight", "per_feature", "global")

    def __init__(
        self,
        *,
        weight_decay: str = "per_weight",
        validation_fraction: float = 0.2,
        refit: bool = True,
        solver: str = "cg",
        solver_steps: int = 20,
        learning_rate: float = 0.2,
        weight_decay_init: float = 1.0,
        max_iter: int = 50,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        random_state: Any = None,
        device: str | torch.device = "auto",
        verbose: int = 0,
    ) -> None:
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.refit = refit
        self.solver = solver
        self.solver_steps = solver_steps
        self.learning_rate = learning_rate
        self.weight_decay_init = weight_decay_init
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    @staticmethod
    def _solve(X: Tensor, y: Tensor, decay: Tensor) -> tuple[Tensor, Tensor]:
        """Exact minimiser of ``|X w + b - y|^2 / 2 + sum(decay w^2) / 2`` (``b`` free)."""
        x_mean, y_mean = X.mean(0), y.mean()
        Xc, yc = X - x_mean, y - y_mean
        A = Xc.T @ Xc + torch.diag(decay.expand(X.shape[1]))
        w = torch.linalg.solve(A, Xc.T @ yc)
        return w, y_mean - x_mean @ w

    def fit(self, X: Any, y: Any) -> IFTRidge:
        """Learn the decays on a validation split and the coefficients.

        Args:
            X: Training data, ``(n_samples, n_features)``, dense.
            y: Targets, ``(n_samples,)``.

        Returns:
            self
        """
        self._check_params()
        X, y = _validate(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        if np.asarray(y).dtype.kind not in "biuf":
            raise ValueError(f"y must hold numbers (the regression targets), got an array of "
                             f"dtype {np.asarray(y).dtype}")
        device, dtype = resolve_device(self.device), _torch_dtype(X)
        rng = _seed_of(self.random_state)
        train_idx, val_idx = _split(len(y), self.validation_fraction, rng, None)
        Xt, yt = _to_tensor(X, dtype, device), _to_tensor(y, dtype, device)
        X_tr, y_tr, X_va, y_va = Xt[train_idx], yt[train_idx], Xt[val_idx], yt[val_idx]
        n_tr = X_tr.shape[0]

        w = torch.zeros(X.shape[1], dtype=dtype, device=device, requires_grad=True)
        b = torch.zeros((), dtype=dtype, device=device, requires_grad=True)
        shape = () if self.weight_decay == "global" else (X.shape[1],)
        log_decay = torch.full(shape, math.log(self.weight_decay_init), dtype=dtype,
                               device=device, requires_grad=True)
        # R^2 denominator; a constant validation target gets the variance of all targets.
        var_va = float(((y_va - y_va.mean()) ** 2).mean())
        if not var_va > 0:
            var_va = float(((yt - yt.mean()) ** 2).mean()) or 1.0

        def inner_solve(decay_log: Tensor) -> None:
            w_star, b_star = self._solve(X_tr, y_tr, decay_log.exp())
            with torch.no_grad():
                w.copy_(w_star)
                b.copy_(b_star)

        def losses(decay_log: Tensor) -> tuple[Tensor, Tensor]:
            residual = X_tr @ w + b - y_tr
            train = (0.5 * (residual**2).sum() + 0.5 * (decay_log.exp() * w**2).sum()) / n_tr
            val = 0.5 * ((X_va @ w + b - y_va) ** 2).mean()
            return train, val

        def val_score() -> float:
            with torch.no_grad():
                return 1.0 - float(((X_va @ w + b - y_va) ** 2).mean()) / var_va

        best_log_decay, (w_best, b_best), n_iter, history, score = _hyper_loop(
            log_decay=log_decay, params=[w, b], inner_solve=inner_solve, losses=losses,
            val_score=val_score, solver=_make_solver(self.solver, self.solver_steps),
            learning_rate=self.learning_rate, max_iter=self.max_iter, tol=self.tol,
            n_iter_no_change=self.n_iter_no_change, verbose=self.verbose,
            name=type(self).__name__,
        )
        if self.refit:
            w_best, b_best = self._solve(Xt, yt, best_log_decay.exp())
        self.coef_ = w_best.detach().cpu().double().numpy()
        self.intercept_ = float(b_best)
        self.weight_decay_ = self._decay_value(best_log_decay)
        self.validation_score_ = score
        self.n_iter_ = n_iter
        self.history_ = history
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, ``(n_samples,)``."""
        check_is_fitted(self)
        X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_


# ------------------------------------------------------------------------------------------
# Neural networks
# ------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """The default module of the neural estimators: ``depth`` hidden layers of ``width`` units.

    Args:
        in_features: Input features (set by the estimator from ``X``).
        out_features: Outputs (classes, or regression targets; set by the estimator).
        width: Units per hidden layer.
        depth: Hidden layers (0 is a linear model).
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
        dropout: ``None`` (no dropout), or the initial rate of a
            :class:`~optuna_ift.hyperparams.ConcreteDropout` with one learned rate per hidden
            unit after every hidden layer (the rates are hyperparameters, tuned with the decays).
    """

    _activations: ClassVar[dict[str, type[nn.Module]]] = {"relu": nn.ReLU, "tanh": nn.Tanh,
                                                         "gelu": nn.GELU}

    def __init__(self, in_features: int, out_features: int, *, width: int = 100,
                 depth: int = 1, activation: str = "relu", dropout: float | None = None
                 ) -> None:
        super().__init__()
        _check_int("module__width", width, 1)
        _check_int("module__depth", depth, 0)
        _check_choice("module__activation", activation, tuple(self._activations))
        if dropout is not None:
            _check_real("module__dropout", dropout, low=0.0, high=1.0, low_open=True,
                        high_open=True)
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(depth):
            layers += [nn.Linear(size, width), self._activations[activation]()]
            if dropout is not None:
                layers.append(ConcreteDropout((width,), init=float(dropout)))
            size = width
        layers.append(nn.Linear(size, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _Regularised(nn.Module):
    """The user's module and the decays of its weights, one model for the trainer."""

    def __init__(self, net: nn.Module, decay: WeightDecay) -> None:
        super().__init__()
        self.net = net
        self.decay = decay

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` takes a keyword argument ``name`` (or any keyword)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


_SOLVERS_NEURAL = ("neumann", "cg", "identity")


class _IFTNeuralNet(BaseEstimator):
    """Shared by :class:`IFTNeuralNetClassifier` and :class:`IFTNeuralNetRegressor`: the
    ``module__*`` parameters, the checks, the training with :class:`~optuna_ift.HyperTrainer`,
    re-training and batched prediction."""

    _decay_modes = ("per_weight", "per_layer", "global")

    def __init__(
        self,
        *,
        module: Any = None,
        weight_decay: str = "per_weight",
        weight_decay_init: float = 1e-3,
        validation_fraction: float = 0.2,
        refit: bool = True,
        solver: str = "neumann",
        solver_steps: int = 5,
        learning_rate: float = 0.05,
        inner_steps: int = 10,
        inner_learning_rate: float = 1e-3,
        batch_size: int = 200,
        max_iter: int = 200,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        random_state: Any = None,
        device: str | torch.device = "auto",
        verbose: int = 0,
        **module_params: Any,
    ) -> None:
        self.module = module
        self.weight_decay = weight_decay
        self.weight_decay_init = weight_decay_init
        self.validation_fraction = validation_fraction
        self.refit = refit
        self.solver = solver
        self.solver_steps = solver_steps
        self.learning_rate = learning_rate
        self.inner_steps = inner_steps
        self.inner_learning_rate = inner_learning_rate
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        # module__* parameters are kept apart (scikit-learn's checks allow no attribute that is
        # not in the signature) and shown by get_params; like the others, checked by fit.
        self._module_params = dict(module_params)

    # -- module__* parameters -----------------------------------------------------------------

    @staticmethod
    def _checked_module_params(params: dict[str, Any]) -> dict[str, Any]:
        wrong = [k for k in params if not k.startswith("module__") or k == "module__"]
        if wrong:
            raise TypeError(f"unexpected keyword argument {wrong[0]!r}: the only extra "
                            f"arguments are module__<name>, passed to the module as <name>")
        return dict(params)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=deep)
        params.update(self._module_params)
        return params

    def set_params(self, **params: Any) -> _IFTNeuralNet:
        module_params = {k: params.pop(k) for k in list(params) if k.startswith("module__")}
        self._module_params.update(module_params)
        return super().set_params(**params) if params else self

    # -- checks -------------------------------------------------------------------------------

    def _check_params(self) -> None:
        self._checked_module_params(self._module_params)
        module = self.module
        if not (module is None or isinstance(module, nn.Module) or callable(module)):
            raise ArgumentKindError(f"module must be None (an MLP), a torch.nn.Module class or "
                                    f"factory, or a module, got {_shown(module)}")
        _check_choice("weight_decay", self.weight_decay, self._decay_modes)
        _check_positive("weight_decay_init", self.weight_decay_init)
        _check_fraction("validation_fraction", self.validation_fraction)
        _check_bool("refit", self.refit)
        _check_choice("solver", self.solver, _SOLVERS_NEURAL)
        _check_int("solver_steps", self.solver_steps, 1)
        _check_positive("learning_rate", self.learning_rate)
        _check_int("inner_steps", self.inner_steps, 1)
        _check_positive("inner_learning_rate", self.inner_learning_rate)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_iter", self.max_iter, 1)
        _check_real("tol", self.tol, low=0.0)
        _check_int("n_iter_no_change", self.n_iter_no_change, 1)
        _check_verbose(self.verbose)
        _check_random_state(self.random_state)

    def _inverse_solver(self) -> Any:
        if self.solver == "neumann":
            return Neumann(steps=self.solver_steps, alpha="auto")
        return _make_solver(self.solver, self.solver_steps)

    def _build_module(self, n_features: int, n_outputs: int) -> nn.Module:
        """A fresh module (under the caller's seeded random state)."""
        kwargs = {k[len("module__"):]: v for k, v in self._module_params.items()}
        if isinstance(self.module, nn.Module):
            if kwargs:
                raise ValueError(f"module__ parameters ({', '.join(self._module_params)}) need "
                                 f"module to be a class or factory, not an instance")
            return copy.deepcopy(self.module)
        factory = MLP if self.module is None else self.module
        for key, value in (("in_features", n_features), ("out_features", n_outputs)):
            if key not in kwargs and _accepts(factory, key):
                kwargs[key] = value
        try:
            built = factory(**kwargs)
        except TypeError as error:
            raise TypeError(f"module({', '.join(f'{k}=...' for k in kwargs)}) failed: {error}. "
                            f"module__<name> parameters are passed to module as <name>; "
                            f"in_features and out_features are set from the data when module "
                            f"takes them") from error
        if not isinstance(built, nn.Module):
            raise ArgumentKindError(f"module(...) must return a torch.nn.Module, got "
                                    f"{_shown(built)}")
        return built

    # -- training -----------------------------------------------------------------------------

    def _train(self, X: np.ndarray, targets: np.ndarray, n_outputs: int,
               loss_fn: Callable[[Tensor, Tensor], Tensor], stratify: np.ndarray | None,
               target_dtype: torch.dtype | None,
               score: Callable[[Tensor, Tensor], float]) -> None:
        """Learn the hyperparameters on a validation split and the weights; set the learned
        attributes (``validation_score_`` is ``score(outputs, targets)`` on the validation
        split, before any re-training)."""
        device, dtype = resolve_device(self.device), _torch_dtype(X)
        rng = _seed_of(self.random_state)
        train_idx, val_idx = _split(len(X), self.validation_fraction, rng, stratify)
        seed = int(rng.integers(0, 2**31 - 1))
        Xt = _to_tensor(X, dtype, device)
        yt = torch.tensor(np.ascontiguousarray(targets), device=device,
                          dtype=dtype if target_dtype is None else target_dtype)
        X_tr, y_tr, X_va, y_va = Xt[train_idx], yt[train_idx], Xt[val_idx], yt[val_idx]
        cuda = ([torch.cuda.current_device() if device.index is None else device.index]
                if device.type == "cuda" else [])
        with torch.random.fork_rng(devices=cuda):  # seeded, and the global state untouched
            model, history, best = self._search(X_tr, y_tr, X_va, y_va, n_outputs, loss_fn,
                                                seed, device, dtype, cuda)
            with torch.no_grad():
                self.validation_score_ = float(score(model.net.eval()(X_va), y_va))
            if self.refit:
                model = self._retrain(model, Xt, yt, n_outputs, loss_fn, seed, device, dtype, cuda,
                                      steps=math.ceil(max(best["weight_step"], 1)
                                                      * len(Xt) / len(X_tr)))
        net = model.net.eval()
        self.module_ = net
        self.weight_decay_ = {name: d.cpu().double().numpy()
                              for name, d in model.decay.decays().items()}
        if self.weight_decay == "global":
            self.weight_decay_ = float(next(iter(self.weight_decay_.values())))
        self.dropout_rate_ = {name: m.rate.detach().cpu().double().numpy()
                              for name, m in net.named_modules()
                              if isinstance(m, ConcreteDropout)}
        self.n_iter_ = int(history.hyper_steps[-1]["hyper_step"]) if history.hyper_steps else 1
        self.best_iter_ = int(best["hyper_step"])
        self.history_ = {
            key: [float(r.get(key, math.nan)) for r in history.hyper_steps]
            for key in ("train_loss", "val_loss", "hypergradient_norm")
        }
        self.history_["val_loss_full"] = [float(r["val_loss"]) for r in history.evaluations]
        self.history_["skipped"] = int(history.skipped)

    def _search(self, X_tr, y_tr, X_va, y_va, n_outputs, loss_fn, seed, device, dtype, cuda):
        torch.manual_seed(seed)
        for d in cuda:
            torch.cuda.manual_seed(seed)
        net = self._build_module(X_tr.shape[1], n_outputs).to(device=device, dtype=dtype)
        decay = WeightDecay(net, mode=self.weight_decay, init=self.weight_decay_init)
        model = _Regularised(net, decay)
        n_train = len(X_tr)
        lr, inner_lr = self.learning_rate, self.inner_learning_rate
        keep = KeepBest("val_loss")
        trainer = HyperTrainer(
            model,
            # The penalty is per data set (as in the linear estimators): a decay is
            # MLPClassifier's alpha, and carries over unchanged to a re-training on all data.
            train_loss=lambda m, b: loss_fn(m(b[0]), b[1]) + m.decay(m.net) / n_train,
            val_loss=lambda m, b: loss_fn(m(b[0]), b[1]),
            train_data=(X_tr, y_tr), val_data=(X_va, y_va),
            batch_size=min(self.batch_size, n_train), val_batch_size=min(self.batch_size,
                                                                         len(X_va)),
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=inner_lr),
            hyper_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
            solver=self._inverse_solver(), inner_steps=self.inner_steps,
            eval_data={"val": (X_va, y_va)}, eval_every=1, device=device,
            callbacks=[keep, EarlyStopping("val_loss", patience=self.n_iter_no_change,
                                           min_delta=self.tol)],
            progress=bool(self.verbose), seed=seed,
        )
        with warnings.catch_warnings():
            if not self.verbose:  # a diverged series is cut off and counted; say it once
                warnings.simplefilter("ignore", NeumannDivergenceWarning)
            history = trainer.fit(self.max_iter)
        return model, history, keep.best_record or {"hyper_step": 0, "weight_step": 0}

    def _retrain(self, searched, Xt, yt, n_outputs, loss_fn, seed, device, dtype, cuda, *,
                 steps):
        """The searched model's hyperparameters, fresh weights trained on all the data."""
        torch.manual_seed(seed)
        for d in cuda:
            torch.cuda.manual_seed(seed)
        net = self._build_module(Xt.shape[1], n_outputs).to(device=device, dtype=dtype)
        model = _Regularised(net, WeightDecay(net, mode=self.weight_decay,
                                              init=self.weight_decay_init))
        _, hyper = split_parameters(searched)
        _, fresh = split_parameters(model)
        with torch.no_grad():
            for h, f in zip(hyper, fresh):
                f.copy_(h)
        n, inner_lr = len(Xt), self.inner_learning_rate
        trainer = HyperTrainer(
            model, train_loss=lambda m, b: loss_fn(m(b[0]), b[1]) + m.decay(m.net) / n,
            train_data=(Xt, yt), batch_size=min(self.batch_size, n),
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=inner_lr),
            hyper_optimizer=None, inner_steps=1, device=device,
            progress=bool(self.verbose), seed=seed,
        )
        trainer.fit(steps)
        return model

    @torch.no_grad()
    def _forward(self, X: Any) -> np.ndarray:
        """The module's outputs on ``X`` in eval mode, in batches, as float64."""
        check_is_fitted(self)
        X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
        first = next(iter(self.module_.parameters()))
        Xt = torch.as_tensor(np.ascontiguousarray(X)).to(device=first.device, dtype=first.dtype)
        self.module_.eval()
        chunks = [self.module_(Xt[k:k + 4096]) for k in range(0, len(Xt), 4096)]
        return torch.cat(chunks).cpu().double().numpy()


_NEURAL_ARGS = """
    Args:
        module: The network: ``None`` (an :class:`MLP`), a ``torch.nn.Module`` class or any
            factory returning a module, called with the ``module__<name>`` parameters as
            ``<name>`` and, when it takes them and they are not given, ``in_features``
            (columns of ``X``) and ``out_features`` (%s); or a module instance (copied,
            then trained). It maps a float batch ``(n, n_features)`` to ``(n, out_features)``.
            Any :class:`~optuna_ift.HyperParameter` inside it (a
            :class:`~optuna_ift.hyperparams.ConcreteDropout` rate) is tuned too.
        module__<name>: Passed to ``module``, e.g. ``module__width=64``,
            ``module__dropout=0.1`` for the default :class:`MLP`. They are parameters like
            the others: ``get_params``, ``set_params``, ``clone`` and grid searches see them.
        weight_decay: ``"per_weight"`` (a decay per weight, the default), ``"per_layer"`` or
            ``"global"``; biases are not decayed.
        weight_decay_init: Initial decay; the penalty is ``sum(decay * w**2) / 2`` divided by
            the number of training examples, so a global decay is the ``alpha`` of
            scikit-learn's %s.
        validation_fraction: Share of the data held out to learn the hyperparameters%s.
        refit: Re-train fresh weights on all the data with the learned hyperparameters (for
            as many epochs as the search took to its best validation loss); else keep the
            network trained on the training part.
        solver: Inverse-Hessian-vector product of the hypergradient: ``"neumann"`` (with an
            automatic step), ``"cg"`` or ``"identity"``.
        solver_steps: Hessian-vector products per hypergradient.
        learning_rate: Adam step size on the hyperparameters (log-decays, dropout logits).
        inner_steps: Adam steps on the weights between two hyper steps.
        inner_learning_rate: Adam step size on the weights.
        batch_size: Mini-batch size (capped at the data size).
        max_iter: Most hyper steps.
        tol: Least decrease of the validation loss (absolute) that resets the patience.
        n_iter_no_change: Patience, in hyper steps; the network and hyperparameters kept are
            those of the lowest validation loss.
        random_state: Seed of the split, the initial weights, the batches and dropout masks
            (None, an int or a RandomState); torch's global random state is left as it was.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or a torch device.
        verbose: Show progress bars when > 0.
"""

_NEURAL_ATTRIBUTES = """
        module_: The trained module (in eval mode).
        n_features_in_: Number of features seen in ``fit``.
        feature_names_in_: Feature names, when ``X`` had string column names.
        weight_decay_: Learned decays: ``{weight name: array}`` (shaped like the weight, or a
            scalar per layer), or a float for ``"global"``.
        dropout_rate_: Learned dropout rates of every ConcreteDropout in the module, by name.
        validation_score_: %s on the validation split of the network trained on the
            training part, at its best hyper step.
        n_iter_: Hyper steps taken; ``best_iter_``: the one kept.
        history_: Per hyper step: ``train_loss``, ``val_loss`` (one batch),
            ``hypergradient_norm``; ``val_loss_full`` (the whole split); ``skipped``.
"""


class IFTNeuralNetClassifier(ClassifierMixin, _IFTNeuralNet):
    __doc__ = f"""A neural network classifier whose weight decays (one per weight) and dropout
    rates are learned by implicit differentiation while it trains.

    Skorch-like: give any torch module with ``module=`` and its arguments as
    ``module__<name>=``. ``fit`` holds out a stratified ``validation_fraction`` of the data
    and runs :class:`~optuna_ift.HyperTrainer` (Algorithm 1 of Lorraine et al., 2020):
    ``inner_steps`` Adam steps on the weights with the cross-entropy plus the penalty, then one
    step on the log-decays (and any dropout rates) along the implicit hypergradient of the
    validation cross-entropy; it keeps the state of the lowest validation loss, stops early
    after ``n_iter_no_change`` hyper steps without improvement, and with ``refit=True``
    re-trains on all the data with the learned hyperparameters. The module outputs one logit
    per class (two for binary problems). Labels may be of any type.
{_NEURAL_ARGS % ("the number of classes", "MLPClassifier", ", stratified by class")}
    Attributes:
        classes_: The class labels.{_NEURAL_ATTRIBUTES % "Accuracy"}
    Example:
        >>> from sklearn.datasets import load_digits
        >>> X, y = load_digits(return_X_y=True)
        >>> clf = IFTNeuralNetClassifier(module__width=64, random_state=0).fit(X / 16, y)
        >>> clf.score(X / 16, y) > 0.95
        True
    """

    def fit(self, X: Any, y: Any) -> IFTNeuralNetClassifier:
        """Learn the hyperparameters on a validation split and the weights.

        Args:
            X: Training data, ``(n_samples, n_features)``, dense.
            y: Class labels, ``(n_samples,)``, of any type.

        Returns:
            self
        """
        self._check_params()
        X, encoded = _classes_of(self, X, y)
        self._train(X, encoded, len(self.classes_), F.cross_entropy, stratify=encoded,
                    target_dtype=torch.long,
                    score=lambda out, y: (out.argmax(1) == y).double().mean())
        return self

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log-probabilities, ``(n_samples, n_classes)``, columns in the order of
        ``classes_``."""
        return log_softmax(self._forward(X), axis=1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(n_samples, n_classes)``, columns in the order of
        ``classes_``."""
        return softmax(self._forward(X), axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample."""
        index = self._forward(X).argmax(axis=1)
        return self.classes_[index]


class IFTNeuralNetRegressor(RegressorMixin, _IFTNeuralNet):
    __doc__ = f"""A neural network regressor whose weight decays (one per weight) and dropout
    rates are learned by implicit differentiation while it trains.

    As :class:`IFTNeuralNetClassifier`, with half the mean squared error of the targets
    standardised with the mean and deviation of the training data (predictions are scaled
    back); ``y`` of shape ``(n_samples, n_outputs)`` fits one output per column.
{_NEURAL_ARGS % ("the number of targets", "MLPRegressor (on standardised targets)", "")}
    Attributes:
        n_outputs_: Number of targets.{_NEURAL_ATTRIBUTES % "R^2 (averaged over targets)"}
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: Any, y: Any) -> IFTNeuralNetRegressor:
        """Learn the hyperparameters on a validation split and the weights.

        Args:
            X: Training data, ``(n_samples, n_features)``, dense.
            y: Targets, ``(n_samples,)`` or ``(n_samples, n_outputs)``.

        Returns:
            self
        """
        self._check_params()
        X, y = _validate(self, X, y, dtype=[np.float64, np.float32], y_numeric=True,
                         multi_output=True)
        if np.asarray(y).dtype.kind not in "biuf":
            raise ValueError(f"y must hold numbers (the regression targets), got an array of "
                             f"dtype {np.asarray(y).dtype}")
        y = np.asarray(y, dtype=np.float64)
        self._single = y.ndim == 1
        Y = y.reshape(len(y), -1)
        self.n_outputs_ = Y.shape[1]
        self._y_mean = Y.mean(axis=0)
        scale = Y.std(axis=0)
        self._y_scale = np.where(scale > 0, scale, 1.0)
        Z = (Y - self._y_mean) / self._y_scale
        self._train(X, Z, self.n_outputs_, _half_mse, stratify=None, target_dtype=None,
                    score=_r2)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, ``(n_samples,)`` (or ``(n_samples, n_outputs)`` when fitted on
        a 2D ``y``)."""
        out = self._forward(X) * self._y_scale + self._y_mean
        return out[:, 0] if self._single else out


def _half_mse(output: Tensor, target: Tensor) -> Tensor:
    return 0.5 * ((output - target) ** 2).mean()


def _r2(output: Tensor, target: Tensor) -> Tensor:
    """R^2 averaged over the columns (0 for a constant column)."""
    residual = ((output - target) ** 2).sum(0)
    total = ((target - target.mean(0)) ** 2).sum(0)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, 1 - residual / safe, torch.zeros_like(total)).mean()


# ------------------------------------------------------------------------------------------
# The split-ratio curve (Fig. 9)
# ------------------------------------------------------------------------------------------


#: The decay modes of :func:`validation_split_curve`: the estimator's two, and a decay per
#: weight started from the global decay learned on the same split.
CURVE_DECAY_MODES: tuple[str, ...] = ("global", "per_weight", "per_weight_from_global")


def validation_split_curve(
    X: Any,
    y: Any,
    X_test: Any,
    y_test: Any,
    *,
    sizes: Sequence[int],
    fractions: Sequence[float],
    weight_decays: Sequence[str] = ("global", "per_weight"),
    seeds: Sequence[int] = (0,),
    estimator: IFTLogisticRegression | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Test accuracy against the validation fraction, with and without re-training.

    For every data size ``n`` and seed, ``n`` examples are drawn at random from ``(X, y)``
    (a smaller size is a prefix of a larger one). For every validation fraction and decay
    mode, an :class:`IFTLogisticRegression` learns its decays on that fraction of the ``n``
    examples; it is scored on ``(X_test, y_test)`` as trained on the rest (no re-training) and
    after re-training on all ``n`` with the learned decays (re-training), both from one decay
    search. The mode ``"per_weight_from_global"`` is a decay per weight started from the
    global decay learned on the same split (the ``"global"`` run of that split, fitted for it
    when ``"global"`` is not asked for): many hyperparameters refining one that was tuned
    first, as when Optuna samples the global decay a trial's per-weight decays start from.

    Args:
        X: Pool of training data, ``(n_pool, n_features)``.
        y: Pool labels.
        X_test: Test data.
        y_test: Test labels.
        sizes: Data sizes (each at most ``n_pool``).
        fractions: Validation fractions, each in (0, 1).
        weight_decays: Decay modes, from ``"global"``, ``"per_weight"`` and
            ``"per_weight_from_global"``.
        seeds: Seeds of the data draws and validation splits.
        estimator: Template whose other parameters are used (default
            ``IFTLogisticRegression()``); ``weight_decay``, ``validation_fraction``,
            ``refit`` and ``random_state`` are set per run.
        show_progress: Show a tqdm progress bar.

    Returns:
        ``{"sizes", "fractions", "weight_decays", "seeds", "records", "summary"}``: one record
        per run (``size``, ``fraction``, ``weight_decay``, ``seed``, ``test_accuracy`` and
        ``test_accuracy_refit``, ``validation_score``, ``decay_geometric_mean``, ``n_iter``,
        ``fit_seconds``, ``refit_seconds``), and ``summary[mode]["refit" | "no_refit"][str(size)]``
        = ``{"mean": [...], "std": [...]}`` over seeds, one entry per fraction.

    Raises:
        TypeError: If ``sizes``, ``fractions``, ``weight_decays`` or ``seeds`` is not a
            sequence (a string is not one) or holds a value of the wrong kind, or
            ``estimator`` is neither ``None`` nor an :class:`IFTLogisticRegression`.
        ValueError: If a value is out of range, a sequence is empty, or the data's shapes
            disagree.
    """
    from tqdm.auto import tqdm

    X = check_array(X, dtype=[np.float64, np.float32])
    y = np.asarray(y)
    X_test = np.asarray(X_test, dtype=X.dtype)
    y_test = np.asarray(y_test)
    if len(y) != len(X):
        raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}")
    if X_test.ndim != 2 or X_test.shape[1] != X.shape[1] or len(X_test) != len(y_test):
        raise ValueError(
            f"X_test must be (n_test, {X.shape[1]}) with one label per row in y_test, got "
            f"{X_test.shape} and {y_test.shape}"
        )
    sizes = _check_sequence("sizes", sizes, "integers")
    for k, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ArgumentKindError(f"sizes must be a sequence of integers, got {_shown(s)} "
                                    f"at position {k}")
        if not 2 <= s <= len(y):
            raise ValueError(f"sizes must lie in [2, {len(y)}] (the pool), got {s}")
    sizes = [int(s) for s in sizes]
    fractions = [_check_fraction("fractions", f)
                 for f in _check_sequence("fractions", fractions, "numbers in (0, 1)")]
    weight_decays = _check_sequence("weight_decays", weight_decays, "decay modes")
    for mode in weight_decays:
        _check_choice("weight_decays", mode, CURVE_DECAY_MODES)
    seeds = [_check_int("seeds", s, 0) for s in _check_sequence("seeds", seeds, "integers")]
    if not sizes or not fractions or not weight_decays or not seeds:
        raise ValueError("sizes, fractions, weight_decays and seeds must each be non-empty")
    if estimator is not None and not isinstance(estimator, IFTLogisticRegression):
        raise ArgumentKindError(f"estimator must be None or an IFTLogisticRegression (the "
                                f"template of every run), got {_shown(estimator)}")
    template = IFTLogisticRegression() if estimator is None else estimator

    records = []
    total = len(sizes) * len(seeds) * len(fractions) * len(weight_decays)
    bar = tqdm(total=total, desc="split-ratio", disable=not show_progress, leave=False)
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(y))
        for size in sizes:
            Xs, ys = X[order[:size]], y[order[:size]]
            for fraction in fractions:
                fitted_global: IFTLogisticRegression | None = None
                # The global decay first: a per-weight run from it reads its learned decay.
                for mode in sorted(weight_decays, key=lambda m: m != "global"):
                    params = {"weight_decay": mode, "validation_fraction": fraction,
                              "refit": False, "random_state": seed}
                    if mode == "per_weight_from_global":
                        if fitted_global is None:
                            fitted_global = clone(template).set_params(
                                **{**params, "weight_decay": "global"}).fit(Xs, ys)
                        params.update(weight_decay="per_weight",
                                      weight_decay_init=float(fitted_global.weight_decay_))
                    model = clone(template).set_params(**params)
                    started = time.perf_counter()
                    model.fit(Xs, ys)
                    fitted = time.perf_counter()
                    if mode == "global":
                        fitted_global = model
                    refitted = model._refit_on(Xs, ys)
                    done = time.perf_counter()
                    records.append({
                        "size": size, "fraction": fraction, "weight_decay": mode,
                        "seed": seed,
                        "test_accuracy": float(model.score(X_test, y_test)),
                        "test_accuracy_refit": float(refitted.score(X_test, y_test)),
                        "validation_score": float(model.validation_score_),
                        "decay_geometric_mean": float(np.exp(np.mean(np.log(
                            model.weight_decay_)))),
                        "n_iter": int(model.n_iter_),
                        "fit_seconds": fitted - started,
                        "refit_seconds": done - fitted,
                    })
                    bar.update(1)
    bar.close()

    summary: dict[str, Any] = {}
    for mode in weight_decays:
        summary[mode] = {}
        for key, field in (("no_refit", "test_accuracy"), ("refit", "test_accuracy_refit")):
            summary[mode][key] = {}
            for size in sizes:
                means, stds = [], []
                for fraction in fractions:
                    values = [r[field] for r in records if r["weight_decay"] == mode
                              and r["size"] == size and r["fraction"] == fraction]
                    means.append(float(np.mean(values)))
                    stds.append(float(np.std(values)))
                summary[mode][key][str(size)] = {"mean": means, "std": stds}
    return {"sizes": sizes, "fractions": fractions, "weight_decays": list(weight_decays),
            "seeds": seeds, "records": records, "summary": summary}
