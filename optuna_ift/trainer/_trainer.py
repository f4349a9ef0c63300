"""``HyperTrainer``: joint optimisation of weights and hyperparameters (Algorithm 1).

Repeat: ``inner_steps`` optimizer steps on the weights with the training loss, then one
:class:`~optuna_ift.trainer.HyperStep` on the hyperparameters along the implicit hypergradient
of the validation loss. The model is any ``nn.Module`` that declares its hyperparameters as
:class:`~optuna_ift.HyperParameter`; the two losses are plain functions
``loss(model, batch) -> scalar``, so the trainer knows nothing of what the model does with
them. A model without hyperparameters (or ``hyper_optimizer=None``) trains the same way with
no hyper step: the weights-only mode every baseline uses.

Data is any source of batches (:mod:`optuna_ift.trainer._data`); the trainer moves each batch to
the device when it uses it. Checkpoints hold the model, the optimizers, the hyper step's state,
the history, the callbacks' states, the random state and where each data source is, so
:meth:`HyperTrainer.save` / :meth:`HyperTrainer.resume` continue a run exactly when the
sources can say where they are.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from optuna_ift._validation import (
    ArgumentKindError,
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_positive,
)
from optuna_ift.hypergrad import (
    HVP_MODES,
    MIXED_MODES,
    Solver,
    functional_hypergradient,
    unrolled_hypergradient,
)
from optuna_ift.hyperparams import split_parameters
from optuna_ift.trainer._callbacks import check_callbacks
from optuna_ift.trainer._data import (
    BatchStream,
    TensorBatches,
    as_source,
    batch_size_of,
    map_tensors,
    move_batch,
    tensors_of,
)
from optuna_ift.trainer._distributed import process_group
from optuna_ift.trainer._step import (
    DEFAULT_SOLVER,
    HyperStep,
    OptimizerFactory,
    Unrolled,
    build_optimizer,
    check_solver,
    rmsprop,
)

__all__ = ["History", "HyperTrainer", "NonFiniteLossError", "accuracy", "adam", "evaluate",
           "process_is_alive", "read_checkpoint", "resolve_device"]

_logger = logging.getLogger(__name__)

Batch = Any
LossFn = Callable[[nn.Module, Batch], Tensor]


_DEVICES = '"auto" (CUDA when present), "cpu", "cuda", "cuda:N" or another torch device'


def resolve_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``"auto"`` is CUDA when present, else the CPU; anything else goes to ``torch.device``.

    A device PyTorch does not know, or one this machine lacks (CUDA without a GPU, ``cuda:N``
    past the last GPU, MPS where there is none), is a ``ValueError`` naming ``name``.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ArgumentKindError(f"{name} must be {_DEVICES}, got {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} must be {_DEVICES}, got {device!r}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}={str(device)!r}: this machine has no CUDA device; use "
                             f"\"auto\" or \"cpu\"")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"{name}={str(device)!r}: this machine has {count} CUDA "
                             f"device{'s' * (count > 1)} (cuda:0 to cuda:{count - 1})")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={str(device)!r}: MPS is not available on this machine")
    return resolved


def accuracy(model: nn.Module, batch: Batch) -> Tensor:
    """Share of ``batch = (inputs, labels, ...)`` that ``model(inputs).argmax(-1)`` gets right."""
    return (model(batch[0]).argmax(-1) == batch[1]).float().mean()


def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The default weight optimizer: Adam with learning rate 1e-4 (the paper's choice for
    CNNs)."""
    return torch.optim.Adam(params, lr=1e-4)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _check_path(name: str, path: Any) -> Path:
    """``path`` as a ``Path``, if it is a ``str`` or an ``os.PathLike``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentKindError(f"{name} must be a str or os.PathLike (a file path), got "
                                f"{type(path).__name__} {path!r:.60}")
    return Path(path)


def _check_loss(name: str, loss: Any) -> Tensor:
    """``loss``, if it is a one-element tensor: what ``name(model, batch)`` must return. Any
    other kind is an ``ArgumentKindError``, a tensor of another shape a ``ValueError``."""
    if not isinstance(loss, Tensor):
        raise ArgumentKindError(f"{name}(model, batch) must return a scalar torch.Tensor "
                                f"computed from the weights, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"{name}(model, batch) must return a scalar tensor, got a tensor of "
                         f"shape {tuple(loss.shape)}")
    return loss


def _eval_batches(data: Any, batch_size: int, name: str) -> Iterable[Any]:
    """One ordered pass over ``data``: tensors (or a ``TensorBatches``' tensors) in slices of
    ``batch_size`` rows, anything else as it iterates."""
    tensors = data.tensors if isinstance(data, TensorBatches) else tensors_of(name, data)
    if tensors is not None:
        n = tensors[0].shape[0]
        return (tuple(t[start:start + batch_size] for t in tensors)
                for start in range(0, n, batch_size))
    return as_source(name, data, batch_size=batch_size, seed=0)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, loss: LossFn, *, metric: LossFn | None = None,
             batch_size: int = 1024, device: str | torch.device | None = None,
             name: str = "data") -> dict[str, float]:
    """Mean ``loss`` (and ``metric``) of ``model`` over one pass of ``data``, in eval mode.

    Every batch weighs by its number of examples, so the result is the mean over examples.
    The model's training mode is restored afterwards.

    Args:
        model: The module.
        data: Tensors (a tensor, a tuple of tensors, a ``TensorDataset`` or a
            :class:`TensorBatches`, all evaluated in order in slices of ``batch_size``), a
            ``DataLoader`` or any iterable of batches (one pass).
        loss: ``loss(model, batch) -> scalar``.
        metric: ``metric(model, batch) -> scalar``, e.g. :func:`accuracy`.
        batch_size: Rows per slice of in-memory tensors.
        device: Where batches go; default the model's device.
        name: What to call ``data`` in error messages.

    Returns:
        ``{"loss": ...}``, with ``"metric"`` when ``metric`` is given.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentKindError(f"model must be a torch.nn.Module, got "
                                f"{type(model).__name__}")
    check_callable("loss", loss, "loss(model, batch)")
    if metric is not None:
        check_callable("metric", metric, "metric(model, batch), e.g. "
                       "optuna_ift.trainer.accuracy")
    batch_size = check_int("batch_size", batch_size, 1)
    device = _model_device(model) if device is None else resolve_device(device)
    totals, count = {"loss": 0.0, "metric": 0.0}, 0
    was_training = model.training
    model.eval()
    try:
        for batch in _eval_batches(data, batch_size, name):
            batch = move_batch(batch, device, name=name)
            size = batch_size_of(batch)
            totals["loss"] += float(loss(model, batch)) * size
            if metric is not None:
                totals["metric"] += float(metric(model, batch)) * size
            count += size
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"{name} yielded no batch")
    result = {"loss": totals["loss"] / count}
    if metric is not None:
        result["metric"] = totals["metric"] / count
    return result


