"""The Lightning face: tune a ``LightningModule``'s hyperparameters under ``lightning.Trainer``.

:class:`IFTCallback` is a Lightning callback. Every ``every_n_steps`` optimizer steps of the
trainer it takes one hyper step on the module's :class:`~optuna_ift.HyperParameter` tensors
along the implicit hypergradient, with the same :class:`~optuna_ift.HyperStep` that
:class:`~optuna_ift.HyperTrainer` uses (so the guards are the same: a non-finite hypergradient
is skipped and counted, ``Neumann(alpha="auto")`` caches its eigenvalue estimate). Lightning
keeps doing everything else: the weight steps, precision, validation, logging, checkpoints,
and whatever other callbacks you give it (Optuna's pruning callback among them).

The module's own optimizer must not hold the hyperparameters: build it over
``optuna_ift.split_parameters(self)[0]``, the weights. The hyperparameters themselves are in
the module's ``state_dict`` (so in every Lightning checkpoint); the callback's own state (the
hyper optimizer's, the counts, where the validation stream is) goes into the checkpoint
through the callback's ``state_dict``.

Lightning is an optional dependency: ``pip install 'optuna-ift[lightning]'``.

Example:
    A classifier whose weight decay (one per weight) is tuned every ten steps::

        import lightning
        from optuna_ift import split_parameters
        from optuna_ift.hyperparams import WeightDecay
        from optuna_ift.lightning import IFTCallback

        class Classifier(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = nn.Linear(20, 3)
                self.decay = WeightDecay(self.net, mode="per_weight")

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.cross_entropy(self.net(x), y) + self.decay(self.net)

            def configure_optimizers(self):
                return torch.optim.Adam(split_parameters(self)[0], lr=1e-3)

        def val_loss(module, batch):
            x, y = batch
            return F.cross_entropy(module.net(x), y)

        callback = IFTCallback((X_val, y_val), val_loss=val_loss, every_n_steps=10)
        lightning.Trainer(max_steps=1000, callbacks=[callback]).fit(Classifier(), loader)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "optuna_ift.lightning needs Lightning (the 'lightning' package, lightning.pytorch), "
        "which is not installed: pip install 'optuna-ift[lightning]'"
    ) from error

from optuna_ift._validation import ArgumentKindError, check_int
from optuna_ift.hypergrad import Solver, check_solver
from optuna_ift.hyperparams import HyperParameter, split_parameters
from optuna_ift.trainer import (
    DEFAULT_SOLVER,
    BatchStream,
    HyperStep,
    Unrolled,
    as_source,
    rmsprop,
)

__all__ = ["IFTCallback", "LossFunction"]

_logger = logging.getLogger(__name__)

LossFunction = Callable[[Any, Any], Tensor]
"""``loss(module, batch) -> scalar tensor`` with its graph to the weights and hyperparameters."""


def _accepts_batch_idx(method: Callable[..., Any]) -> bool:
    """Whether a ``*_step`` method takes a second positional argument (``batch_idx``), the
    rule Lightning itself follows when it calls these hooks."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: assume the usual signature
        return True
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _silenced(module: nn.Module) -> Iterator[None]:
    """``module.log`` and ``module.log_dict`` as no-ops for the duration of the block.

    The callback calls the module's ``training_step`` / ``validation_step`` a second time to
    recompute a loss with its graph; what those steps log must not be logged twice, nor
    under a training hook (a ``val_loss`` logged from there would reach the trainer's
    ``callback_metrics`` and mislead ``ModelCheckpoint``, ``EarlyStopping`` or a pruner).
    """
    names = ("log", "log_dict")
    saved = {name: module.__dict__[name] for name in names if name in module.__dict__}
    for name in names:
        module.__dict__[name] = _no_log
    try:
        yield
    finally:
        for name in names:
            module.__dict__.pop(name, None)
        module.__dict__.update(saved)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and every submodule in eval mode, each put back in its own mode after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_loss(name: str, where: str, loss: Any) -> Tensor:
    """``loss`` as a scalar tensor with a graph, or an error naming ``name`` and ``where``."""
    if isinstance(loss, Mapping) and "loss" in loss:
        loss = loss["loss"]
    if not isinstance(loss, Tensor):
        raise TypeError(f"{name}: {where} returned {type(loss).__name__}; it must return the "
                        f"loss as a scalar tensor (or a dict holding it under 'loss')")
    if loss.numel() != 1:
        raise ValueError(f"{name}: {where} returned a tensor of shape {tuple(loss.shape)}; "
                         "the loss must be a scalar")
    if not loss.requires_grad:
        raise ValueError(f"{name}: {where} returned a loss without a graph (computed under "
                         "torch.no_grad, or detached?); it must be computed from the weights "
                         "with grad enabled")
    return loss.reshape(())


