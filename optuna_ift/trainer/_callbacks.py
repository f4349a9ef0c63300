"""Callbacks: hooks into :class:`~optuna_ift.HyperTrainer`, as in Lightning.

A callback is any object with one or more of the hooks below; subclassing :class:`Callback`
gives no-op defaults. A callback with ``state_dict()`` and ``load_state_dict()`` has its state
in the trainer's checkpoints, so a resumed run continues with it (a scheduler's position, the
best value so far). Raising an exception in a hook stops training (Optuna's ``TrialPruned``
passes straight through); ``trainer.stop()`` ends it after the current step.

The ready ones: :class:`LRScheduler` (either optimizer, stepped per weight step, hyper step or
evaluation), :class:`EarlyStopping`, :class:`KeepBest` (the weights and hyperparameters at
the best evaluation, restored when ``fit`` ends) and :class:`HyperparameterSchedule` (the
hyperparameters after every hyper step, recorded, and replayed in a re-training).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from optuna_ift._validation import ArgumentKindError, check_bool, check_int, check_positive

if TYPE_CHECKING:
    from optuna_ift.trainer._trainer import HyperTrainer

__all__ = ["HOOKS", "Callback", "EarlyStopping", "HyperparameterSchedule", "KeepBest",
           "LRScheduler", "check_callbacks"]

#: Each hook and the arguments the trainer passes it.
HOOKS: dict[str, tuple[str, ...]] = {
    "setup": ("trainer",),
    "on_fit_start": ("trainer",),
    "on_weight_step": ("trainer", "loss"),
    "on_hyper_step": ("trainer", "record"),
    "on_evaluation": ("trainer", "record"),
    "on_fit_end": ("trainer",),
}


class Callback:
    """Hooks the trainer calls; override what you need.

    ``setup`` runs once, before the callback is first used (at the start of ``fit``, or before
    a checkpoint is loaded into the trainer, whichever comes first): build what needs the
    trainer there (a scheduler over its optimizer). In weights-only mode a "hyper step" is a
    round of ``inner_steps`` weight steps and its hook still runs, so a baseline lines up with
    a tuned run step for step.
    """

    def setup(self, trainer: HyperTrainer) -> None:
        """Once, before the callback is first used."""

    def on_fit_start(self, trainer: HyperTrainer) -> None:
        """At the start of every :meth:`HyperTrainer.fit`."""

    def on_weight_step(self, trainer: HyperTrainer, loss: Tensor) -> None:
        """After each weight step, with its training loss (a detached scalar tensor; calling
        ``float`` on it waits for the device)."""

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        """After each hyper step, with its record (losses, hypergradient norm, skipped)."""

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        """After each evaluation (every epoch or ``eval_every`` hyper steps)."""

    def on_fit_end(self, trainer: HyperTrainer) -> None:
        """When :meth:`HyperTrainer.fit` returns normally (not when an exception ends it)."""


def check_callbacks(callbacks: Iterable[Any], name: str = "callbacks") -> list[Any]:
    """``callbacks`` as a list, each with at least one hook whose signature takes the
    arguments the trainer passes; anything else is a ``TypeError`` naming it."""
    if callbacks is None or isinstance(callbacks, (str, bytes)) or not isinstance(
            callbacks, Iterable):
        raise TypeError(f"{name} must be an iterable of callbacks, got "
                        f"{type(callbacks).__name__}")
    checked = list(callbacks)
    for k, callback in enumerate(checked):
        if isinstance(callback, type):
            raise ArgumentKindError(f"{name}[{k}] is the class {callback.__name__}, not a "
                                    f"callback: pass an instance, e.g. {callback.__name__}()")
        found = False
        for hook, args in HOOKS.items():
            method = getattr(callback, hook, None)
            if method is None:
                continue
            found = True
            where = f"{name}[{k}].{hook}"
            if not callable(method):
                raise TypeError(f"{where} must be a method, got {type(method).__name__}")
            try:
                signature = inspect.signature(method)
            except (TypeError, ValueError):
                continue  # a builtin: trust it
            try:
                signature.bind(*args)
            except TypeError:
                raise TypeError(f"{where} must take ({', '.join(args)}), its signature is "
                                f"{hook}{signature}") from None
        if not found:
            raise TypeError(f"{name}[{k}] ({type(callback).__name__}) has none of the hooks "
                            f"{', '.join(HOOKS)}")
    return checked


# -- monitored values --------------------------------------------------------------------------


class _Monitor:
    """Which evaluation value is better: ``monitor`` is a key of the evaluation record, or a
    tuple of keys compared in order (the later ones break ties)."""

    def __init__(self, monitor: str | Sequence[str], mode: str | Sequence[str],
                 min_delta: float = 0.0) -> None:
        allowed = "an evaluation key or a tuple of keys"
        if not isinstance(monitor, (str, Iterable)) or isinstance(monitor, bytes):
            raise ArgumentKindError(f"monitor must be {allowed}, got "
                                    f"{type(monitor).__name__} {monitor!r:.60}")
        keys = (monitor,) if isinstance(monitor, str) else tuple(monitor)
        if not all(isinstance(k, str) for k in keys):
            raise ArgumentKindError(f"monitor must be {allowed} (str), got {monitor!r:.60}")
        if not keys:
            raise ValueError(f"monitor must be {allowed}, got {monitor!r}")
        modes = (mode,) * len(keys) if isinstance(mode, str) else tuple(mode)
        if len(modes) != len(keys) or any(m not in ("min", "max") for m in modes):
            raise ValueError(f"mode must be 'min' or 'max' (or one of them per monitored key), "
                             f"got {mode!r}")
        self.keys, self.modes = keys, modes
        self.min_delta = check_positive("min_delta", min_delta, allow_zero=True)
        self.best: tuple[float, ...] | None = None

    def value(self, record: Mapping[str, float]) -> tuple[float, ...]:
        missing = [k for k in self.keys if k not in record]
        if missing:
            raise KeyError(f"monitor {missing[0]!r} is not in the evaluation record (keys: "
                           f"{sorted(record)}); name an eval_data entry, e.g. "
                           "eval_data={'val': ...} gives 'val_loss' and 'val_metric'")
        return tuple(float(record[k]) for k in self.keys)

    def improves(self, value: tuple[float, ...]) -> bool:
        """Whether ``value`` beats the best so far (a non-finite value never does)."""
        if not all(math.isfinite(v) for v in value):
            return False
        if self.best is None:
            return True
        signed = [v if m == "min" else -v for v, m in zip(value, self.modes)]
        best = [v if m == "min" else -v for v, m in zip(self.best, self.modes)]
        if signed[0] < best[0] - self.min_delta:
            return True
        if len(signed) == 1 or signed[0] > best[0]:
            return False
        return signed[1:] < best[1:]  # tied on the first key (within nothing)


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` evaluations.

    Args:
        monitor: The evaluation key to watch, e.g. ``"val_loss"`` for ``eval_data={"val": ...}``.
        mode: ``"min"`` or ``"max"``.
        patience: Evaluations without improvement before stopping.
        min_delta: The least change that counts as an improvement.
    """

    def __init__(self, monitor: str = "val_loss", *, mode: str = "min", patience: int = 5,
                 min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str):
            raise ArgumentKindError(f"monitor must be an evaluation key (a str such as "
                                    f"'val_loss'), got {type(monitor).__name__} "
                                    f"{monitor!r:.60}")
        self.monitor = _Monitor(monitor, mode, min_delta)
        self.patience = check_int("patience", patience, 1)
        self.wait = 0
        self.stopped_at: int | None = None  #: the hyper step at which it stopped training

    @property
    def best(self) -> float | None:
        return None if self.monitor.best is None else self.monitor.best[0]

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        value = self.monitor.value(record)
        if self.monitor.improves(value):
            self.monitor.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_at = trainer.hyper_step
            trainer.stop()

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.monitor.best, "wait": self.wait, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = state["best"]
        self.monitor.best = None if best is None else tuple(best)
        self.wait, self.stopped_at = int(state["wait"]), state["stopped_at"]


