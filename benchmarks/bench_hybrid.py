"""Hybrid studies against TPE alone: test accuracy at equal wall-clock, over many seeds.

The project's headline benchmark. Each method tunes an MLP ``d-width-classes`` (ReLU, a
weight decay on every tensor) with an Optuna study, and every method gets, for every seed,

- the same train / validation / test split (``load_dataset(..., seed=seed)``),
- the same wall-clock budget (``--budget-s``): a trial still training when it runs out stops
  after its current hyper step and reports its kept state, and no trial starts after it; a
  method that re-trains its pick at the end moves that deadline forward by what the
  re-training of its best trial so far will take,
- the same step budget per trial (``--weight-steps`` weight steps at most), and
- the same trial recipe around the training: an evaluation every ``--eval-every`` hyper
  steps on the method's *selection data*, early stopping (``--patience`` evaluations) and
  keep-best on it, and the kept state's selection loss as the trial's value.

A method's result is the **test** accuracy and test loss of the trial it picks by its own
value (the lowest selection loss, never anything computed on the test set), re-trained on
train + validation when the method's recipe says so. The test set is evaluated once per trial,
after its training, and only recorded (a user attribute, and the best-so-far curve from which
the time to reach TPE's accuracy is read); :func:`select_trial` sees the trials' values only.

Methods (``--methods``; the default runs the first eight):

``tpe``            TPE over the learning rate, the width and one global decay; a weights-only
                   trainer (``hyper_optimizer=None``: the decay stays as sampled).
``random``         Random search over the same space, the same trainer.
``hybrid``         The project's recipe. TPE through :class:`~optuna_ift.integration.HybridSampler`
                   over the learning rate, the width and the global decay that a decay *per
                   weight* starts from; inside each trial implicit hypergradients tune the
                   per-weight decays on the validation loss. Train + validation is re-split with
                   ``--val-share`` of validation (the paper's Section 5.6: more validation data
                   when the hyperparameters are many). The pick's own model, its decays as
                   learned, is the result: no re-training.
``tpe-share``      ``tpe`` on ``hybrid``'s re-split: the control that tells what IFT adds.
``hybrid-given``   ``hybrid`` on the split as given.
``hybrid-refit``   ``hybrid``, its pick re-trained on all of train + validation for as many
                   weight steps as its kept state had, its decays replayed as the trial learned
                   them (after hyper step k, the decays the trial had after it).
``tpe-share-refit`` ``tpe-share``, its pick re-trained on all of it: ``hybrid-refit``'s control.
``hybrid-plain``   No recipe: per-weight decays from ``--init-decay``, TPE over the learning rate
                   and the width, the split as given, no re-training.
``lamarck``        ``hybrid-plain``, but TPE also samples the initial (global) decay and learns
                   from the geometric mean of the learned decays (``record_refined``).
``hybrid-heldout`` ``hybrid-plain``, but a slice of the validation data (``--heldout-share``) is
                   held out from the hypergradient and is the selection data: the trial's value,
                   early stopping and keep-best read it.
``tpe-refit``      ``tpe``, its pick re-trained on train + validation (the given split).
``hybrid-plain-refit`` ``hybrid-plain``, its pick re-trained on train + validation.
``hybrid-given-refit`` ``hybrid-refit`` on the split as given.
``hybrid-plain-share-refit`` ``hybrid-refit`` without the sampled global decay (from
                   ``--init-decay``).
``hybrid-final-refit`` ``hybrid-refit``, but the re-training fixes the final learned decays from
                   its first step instead of replaying their schedule.
``hybrid-layer``   ``hybrid-refit`` with a decay per weight tensor (``mode="per_layer"``) instead
                   of per weight: few hyperparameters, so little to overfit on validation.
``hybrid-one``     ``hybrid-refit`` with one global decay refined by hypergradient from TPE's
                   sample.
``hybrid-heldout-refit`` ``hybrid-refit`` whose re-split validation data is halved again
                   (``--heldout-share``): one part for the hypergradient, the other, which the
                   learned decays never saw, for selection (value, early stopping, keep-best).

The methods of one seed run one after another in this process, in an order rotated from seed
to seed (``--order``), so a machine shared with other jobs does not favour one method
systematically. Printed: per method the median test accuracy and its inter-quartile range,
the median test loss, paired wins / ties / losses per seed against ``tpe``, and the time to
reach ``tpe``'s final median test accuracy (from per-trial timestamps and the test accuracy of
the best-so-far trial; for a re-training method each best-so-far trial is re-trained after the
study, off its clock, and counts from when its re-training would have ended had the study
stopped after it: :func:`refit_curve`).

Run ``python benchmarks/bench_hybrid.py --help`` for the options; :func:`run` is the harness
(``run(parse_args([...])) -> dict``), :func:`main` adds the printout and the JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from optuna_ift import Neumann
from optuna_ift.data import DATASETS, load_dataset
from optuna_ift.hypergrad import NeumannDivergenceWarning
from optuna_ift.hyperparams import WeightDecay
from optuna_ift.integration import HybridSampler, record_refined
from optuna_ift.trainer import (
    Callback,
    EarlyStopping,
    HyperparameterSchedule,
    HyperTrainer,
    KeepBest,
    accuracy,
    evaluate,
)


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to run the study.

    Attributes:
        sampler: ``"tpe"``, ``"random"`` or ``"hybrid"`` (TPE inside ``HybridSampler``).
        samples_decay: Optuna samples a global decay (fixed, or the learned decays' start).
        learns_decay: A decay per weight is tuned by hypergradient inside the trial.
        lamarck: The trial records the learned decays' geometric mean with ``record_refined``.
        refit: The pick is re-trained on train + validation (weights-only).
        heldout: A share of the validation data is held out from the hypergradient and is the
            selection data (value, early stopping, keep-best).
        val_share: The method re-splits train + validation with this share of validation
            (``--val-share``; the paper's Section 5.6: more validation data when the
            hyperparameters are many, the pick re-trained on all of it); ``False``: the split
            as given.
        final_decays: A re-trained pick with learned decays gets its final decays, fixed from
            the first step; otherwise (``False``) the re-training replays the decays' schedule,
            hyper step by hyper step, as the trial learned them.
        decay_mode: How many decays the hypergradient tunes (``WeightDecay``'s ``mode``):
            ``"per_weight"``, ``"per_layer"`` or ``"global"``.
    """

    sampler: str
    samples_decay: bool
    learns_decay: bool
    lamarck: bool = False
    refit: bool = False
    heldout: bool = False
    val_share: bool = False
    final_decays: bool = False
    decay_mode: str = "per_weight"

    @property
    def mode(self) -> str:
        """The ``WeightDecay`` mode of the trial's model."""
        return self.decay_mode if self.learns_decay else "global"


