"""``HyperStep``: one step on the hyperparameters, with every guard, for any training loop.

Give it the training loss and the validation loss at the current weights (plain tensors with
their graphs, computed however your loop computes them) and it takes one step of the hyper
optimizer along the implicit hypergradient. What it adds to
:func:`optuna_ift.hypergradient`:

- a non-finite hypergradient is skipped and counted (:attr:`HyperStep.skipped`), never applied;
- ``Neumann(alpha="auto")`` estimates the top eigenvalue of the training Hessian only every
  ``alpha_every`` steps and reuses it in between; when a series with the cached ``alpha``
  diverges the estimate is refreshed at once and the series solved again if the curvature grew;
- a solver that carries state across hyper steps (``WarmNeumann``, ``WarmConjugateGradient``,
  ``Nystrom``) gets its :class:`~optuna_ift.hypergrad.SolverState` here, kept from step to step;
- its state (the hyper optimizer's, the cached ``alpha``, the solver's state, the counts) is
  one ``state_dict``, so a resumed run continues exactly.

:class:`~optuna_ift.HyperTrainer` is the loop around this object; the Lightning callback and a
hand-written loop use the same one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError, check_int, check_positive
from optuna_ift.hypergrad import (
    HVP,
    Neumann,
    NeumannDivergenceWarning,
    Solver,
    SolverState,
    divergence_caught,
    hypergradient,
    is_stateful,
    power_iteration,
)
from optuna_ift.hypergrad import (
    check_solver as check_inverse_solver,
)
from optuna_ift.hyperparams import split_parameters

__all__ = ["DEFAULT_SOLVER", "HyperStep", "OptimizerFactory", "Unrolled", "build_optimizer",
           "rmsprop"]

#: The solver of :class:`HyperStep`, :class:`~optuna_ift.HyperTrainer` and the Lightning
#: callback when none is given: one Neumann term beyond the first, ``alpha = 1 / lambda_max``
#: re-estimated every ``alpha_every`` hyper steps. Chosen by ``benchmarks/bench_hypergradient.py``
#: (trajectory section): the cheapest solver whose hypergradient stays within cosine 0.99 of
#: a cold ``Neumann(10)`` at every hyper step of joint training (2.7 gradient evaluations a
#: hyper step against 5.5 for ``Neumann(5)``). More steps (or ``ConjugateGradient``) pay where
#: the validation loss itself is the goal, or where hyperparameters enter the data
#: (distillation): see the README's table.
DEFAULT_SOLVER = Neumann(steps=1, alpha="auto")

_logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Unrolled:
    """Use reverse-mode differentiation through ``steps`` SGD steps of learning rate ``lr``
    (the baseline of the paper's Tables 1 and 3) instead of the implicit hypergradient.
    Only :class:`~optuna_ift.HyperTrainer` can take it: it needs the loss functions and the
    batches, not two loss tensors."""

    steps: int = 3
    lr: float = 0.1

    def __post_init__(self) -> None:
        # Checked, not converted: the values are used as given.
        check_int("steps", self.steps, 1)
        check_positive("lr", self.lr)


def rmsprop(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The default hyper optimizer: RMSprop with learning rate 1e-2 (the paper's choice for
    decays and dropout rates)."""
    return torch.optim.RMSprop(params, lr=1e-2)


def build_optimizer(name: str, optimizer: Any, params: list[nn.Parameter]
                    ) -> torch.optim.Optimizer:
    """``optimizer`` as an optimizer over ``params``: a factory ``f(params) -> Optimizer`` is
    called; an ``Optimizer`` must already hold every one of ``params``."""
    if isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) not in held for p in params):
            raise ValueError(f"{name} is an optimizer that does not hold every tensor it must "
                             f"step ({len(params)} tensors); build it over them, or pass a "
                             f"factory such as lambda params: torch.optim.Adam(params, lr=1e-3)")
        return optimizer
    if not callable(optimizer):
        raise ArgumentKindError(f"{name} must be a factory f(params) -> torch.optim.Optimizer "
                                f"or an Optimizer, got {type(optimizer).__name__}")
    built = optimizer(list(params))
    if not isinstance(built, torch.optim.Optimizer):
        raise ArgumentKindError(f"{name}(params) must return a torch.optim.Optimizer, got "
                                f"{type(built).__name__}")
    return built


def check_solver(solver: Any) -> Any:
    """``solver``, if it is an inverse-HVP solver (an instance, not its class) or
    :class:`Unrolled`."""
    return solver if isinstance(solver, Unrolled) else check_inverse_solver("solver", solver)


def total_norm(tensors: Sequence[Tensor]) -> float:
    """The Euclidean norm of all ``tensors`` together."""
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t)
                                                       for t in tensors])))