class KeepBest(Callback):
    """Keep the model's state (weights, hyperparameters, buffers) at its best evaluation.

    Args:
        monitor: The evaluation key to watch, or a tuple of keys compared in order, e.g.
            ``("val_metric", "val_loss")`` with ``mode=("max", "min")``: the highest accuracy,
            ties to the lower loss.
        mode: ``"min"`` or ``"max"``, or one per key.
        restore: Load the best state back into the model when ``fit`` ends. A checkpoint
            written after ``fit`` returned then holds the best weights, not the last ones;
            to resume the run itself, write checkpoints during ``fit`` (from a callback, as
            :func:`optuna_ift.integration.run_trainer` does) or use ``restore=False``.

    Attributes:
        best_record: The evaluation record of the best state (empty before any).
        best_state: A copy of ``model.state_dict()`` at it (``None`` before any).
    """

    def __init__(self, monitor: str | Sequence[str] = "val_loss", *,
                 mode: str | Sequence[str] = "min", restore: bool = True) -> None:
        self.monitor = _Monitor(monitor, mode)
        self.restore = check_bool("restore", restore)
        self.best_record: dict[str, float] = {}
        self.best_state: dict[str, Tensor] | None = None

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        value = self.monitor.value(record)
        if self.monitor.improves(value):
            self.monitor.best = value
            self.best_record = dict(record)
            self.best_state = {k: v.detach().clone()
                               for k, v in trainer.model.state_dict().items()}

    def on_fit_end(self, trainer: HyperTrainer) -> None:
        if self.restore and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.monitor.best, "record": self.best_record, "state": self.best_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = state["best"]
        self.monitor.best = None if best is None else tuple(best)
        self.best_record = dict(state["record"])
        self.best_state = state["state"]