METHODS: dict[str, Method] = {
    "tpe": Method("tpe", samples_decay=True, learns_decay=False),
    "random": Method("random", samples_decay=True, learns_decay=False),
    "hybrid": Method("hybrid", samples_decay=True, learns_decay=True, val_share=True),
    "tpe-share": Method("tpe", samples_decay=True, learns_decay=False, val_share=True),
    "hybrid-given": Method("hybrid", samples_decay=True, learns_decay=True),
    "hybrid-refit": Method("hybrid", samples_decay=True, learns_decay=True, refit=True,
                           val_share=True),
    "tpe-share-refit": Method("tpe", samples_decay=True, learns_decay=False, refit=True,
                              val_share=True),
    "hybrid-plain": Method("hybrid", samples_decay=False, learns_decay=True),
    "lamarck": Method("hybrid", samples_decay=True, learns_decay=True, lamarck=True),
    "hybrid-heldout": Method("hybrid", samples_decay=False, learns_decay=True, heldout=True),
    "tpe-refit": Method("tpe", samples_decay=True, learns_decay=False, refit=True),
    "hybrid-plain-refit": Method("hybrid", samples_decay=False, learns_decay=True, refit=True),
    "hybrid-given-refit": Method("hybrid", samples_decay=True, learns_decay=True, refit=True),
    "hybrid-plain-share-refit": Method("hybrid", samples_decay=False, learns_decay=True,
                                       refit=True, val_share=True),
    "hybrid-final-refit": Method("hybrid", samples_decay=True, learns_decay=True, refit=True,
                                 val_share=True, final_decays=True),
    "hybrid-layer": Method("hybrid", samples_decay=True, learns_decay=True, refit=True,
                           val_share=True, decay_mode="per_layer"),
    "hybrid-one": Method("hybrid", samples_decay=True, learns_decay=True, refit=True,
                         val_share=True, decay_mode="global"),
    "hybrid-heldout-refit": Method("hybrid", samples_decay=True, learns_decay=True, refit=True,
                                   val_share=True, heldout=True),
}
DEFAULT_METHODS = tuple(list(METHODS)[:8])

