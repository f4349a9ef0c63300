"""``HyperTrainer``: joint optimisation of weights and hyperparameters (Algorithm 1).

Repeat: ``inner_steps`` optimizer steps on the weights with the training loss, then one step
on the hyperparameters along the implicit hypergradient of the validation loss. The model is
any ``nn.Module`` that declares its hyperparameters as :class:`~optuna_ift.HyperParameter`;
the two losses are plain functions ``loss(model, batch) -> scalar``, so the trainer knows
nothing of what the model does with them.

The trainer batches in-memory tensors itself, with its own ``torch.Generator``; that is what
makes :meth:`HyperTrainer.save` / :meth:`HyperTrainer.resume` continue a run exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.hypergrad import (
    Neumann,
    NeumannDivergenceWarning,
    Solver,
    hypergradient,
    power_iteration,
    unrolled_hypergradient,
)
from optuna_ift.hyperparams import split_parameters

__all__ = ["Callback", "History", "HyperTrainer", "Unrolled", "accuracy", "resolve_device"]

_logger = logging.getLogger(__name__)

Batch = tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch], Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when present, else the CPU; anything else goes to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def accuracy(model: nn.Module, batch: Batch) -> Tensor:
    """Share of ``batch = (inputs, labels, ...)`` that ``model(inputs).argmax(-1)`` gets right."""
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


@dataclass(frozen=True)
class Unrolled:
    """Use reverse-mode differentiation through ``steps`` SGD steps of learning rate ``lr``
    (the baseline of the paper's Tables 1 and 3) instead of the implicit hypergradient."""

    steps: int = 3
    lr: float = 0.1


class Callback:
    """Hooks the trainer calls; override what you need. Raising an exception stops training
    (Optuna's ``TrialPruned`` passes straight through); :meth:`HyperTrainer.stop` ends it
    after the current step."""

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        """After each hyper step, with its record (losses, hypergradient norm, skipped)."""

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        """After each evaluation (every epoch or ``eval_every`` hyper steps)."""


@dataclass
class History:
    """What happened: one record per hyper step and one per evaluation."""

    hyper_steps: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Batches:
    """Endless shuffled mini-batches of in-memory tensors, resumable to the exact batch."""

    def __init__(self, tensors: Batch, batch_size: int, generator: torch.Generator) -> None:
        self.tensors = tensors
        self.n = tensors[0].shape[0]
        self.batch_size = min(batch_size, self.n)
        self.generator = generator
        self.epoch = 0
        self.position = 0
        self.order = torch.randperm(self.n, generator=generator)

    def next(self) -> tuple[Batch, bool]:
        """The next batch, and whether it completed an epoch."""
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        finished = self.position + self.batch_size > self.n  # drop the ragged tail
        if finished:
            self.epoch += 1
            self.position = 0
            self.order = torch.randperm(self.n, generator=self.generator)
        device = self.tensors[0].device
        return tuple(t[index.to(device)] for t in self.tensors), finished

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "order": self.order,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = state["order"]
        self.generator.set_state(state["generator"])


def _as_tensors(name: str, data: Any, device: torch.device) -> Batch:
    if isinstance(data, TensorDataset):
        data = data.tensors
    if isinstance(data, Tensor):
        data = (data,)
    if not isinstance(data, (tuple, list)) or not data or not all(
        isinstance(t, Tensor) for t in data
    ):
        raise TypeError(f"{name} must be a tensor, a tuple of tensors or a TensorDataset, "
                        f"got {type(data).__name__}")
    if len({t.shape[0] for t in data}) != 1:
        raise ValueError(f"{name}: every tensor needs the same first dimension, got "
                         f"{[tuple(t.shape) for t in data]}")
    if data[0].shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return tuple(t.to(device) for t in data)

def _total_norm(tensors: Sequence[Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t)
                                                       for t in tensors])))