class HyperparameterSchedule(Callback):
    """Record the hyperparameters after every hyper step, or replay a record in a re-training.

    The paper's re-training (Section 5.6): once hyperparameters are learned on a validation
    split, train fresh weights on train + validation with them. Learned hyperparameters moved
    with the weights, so the re-training gives the weights the hyperparameters they had at the
    same step (a replay) rather than the final ones from the first step.

    Without ``states`` it records: after hyper step ``k + 1``, ``states[k]`` holds a copy of
    every hyperparameter of the model, by name. With ``states`` (such a record) it replays, in
    a weights-only trainer (``hyper_optimizer=None``) of the same architecture and
    ``inner_steps``: after round ``k + 1`` of weight steps the hyperparameters are set to
    ``states[k]``, so round ``k + 2`` trains with what the recorded run had there; past the
    record's end they keep its last entry. The rounds before the first hyper step train with
    the model's own hyperparameters, which should be those the recorded run started from.

    A record holds one copy of the hyperparameters per hyper step, on their device, and goes
    into the trainer's checkpoints (a resumed recording continues it); a replay's checkpoints
    leave out the record it was given.

    Args:
        states: A record to replay (``None``: record).

    Attributes:
        states: The record (one dict of tensors per hyper step).

    Example:
        >>> schedule = HyperparameterSchedule()           # in the tuned run's callbacks
        >>> replay = HyperparameterSchedule(schedule.states)  # in the re-training's
    """

    def __init__(self, states: Sequence[Mapping[str, Tensor]] | None = None) -> None:
        if states is not None:
            if isinstance(states, (str, bytes, Mapping)) or not isinstance(states, Sequence):
                raise ArgumentKindError(f"states must be None or a sequence of dicts of "
                                        f"tensors (a record), got {type(states).__name__}")
            for k, state in enumerate(states):
                if not isinstance(state, Mapping) or not all(
                        isinstance(v, Tensor) for v in state.values()):
                    raise ArgumentKindError(f"states[{k}] must be a dict of tensors by "
                                            f"hyperparameter name, got {type(state).__name__}")
        self.replay = states is not None
        self.states: list[dict[str, Tensor]] = [dict(s) for s in states or ()]
        self._named: dict[str, Tensor] = {}

    def setup(self, trainer: HyperTrainer) -> None:
        ids = {id(h) for h in trainer.hyperparameters}
        self._named = {n: p for n, p in trainer.model.named_parameters() if id(p) in ids}
        if not self.replay:
            return
        if trainer.tunes:
            raise ValueError("a replaying HyperparameterSchedule sets the hyperparameters "
                             "itself: use it in a weights-only trainer (hyper_optimizer=None)")
        for k, state in enumerate(self.states):
            if set(state) != set(self._named):
                raise ValueError(f"states[{k}] names the hyperparameters "
                                 f"{sorted(state)}, the model has {sorted(self._named)}")
            for name, value in state.items():
                if value.shape != self._named[name].shape:
                    raise ValueError(f"states[{k}][{name!r}] has shape {tuple(value.shape)}, "
                                     f"the model's is {tuple(self._named[name].shape)}")

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if not self.replay:
            self.states.append({n: p.detach().clone() for n, p in self._named.items()})
            return
        if trainer.hyper_step <= len(self.states):  # past the end the last entry stays
            with torch.no_grad():
                for name, value in self.states[trainer.hyper_step - 1].items():
                    self._named[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"replay": self.replay, "states": [] if self.replay else self.states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if bool(state["replay"]) != self.replay:
            raise ValueError("this checkpoint's HyperparameterSchedule "
                             f"{'replays' if state['replay'] else 'records'}, this one "
                             f"{'replays' if self.replay else 'records'}")
        if not self.replay:
            self.states = [dict(s) for s in state["states"]]


_INTERVALS = ("weight_step", "hyper_step", "evaluation")
_OPTIMIZERS = ("weight", "hyper")


class LRScheduler(Callback):
    """Step a learning-rate scheduler of the weight or the hyper optimizer.

    Args:
        scheduler: A factory ``f(optimizer) -> scheduler`` (built over the trainer's
            optimizer when the callback is set up), or a scheduler already built over it.
            ``ReduceLROnPlateau`` works too, with ``interval="evaluation"`` and ``monitor``.
        optimizer: ``"weight"`` (the weight optimizer) or ``"hyper"``.
        interval: When to step it: ``"weight_step"`` (default for the weight optimizer),
            ``"hyper_step"`` (default for the hyper optimizer) or ``"evaluation"``.
        monitor: The evaluation key passed to ``scheduler.step(value)`` (``ReduceLROnPlateau``).

    Example:
        >>> LRScheduler(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000))
    """

    def __init__(self, scheduler: Any, *, optimizer: str = "weight",
                 interval: str | None = None, monitor: str | None = None) -> None:
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
        interval = interval or ("weight_step" if optimizer == "weight" else "hyper_step")
        if interval not in _INTERVALS:
            raise ValueError(f"interval must be one of {_INTERVALS}, got {interval!r}")
        if monitor is not None and interval != "evaluation":
            raise ValueError("monitor needs interval='evaluation'")
        if not callable(getattr(scheduler, "step", None)) and not callable(scheduler):
            raise TypeError(f"scheduler must be a learning-rate scheduler or a factory "
                            f"f(optimizer) -> scheduler, got {type(scheduler).__name__}")
        self.which, self.interval, self.monitor = optimizer, interval, monitor
        self._given = scheduler
        self.scheduler: Any = None

    def setup(self, trainer: HyperTrainer) -> None:
        target = trainer.weight_optimizer if self.which == "weight" else trainer.hyper_optimizer
        if target is None:
            raise ValueError("LRScheduler(optimizer='hyper') on a weights-only trainer: there "
                             "is no hyper optimizer")
        given = self._given
        scheduler = given if callable(getattr(given, "step", None)) else given(target)
        if getattr(scheduler, "optimizer", target) is not target:
            raise ValueError(f"scheduler steps another optimizer than the trainer's "
                             f"{self.which} optimizer; pass a factory f(optimizer) -> scheduler")
        self.scheduler = scheduler

    def _step(self, record: Mapping[str, float] | None = None) -> None:
        if self.monitor is not None:
            if record is None or self.monitor not in record:
                raise KeyError(f"monitor {self.monitor!r} is not in the evaluation record")
            self.scheduler.step(float(record[self.monitor]))
        else:
            self.scheduler.step()

    def on_weight_step(self, trainer: HyperTrainer, loss: Tensor) -> None:
        if self.interval == "weight_step":
            self._step()

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if self.interval == "hyper_step":
            self._step()

    def on_evaluation(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if self.interval == "evaluation":
            self._step(record)

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            raise RuntimeError("LRScheduler.state_dict() before setup: the trainer sets it up")
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scheduler is None:
            raise RuntimeError("LRScheduler.load_state_dict() before setup: the trainer sets "
                               "it up")
        self.scheduler.load_state_dict(state["scheduler"])