class IFTCallback(pl.Callback):
    """Tune a ``LightningModule``'s hyperparameters by implicit differentiation during ``fit``.

    Every ``every_n_steps`` optimizer steps (``trainer.global_step``), right after Lightning's
    weight step, the callback

    1. recomputes the training loss on the batch just trained on, at the new weights, with the
       module in the mode Lightning trains it in (training mode);
    2. computes the validation loss on the next ``val_batches`` batches of ``val_data`` (their
       mean) with the module in eval mode, then puts every submodule back in its mode;
    3. takes one step of the hyper optimizer along the implicit hypergradient through a
       :class:`~optuna_ift.HyperStep` (non-finite hypergradients are skipped and counted);
    4. appends the step's record to :attr:`history` and, with ``log``, logs
       ``hyper/train_loss``, ``hyper/val_loss``, ``hyper/hypergradient_norm`` and
       ``hyper/skipped`` through ``pl_module.log`` (per step).

    With gradient accumulation the hyper step follows the optimizer step, not every batch.
    Under data-parallel training (``trainer.world_size > 1``) the hypergradient is averaged
    across processes (``trainer.strategy.reduce``) before it is applied, so the
    hyperparameters stay equal on every process.

    The losses are recomputed outside Lightning's precision context, in the dtype of the
    weights; the HyperStep's double backward is best done in full precision. Recomputing the
    training loss in training mode runs the forward pass once more, so BatchNorm running
    statistics see that batch twice.

    A later ``fit`` of the same module with the same callback continues with the same
    HyperStep (hyper optimizer state, counts, history); a fit of another module builds a new
    one. Resuming from a Lightning checkpoint (``ckpt_path=``) restores all of it through
    :meth:`state_dict` / :meth:`load_state_dict`.

    Args:
        val_data: Where validation batches come from: tensors (a tensor, a tuple of tensors,
            a ``TensorDataset``: batched by a shuffled :class:`~optuna_ift.TensorBatches` of
            ``val_batch_size`` rows seeded with ``seed``), a :class:`~optuna_ift.TensorBatches`,
            a ``DataLoader`` or any iterable of batches. It is drawn from cyclically and each
            batch is moved to the module's device when drawn. A source with
            ``state_dict()``/``load_state_dict()`` (``TensorBatches``, torchdata's
            ``StatefulDataLoader``) resumes from a checkpoint at the same batch; any other
            restarts its pass, with a warning.
        every_n_steps: Take a hyper step every this many optimizer steps; an integer >= 1.
        solver: The inverse-HVP solver of :mod:`optuna_ift.hypergrad`.
            ``Neumann(alpha="auto")`` re-estimates the top Hessian eigenvalue every
            ``alpha_every`` hyper steps. ``Unrolled`` is not available here (it needs to
            re-run the weight steps, which Lightning owns).
        hyper_optimizer: A factory ``f(hyperparameters) -> torch.optim.Optimizer``; default
            RMSprop with learning rate 1e-2 (the paper's choice). It is built at fit start,
            when the module's hyperparameters are on their device.
        alpha_every: How often ``Neumann(alpha="auto")`` re-estimates its ``alpha``; >= 1.
        val_batches: Validation batches per hyper step; their losses are averaged. >= 1.
        val_batch_size: Rows per validation batch when ``val_data`` is tensors; ignored for a
            ``DataLoader`` or another iterable, which brings its own batches. >= 1.
        train_loss: ``train_loss(module, batch) -> scalar tensor``, the training loss with
            every regulariser that depends on the hyperparameters. Default: the module's
            ``training_step(batch, batch_idx)`` called again (its return value, a tensor or a
            dict with ``"loss"``; what it logs is dropped). Pass your own function when
            ``training_step`` has side effects that must not happen twice (metrics it updates)
            and always under manual optimization, where ``training_step`` steps the
            optimizers itself.
        val_loss: ``val_loss(module, batch) -> scalar tensor``, the validation objective; it
            must depend on the weights (and may depend on the hyperparameters directly).
            Default: the module's ``validation_step(batch, batch_idx)`` when it is defined and
            returns its loss (a tensor or a dict with ``"loss"``); what it logs is dropped.
        seed: Seed of the validation batch order when ``val_data`` is tensors; >= 0.
        log: Log the hyper step's record through ``pl_module.log``.

    Attributes:
        history: The record of every hyper step, oldest first: ``hyper_step``,
            ``global_step``, ``train_loss``, ``val_loss``, ``hypergradient_norm`` (NaN when
            skipped) and ``skipped`` (1.0 or 0.0).
        hyper: The :class:`~optuna_ift.HyperStep` (built at fit start; ``None`` before).
        val_stream: The :class:`~optuna_ift.trainer.BatchStream` over ``val_data`` (built at
            fit start).

    Raises:
        ValueError: At fit start, when the module declares no ``HyperParameter``, when one
            of ``trainer.optimizers`` holds a ``HyperParameter``, or when no loss function can
            be found (see ``train_loss`` and ``val_loss``).
        TypeError: During a hyper step, when a loss function (or the default ``*_step``)
            returns something other than a scalar loss tensor.
    """

    def __init__(
        self,
        val_data: Any,
        *,
        every_n_steps: int = 10,
        solver: Solver = DEFAULT_SOLVER,
        hyper_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] = rmsprop,
        alpha_every: int = 50,
        val_batches: int = 1,
        val_batch_size: int = 128,
        train_loss: LossFunction | None = None,
        val_loss: LossFunction | None = None,
        seed: int = 0,
        log: bool = True,
    ) -> None:
        super().__init__()
        if val_data is None:
            raise ArgumentKindError("val_data is required: the hyperparameters are tuned on "
                                    "the validation loss of its batches (tensors, a "
                                    "TensorBatches, a DataLoader or an iterable of batches)")
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.alpha_every = check_int("alpha_every", alpha_every, 1)
        self.val_batches = check_int("val_batches", val_batches, 1)
        self.val_batch_size = check_int("val_batch_size", val_batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        if isinstance(solver, Unrolled):
            raise TypeError("solver=Unrolled is not available in IFTCallback: unrolled "
                            "differentiation re-runs the weight steps, which Lightning owns; "
                            "use an implicit solver (Neumann, ConjugateGradient, Identity)")
        check_solver("solver", solver)
        if isinstance(hyper_optimizer, torch.optim.Optimizer) or not callable(hyper_optimizer):
            raise TypeError("hyper_optimizer must be a factory f(hyperparameters) -> "
                            "torch.optim.Optimizer (the hyperparameters are only known at fit "
                            f"start), got {type(hyper_optimizer).__name__}")
        for name, fn in (("train_loss", train_loss), ("val_loss", val_loss)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function {name}(module, batch) -> scalar "
                                f"tensor or None, got {type(fn).__name__}")
        if not isinstance(log, bool):
            raise TypeError(f"log must be a bool, got {type(log).__name__}")
        self.solver = solver
        self.hyper_optimizer = hyper_optimizer
        self.train_loss = train_loss
        self.val_loss = val_loss
        self.log_metrics = log
        self.source = as_source("val_data", val_data, batch_size=self.val_batch_size,
                                seed=self.seed)
        self.history: list[dict[str, float]] = []
        self.hyper: HyperStep | None = None
        self.val_stream: BatchStream | None = None
        self._last_step = 0  # the global step of the latest hyper step
        self._restored = False  # load_state_dict ran for the coming (or current) fit
        self._pending: dict[str, Any] = {}  # loaded state waiting for the HyperStep / stream

    # -- fit start: checks and the HyperStep -------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the module and its optimizers, then build the HyperStep and the stream."""
        weights, hyperparameters = split_parameters(pl_module)
        if not hyperparameters:
            raise ValueError(
                f"IFTCallback: {type(pl_module).__name__} declares no HyperParameter (with "
                "requires_grad=True), so there is nothing to tune: declare them with "
                "optuna_ift.HyperParameter or a family of optuna_ift.hyperparams, or drop "
                "the callback")
        self._check_optimizers(trainer, pl_module)
        self._check_losses(pl_module)

        step = self.hyper
        same = step is not None and [id(t) for t in step.hyperparameters] == [
            id(t) for t in hyperparameters] and [id(t) for t in step.weights] == [
            id(t) for t in weights]
        if not same:  # a first fit, or a fit of another module: a new HyperStep
            self.hyper = HyperStep(pl_module, solver=self.solver,
                                        optimizer=self.hyper_optimizer,
                                        alpha_every=self.alpha_every)
        device = pl_module.device
        if self.val_stream is None or self.val_stream.device != device:
            self.val_stream = BatchStream("val_data", self.source, device)
        if not self._restored:  # a new fit counts its global steps from zero again
            self._last_step = 0
        self._apply_pending()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Every checkpoint is restored by now (some strategies restore after fit start)."""
        self._restored = False

    def _check_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = {id(p): name for name, p in pl_module.named_parameters()}
        held = []
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                held += [names.get(id(p), "?") for p in group["params"]
                         if isinstance(p, HyperParameter)]
        if held:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise ValueError(
                f"IFTCallback: the optimizer from {type(pl_module).__name__}."
                f"configure_optimizers holds HyperParameter tensors ({shown}); they must be "
                "tuned on the validation loss by the callback, not trained on the training "
                "loss: build the optimizer over the weights only, "
                "optuna_ift.split_parameters(self)[0]")

    def _check_losses(self, pl_module: pl.LightningModule) -> None:
        if self.train_loss is None:
            if not pl_module.automatic_optimization:
                raise ValueError(
                    "train_loss is required under manual optimization: the module's "
                    "training_step steps its optimizers itself and cannot be called again to "
                    "recompute the loss; pass train_loss=fn(module, batch) -> scalar tensor")
            if not is_overridden("training_step", pl_module, pl.LightningModule):
                raise ValueError(
                    f"train_loss: {type(pl_module).__name__} has no training_step to recompute "
                    "the training loss with; pass train_loss=fn(module, batch) -> scalar tensor")
            if "dataloader_iter" in inspect.signature(pl_module.training_step).parameters:
                raise ValueError(
                    f"train_loss is required: {type(pl_module).__name__}.training_step draws "
                    "its own batches (dataloader_iter), so it cannot be called again on the "
                    "batch just trained on; pass train_loss=fn(module, batch) -> scalar tensor")
        if self.val_loss is None and not is_overridden("validation_step", pl_module,
                                                       pl.LightningModule):
            raise ValueError(
                f"val_loss: {type(pl_module).__name__} has no validation_step, so the callback "
                "has no validation loss to tune the hyperparameters on; pass "
                "val_loss=fn(module, batch) -> scalar tensor, or define a validation_step that "
                "returns the loss")

    # -- the hyper step ----------------------------------------------------------------------

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Take a hyper step when ``trainer.global_step`` has reached a multiple of
        ``every_n_steps`` (once per optimizer step, whatever the gradient accumulation)."""
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        if self.hyper is None:  # on_fit_start did not run: not inside Trainer.fit
            return
        self._last_step = step
        record = self.step(trainer, pl_module, batch, batch_idx)
        if self.log_metrics:
            pl_module.log_dict({f"hyper/{key}": float(record[key]) for key in
                                ("train_loss", "val_loss", "hypergradient_norm", "skipped")},
                               on_step=True, on_epoch=False, batch_size=1)

    def step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
             batch_idx: int) -> dict[str, float]:
        """One hyper step now, on the training ``batch`` and the next validation batches.

        ``on_train_batch_end`` calls it on schedule; call it yourself (after fit start) for
        an extra step. Returns the step's record, which is also appended to :attr:`history`.
        """
        hyper = self.hyper
        if hyper is None or self.val_stream is None:
            raise RuntimeError("IFTCallback.step needs the HyperStep that is built at fit "
                               "start: call it from inside Trainer.fit")
        with torch.enable_grad(), _silenced(pl_module):
            train_loss = self._train_loss(pl_module, batch, batch_idx)
            val_loss = self._val_loss(pl_module)
        grads = hyper.hypergradient(train_loss, val_loss)
        if trainer.world_size > 1:
            grads = tuple(trainer.strategy.reduce(g.detach(), reduce_op="mean") for g in grads)
        record: dict[str, float] = hyper.apply(grads, train_loss=float(train_loss.detach()),
                                               val_loss=float(val_loss.detach()))
        record["global_step"] = trainer.global_step
        self.history.append(record)
        if record["skipped"]:
            _logger.warning("IFTCallback: hyper step at global step %d skipped (non-finite "
                            "hypergradient; %d skipped so far)", trainer.global_step,
                            hyper.skipped)
        return record

    def _train_loss(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
        if self.train_loss is not None:
            return _check_loss("train_loss", "train_loss(module, batch)",
                               self.train_loss(pl_module, batch))
        method = pl_module.training_step
        output = method(batch, batch_idx) if _accepts_batch_idx(method) else method(batch)
        return _check_loss("train_loss", f"{type(pl_module).__name__}.training_step", output)

    def _val_loss(self, pl_module: pl.LightningModule) -> Tensor:
        assert self.val_stream is not None
        losses = []
        with _eval_mode(pl_module):
            for k in range(self.val_batches):
                batch, _ = self.val_stream.next()
                if self.val_loss is not None:
                    losses.append(_check_loss("val_loss", "val_loss(module, batch)",
                                              self.val_loss(pl_module, batch)))
                    continue
                method = pl_module.validation_step
                output = method(batch, k) if _accepts_batch_idx(method) else method(batch)
                losses.append(_check_loss(
                    "val_loss", f"{type(pl_module).__name__}.validation_step (the default "
                    "val_loss; pass val_loss=fn(module, batch) if it cannot return its loss)",
                    output))
        return losses[0] if len(losses) == 1 else sum(losses) / len(losses)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The callback's state for a Lightning checkpoint: the HyperStep's (hyper optimizer,
        cached ``alpha``, counts), where the validation stream is, the history and the global
        step of the latest hyper step. The hyperparameters themselves are in the module's
        ``state_dict``."""
        state: dict[str, Any] = {"history": [dict(r) for r in self.history],
                                 "last_step": self._last_step}
        if self.hyper is not None:
            state["hyper_step"] = self.hyper.state_dict()
        elif "hyper_step" in self._pending:
            state["hyper_step"] = self._pending["hyper_step"]
        if self.val_stream is not None:
            state["val_stream"] = self.val_stream.state_dict()
        elif "val_stream" in self._pending:
            state["val_stream"] = self._pending["val_stream"]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`. Lightning calls this before fit start when it
        resumes from ``ckpt_path``; what needs the HyperStep waits until it is built."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping from IFTCallback.state_dict(), got "
                            f"{type(state_dict).__name__}")
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", 0))
        self._restored = True
        self._pending = {key: state_dict[key] for key in ("hyper_step", "val_stream")
                         if key in state_dict}
        self._apply_pending()

    def _apply_pending(self) -> None:
        if self.hyper is not None and "hyper_step" in self._pending:
            self.hyper.load_state_dict(self._pending.pop("hyper_step"))
        if self.val_stream is not None and "val_stream" in self._pending:
            self.val_stream.load_state_dict(self._pending.pop("val_stream"))

    def __repr__(self) -> str:
        steps = self.hyper.steps if self.hyper is not None else 0
        return (f"{type(self).__name__}(every_n_steps={self.every_n_steps}, "
                f"solver={self.solver!r}, val_batches={self.val_batches}, "
                f"hyper_steps={steps})")