class HyperTrainer:
    """Algorithm 1: ``inner_steps`` weight steps, then one hyperparameter step, repeated.

    Args:
        model: The module; its :class:`~optuna_ift.HyperParameter` tensors are tuned on the
            validation loss, every other trainable parameter on the training loss.
        train_loss: ``train_loss(model, batch)``: scalar training loss, regularisers included.
            ``batch`` is a tuple of tensors from ``train_data`` (``None`` when there is none,
            as for a distilled dataset that lives in the model).
        val_loss: ``val_loss(model, batch)``: scalar validation loss on a batch of ``val_data``.
            It is computed in ``model.eval()`` mode (no dropout, BatchNorm's running stats);
            the training loss in ``model.train()`` mode.
        train_data: A tensor, tuple of tensors or ``TensorDataset`` (first dimension = examples);
            moved to ``device`` once.
        val_data: Likewise, for the validation loss.
        batch_size: Training mini-batch size (capped at the data size).
        val_batch_size: Validation mini-batch size; defaults to ``batch_size``.
        weight_optimizer: ``factory(weights) -> Optimizer``; default Adam, learning rate 1e-4
            (the paper's choice for CNNs).
        hyper_optimizer: ``factory(hyperparameters) -> Optimizer``; default RMSprop, 1e-2
            (the paper's choice for decays and dropout rates). RMSprop's first steps move every
            hyperparameter by about ten times its learning rate: for hyperparameters that are
            network weights (``AugmentationNet``) use Adam with a learning rate near 1e-3.
        solver: An inverse-HVP solver from :mod:`optuna_ift.hypergrad`, or :class:`Unrolled`.
            ``Neumann(alpha="auto")`` is handled specially: the top eigenvalue is re-estimated
            only every ``alpha_every`` hyper steps, so a hyper step costs ``steps`` HVPs, not
            ``steps + power_steps``.
        inner_steps: Weight steps between hyper steps (the paper's N).
        val_batches: Validation batches averaged into each hypergradient (k).
        warmup_steps: Weight steps before the first hyper step.
        alpha_every: How often ``Neumann(alpha="auto")`` re-estimates the eigenvalue.
        eval_data: Named data sets to evaluate (``{"val": ..., "test": ...}``); their loss is
            ``val_loss`` and, if given, their ``metric``.
        eval_every: Evaluate every this many hyper steps; ``None``: at each training epoch
            (every hyper step when there is no ``train_data``).
        metric: ``metric(model, batch) -> scalar`` averaged in evaluations, e.g. :func:`accuracy`.
        device: ``"auto"`` (CUDA when present), or any ``torch.device``.
        autocast: ``torch.bfloat16`` or ``torch.float16`` to run the weight steps' forward
            pass under autocast; hypergradients always run in the model's own dtype.
        callbacks: :class:`Callback` objects.
        progress: Show a tqdm progress bar.
        seed: Seed of the trainer's batching generator.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        train_loss: LossFn,
        val_loss: LossFn,
        train_data: Any,
        val_data: Any,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        weight_optimizer: OptimizerFactory | None = None,
        hyper_optimizer: OptimizerFactory | None = None,
        solver: Solver | Unrolled = Neumann(steps=5, alpha="auto"),
        inner_steps: int = 10,
        val_batches: int = 1,
        warmup_steps: int = 0,
        alpha_every: int = 50,
        eval_data: dict[str, Any] | None = None,
        eval_every: int | None = None,
        metric: LossFn | None = None,
        device: str | torch.device = "auto",
        autocast: torch.dtype | None = None,
        clip_grad_norm: float | None = None,
        callbacks: Iterable[Callback] = (),
        progress: bool = True,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, fn in (("train_loss", train_loss), ("val_loss", val_loss)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable as {name}(model, batch)")
        if not (callable(solver) or isinstance(solver, Unrolled)):
            raise TypeError(f"solver must be a solver(hvp, v) or Unrolled, got {solver!r}")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, "
                             f"got {autocast!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.weights, self.hyperparameters = split_parameters(self.model)
        if not self.weights:
            raise ValueError("model has no trainable weights (parameters that are not "
                             "HyperParameter)")
        if not self.hyperparameters:
            raise ValueError("model declares no HyperParameter: nothing to tune")
        self.train_loss_fn, self.val_loss_fn = train_loss, val_loss
        self.batch_size = _check_int("batch_size", batch_size, 1)
        val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.inner_steps = _check_int("inner_steps", inner_steps, 1)
        self.val_batches = _check_int("val_batches", val_batches, 1)
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        self.alpha_every = _check_int("alpha_every", alpha_every, 1)
        if eval_every is not None:
            _check_int("eval_every", eval_every, 1)
        self.eval_every = eval_every
        self.solver = solver
        self.metric = metric
        self.autocast = autocast
        self.clip_grad_norm = (None if clip_grad_norm is None
                               else _check_positive("clip_grad_norm", clip_grad_norm))
        self.callbacks = list(callbacks)
        self.progress = progress

        self._train = None
        if train_data is not None:
            self._train = _Batches(_as_tensors("train_data", train_data, self.device),
                                   batch_size, torch.Generator().manual_seed(seed))
        self._val = _Batches(_as_tensors("val_data", val_data, self.device),
                             _check_int("val_batch_size", val_batch_size, 1),
                             torch.Generator().manual_seed(seed + 1))
        self.eval_data = {
            name: _as_tensors(f"eval_data[{name!r}]", data, self.device)
            for name, data in (eval_data or {}).items()
        }

        weight_optimizer = weight_optimizer or (lambda p: torch.optim.Adam(p, lr=1e-4))
        hyper_optimizer = hyper_optimizer or (lambda p: torch.optim.RMSprop(p, lr=1e-2))
        self.weight_optimizer = weight_optimizer(self.weights)
        self.hyper_optimizer = hyper_optimizer(self.hyperparameters)
        self._scaler = (torch.amp.GradScaler("cuda")
                        if autocast == torch.float16 and self.device.type == "cuda" else None)
        self.history = History()
        self.hyper_step = 0
        self.weight_step = 0
        self._alpha: float | None = None
        self.alpha_refreshes = 0  # times a stale Neumann alpha was re-estimated early
        self._stop = False

    # -- the two kinds of step ------------------------------------------------------------

    def _next_train(self) -> tuple[Batch | None, bool]:
        return (None, False) if self._train is None else self._train.next()

    def _weight_step(self) -> tuple[float, bool]:
        batch, finished = self._next_train()
        self.model.train()

        def closure() -> Tensor:
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                loss = self.train_loss_fn(self.model, batch)
            self.weight_optimizer.zero_grad(set_to_none=True)
            if self._scaler is not None:
                self._scaler.scale(loss).backward(inputs=self.weights)
            else:
                loss.backward(inputs=self.weights)
            if self.clip_grad_norm is not None:
                if self._scaler is not None:
                    self._scaler.unscale_(self.weight_optimizer)
                torch.nn.utils.clip_grad_norm_(self.weights, self.clip_grad_norm)
            return loss

        if isinstance(self.weight_optimizer, torch.optim.LBFGS):
            loss = self.weight_optimizer.step(closure)  # re-evaluates the loss as it needs
        else:
            loss = closure()
            if self._scaler is not None:
                self._scaler.step(self.weight_optimizer)
                self._scaler.update()
            else:
                self.weight_optimizer.step()
        self.weight_step += 1
        return float(loss.detach()), finished

    def _val_loss(self) -> Tensor:
        self.model.eval()
        try:
            losses = [self.val_loss_fn(self.model, self._val.next()[0])
                      for _ in range(self.val_batches)]
        finally:
            self.model.train()
        return torch.stack(losses).mean()

    def _solver_for_step(self) -> Solver:
        """The solver, with ``Neumann(alpha="auto")``'s eigenvalue estimate cached.

        The estimate is made from the step's own ``v`` every ``alpha_every`` hyper steps and
        reused in between. If a series with the cached ``alpha`` diverges, the estimate is
        refreshed at once; when the top eigenvalue did grow (the cached ``alpha`` was stale)
        the series is solved again with the new ``alpha``, otherwise the divergence comes from
        negative curvature and the cut-off series stands, with its warning.
        """
        solver = self.solver
        if not (isinstance(solver, Neumann) and solver.alpha == "auto"):
            return solver

        def estimate(hvp, v) -> float | None:
            lam = float(power_iteration(hvp, v, steps=solver.power_steps))
            return 1.0 / lam if math.isfinite(lam) and lam > 0 else None

        def solve(hvp, v):
            due = self._alpha is None or self.hyper_step % self.alpha_every == 0
            if due:
                self._alpha = estimate(hvp, v) or self._alpha
                if self._alpha is None:
                    return solver(hvp, v)  # it warns and falls back to the identity
                return dataclasses.replace(solver, alpha=self._alpha)(hvp, v)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = dataclasses.replace(solver, alpha=self._alpha)(hvp, v)
            diverged = any(issubclass(w.category, NeumannDivergenceWarning) for w in caught)
            if diverged:
                fresh = estimate(hvp, v)
                if fresh is not None and fresh < 0.9 * self._alpha:
                    self._alpha = fresh
                    self.alpha_refreshes += 1
                    return dataclasses.replace(solver, alpha=fresh)(hvp, v)
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            return result

        return solve

    def _hypergradient(self) -> tuple[tuple[Tensor, ...], float, float]:
        """``(hypergradient, train loss, validation loss)`` at the current weights."""
        if isinstance(self.solver, Unrolled):
            return self._unrolled_hypergradient()
        batch, _ = self._next_train()
        self.model.train()
        train = self.train_loss_fn(self.model, batch)
        val = self._val_loss()
        grads = hypergradient(val, train, self.weights, self.hyperparameters,
                              solver=self._solver_for_step())
        return grads, float(train.detach()), float(val.detach())

    def _unrolled_hypergradient(self) -> tuple[tuple[Tensor, ...], float, float]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        weight_names = [names[id(w)] for w in self.weights]
        hyper_names = [names[id(h)] for h in self.hyperparameters]
        batches = [self._next_train()[0] for _ in range(self.solver.steps)]
        val_batches = [self._val.next()[0] for _ in range(self.val_batches)]
        losses: dict[str, float] = {}

        def call(fn: LossFn, weights, hparams, batch) -> Tensor:
            params = dict(zip(weight_names, weights)) | dict(zip(hyper_names, hparams))
            return torch.func.functional_call(_LossModule(self.model, fn), {
                f"model.{n}": t for n, t in params.items()}, (batch,), strict=False)

        def train_fn(weights, hparams):
            loss = call(self.train_loss_fn, weights, hparams, batches.pop(0))
            losses.setdefault("train", float(loss.detach()))
            return loss

        def val_fn(weights, hparams):
            self.model.eval()
            try:
                loss = torch.stack([call(self.val_loss_fn, weights, hparams, b)
                                    for b in val_batches]).mean()
            finally:
                self.model.train()
            losses["val"] = float(loss.detach())
            return loss

        self.model.train()
        grads = unrolled_hypergradient(train_fn, val_fn, self.weights, self.hyperparameters,
                                       steps=self.solver.steps, lr=self.solver.lr)
        return grads, losses.get("train", math.nan), losses["val"]

    def _hyper_step(self) -> dict[str, float]:
        grads, train, val = self._hypergradient()
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        record = {"hyper_step": self.hyper_step + 1, "weight_step": self.weight_step,
                  "train_loss": train, "val_loss": val,
                  "hypergradient_norm": _total_norm(grads) if finite else math.nan,
                  "skipped": float(not finite)}
        if finite:
            for h, g in zip(self.hyperparameters, grads):
                h.grad = g.to(h.dtype)
            self.hyper_optimizer.step()
            self.hyper_optimizer.zero_grad(set_to_none=True)
        else:
            self.history.skipped += 1
            _logger.warning("hyper step %d: non-finite hypergradient skipped (%d so far)",
                            self.hyper_step + 1, self.history.skipped)
        self.hyper_step += 1
        self.history.hyper_steps.append(record)
        return record

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data: Any, *, batch_size: int = 1024) -> dict[str, float]:
        """Mean ``val_loss`` (and ``metric``) over ``data`` in eval mode, in batches."""
        tensors = _as_tensors("data", data, self.device)
        n = tensors[0].shape[0]
        totals = {"loss": 0.0, "metric": 0.0}
        self.model.eval()
        try:
            for start in range(0, n, batch_size):
                batch = tuple(t[start:start + batch_size] for t in tensors)
                size = batch[0].shape[0]
                totals["loss"] += float(self.val_loss_fn(self.model, batch)) * size
                if self.metric is not None:
                    totals["metric"] += float(self.metric(self.model, batch)) * size
        finally:
            self.model.train()
        result = {"loss": totals["loss"] / n}
        if self.metric is not None:
            result["metric"] = totals["metric"] / n
        return result

    def _evaluate_all(self) -> dict[str, float]:
        epoch = self._train.epoch if self._train is not None else 0
        record: dict[str, float] = {"hyper_step": self.hyper_step,
                                    "weight_step": self.weight_step, "epoch": epoch}
        for name, data in self.eval_data.items():
            for key, value in self.evaluate(data).items():
                record[f"{name}_{key}"] = value
        self.history.evaluations.append(record)
        for callback in self.callbacks:
            callback.on_evaluation(self, record)
        return record

    # -- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`fit` to return after the current hyper step."""
        self._stop = True

    def fit(self, hyper_steps: int) -> History:
        """Train until ``hyper_steps`` hyper steps have been taken in total (so a resumed
        trainer continues where it stopped) and return the history."""
        _check_int("hyper_steps", hyper_steps, 0)
        self._stop = False
        while self.weight_step < self.warmup_steps:
            self._weight_step()
        bar = tqdm(total=hyper_steps, initial=min(self.hyper_step, hyper_steps),
                   desc="hyper steps", disable=not self.progress, dynamic_ncols=True,
                   leave=False)
        try:
            while self.hyper_step < hyper_steps and not self._stop:
                epoch_ended = False
                for _ in range(self.inner_steps):
                    _, finished = self._weight_step()
                    epoch_ended |= finished
                record = self._hyper_step()
                bar.update(1)
                bar.set_postfix(val_loss=f"{record['val_loss']:.4g}",
                                skipped=self.history.skipped)
                for callback in self.callbacks:
                    callback.on_hyper_step(self, record)
                due = (self.hyper_step % self.eval_every == 0 if self.eval_every
                       else epoch_ended or self._train is None)
                if self.eval_data and due:
                    self._evaluate_all()
        finally:
            bar.close()
        return self.history

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs to continue exactly: tensors and plain values."""
        state = {
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "hyper_optimizer": self.hyper_optimizer.state_dict(),
            "hyper_step": self.hyper_step,
            "weight_step": self.weight_step,
            "alpha": self._alpha,
            "history": self.history.to_dict(),
            "val_batches": self._val.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if self._train is not None:
            state["train_batches"] = self._train.state_dict()
        if self._scaler is not None:
            state["scaler"] = self._scaler.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.hyper_optimizer.load_state_dict(state["hyper_optimizer"])
        self.hyper_step, self.weight_step = int(state["hyper_step"]), int(state["weight_step"])
        self._alpha = state["alpha"]
        self.history = History(**state["history"])
        self._val.load_state_dict(state["val_batches"])
        if self._train is not None:
            self._train.load_state_dict(state["train_batches"])
        if self._scaler is not None and "scaler" in state:
            self._scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (``torch.save``; loaded back with ``weights_only=True``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def resume(self, path: str | Path) -> HyperTrainer:
        """Load a checkpoint written by :meth:`save` into this trainer, built the same way."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        state["rng"] = state["rng"].cpu()
        if "cuda_rng" in state:
            state["cuda_rng"] = state["cuda_rng"].cpu()
        for key in ("val_batches", "train_batches"):
            if key in state:
                state[key]["generator"] = state[key]["generator"].cpu()
                state[key]["order"] = state[key]["order"].cpu()
        self.load_state_dict(state)
        return self


class _LossModule(nn.Module):
    """``forward(batch) = fn(model, batch)``, so ``functional_call`` can swap the model's
    parameters for the whole loss, whatever methods of the model it calls."""

    def __init__(self, model: nn.Module, fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Batch | None) -> Tensor:
        return self.fn(self.model, batch)