class NonFiniteLossError(FloatingPointError):
    """The training loss was NaN or infinite at several weight steps in a row."""


@dataclass
class History:
    """What happened: one record per hyper step and one per evaluation."""

    hyper_steps: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    skipped: int = 0  #: hyper steps skipped (non-finite hypergradient)
    skipped_weight_steps: int = 0  #: weight steps not applied (non-finite training loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class HyperTrainer:
    """Algorithm 1: ``inner_steps`` weight steps, then one hyperparameter step, repeated.

    Args:
        model: The module; its :class:`~optuna_ift.HyperParameter` tensors are tuned on the
            validation loss, every other trainable parameter on the training loss. A model
            without hyperparameters trains in weights-only mode.
        train_loss: ``train_loss(model, batch)``: scalar training loss, regularisers included.
            ``batch`` comes from ``train_data`` on the trainer's device (``None`` when there
            is no ``train_data``, as for a distilled dataset that lives in the model).
        val_loss: ``val_loss(model, batch)``: scalar validation loss on a batch of
            ``val_data``, computed in ``model.eval()`` mode (no dropout, BatchNorm's running
            stats); the training loss in ``model.train()`` mode. Evaluations use it too (the
            training loss when there is none). Needed unless the trainer is weights-only.
        train_data: The training batches: a tensor, a tuple of tensors or a ``TensorDataset``
            (batched by a :class:`TensorBatches` of ``batch_size`` rows, moved to ``device``
            once), a :class:`TensorBatches`, a ``DataLoader`` (map-style or iterable, any
            workers, pinned memory, collate function; batches are moved as they are used), or
            any other re-iterable of batches. Batches are tensors or tuples, lists and dicts of
            them. Epochs cycle: a source that ends starts again.
        val_data: Likewise, for the validation loss (tensors batched by ``val_batch_size``).
            Needed unless the trainer is weights-only.
        batch_size: Training mini-batch size of tensor data (capped at the data size).
        val_batch_size: Validation mini-batch size of tensor data; defaults to ``batch_size``.
        weight_optimizer: ``factory(weights) -> Optimizer``; default Adam, learning rate 1e-4.
            ``torch.optim.LBFGS`` gets the closure it needs.
        hyper_optimizer: ``factory(hyperparameters) -> Optimizer``; default RMSprop, 1e-2 (the
            paper's choice for decays and dropout rates); ``None``: weights-only mode, the
            hyperparameters stay fixed. See :class:`HyperStep`.
        solver: An inverse-HVP solver from :mod:`optuna_ift.hypergrad`, or :class:`Unrolled`;
            default :data:`~optuna_ift.trainer.DEFAULT_SOLVER`, ``Neumann(steps=1,
            alpha="auto")`` (chosen by benchmark, see there). ``Neumann(alpha="auto")``
            re-estimates the top eigenvalue only every ``alpha_every`` hyper steps, so a hyper
            step costs ``steps`` HVPs, not ``steps + power_steps``.
        inner_steps: Weight steps between hyper steps (the paper's N).
        val_batches: Validation batches averaged into each hypergradient (k).
        warmup_steps: Weight steps before the first hyper step.
        alpha_every: How often ``Neumann(alpha="auto")`` re-estimates the eigenvalue.
        hessian_batch_size: Invert the Hessian of the training loss on only the first this
            many examples of the hyper step's training batch (curvature on a sub-batch: HVPs
            cost less, and with ``Nystrom`` a sketch's graph is built only when it is
            refreshed); the mixed product uses the whole batch. ``None``: the whole batch.
            Buffers (BatchNorm statistics) are left as the sub-batch found them.
        hvp_mode: How Hessian-vector products are made: ``"reverse"`` (reverse over reverse
            through the graph of the training gradient), ``"forward"`` (``torch.func.jvp``
            over ``grad``, checked against reverse at the first product and refused with a
            ``ValueError`` where they disagree) or ``"finite_difference"`` (differences of
            training gradients at shifted weights: no second derivative, for kernels without
            double backward). See :func:`~optuna_ift.hypergrad.functional_hypergradient`.
        mixed_mode: How the mixed product is made: ``"reverse"`` or ``"finite_difference"``
            (with ``hvp_mode="finite_difference"`` the hypergradient is first-order
            throughout). Outside ``"reverse"`` the losses are evaluated again at shifted
            weights through ``torch.func.functional_call``, on copies of the buffers (the
            model's BatchNorm statistics are not touched) and with the same random state.
        eval_data: Named data sets to evaluate (``{"val": ..., "test": ...}``): tensors, a
            ``DataLoader`` or any iterable of batches, one whole pass each time. Their loss
            is ``val_loss`` and, if given, their ``metric``.
        eval_every: Evaluate every this many hyper steps; ``None``: at each training epoch
            (every hyper step when there is no ``train_data``).
        metric: ``metric(model, batch) -> scalar`` averaged in evaluations, e.g. :func:`accuracy`.
        device: ``"auto"`` (CUDA when present), or any ``torch.device``.
        autocast: ``torch.bfloat16`` or ``torch.float16`` to run the weight steps' forward
            pass under autocast; hypergradients always run in the model's own dtype.
        clip_grad_norm: Clip the weight gradients to this norm in every weight step.
        callbacks: Objects with hooks (:class:`Callback`); their ``state_dict`` goes into
            checkpoints.
        progress: Show a tqdm progress bar.
        seed: Seed of the batching of tensor data (training: ``seed``, validation:
            ``seed + 1``).
        max_non_finite: A weight step whose training loss is NaN or infinite is not applied
            (counted in ``history.skipped_weight_steps``); this many in a row stop training
            with :class:`NonFiniteLossError`. Tensor data holding NaN or infinity is refused
            at construction.

    Raises:
        ValueError: An argument out of range, or tensor data holding NaN or infinity.
        TypeError: An argument of the wrong kind (the message names it).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        train_loss: LossFn,
        val_loss: LossFn | None = None,
        train_data: Any,
        val_data: Any = None,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        weight_optimizer: OptimizerFactory = adam,
        hyper_optimizer: OptimizerFactory | None = rmsprop,
        solver: Solver | Unrolled = DEFAULT_SOLVER,
        inner_steps: int = 10,
        val_batches: int = 1,
        warmup_steps: int = 0,
        alpha_every: int = 50,
        hessian_batch_size: int | None = None,
        hvp_mode: str = "reverse",
        mixed_mode: str = "reverse",
        eval_data: Mapping[str, Any] | None = None,
        eval_every: int | None = None,
        metric: LossFn | None = None,
        device: str | torch.device = "auto",
        autocast: torch.dtype | None = None,
        clip_grad_norm: float | None = None,
        callbacks: Iterable[Any] = (),
        progress: bool = True,
        seed: int = 0,
        max_non_finite: int = 3,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_callable("train_loss", train_loss, "train_loss(model, batch)")
        if val_loss is not None:
            check_callable("val_loss", val_loss, "val_loss(model, batch)")
        if metric is not None:
            check_callable("metric", metric, "metric(model, batch), e.g. "
                           "optuna_ift.trainer.accuracy")
        if autocast is not None and not isinstance(autocast, torch.dtype):
            raise ArgumentKindError(f"autocast must be None, torch.bfloat16 or torch.float16 "
                                    f"(a torch.dtype), got {type(autocast).__name__} "
                                    f"{autocast!r:.60}")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, "
                             f"got {autocast!r}")
        if weight_optimizer is None:
            weight_optimizer = adam
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        #: The data-parallel process group (``None`` in one process); see
        #: :mod:`optuna_ift.trainer._distributed`.
        self.group = process_group()
        if self.group is not None:  # every process starts from rank 0's model
            self.group.broadcast_([*self.model.parameters(), *self.model.buffers()])
        self.weights, self.hyperparameters = split_parameters(self.model)
        if not self.weights:
            raise ValueError("model has no trainable weights (parameters that are not "
                             "HyperParameter)")
        #: Whether hyperparameters are tuned (``False``: weights-only mode).
        self.tunes = bool(self.hyperparameters) and hyper_optimizer is not None
        if self.tunes and val_loss is None:
            raise ValueError("val_loss is required to tune hyperparameters (it may be None "
                             "only in weights-only mode)")
        if self.tunes and val_data is None:
            raise ValueError("val_data is required to tune hyperparameters (it may be None "
                             "only in weights-only mode)")
        self.train_loss_fn = train_loss
        self.val_loss_fn = val_loss
        self.batch_size = check_int("batch_size", batch_size, 1)
        val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.val_batches = check_int("val_batches", val_batches, 1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.hessian_batch_size = (None if hessian_batch_size is None
                                   else check_int("hessian_batch_size", hessian_batch_size, 1))
        self.hvp_mode = check_choice("hvp_mode", hvp_mode, HVP_MODES)
        self.mixed_mode = check_choice("mixed_mode", mixed_mode, MIXED_MODES)
        if isinstance(solver, Unrolled) and (hvp_mode, mixed_mode) != ("reverse", "reverse"):
            raise ValueError("hvp_mode and mixed_mode apply to implicit solvers, not to "
                             "solver=Unrolled: leave them 'reverse'")
        if eval_every is not None:
            check_int("eval_every", eval_every, 1)
        if eval_data is not None and not isinstance(eval_data, Mapping):
            raise TypeError(f"eval_data must be a dict of named data sets, got "
                            f"{type(eval_data).__name__}")
        for name in eval_data or {}:
            if not isinstance(name, str):
                raise ArgumentKindError(f"eval_data names must be str (they prefix the "
                                        f"evaluation keys, e.g. {{'val': ...}} gives "
                                        f"'val_loss'), got {type(name).__name__} {name!r:.60}")
        self.eval_every = eval_every
        self.metric = metric
        self.autocast = autocast
        self.clip_grad_norm = (None if clip_grad_norm is None
                               else check_positive("clip_grad_norm", clip_grad_norm))
        self.callbacks = check_callbacks(callbacks)
        self.progress = check_bool("progress", progress)
        seed = check_int("seed", seed, 0)

        #: The training source (a :class:`TensorBatches` for tensor data), or ``None``.
        self.train_data = as_source("train_data", train_data, batch_size=self.batch_size,
                                    seed=seed, device=self.device)
        #: The validation source, or ``None``.
        self.val_data = as_source("val_data", val_data,
                                  batch_size=check_int("val_batch_size", val_batch_size, 1),
                                  seed=seed + 1, device=self.device)
        #: The evaluated sets: tensors (on the device) or the sources as given.
        self.eval_data: dict[str, Any] = {}
        for name, data in (eval_data or {}).items():
            self.eval_data[name] = _eval_data(f"eval_data[{name!r}]", data, self.device)
        if self.group is not None:  # a loader without DistributedSampler gets one
            self.train_data = self.group.distribute("train_data", self.train_data, seed=seed)
            self.val_data = self.group.distribute("val_data", self.val_data, seed=seed + 1)
        self._train = (None if self.train_data is None
                       else BatchStream("train_data", self.train_data, self.device,
                                        shard=self._shard_of(self.train_data)))
        self._val = (None if self.val_data is None
                     else BatchStream("val_data", self.val_data, self.device,
                                      shard=self._shard_of(self.val_data)))

        self.weight_optimizer = build_optimizer("weight_optimizer", weight_optimizer,
                                                self.weights)
        #: The :class:`HyperStep` (``None`` in weights-only mode).
        self.hyper: HyperStep | None = None
        if self.tunes:
            # Built here, so that its errors name this trainer's argument (hyper_optimizer);
            # the solver is checked first, as HyperStep does.
            check_solver(solver)
            hyper_optimizer = build_optimizer("hyper_optimizer", hyper_optimizer,
                                              self.hyperparameters)
            self.hyper = HyperStep((self.weights, self.hyperparameters), solver=solver,
                                   optimizer=hyper_optimizer, alpha_every=alpha_every,
                                   reduce=None if self.group is None else self.group.mean)
        else:
            check_int("alpha_every", alpha_every, 1)
        self.solver = solver
        self._scaler = (torch.amp.GradScaler("cuda")
                        if autocast == torch.float16 and self.device.type == "cuda" else None)
        self.history = History()
        self.hyper_step = 0
        self.weight_step = 0
        self._stop = False
        self._set_up: set[int] = set()
        self._last_loss: Tensor | None = None
        self.max_non_finite = check_int("max_non_finite", max_non_finite, 1)
        self._non_finite_run = 0

    # -- views ------------------------------------------------------------------------------

    @property
    def hyper_optimizer(self) -> torch.optim.Optimizer | None:
        """The hyper optimizer (``None`` in weights-only mode)."""
        return None if self.hyper is None else self.hyper.optimizer

    @property
    def alpha_refreshes(self) -> int:
        """Times a stale Neumann ``alpha`` was re-estimated early."""
        return 0 if self.hyper is None else self.hyper.alpha_refreshes

    @property
    def epoch(self) -> int:
        """Training epochs completed (0 without ``train_data``)."""
        return 0 if self._train is None else self._train.epoch

    # -- the two kinds of step ------------------------------------------------------------

    def _next_train(self) -> tuple[Batch | None, bool]:
        return (None, False) if self._train is None else self._train.next()

    def _weight_step(self) -> None:
        batch, _ = self._next_train()
        self.model.train()

        def closure() -> Tensor:
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                loss = self.train_loss_fn(self.model, batch)
            _check_loss("train_loss", loss)
            self.weight_optimizer.zero_grad(set_to_none=True)
            if self._scaler is not None:
                self._scaler.scale(loss).backward(inputs=self.weights)
            else:
                loss.backward(inputs=self.weights)
            if self.group is not None:
                loss = self._average_gradients(loss)
            if self.clip_grad_norm is not None:
                if self._scaler is not None:
                    self._scaler.unscale_(self.weight_optimizer)
                torch.nn.utils.clip_grad_norm_(self.weights, self.clip_grad_norm)
            return loss

        loss = closure()
        if not bool(torch.isfinite(loss.detach())):  # (closure checked it is a tensor)
            self._refuse_non_finite_loss(loss)
        elif isinstance(self.weight_optimizer, torch.optim.LBFGS):
            self._non_finite_run = 0
            loss = self.weight_optimizer.step(closure)  # re-evaluates the loss as it needs
        else:
            self._non_finite_run = 0
            if self._scaler is not None:
                self._scaler.step(self.weight_optimizer)
                self._scaler.update()
            else:
                self.weight_optimizer.step()
        self.weight_step += 1
        self._last_loss = loss.detach()
        if self._non_finite_run >= self.max_non_finite:
            raise NonFiniteLossError(
                f"train_loss was not finite at {self._non_finite_run} weight steps in a row "
                f"(the last was weight step {self.weight_step}, after hyper step "
                f"{self.hyper_step}); none of them was applied, so the weights are those of "
                "the last finite step. Likely causes: a NaN or infinity in the training "
                "batches, a learning rate too large, or hyperparameters that make the "
                "training loss overflow.")
        for callback in self.callbacks:
            hook = getattr(callback, "on_weight_step", None)
            if hook is not None:
                hook(self, self._last_loss)

    def _shard_of(self, source: Any) -> Any:
        """Data-parallel: tensor data is drawn identically on every process, which takes its
        share of each global batch; a loader's batches (a ``DistributedSampler``'s) are used
        as they come."""
        if self.group is None or not isinstance(source, TensorBatches):
            return None
        if source.batch_size % self.group.world:
            raise ValueError(f"batch_size={source.batch_size} (the global batch of "
                             f"{type(source).__name__}) must be a multiple of the "
                             f"{self.group.world} processes")
        return self.group.shard

    def _average_gradients(self, loss: Tensor) -> Tensor:
        """Data-parallel: the weight gradients and the loss averaged over the processes."""
        live = [w for w in self.weights if w.grad is not None]
        *grads, mean = self.group.mean([*(w.grad for w in live), loss.detach().reshape(())])
        for w, g in zip(live, grads):
            w.grad = g
        return mean

    def _refuse_non_finite_loss(self, loss: Tensor) -> None:
        """A weight step whose training loss is NaN or infinite is not applied (after
        ``max_non_finite`` of them in a row, ``_weight_step`` stops training)."""
        self.weight_optimizer.zero_grad(set_to_none=True)
        self._non_finite_run += 1
        self.history.skipped_weight_steps += 1
        _logger.warning("weight step %d: training loss %s, step not applied (%d in a row)",
                        self.weight_step + 1, float(loss.detach()), self._non_finite_run)

    def _val_loss(self) -> Tensor:
        self.model.eval()
        try:
            losses = [_check_loss("val_loss", self.val_loss_fn(self.model, self._val.next()[0]))
                      for _ in range(self.val_batches)]
        finally:
            self.model.train()
        return torch.stack(losses).mean()

    def _hyper_step(self) -> dict[str, float]:
        if not self.tunes:  # weights-only: the round ends without a hyper step
            record = {"hyper_step": self.hyper_step + 1, "weight_step": self.weight_step,
                      "train_loss": float(self._last_loss)}
        elif isinstance(self.solver, Unrolled):
            grads, train, val = self._unrolled_hypergradient()
            record = self.hyper.apply(grads, train_loss=train, val_loss=val)
        elif (self.hvp_mode, self.mixed_mode) != ("reverse", "reverse"):
            grads, train, val = self._functional_hypergradient()
            record = self.hyper.apply(grads, train_loss=train, val_loss=val)
        else:
            batch, _ = self._next_train()
            self.model.train()
            curvature = None if self.hessian_batch_size is None else self._curvature_loss(batch)
            record = self.hyper(self.train_loss_fn(self.model, batch), self._val_loss(),
                                curvature_loss=curvature)
        record = {**record, "hyper_step": self.hyper_step + 1, "weight_step": self.weight_step}
        self.hyper_step += 1
        if self.hyper is not None:
            self.history.skipped = self.hyper.skipped
            if isinstance(self.weight_optimizer, torch.optim.LBFGS):
                # Its curvature pairs describe the training loss of the old hyperparameters:
                # kept, they can stall the next line search.
                self.weight_optimizer.state.clear()
        self.history.hyper_steps.append(record)
        return record

    def _curvature_loss(self, batch: Batch) -> Tensor:
        """The training loss on the first ``hessian_batch_size`` examples of ``batch``, with
        the model's buffers (BatchNorm statistics) restored after its forward pass."""
        size = self.hessian_batch_size
        sub = map_tensors(lambda t: t[:size] if t.dim() > 0 else t, batch)
        buffers = [b.clone() for b in self.model.buffers()]
        loss = _check_loss("train_loss", self.train_loss_fn(self.model, sub))
        with torch.no_grad():  # only changed ones: a buffer saved for backward must stay as is
            for b, saved in zip(self.model.buffers(), buffers):
                if not torch.equal(b, saved):
                    b.copy_(saved)
        return loss

    def _loss_function(self, fn: LossFn, *, copy_buffers: bool = False
                       ) -> Callable[[Sequence[Tensor], Sequence[Tensor], Batch], Tensor]:
        """``call(weights, hparams, batch)``: ``fn(model, batch)`` with the model's weights and
        hyperparameters swapped for the given tensors (``torch.func.functional_call``); with
        ``copy_buffers`` on copies of the buffers, made inside the call (so that a
        ``torch.func`` transform may update them), leaving the model's own untouched."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        weight_names = [names[id(w)] for w in self.weights]
        hyper_names = [names[id(h)] for h in self.hyperparameters]
        module = _LossModule(self.model, fn)

        def call(weights: Sequence[Tensor], hparams: Sequence[Tensor], batch: Batch) -> Tensor:
            swapped = dict(zip(weight_names, weights)) | dict(zip(hyper_names, hparams))
            if copy_buffers:
                swapped |= {n: b.clone() for n, b in self.model.named_buffers()}
            return torch.func.functional_call(module, {
                f"model.{n}": t for n, t in swapped.items()}, (batch,), strict=False)

        return call

    def _val_function(self, val_batches: list[Batch], losses: dict[str, float], *,
                      copy_buffers: bool = False) -> Callable[..., Tensor]:
        """``val_fn(weights, hparams)``: the mean validation loss over ``val_batches`` in eval
        mode, its value kept in ``losses["val"]``."""
        call = self._loss_function(self.val_loss_fn, copy_buffers=copy_buffers)

        def val_fn(weights: Sequence[Tensor], hparams: Sequence[Tensor]) -> Tensor:
            self.model.eval()
            try:
                loss = torch.stack([_check_loss("val_loss", call(weights, hparams, b))
                                    for b in val_batches]).mean()
            finally:
                self.model.train()
            losses["val"] = float(loss.detach())
            return loss

        return val_fn

    def _unrolled_hypergradient(self) -> tuple[tuple[Tensor, ...], float, float]:
        batches = [self._next_train()[0] for _ in range(self.solver.steps)]
        val_batches = [self._val.next()[0] for _ in range(self.val_batches)]
        losses: dict[str, float] = {}
        call = self._loss_function(self.train_loss_fn)

        def train_fn(weights, hparams):
            loss = call(weights, hparams, batches.pop(0))
            losses.setdefault("train", float(loss.detach()))
            return loss

        self.model.train()
        grads = unrolled_hypergradient(train_fn, self._val_function(val_batches, losses),
                                       self.weights, self.hyperparameters,
                                       steps=self.solver.steps, lr=self.solver.lr)
        return grads, losses.get("train", math.nan), losses["val"]

    def _functional_hypergradient(self) -> tuple[tuple[Tensor, ...], float, float]:
        """The implicit hypergradient with ``hvp_mode`` / ``mixed_mode`` products."""
        batch, _ = self._next_train()
        val_batches = [self._val.next()[0] for _ in range(self.val_batches)]
        self.model.train()
        with torch.no_grad():  # the buffers move once, as in the reverse path; the record
            losses = {"train": float(_check_loss("train_loss",
                                                 self.train_loss_fn(self.model, batch)))}
        call = self._loss_function(self.train_loss_fn, copy_buffers=True)

        def train_fn(weights, hparams):
            return _check_loss("train_loss", call(weights, hparams, batch))

        curvature_fn = None
        if self.hessian_batch_size is not None:
            size = self.hessian_batch_size
            sub = map_tensors(lambda t: t[:size] if t.dim() > 0 else t, batch)

            def curvature_fn(weights, hparams):
                return _check_loss("train_loss", call(weights, hparams, sub))

        grads = functional_hypergradient(
            self._val_function(val_batches, losses, copy_buffers=True), train_fn,
            self.weights, self.hyperparameters, solver=self.hyper.solve, hvp=self.hvp_mode,
            mixed=self.mixed_mode, curvature_fn=curvature_fn, reduce=self.hyper.reduce)
        train, val = losses["train"], losses["val"]
        if self.hyper.reduce is not None:  # the record shows losses averaged over processes
            train, val = (float(t) for t in self.hyper.reduce((torch.tensor(train),
                                                               torch.tensor(val))))
        return grads, train, val

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, data: Any, *, batch_size: int = 1024, name: str = "data"
                 ) -> dict[str, float]:
        """Mean evaluation loss (``val_loss``, else ``train_loss``) and ``metric`` over one
        pass of ``data`` in eval mode (see :func:`evaluate`)."""
        return evaluate(self.model, data, self.val_loss_fn or self.train_loss_fn,
                        metric=self.metric, batch_size=batch_size, device=self.device,
                        name=name)

    def evaluate_all(self) -> dict[str, float]:
        """Evaluate every ``eval_data`` set now, record it in the history and call the
        callbacks' ``on_evaluation``; returns the record (``<name>_loss``, ``<name>_metric``)."""
        record: dict[str, float] = {"hyper_step": self.hyper_step,
                                    "weight_step": self.weight_step, "epoch": self.epoch}
        for name, data in self.eval_data.items():
            for key, value in self.evaluate(data, name=f"eval_data[{name!r}]").items():
                record[f"{name}_{key}"] = value
        self.history.evaluations.append(record)
        self._call("on_evaluation", record)
        return record

    # -- the loop ---------------------------------------------------------------------------

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _setup_callbacks(self) -> None:
        self.callbacks = check_callbacks(self.callbacks)
        for callback in self.callbacks:
            if id(callback) not in self._set_up:
                self._set_up.add(id(callback))
                setup = getattr(callback, "setup", None)
                if setup is not None:
                    setup(self)

    def stop(self) -> None:
        """Ask :meth:`fit` to return after the current step: after a weight step, the round
        ends there without its hyper step; after a hyper step (or its evaluation), at once."""
        self._stop = True

    def fit(self, hyper_steps: int) -> History:
        """Train until ``hyper_steps`` hyper steps have been taken in total (so a resumed
        trainer continues where it stopped) and return the history.

        In weights-only mode each "hyper step" is a round of ``inner_steps`` weight steps.
        """
        check_int("hyper_steps", hyper_steps, 0)
        self._setup_callbacks()
        self._stop = False
        self._call("on_fit_start")
        bar = tqdm(total=hyper_steps, initial=min(self.hyper_step, hyper_steps),
                   desc="hyper steps" if self.tunes else "rounds", disable=not self.progress,
                   dynamic_ncols=True, leave=False)
        try:
            while self.weight_step < self.warmup_steps and not self._stop:
                self._weight_step()
            while self.hyper_step < hyper_steps and not self._stop:
                epoch = self.epoch
                for _ in range(self.inner_steps):
                    self._weight_step()
                    if self._stop:
                        break
                if self._stop:
                    break
                record = self._hyper_step()
                bar.update(1)
                if self.tunes:
                    bar.set_postfix(val_loss=f"{record['val_loss']:.4g}",
                                    skipped=self.history.skipped)
                self._call("on_hyper_step", record)
                due = (self.hyper_step % self.eval_every == 0 if self.eval_every
                       else self.epoch > epoch or self._train is None)
                if self.eval_data and due:
                    self.evaluate_all()
        finally:
            bar.close()
        self._call("on_fit_end")
        return self.history

    # -- checkpoints ------------------------------------------------------------------------

    def _stateful_callbacks(self) -> list[Any]:
        return [c for c in self.callbacks if callable(getattr(c, "state_dict", None))
                and callable(getattr(c, "load_state_dict", None))]

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs to continue exactly: tensors and plain values.

        Data-parallel: every process calls it (a save too), and the hyperparameters must be
        identical on every process; a drift is an error, never saved.
        """
        if self.group is not None and self.hyperparameters:
            reference = [h.detach().clone() for h in self.hyperparameters]
            self.group.broadcast_(reference)
            same = all(torch.equal(a, h.detach()) for a, h in zip(reference,
                                                                  self.hyperparameters))
            if not self.group.all_agree(same):
                raise RuntimeError("the hyperparameters differ across the processes of the "
                                   "group; they must stay identical (a step applied on some "
                                   "processes only?)")
        self._setup_callbacks()
        state = {
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "hyper": None if self.hyper is None else self.hyper.state_dict(),
            "hyper_step": self.hyper_step,
            "weight_step": self.weight_step,
            "history": self.history.to_dict(),
            "data": {},
            "callbacks": [{"class": type(c).__qualname__, "state": c.state_dict()}
                          for c in self._stateful_callbacks()],
            "rng": torch.get_rng_state(),
            "weight_optimizer_class": type(self.weight_optimizer).__qualname__,
            "hyper_optimizer_class": (None if self.hyper is None
                                      else type(self.hyper.optimizer).__qualname__),
            "world_size": _world_size(),
        }
        for name, stream in (("train", self._train), ("val", self._val)):
            if stream is not None:
                state["data"][name] = stream.state_dict()
        if self._scaler is not None:
            state["scaler"] = self._scaler.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _check_checkpoint(self, state: Any) -> None:
        """Refuse a checkpoint that does not fit this trainer, before anything is changed."""
        if not isinstance(state, Mapping) or not _CHECKPOINT_KEYS <= set(state):
            missing = sorted(_CHECKPOINT_KEYS - set(state)) if isinstance(state, Mapping) else []
            raise ValueError(f"not a HyperTrainer checkpoint (missing {missing or 'everything'})")
        if (state["hyper"] is None) != (self.hyper is None):
            raise ValueError("the checkpoint and this trainer differ in mode (one tunes "
                             "hyperparameters, the other is weights-only)")
        saved = [s["class"] for s in state["callbacks"]]
        mine = [type(c).__qualname__ for c in self._stateful_callbacks()]
        if saved != mine:
            raise ValueError(f"callbacks: the checkpoint holds the state of {saved}, this "
                             f"trainer has stateful callbacks {mine}; build the trainer with "
                             f"the same callbacks in the same order")
        _check_model_state("model", state["model"], self.model.state_dict())
        _check_optimizer_state("weight_optimizer", state["weight_optimizer"],
                               state.get("weight_optimizer_class"), self.weight_optimizer)
        if self.hyper is not None:
            _check_optimizer_state("hyper_optimizer", state["hyper"]["optimizer"],
                                   state.get("hyper_optimizer_class"), self.hyper.optimizer)
        for name, stream in (("train", self._train), ("val", self._val)):
            saved_source = state["data"].get(name, {}).get("source")
            if isinstance(stream.source if stream else None, TensorBatches) and isinstance(
                    saved_source, Mapping) and "order" in saved_source:
                n, m = len(saved_source["order"]), stream.source.n
                if n != m:
                    raise ValueError(f"{name}_data: the checkpoint was taken with {n} examples, "
                                     f"this trainer has {m}")
        saved_world = int(state.get("world_size", 1))
        if saved_world != _world_size():
            raise ValueError(f"the checkpoint was taken with {saved_world} processes, this "
                             f"run has {_world_size()}")

    def _report_overrides(self, state: Mapping[str, Any]) -> None:
        """Log the optimizer settings (learning rates, ...) that the checkpoint's replace."""
        pairs = [("weight_optimizer", self.weight_optimizer, state["weight_optimizer"])]
        if self.hyper is not None:
            pairs.append(("hyper_optimizer", self.hyper.optimizer, state["hyper"]["optimizer"]))
        changes = []
        for name, optimizer, saved in pairs:
            for k, (group, old) in enumerate(zip(optimizer.param_groups, saved["param_groups"])):
                for key, value in old.items():
                    if key != "params" and key in group and group[key] != value:
                        changes.append(f"{name} group {k} {key}: {group[key]!r} -> {value!r}")
        if changes:
            _logger.warning("resume: the checkpoint's settings replace this trainer's: %s",
                            "; ".join(changes))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` gave into this trainer, built the same way.

        Everything is checked first (the model's keys and shapes, the optimizers' classes and
        parameter groups, the size of tensor data, the callbacks, the number of processes);
        a checkpoint that does not fit raises ``ValueError`` and leaves the trainer as it was.
        The optimizers' settings (learning rates, ...) come from the checkpoint; those that
        differ from this trainer's are logged.
        """
        self._check_checkpoint(state)
        self._setup_callbacks()
        saved = list(state["callbacks"])
        mine = self._stateful_callbacks()
        self._report_overrides(state)
        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        if self.hyper is not None:
            self.hyper.load_state_dict(state["hyper"])
        self.hyper_step, self.weight_step = int(state["hyper_step"]), int(state["weight_step"])
        self.history = History(**state["history"])
        for name, stream in (("train", self._train), ("val", self._val)):
            if stream is not None and name in state["data"]:
                stream.load_state_dict(state["data"][name])
        for callback, saved_state in zip(mine, saved):
            callback.load_state_dict(saved_state["state"])
        if self._scaler is not None and "scaler" in state:
            self._scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (``torch.save``; loaded back with ``weights_only=True``).

        The file is written beside ``path`` and then renamed over it, so a run killed during
        a save leaves the previous checkpoint whole.
        """
        path = _check_path("path", path)
        state = self.state_dict()
        if self.group is not None and self.group.rank != 0:  # rank 0 writes for everyone
            self.group.barrier()
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.partial"):  # left by a killed save
            pid = stale.name[len(path.name) + 2:-len(".partial")]
            if pid.isdigit() and not process_is_alive(int(pid)):
                stale.unlink(missing_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
            if self.group is not None:
                self.group.barrier()
        return path

    def resume(self, path: str | Path) -> HyperTrainer:
        """Load a checkpoint written by :meth:`save` into this trainer, built the same way.

        Raises:
            FileNotFoundError: There is no file at ``path``.
            ValueError: The file is not a readable checkpoint, or it does not fit this
                trainer (see :meth:`load_state_dict`); the trainer is then unchanged.
        """
        self.load_state_dict(read_checkpoint(_check_path("path", path)))
        return self


_CHECKPOINT_KEYS = frozenset({"model", "weight_optimizer", "hyper", "hyper_step", "weight_step",
                              "history", "data", "callbacks", "rng"})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``torch.load(weights_only=True)`` onto the CPU
    (random-generator states must stay there; loading puts the model's and the optimizers'
    tensors where their parameters are). A file that cannot be read is a ``ValueError``
    naming it; nothing in it is ever run."""
    path = _check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises many kinds for a bad file)
        text = str(error)
        reason = ("it holds objects that a checkpoint never holds (refused unread)"
                  if "Weights only load failed" in text else text.splitlines()[0][:200])
        raise ValueError(f"checkpoint {path} could not be read: truncated, corrupt or not "
                         f"written by HyperTrainer.save ({reason})") from None


def process_is_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (``True`` when it cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # it exists under another user, or we cannot tell
        return True
    return True


def _world_size() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size()
    return 1


def _check_model_state(name: str, saved: Any, mine: Mapping[str, Tensor]) -> None:
    if not isinstance(saved, Mapping):
        raise ValueError(f"{name}: the checkpoint holds no model state")
    missing = sorted(set(mine) - set(saved))
    unexpected = sorted(set(saved) - set(mine))
    shapes = sorted(k for k in set(mine) & set(saved)
                    if tuple(getattr(saved[k], "shape", ())) != tuple(mine[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{label} {keys[:5]}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("shapes differ for", shapes)) if keys]
        raise ValueError(f"{name}: the checkpoint is of another model: {'; '.join(parts)}")


def _check_optimizer_state(name: str, saved: Any, saved_class: str | None,
                           optimizer: torch.optim.Optimizer) -> None:
    mine = type(optimizer).__qualname__
    if saved_class is not None and saved_class != mine:
        raise ValueError(f"{name}: the checkpoint holds the state of a {saved_class}, this "
                         f"trainer has a {mine}")
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    sizes = [len(g["params"]) for g in groups] if groups is not None else None
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"{name}: the checkpoint's parameter groups ({sizes} tensors) do not "
                         f"match this trainer's "
                         f"({[len(g['params']) for g in optimizer.param_groups]})")


def _eval_data(name: str, data: Any, device: torch.device) -> Any:
    """An ``eval_data`` value: tensors checked and moved to ``device`` once, any other source
    checked and kept as it is."""
    tensors = tensors_of(name, data)
    if tensors is not None:
        return tuple(t.to(device) for t in tensors)
    return as_source(name, data, batch_size=1, seed=0)


class _LossModule(nn.Module):
    """``forward(batch) = fn(model, batch)``, so ``functional_call`` can swap the model's
    parameters for the whole loss, whatever methods of the model it calls."""

    def __init__(self, model: nn.Module, fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Batch | None) -> Tensor:
        return self.fn(self.model, batch)