#: Default (train, validation, test) sizes; ``None`` is the loader's default (digits: 64/16/20
#: per cent of 1797 images; the torchvision sets: their whole official test set).
DEFAULT_SIZES: dict[str, tuple[int | None, int | None, int | None]] = {
    "digits": (None, None, None),
    "mnist": (2000, 1000, None),
    "fashion-mnist": (2000, 1000, None),
    "cifar10": (2000, 1000, None),
}


# -- data --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Data:
    """Flattened tensors of one seed's split; ``x_val``/``y_val`` is the whole validation set."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def load_data(args: argparse.Namespace, seed: int) -> Data:
    """The split of ``seed``: the same for every method of that seed."""
    n_train, n_val, n_test = (args.train_size, args.val_size, args.test_size)
    kwargs: dict[str, Any] = {"n_train": n_train, "n_val": n_val, "n_test": n_test,
                              "seed": seed}
    if args.val_fraction is not None:
        kwargs["val_fraction"] = args.val_fraction
    if args.dataset != "digits":
        kwargs["root"] = args.data_root
    d = load_dataset(args.dataset, device=args.device, **kwargs)
    return Data(d.name, d.X_train.flatten(1), d.y_train, d.X_val.flatten(1), d.y_val,
                d.X_test.flatten(1), d.y_test, d.num_classes)


def split_heldout(x: torch.Tensor, y: torch.Tensor, share: float, seed: int
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(fit, held_out)``: a random ``share`` of ``(x, y)`` held out, the rest to fit on."""
    n = len(y)
    n_out = min(max(round(share * n), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(y.device)
    keep, out = perm[n_out:], perm[:n_out]
    return (x[keep], y[keep]), (x[out], y[out])


def resplit(data: Data, share: float, seed: int) -> Data:
    """``data`` with train + validation re-split at random into ``1 - share`` / ``share``
    (test untouched); the same for every method of ``seed``."""
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    (x_train, y_train), (x_val, y_val) = split_heldout(x, y, share, seed + 1)
    return dataclasses.replace(data, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


# -- model and losses --------------------------------------------------------------------------


class MLP(nn.Module):
    """``d-width-classes`` with ReLU, and a weight decay (global or per weight) on every tensor."""

    def __init__(self, d: int, width: int, classes: int, *, decay: float, mode: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, classes))
        self.decay = WeightDecay(self.net, mode=mode, init=decay, include_biases=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_loss(model: MLP, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y) + model.decay(model.net)


def ce_loss(model: MLP, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def test_scores(model: nn.Module, data: Data) -> tuple[float, float]:
    """``(test loss, test accuracy)``: recorded, never used for selection."""
    result = evaluate(model, (data.x_test, data.y_test), ce_loss, metric=accuracy)
    return result["loss"], result["metric"]


def trial_seed(seed: int, number: int) -> int:
    return seed * 100_003 + number


def build_model(data: Data, width: int, decay: float, mode: str, seed: int) -> MLP:
    with torch.random.fork_rng(devices=[]):  # seeded init, global state untouched
        torch.manual_seed(seed)
        model = MLP(data.x_train.shape[1], width, data.num_classes, decay=decay, mode=mode)
    return model.to(data.x_train.device)


# -- one trial ---------------------------------------------------------------------------------


class Deadline(Callback):
    """Stops training after the hyper step at which ``perf_counter()`` passes ``at[0]`` (a
    one-element list, so the study can move it while it runs)."""

    def __init__(self, at: list[float]) -> None:
        self.at = at

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if time.perf_counter() >= self.at[0]:
            trainer.stop()


def make_objective(method: Method, data: Data, args: argparse.Namespace, seed: int,
                   kept: dict[int, dict[str, Any]], deadline: list[float] | None = None):
    """The study's objective for ``method``; ``kept[trial.number]`` receives what a re-training
    needs (params, learned decay state, weight steps of the kept state). A trial still training
    at ``deadline[0]`` (``perf_counter`` seconds) stops there and reports its kept state."""
    hyper_steps = max(args.weight_steps // args.inner_steps, 1)
    eval_every = min(args.eval_every, hyper_steps)
    if method.heldout:
        fit_val, selection = split_heldout(data.x_val, data.y_val, args.heldout_share, seed)
    else:
        fit_val = selection = (data.x_val, data.y_val)
    selection_name = "holdout" if method.heldout else "val"

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        width = trial.suggest_int("width", 16, 256, log=True)
        decay = (trial.suggest_float("decay", 1e-6, 1e-1, log=True) if method.samples_decay
                 else args.init_decay)
        tseed = trial_seed(seed, trial.number)
        model = build_model(data, width, decay, method.mode, tseed)
        keep = KeepBest(f"{selection_name}_loss", restore=False)
        schedule = HyperparameterSchedule() if method.learns_decay and method.refit else None
        callbacks: list[Any] = [keep] + ([schedule] if schedule else [])
        if args.patience > 0:
            callbacks.append(EarlyStopping(f"{selection_name}_loss", patience=args.patience))
        if deadline is not None:
            callbacks.append(Deadline(deadline))
        trainer = HyperTrainer(
            model, train_loss=train_loss, val_loss=ce_loss,
            train_data=(data.x_train, data.y_train), val_data=fit_val,
            batch_size=args.batch, val_batch_size=args.batch, val_batches=args.val_batches,
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
            hyper_optimizer=(lambda p: torch.optim.RMSprop(p, lr=args.hyper_lr))
            if method.learns_decay else None,
            solver=Neumann(steps=args.neumann, alpha="auto"), inner_steps=args.inner_steps,
            eval_data={selection_name: selection}, eval_every=eval_every, metric=accuracy,
            callbacks=callbacks, device=data.x_train.device, progress=False, seed=tseed,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NeumannDivergenceWarning)
            trainer.fit(hyper_steps)
            last = trainer.history.evaluations[-1] if trainer.history.evaluations else None
            if last is None or last["weight_step"] != trainer.weight_step:
                trainer.evaluate_all()  # the tail after the last evaluation counts too
        if keep.best_state is not None:
            model.load_state_dict(keep.best_state)
        value = keep.best_record.get(f"{selection_name}_loss", math.inf)
        weight_steps = int(keep.best_record.get("weight_step", trainer.weight_step))
        trial.set_user_attr("weight_steps", weight_steps)
        trial.set_user_attr("trained_weight_steps", trainer.weight_step)
        trial.set_user_attr("selection_accuracy", keep.best_record.get(
            f"{selection_name}_metric", float("nan")))
        if method.learns_decay:
            trial.set_user_attr("neumann_cut_offs", sum(
                issubclass(w.category, NeumannDivergenceWarning) for w in caught))
            trial.set_user_attr("skipped_hyper_steps", trainer.history.skipped)
            log_decays = torch.cat([t.detach().flatten() for t in model.decay.log_decays])
            trial.set_user_attr("mean_log_decay", float(log_decays.mean()))
            if method.lamarck:
                record_refined(trial, "decay", math.exp(float(log_decays.mean())))
        if method.refit:
            kept[trial.number] = {
                "width": width, "lr": lr, "seed": tseed, "weight_steps": weight_steps,
                "decay_state": {k: v.detach().clone()
                                for k, v in model.decay.state_dict().items()},
                "mode": method.mode, "decay": decay,
                "schedule": None if schedule is None or method.final_decays
                else schedule.states,
            }
        test_loss, test_acc = test_scores(model, data)  # recorded only
        trial.set_user_attr("test_loss", test_loss)
        trial.set_user_attr("test_accuracy", test_acc)
        return value if math.isfinite(value) else math.inf

    return objective


def refit(data: Data, pick: dict[str, Any], args: argparse.Namespace) -> tuple[float, float]:
    """Re-train the pick's architecture on train + validation (weights-only) for the weight
    steps its kept state had, its decays replayed as the trial learned them (``schedule``) or
    fixed at their final values; returns ``(test loss, test accuracy)``."""
    schedule = pick.get("schedule")
    model = build_model(data, pick["width"], pick["decay"], pick["mode"], pick["seed"])
    if not schedule:
        model.decay.load_state_dict(pick["decay_state"])
    lr = pick["lr"]
    trainer = HyperTrainer(
        model, train_loss=train_loss,
        train_data=(torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val])),
        batch_size=args.batch, weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        hyper_optimizer=None, inner_steps=args.inner_steps, device=data.x_train.device,
        callbacks=[HyperparameterSchedule(schedule)] if schedule else [],
        progress=False, seed=pick["seed"],
    )
    trainer.fit(max(math.ceil(pick["weight_steps"] / args.inner_steps), 1))
    return test_scores(model, data)


# -- one study ---------------------------------------------------------------------------------


def select_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The trial a method picks: the lowest value (its own selection loss) among the complete
    trials, ties to the earlier one. Only ``state``, ``value`` and ``number`` are read."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return min(complete, key=lambda t: (t.value, t.number), default=None)


def make_sampler(method: Method, args: argparse.Namespace, seed: int
                 ) -> optuna.samplers.BaseSampler:
    if method.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.startup)
    return HybridSampler(tpe) if method.sampler == "hybrid" else tpe


def run_method(name: str, data: Data, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One study of ``name`` on ``data`` within the budget; the pick's test scores and the
    best-so-far curve (time since the start, trial, value, test accuracy)."""
    method = METHODS[name]
    if method.val_share:
        data = resplit(data, args.val_share, seed)
    kept: dict[int, dict[str, Any]] = {}
    deadline = [math.inf]
    objective = make_objective(method, data, args, seed, kept, deadline)
    study = optuna.create_study(sampler=make_sampler(method, args, seed))
    start = time.perf_counter()
    deadline[0] = start + args.budget_s
    durations: list[float] = []
    ends: list[float] = []
    curve: list[dict[str, Any]] = []
    trial_started = [start]

    def record(study: optuna.Study, trial: FrozenTrial) -> None:
        now = time.perf_counter()
        durations.append(now - trial_started[0])
        ends.append(now - start)
        trial_started[0] = now
        best = select_trial(study.get_trials(deepcopy=False))
        if best is not None and (not curve or curve[-1]["trial"] != best.number):
            curve.append({"t": now - start, "trial": best.number, "value": best.value,
                          "test_accuracy": best.user_attrs["test_accuracy"]})
        best_so_far = {p["trial"] for p in curve}
        for number in [k for k in kept if k not in best_so_far]:
            del kept[number]  # what re-training needs is kept for the best-so-far trials only
        if method.refit and best is not None:
            # A re-training method keeps back the time its pick's re-training will take: at
            # most what the trial took for the weight steps of its kept state.
            took = durations[best.number]  # one entry per finished trial, in number order
            share = best.user_attrs["weight_steps"] / max(
                best.user_attrs["trained_weight_steps"], 1)
            deadline[0] = start + args.budget_s - took * min(share, 1.0)
        if now >= deadline[0]:
            study.stop()
        if args.max_trials and len(study.trials) >= args.max_trials:
            study.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, timeout=args.budget_s, callbacks=[record],
                       catch=(RuntimeError, ValueError))
    study_s = time.perf_counter() - start
    pick = select_trial(study.trials)
    out: dict[str, Any] = {
        "trials": len(study.trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in study.trials),
        "study_s": study_s,
        "max_trial_s": max(durations, default=0.0),
        "curve": curve,
        "trial_values": [t.value for t in study.trials],
        "trial_end_s": ends,
    }
    if pick is None:
        return {**out, "elapsed_s": study_s, "test_accuracy": float("nan"),
                "test_loss": float("nan"), "best_at_s": float("nan"), "selected_trial": None,
                "selected_params": None, "val_loss": float("nan")}
    test_loss = pick.user_attrs["test_loss"]
    test_acc = pick.user_attrs["test_accuracy"]
    refit_s = 0.0
    if method.refit:
        t0 = time.perf_counter()
        test_loss, test_acc = refit(data, kept[pick.number], args)
        refit_s = time.perf_counter() - t0
    best_at = next(p["t"] for p in curve if p["trial"] == pick.number)
    elapsed = time.perf_counter() - start
    if method.refit:
        out["curve"] = refit_curve(curve, data, kept, args, pick.number,
                                   (test_loss, test_acc, refit_s))
    return {**out, "elapsed_s": elapsed, "refit_s": refit_s,
            "test_accuracy": test_acc, "test_loss": test_loss, "best_at_s": best_at,
            "selected_trial": pick.number, "selected_params": pick.params,
            "val_loss": pick.value, "trial_test_accuracy": pick.user_attrs["test_accuracy"],
            "selected_user_attrs": {k: v for k, v in pick.user_attrs.items()
                                    if not k.startswith("ift:")}}


def refit_curve(curve: list[dict[str, Any]], data: Data, kept: dict[int, dict[str, Any]],
                args: argparse.Namespace, pick: int, pick_refit: tuple[float, float, float]
                ) -> list[dict[str, Any]]:
    """A re-training method's anytime curve: had the study stopped after a best-so-far trial,
    its result would have been that trial re-trained, there once the re-training ended. Each
    point's trial is re-trained after the study, off its clock, and the point moves by the time
    that took (the pick's re-training is the one the method did); ``trial_test_accuracy`` keeps
    the trial's own model's accuracy."""
    out = []
    for p in curve:
        loss, acc, took = pick_refit if p["trial"] == pick else timed_refit(data, kept[p["trial"]],
                                                                             args)
        out.append({**p, "t": p["t"] + took, "test_accuracy": acc, "test_loss": loss,
                    "trial_test_accuracy": p["test_accuracy"], "refit": True})
    return out


def timed_refit(data: Data, pick: dict[str, Any], args: argparse.Namespace
                ) -> tuple[float, float, float]:
    """``refit`` and the seconds it took: ``(test loss, test accuracy, seconds)``."""
    t0 = time.perf_counter()
    loss, acc = refit(data, pick, args)
    return loss, acc, time.perf_counter() - t0


# -- summary -----------------------------------------------------------------------------------


def time_to_reach(curve: Sequence[dict[str, Any]], target: float) -> float | None:
    """The first time the best-so-far trial's test accuracy is at least ``target``."""
    return next((p["t"] for p in curve if p["test_accuracy"] >= target), None)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.nanpercentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def summarise(methods: dict[str, dict[str, list]], budget_s: float) -> dict[str, Any]:
    """Medians, quartiles, paired results against ``tpe`` and times to ``tpe``'s median."""
    tpe = methods.get("tpe")
    target = quartiles(tpe["test_accuracy"])[1] if tpe else None
    times: dict[str, list[float | None]] = {}
    if target is not None:
        for name, r in methods.items():
            times[name] = [time_to_reach(c, target) for c in r["curves"]]
    tpe_time = _median_time(times["tpe"]) if tpe else None
    summary: dict[str, Any] = {"target_test_accuracy": target, "methods": {}}
    for name, r in methods.items():
        q25, med, q75 = quartiles(r["test_accuracy"])
        row: dict[str, Any] = {"median_test_accuracy": med, "iqr_test_accuracy": [q25, q75],
                               "median_test_loss": quartiles(r["test_loss"])[1],
                               "median_trials": statistics.median(r["trials"])}
        if tpe and name != "tpe":
            pairs = list(zip(r["test_accuracy"], tpe["test_accuracy"]))
            row["vs_tpe"] = {"wins": sum(a > b for a, b in pairs),
                             "ties": sum(a == b for a, b in pairs),
                             "losses": sum(a < b for a, b in pairs)}
        if target is not None:
            t = _median_time(times[name])
            row["time_to_target_s"] = times[name]
            row["median_time_to_target_s"] = t
            row["median_time_to_target_over_budget"] = None if t is None else t / budget_s
            row["median_time_to_target_over_tpe"] = (
                None if t is None or not tpe_time else t / tpe_time)
        summary["methods"][name] = row
    return summary


def _median_time(times: Sequence[float | None]) -> float | None:
    """The time by which at least half of the seeds had reached the target (the lower median,
    a seed that never reached it counting as infinitely late); ``None``: half never did."""
    if not times:
        return None
    t = statistics.median_low(math.inf if x is None else x for x in times)
    return None if math.isinf(t) else t


def format_summary(summary: dict[str, Any], seeds: int) -> str:
    target = summary["target_test_accuracy"]
    header = (f"{'method':20s} {'median acc':>10s} {'IQR':>15s} {'test loss':>9s} "
              f"{'trials':>6s} {'vs tpe W/T/L':>12s} {'t(tpe median) s':>16s}")
    lines = [header]
    for name, row in summary["methods"].items():
        q25, q75 = row["iqr_test_accuracy"]
        wtl = "-" if "vs_tpe" not in row else "{wins}/{ties}/{losses}".format(**row["vs_tpe"])
        if target is None:
            reach = "-"
        else:
            reached = sum(t is not None for t in row["time_to_target_s"])
            t = row["median_time_to_target_s"]
            reach = f"{'never' if t is None else f'{t:.1f}'} ({reached}/{seeds})"
        lines.append(f"{name:20s} {row['median_test_accuracy']:10.4f} "
                     f"{f'{q25:.4f}-{q75:.4f}':>15s} {row['median_test_loss']:9.4f} "
                     f"{row['median_trials']:6.0f} {wtl:>12s} {reach:>16s}")
    if target is not None:
        lines.append(f"t(tpe median): seconds until the best-so-far trial reached tpe's final "
                     f"median test accuracy {target:.4f}, by which at least half the seeds had "
                     f"it ('never': half never did); in brackets the seeds that reached it")
    return "\n".join(lines)


# -- the harness -------------------------------------------------------------------------------

PER_SEED = ("test_accuracy", "test_loss", "best_at_s", "val_loss", "elapsed_s", "study_s",
            "max_trial_s", "trials", "selected_trial", "selected_params")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every method on every seed; ``{"methods": {name: {key: [one per seed]}}, "summary":
    ..., "config": ..., "data": ...}``."""
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    methods = {name: {**{k: [] for k in PER_SEED}, "curves": [], "runs": []}
               for name in args.methods}
    sizes = []
    for k in range(args.seeds):
        seed = args.seed + k
        data = load_data(args, seed)
        sizes.append(data.sizes())
        if k == 0:
            warm_up(data, args)
        shift = k if args.order == "rotate" else 0
        order = args.methods[shift % len(args.methods):] + args.methods[:shift % len(args.methods)]
        for name in order:
            r = run_method(name, data, args, seed)
            for key in PER_SEED:
                methods[name][key].append(r[key])
            methods[name]["curves"].append(r["curve"])
            methods[name]["runs"].append(r)
            if args.verbose:
                print(f"  seed {seed} {name:20s} {r['trials']:4d} trials, test acc "
                      f"{r['test_accuracy']:.4f}, {r['elapsed_s']:.1f} s", flush=True)
    return {
        "methods": methods,
        "summary": summarise(methods, args.budget_s),
        "data": {"name": args.dataset, "sizes": sizes},
        "config": {**{k: v for k, v in vars(args).items()}, "torch": torch.__version__,
                   "optuna": optuna.__version__, "python": platform.python_version(),
                   "machine": platform.machine(),
                   "curve_test_accuracy": "the best-so-far trial's own model; for a re-training "
                   "method that trial re-trained, at the time its re-training would have ended "
                   "had the study stopped after it (refit: true)"},
    }


def warm_up(data: Data, args: argparse.Namespace) -> None:
    """A few untimed steps of each kind of trainer, so the first timed study does not pay for
    the first calls (allocator, autograd, kernel selection)."""
    small = argparse.Namespace(**{**vars(args), "weight_steps": 2 * args.inner_steps,
                                  "eval_every": 1, "patience": 0})
    for name in ("tpe", "hybrid-heldout"):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(make_objective(METHODS[name], data, small, 0, {}), n_trials=1,
                       catch=(RuntimeError, ValueError))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-root", default=None,
                   help="folder in torchvision's layout (MNIST/raw, ...); not for digits")
    p.add_argument("--seeds", type=int, default=5, help="seeds (splits) per method")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--budget-s", type=float, default=150.0,
                   help="wall-clock seconds per method and seed")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--order", choices=("rotate", "fixed"), default="rotate",
                   help="method order within a seed: rotated from seed to seed, or as given")
    p.add_argument("--train-size", type=int, default=None,
                   help="training examples (default per data set: digits all, others 2000)")
    p.add_argument("--val-size", type=int, default=None,
                   help="validation examples (default: digits 16%%, others 1000)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="validation share of the training pool, when --val-size is not given")
    p.add_argument("--test-size", type=int, default=None,
                   help="test examples (default: digits 20%%, others the whole test set)")
    p.add_argument("--weight-steps", type=int, default=2000,
                   help="weight steps per trial at most, every method")
    p.add_argument("--max-trials", type=int, default=0,
                   help="also stop a study after this many trials (0: the budget alone)")
    p.add_argument("--inner-steps", type=int, default=10, help="weight steps per hyper step (N)")
    p.add_argument("--eval-every", type=int, default=5, help="hyper steps between evaluations")
    p.add_argument("--patience", type=int, default=5,
                   help="evaluations without improvement before early stopping (0: off)")
    p.add_argument("--neumann", type=int, default=1, help="Neumann steps i (project default 1)")
    p.add_argument("--val-batches", type=int, default=1,
                   help="validation batches per hypergradient")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hyper-lr", type=float, default=3e-2,
                   help="RMSprop learning rate of the log decays")
    p.add_argument("--init-decay", type=float, default=1e-4,
                   help="initial per-weight decay of the hybrid-plain* methods and hybrid-heldout")
    p.add_argument("--heldout-share", type=float, default=0.5,
                   help="share of the validation data that the *heldout* methods hold out")
    p.add_argument("--val-share", type=float, default=0.5,
                   help="validation share of train + validation for hybrid, hybrid-refit and the "
                   "*share* methods")
    p.add_argument("--startup", type=int, default=5, help="TPE's random trials")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--quiet", dest="verbose", action="store_false",
                   help="no line per method and seed")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods or len(set(args.methods)) != len(args.methods):
        p.error(f"--methods must name some of {', '.join(METHODS)} once each, got "
                f"{','.join(args.methods)!r}")
    if args.dataset != "digits" and not args.data_root:
        p.error(f"--dataset {args.dataset} needs --data-root (a folder in torchvision's layout)")
    if args.seeds < 1 or args.budget_s <= 0 or args.weight_steps < 1:
        p.error("--seeds, --budget-s and --weight-steps must be positive")
    for name in ("heldout_share", "val_share"):
        if not 0 < getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(args, name)}")
    defaults = DEFAULT_SIZES[args.dataset]
    if args.train_size is None:
        args.train_size = defaults[0]
    if args.val_size is None and args.val_fraction is None:
        args.val_size = defaults[1]
    if args.test_size is None:
        args.test_size = defaults[2]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    print(f"{args.dataset}: {args.seeds} seeds x {len(args.methods)} methods, "
          f"{args.budget_s:g} s and at most {args.weight_steps} weight steps per trial each; "
          f"torch threads {args.threads}", flush=True)
    out = run(args)
    sizes = out["data"]["sizes"][0]
    print(f"\nsplit sizes (seed {args.seed}): train {sizes['train']}, val {sizes['val']}, "
          f"test {sizes['test']}")
    print(format_summary(out["summary"], args.seeds))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite(out), indent=2, allow_nan=False,
                                              default=str))
        print(f"\nwrote {args.json}")
    return out


def finite(value: Any) -> Any:
    """``value`` for strict JSON: non-finite floats (a diverged trial's value) become ``None``."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    main()