class HyperStep:
    """One hyperparameter step along the implicit hypergradient, guarded.

    Args:
        model: The module whose :class:`~optuna_ift.HyperParameter` tensors are tuned (its
            other trainable parameters are the weights), or a pair ``(weights,
            hyperparameters)`` of tensor sequences.
        solver: An inverse-HVP solver (``solver(hvp, v)``) from :mod:`optuna_ift.hypergrad`.
            ``Neumann(alpha="auto")`` caches its eigenvalue estimate (see ``alpha_every``).
        optimizer: The hyper optimizer: a factory ``f(hyperparameters) -> Optimizer`` or an
            ``Optimizer`` over the hyperparameters; default RMSprop, 1e-2. RMSprop's first
            steps move every hyperparameter by about ten times its learning rate: for
            hyperparameters that are network weights (``AugmentationNet``) use Adam near 1e-3.
        alpha_every: How often ``Neumann(alpha="auto")`` re-estimates the top eigenvalue.
        reduce: Data-parallel training: the mean of tensors over the processes (an
            all-reduce); every product of the hypergradient and the recorded losses are
            averaged with it (see :func:`optuna_ift.hypergradient`).

    Example:
        A hand-written loop that tunes the model's hyperparameters every ten weight steps::

            hyper = HyperStep(model, solver=Neumann(steps=5))
            for i, (x, y) in enumerate(loader):
                ...  # your weight step
                if i % 10 == 9:
                    hyper(train_loss=loss_fn(model, (x, y)), val_loss=val_fn(model, next(val)))
    """

    def __init__(
        self,
        model: nn.Module | tuple[Sequence[Tensor], Sequence[Tensor]],
        *,
        solver: Solver | Unrolled = DEFAULT_SOLVER,
        optimizer: OptimizerFactory | torch.optim.Optimizer = rmsprop,
        alpha_every: int = 50,
        reduce: Callable[[Sequence[Tensor]], Sequence[Tensor]] | None = None,
    ) -> None:
        if isinstance(model, nn.Module):
            weights, hyperparameters = split_parameters(model)
            if not hyperparameters:
                raise ValueError("model declares no HyperParameter: a HyperStep needs "
                                 "hyperparameters to tune (declare them with "
                                 "optuna_ift.HyperParameter)")
        elif isinstance(model, (tuple, list)) and len(model) == 2:
            weights, hyperparameters = (list(model[0]), list(model[1]))
            for name, tensors in (("weights", weights), ("hyperparameters", hyperparameters)):
                wrong = next((t for t in tensors if not isinstance(t, Tensor)), None)
                if wrong is not None:
                    raise ArgumentKindError(f"model: {name} must be a non-empty sequence of "
                                            f"tensors that require grad, got one of type "
                                            f"{type(wrong).__name__}")
                if not tensors or not all(t.requires_grad for t in tensors):
                    raise ValueError(f"model: {name} must be a non-empty sequence of tensors "
                                     "that require grad")
        else:
            raise TypeError(f"model must be a torch.nn.Module or a pair (weights, "
                            f"hyperparameters), got {type(model).__name__}")
        if not weights:
            raise ValueError("model has no trainable weights (parameters that are not "
                             "HyperParameter)")
        check_solver(solver)
        self.weights: list[Tensor] = weights
        self.hyperparameters: list[Tensor] = hyperparameters
        self.solver = solver
        self.optimizer = build_optimizer("optimizer", optimizer, hyperparameters)
        self.reduce = reduce
        self.alpha_every = check_int("alpha_every", alpha_every, 1)
        self.steps = 0  #: hyper steps taken, skipped ones included
        self.skipped = 0  #: non-finite hypergradients skipped
        self.alpha: float | None = None  #: the cached ``alpha`` of ``Neumann(alpha="auto")``
        self.alpha_refreshes = 0  #: times a stale ``alpha`` was re-estimated early
        #: The state of a stateful solver (``None`` for the others).
        self.solver_state: SolverState | None = (solver.new_state() if is_stateful(solver)
                                                 else None)

    # -- the hypergradient -------------------------------------------------------------------

    def _auto_alpha(self) -> bool:
        return isinstance(self.solver, Neumann) and self.solver.alpha == "auto"

    def _estimate(self, hvp: HVP, v: tuple[Tensor, ...]) -> float | None:
        try:
            lam = float(power_iteration(hvp, v, steps=self.solver.power_steps))
        except ValueError:  # v is zero: nothing to estimate from; the solver falls back
            return None
        return 1.0 / lam if math.isfinite(lam) and lam > 0 else None

    def solve(self, hvp: HVP, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The solver applied to ``v``, with ``Neumann(alpha="auto")``'s estimate cached.

        The estimate is made from the step's own ``v`` every ``alpha_every`` steps and reused
        in between. If a series with the cached ``alpha`` diverges, the estimate is refreshed
        at once; when the top eigenvalue did grow (the cached ``alpha`` was stale) the series
        is solved again with the new ``alpha``, otherwise the divergence comes from negative
        curvature and the cut-off series stands, with its warning.
        """
        solver = self.solver
        if self.solver_state is not None:
            return solver(hvp, v, state=self.solver_state)
        if not self._auto_alpha():
            return solver(hvp, v)
        if self.alpha is None or self.steps % self.alpha_every == 0:
            self.alpha = self._estimate(hvp, v) or self.alpha
            if self.alpha is None:
                return solver(hvp, v)  # it warns and falls back to the identity
            result, diverged = self._series(hvp, v)
        else:
            result, diverged = self._series(hvp, v)
            if diverged:
                fresh = self._estimate(hvp, v)
                if fresh is not None and fresh < 0.9 * self.alpha:
                    self.alpha = fresh
                    self.alpha_refreshes += 1
                    result, diverged = self._series(hvp, v)
        if diverged:
            warnings.warn(
                f"Neumann series diverged with alpha='auto' (alpha={self.alpha:.3g}, one over "
                "the latest estimate of the top eigenvalue): the training Hessian is not "
                "positive definite at these weights, so the series was cut off where its terms "
                "grew. More weight decay, more weight steps before each hyper step "
                "(inner_steps), or ConjugateGradient / Identity avoid it.",
                NeumannDivergenceWarning, stacklevel=3)
        return result

    def _series(self, hvp: HVP, v: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], bool]:
        """The Neumann series with the cached ``alpha``, and whether it diverged (its own
        divergence warning, whose advice fits a fixed ``alpha``, is held back)."""
        solver = dataclasses.replace(self.solver, alpha=self.alpha)
        return divergence_caught(lambda: solver(hvp, v))

    def hypergradient(self, train_loss: Tensor, val_loss: Tensor, *,
                      curvature_loss: Tensor | None = None) -> tuple[Tensor, ...]:
        """The implicit hypergradient at the current weights, without applying it.

        ``curvature_loss`` (e.g. the training loss on a sub-batch) is the loss whose Hessian
        is inverted, when it is not ``train_loss`` (see :func:`optuna_ift.hypergradient`).
        """
        if isinstance(self.solver, Unrolled):
            raise TypeError("solver=Unrolled needs the loss functions and batches, not two "
                            "loss tensors: use HyperTrainer, or apply an "
                            "unrolled_hypergradient yourself with HyperStep.apply")
        return hypergradient(val_loss, train_loss, self.weights, self.hyperparameters,
                             solver=self.solve, reduce=self.reduce,
                             curvature_loss=curvature_loss)

    # -- the step ----------------------------------------------------------------------------

    def apply(self, grads: Sequence[Tensor], *, train_loss: float = math.nan,
              val_loss: float = math.nan) -> dict[str, float]:
        """Step the hyper optimizer along ``grads`` unless one of them is not finite.

        Returns:
            The step's record: ``hyper_step``, ``train_loss``, ``val_loss``,
            ``hypergradient_norm`` (NaN when skipped) and ``skipped`` (1.0 or 0.0).
        """
        grads = tuple(grads)
        if len(grads) != len(self.hyperparameters):
            raise ValueError(f"grads holds {len(grads)} tensors for "
                             f"{len(self.hyperparameters)} hyperparameters")
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        self.steps += 1
        record = {"hyper_step": self.steps, "train_loss": float(train_loss),
                  "val_loss": float(val_loss),
                  "hypergradient_norm": total_norm(grads) if finite else math.nan,
                  "skipped": float(not finite)}
        if finite:
            for h, g in zip(self.hyperparameters, grads):
                h.grad = g.to(h.dtype)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.skipped += 1
            _logger.warning("hyper step %d: non-finite hypergradient skipped (%d so far)",
                            self.steps, self.skipped)
        return record

    def __call__(self, train_loss: Tensor, val_loss: Tensor, *,
                 curvature_loss: Tensor | None = None) -> dict[str, float]:
        """One hyper step from the two losses at the current weights.

        Args:
            train_loss: Scalar training loss with its graph (training mode, regularisers
                included), computed from the weights and the hyperparameters.
            val_loss: Scalar validation loss with its graph (usually in eval mode).
            curvature_loss: Optional scalar loss whose Hessian is inverted instead of
                ``train_loss``'s (e.g. the training loss on a sub-batch).

        Returns:
            The step's record (see :meth:`apply`).
        """
        grads = self.hypergradient(train_loss, val_loss, curvature_loss=curvature_loss)
        losses = (train_loss.detach().reshape(()), val_loss.detach().reshape(()))
        if self.reduce is not None:
            losses = tuple(self.reduce(losses))
        return self.apply(grads, train_loss=float(losses[0]), val_loss=float(losses[1]))

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps,
                "skipped": self.skipped, "alpha": self.alpha,
                "alpha_refreshes": self.alpha_refreshes,
                "solver_state": (None if self.solver_state is None
                                 else self.solver_state.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])
        self.alpha = state["alpha"]
        self.alpha_refreshes = int(state["alpha_refreshes"])
        saved = state.get("solver_state")  # absent in checkpoints of older versions
        if self.solver_state is not None:
            if saved is None:
                self.solver_state.reset()  # the checkpoint's solver kept none: start cold
            else:
                self.solver_state.load_state_dict(saved)
