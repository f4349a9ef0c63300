"""Table 4 and Fig. 8 of the paper at small scale: an LSTM language model on Penn Treebank.

:func:`lstm` trains the same AWD-style model (:class:`LSTMLanguageModel`) four ways on the same
number of training tokens and reports validation and test perplexity next to wall-clock time:

- ``none``: the seven regularisers fixed at their initial values;
- ``ift-7``: the seven tuned jointly with the weights by implicit hypergradients
  (:class:`~optuna_ift.HyperTrainer`, Neumann inverse);
- ``ift-many``: a rate per word, unit and hidden-to-hidden weight, tuned the same way;
- ``ift-many-from-7``: the same, started from the seven values ``ift-7`` learned (many
  hyperparameters refining few tuned first, the hybrid's recipe; its time adds to ``ift-7``'s);
- ``tpe``: an Optuna TPE study over the seven (each trial trains with fixed values), given
  the wall-clock time ``ift-7`` took.

:func:`lstm_overfit` is Fig. 8: ten training and ten validation sequences and a weight decay
per weight; the decays drive the validation loss towards zero.

Sequences are consecutive, non-overlapping chunks of ``seq_len`` tokens, drawn in random
order, and each starts from a zero state (the trainer samples mini-batches of rows; a hidden
state is not carried between batches). Perplexity is ``exp`` of the mean cross-entropy over
every chunk of the validation or test text.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError
from optuna_ift._validation import check_int as _check_int
from optuna_ift._validation import check_positive as _check_positive
from optuna_ift.data import Corpus, load_ptb
from optuna_ift.experiments._common import (
    BarCallback,
    count_warnings,
    progress,
    write_results,
)
from optuna_ift.experiments._lm import (
    DEFAULT_INIT,
    DROPOUTS,
    REGULARIZERS,
    LSTMLanguageModel,
    lm_train_loss,
    lm_val_loss,
)
from optuna_ift.hypergrad import Neumann, NeumannDivergenceWarning
from optuna_ift.hyperparams import WeightDecay, split_parameters
from optuna_ift.trainer import Callback, HyperTrainer, evaluate, resolve_device

__all__ = ["DEFAULT_LSTM_METHODS", "LSTM_METHODS", "lstm", "lstm_overfit", "perplexity"]

_logger = logging.getLogger(__name__)

#: The methods :func:`lstm` can run.
LSTM_METHODS = ("none", "ift-7", "ift-many", "ift-many-from-7", "tpe")
#: Those it runs by default (Table 4's four).
DEFAULT_LSTM_METHODS = ("none", "ift-7", "ift-many", "tpe")
_OPTIMIZERS = ("adam", "sgd")
_QUANTILES = (0.1, 0.5, 0.9)


def perplexity(model: nn.Module, data: tuple[Tensor, Tensor], *, batch_size: int = 64) -> float:
    """``exp`` of the mean next-word cross-entropy of ``model`` (in eval mode) over
    ``data = (inputs, targets)``."""
    return math.exp(evaluate(model, data, lm_val_loss, batch_size=batch_size)["loss"])


def _optimizer_factory(name: str, lr: float
                       ) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    if name == "adam":
        return lambda params: torch.optim.Adam(params, lr=lr)
    return lambda params: torch.optim.SGD(params, lr=lr)


class _Run:
    """The clock, token count and learning curve of one training run."""

    def __init__(self, evaluate: Callable[[], float], tokens_per_step: int) -> None:
        self.evaluate = evaluate
        self.tokens_per_step = tokens_per_step
        self.start = time.perf_counter()
        self.curve: list[dict[str, float]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def record(self, weight_step: int, **extra: float) -> dict[str, float]:
        point = {"seconds": self.elapsed(), "weight_step": weight_step,
                 "tokens": weight_step * self.tokens_per_step, "val_ppl": self.evaluate(),
                 **extra}
        self.curve.append(point)
        return point


class _Track(Callback):
    """The learning curve of a run: evaluates after every ``every`` hyper steps and the last,
    logs the regularisers; stops the run when ``should_stop(point)`` says so after an
    evaluation, or after the weight step that passes ``deadline`` seconds."""

    def __init__(self, run: _Run, every: int, last: int, *,
                 should_stop: Callable[[dict[str, float]], bool] | None = None,
                 deadline: float | None = None) -> None:
        self.run, self.every, self.last = run, every, last
        self.should_stop, self.deadline = should_stop, deadline
        self.finished = True
        self.regularizers: list[dict[str, Any]] = []

    def on_weight_step(self, trainer: HyperTrainer, loss: Tensor) -> None:
        if self.deadline is not None and self.run.elapsed() > self.deadline:
            if not self.run.curve or self.run.curve[-1]["weight_step"] != trainer.weight_step:
                self.run.record(trainer.weight_step, hyper_step=trainer.hyper_step,
                                skipped=trainer.history.skipped)
            self.finished = False
            trainer.stop()

    def on_hyper_step(self, trainer: HyperTrainer, record: dict[str, float]) -> None:
        if trainer.hyper_step % self.every and trainer.hyper_step != self.last:
            return
        point = self.run.record(trainer.weight_step, hyper_step=trainer.hyper_step,
                                skipped=trainer.history.skipped)
        self.regularizers.append({"seconds": self.run.elapsed(),
                                  "hyper_step": trainer.hyper_step,
                                  **_summarise(trainer.model)})
        if self.should_stop is not None and self.should_stop(point):
            self.finished = False
            trainer.stop()


def _summarise(model: LSTMLanguageModel) -> dict[str, Any]:
    """Each regulariser's value (one of each), or its mean and quantiles (many)."""
    out: dict[str, Any] = {}
    for name, values in model.regularizers().items():
        values = values.double().cpu().reshape(-1)
        if values.numel() == 1:
            out[name] = float(values)
        else:
            out[name] = {"mean": float(values.mean()),
                         **{f"q{int(q * 100)}": float(values.quantile(q)) for q in _QUANTILES}}
    return out


def _final(model: nn.Module, run: _Run, sets: dict[str, tuple[Tensor, Tensor]],
           tokens: int) -> dict[str, Any]:
    seconds = run.elapsed()
    return {"val_ppl": perplexity(model, sets["valid"]),
            "test_ppl": perplexity(model, sets["test"]), "seconds": seconds,
            "train_tokens": tokens, "curve": run.curve}


def _count(model: nn.Module) -> tuple[int, int]:
    weights, hyper = split_parameters(model)
    return sum(w.numel() for w in weights), sum(h.numel() for h in hyper)


def _tpe(*, budget: float, make_model: Callable, train_one: Callable, sets: dict,
         seed: int) -> dict[str, Any]:
    """A TPE study over the seven regularisers, stopped when ``budget`` seconds are spent."""
    import optuna

    start = time.perf_counter()
    trials: list[dict[str, Any]] = []
    best_curve: list[dict[str, float]] = []

    def objective(trial: optuna.Trial) -> float:
        values = {name: trial.suggest_float(name, 0.01, 0.8) for name in DROPOUTS}
        values |= {name: trial.suggest_float(name, 1e-2, 10.0, log=True)
                   for name in ("ar", "tar")}
        model = make_model("7", values)
        offset = time.perf_counter() - start

        def should_stop(point: dict[str, float]) -> bool:
            trial.report(point["val_ppl"], int(point["weight_step"]))
            return trial.should_prune()

        run, finished = train_one(model, should_stop=should_stop, deadline=budget - offset)
        cut = not finished and start + budget <= time.perf_counter()
        val = run.curve[-1]["val_ppl"]
        record = {"number": trial.number, "params": values, "val_ppl": val,
                  "test_ppl": perplexity(model, sets["test"]),
                  "state": "cut" if cut else ("pruned" if not finished else "complete"),
                  "tokens": run.curve[-1]["tokens"], "seconds": run.elapsed()}
        trials.append(record)
        for point in run.curve:
            best = min(best_curve[-1]["val_ppl"], point["val_ppl"]) if best_curve else point[
                "val_ppl"]
            best_curve.append({"seconds": offset + point["seconds"], "val_ppl": best})
        if not finished and not cut:
            raise optuna.TrialPruned()
        return val

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    study.optimize(objective, timeout=budget, show_progress_bar=False)
    best = min(trials, key=lambda t: t["val_ppl"])
    return {"val_ppl": best["val_ppl"], "test_ppl": best["test_ppl"],
            "seconds": time.perf_counter() - start, "best_params": best["params"],
            "best_state": best["state"], "n_trials": len(trials),
            "n_complete": sum(t["state"] == "complete" for t in trials),
            "trials": trials, "curve": best_curve}


def lstm(
    *,
    data_root: str | Path,
    out: str | Path | None = "runs/lstm",
    methods: Sequence[str] = DEFAULT_LSTM_METHODS,
    hidden_size: int = 200,
    num_layers: int = 2,
    seq_len: int = 35,
    batch_size: int = 20,
    epochs: float = 10.0,
    max_train_tokens: int | None = 100_000,
    optimizer: str = "adam",
    lr: float = 5e-3,
    clip: float = 0.25,
    hyper_lr: float = 0.03,
    inner_steps: int = 20,
    neumann_steps: int = 5,
    evaluations: int = 10,
    init: dict[str, float] | None = None,
    seed: int = 0,
    device: str = "auto",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Table 4 at small scale: no tuning, IFT on 7 and on many, and TPE, on the same tokens.

    The CPU default (2 layers of 200 units, 300,000 training tokens, one epoch) runs in about
    half an hour on 2 cores. The paper's size: ``hidden_size=650, seq_len=70, batch_size=40,
    optimizer="sgd", lr=30, clip=0.25, hyper_lr=1e-3, max_train_tokens=None`` and many epochs.

    Args:
        data_root: Folder of ``train.txt``, ``valid.txt``, ``test.txt`` (Penn Treebank).
        out: Folder for ``results.json`` and the figures (``None``: write nothing).
        methods: Any of ``"none"``, ``"ift-7"``, ``"ift-many"``, ``"ift-many-from-7"``,
            ``"tpe"``; ``"tpe"`` gets the wall-clock time of ``"ift-7"`` and
            ``"ift-many-from-7"`` starts from its learned values (so both need it).
        hidden_size: LSTM units per layer (= embedding size; the embedding is tied).
        num_layers: LSTM layers.
        seq_len: Tokens per training sequence.
        batch_size: Sequences per mini-batch.
        epochs: Passes over the training tokens; every method sees the same number of tokens
            in its weight steps.
        max_train_tokens: Train on the first this many tokens of ``train.txt`` (``None``: all).
            The default is small enough that regularisation matters within the budget.
        optimizer: Weight optimizer, ``"adam"`` or ``"sgd"``.
        lr: Its learning rate.
        clip: Gradient-norm clipping of the weights.
        hyper_lr: Adam learning rate of the hyperparameters (rate logits, log coefficients).
        inner_steps: Weight steps per hyper step (N).
        neumann_steps: Neumann terms of each hypergradient (i).
        evaluations: Validation evaluations per run (the learning curves).
        init: Initial value of each regulariser (see :class:`LSTMLanguageModel`); the
            ``"none"`` method keeps them.
        seed: Seed of the initial weights, the batches and the dropout masks.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ...
        show_progress: Show progress bars.

    Returns:
        ``{"table": {method: {val_ppl, test_ppl, seconds, hyperparameters, ...}}, ...}``,
        also written to ``out/results.json``.
    """
    methods = _check_methods(methods)
    for name, value in (("epochs", epochs), ("lr", lr), ("clip", clip), ("hyper_lr", hyper_lr)):
        _check_positive(name, value)
    for name, value, low in (("hidden_size", hidden_size, 1), ("num_layers", num_layers, 1),
                             ("seq_len", seq_len, 2), ("batch_size", batch_size, 1),
                             ("inner_steps", inner_steps, 1), ("neumann_steps", neumann_steps, 0),
                             ("evaluations", evaluations, 1), ("seed", seed, 0)):
        _check_int(name, value, low)
    if max_train_tokens is not None:
        _check_int("max_train_tokens", max_train_tokens, 1)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    dev = resolve_device(device)
    corpus = load_ptb(data_root, max_train_tokens=max_train_tokens, device=dev)
    train = corpus.sequences("train", seq_len)
    sets = {"valid": corpus.sequences("valid", seq_len), "test": corpus.sequences("test", seq_len)}
    asked = int(round(epochs * train[0].shape[0] / batch_size))
    if asked < inner_steps:
        raise ValueError(f"epochs={epochs:g} gives {asked} weight steps of {batch_size} "
                         f"sequences, fewer than inner_steps={inner_steps}: raise epochs (or "
                         f"lower inner_steps or batch_size)")
    weight_steps = asked - asked % inner_steps
    hyper_steps = weight_steps // inner_steps
    eval_hyper = max(1, hyper_steps // evaluations)
    tokens = weight_steps * batch_size * seq_len
    factory = _optimizer_factory(optimizer, lr)
    init = dict(init or {})

    def make_model(variant: str, values: dict[str, float]) -> LSTMLanguageModel:
        torch.manual_seed(seed)  # the same initial weights for every method
        generator = torch.Generator(dev).manual_seed(seed + 1)
        model = LSTMLanguageModel(corpus.vocab_size, hidden_size=hidden_size,
                                  num_layers=num_layers, hyperparameters=variant, init=values,
                                  generator=generator)
        return model.to(dev)

    def fit(model: LSTMLanguageModel, *, tune: bool, should_stop=None, deadline=None,
              desc: str = "weight steps") -> tuple[_Run, _Track, HyperTrainer, int]:
        """Joint training (``tune``), or the weights alone with the regularisers fixed;
        returns the run, its tracker, the trainer and the Neumann series cut off."""
        run = _Run(lambda: perplexity(model, sets["valid"]), batch_size * seq_len)
        track = _Track(run, eval_hyper, hyper_steps, should_stop=should_stop, deadline=deadline)
        track.regularizers.append({"seconds": 0.0, "hyper_step": 0, **_summarise(model)})
        with progress(total=weight_steps, desc=desc, enable=show_progress) as bar:
            trainer = HyperTrainer(
                model, train_loss=lm_train_loss, val_loss=lm_val_loss, train_data=train,
                val_data=sets["valid"], batch_size=batch_size, weight_optimizer=factory,
                hyper_optimizer=(lambda p: torch.optim.Adam(p, lr=hyper_lr)) if tune else None,
                solver=Neumann(steps=neumann_steps, alpha="auto"), inner_steps=inner_steps,
                clip_grad_norm=clip, device=dev,
                callbacks=[BarCallback(bar, inner_steps), track], progress=False, seed=seed)
            with count_warnings(NeumannDivergenceWarning) as cut:
                trainer.fit(hyper_steps)
        return run, track, trainer, cut.value

    def train_one(model, *, should_stop=None, deadline=None) -> tuple[_Run, bool]:
        run, track, _, _ = fit(model, tune=False, should_stop=should_stop, deadline=deadline)
        return run, track.finished

    table: dict[str, dict[str, Any]] = {}
    learned: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        _logger.info("lstm: %s", method)
        if method == "tpe":
            result = _tpe(budget=table["ift-7"]["seconds"], make_model=make_model,
                          train_one=train_one, sets=sets, seed=seed)
            result["hyperparameters"] = len(REGULARIZERS)
            table[method] = result
            continue
        variant = {"none": "7", "ift-7": "7", "ift-many": "many", "ift-many-from-7": "many"}[method]
        start = table["ift-7"]["final"] if method == "ift-many-from-7" else init
        model = make_model(variant, start)
        n_weights, n_hyper = _count(model)
        run, track, trainer, cut = fit(model, tune=method != "none",
                                       desc=f"{method} weight steps")
        table[method] = _final(model, run, sets, tokens) | {"hyperparameters": 0}
        if method != "none":
            learned[method] = track.regularizers
            table[method] |= {
                "hyperparameters": n_hyper, "skipped": trainer.history.skipped,
                "neumann_cut_off": cut, "hyper_steps": hyper_steps,
                "alpha_refreshes": trainer.alpha_refreshes, "final": _summarise(model)}
        table[method]["weights"] = n_weights
    results = {
        "table": table, "learned": learned,
        "config": {"hidden_size": hidden_size, "num_layers": num_layers, "seq_len": seq_len,
                   "batch_size": batch_size, "epochs": epochs, "train_tokens": tokens,
                   "max_train_tokens": max_train_tokens, "optimizer": optimizer, "lr": lr,
                   "clip": clip, "hyper_lr": hyper_lr, "inner_steps": inner_steps,
                   "neumann_steps": neumann_steps, "weight_steps": weight_steps,
                   "init": DEFAULT_INIT | init,
                   "seed": seed, "device": str(dev), "vocab_size": corpus.vocab_size},
    }
    for method, row in table.items():
        results[f"{method}_val_ppl"] = row["val_ppl"]
        results[f"{method}_test_ppl"] = row["test_ppl"]
        results[f"{method}_seconds"] = row["seconds"]
    if out is not None:
        from optuna_ift.plots import plot_lstm_curves, plot_lstm_rates

        write_results(out, results)
        plot_lstm_curves(table, Path(out) / "lstm_val_ppl.png")
        if learned:
            plot_lstm_rates(learned, Path(out) / "lstm_rates.png")
    return results


def _check_methods(methods: Any) -> tuple[str, ...]:
    allowed = ", ".join(map(repr, LSTM_METHODS))
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence):
        raise ArgumentKindError(f"methods must be distinct names from {allowed}, got "
                                f"{type(methods).__name__} {methods!r:.60}")
    if not methods or any(m not in LSTM_METHODS for m in methods) or len(
        set(methods)
    ) != len(methods):
        raise ValueError(f"methods must be distinct names from {allowed}, got {methods!r}")
    if "tpe" in methods and "ift-7" not in methods:
        raise ValueError("methods: 'tpe' gets the wall-clock time of 'ift-7', so it needs it")
    if "ift-many-from-7" in methods and "ift-7" not in methods:
        raise ValueError("methods: 'ift-many-from-7' starts from the values 'ift-7' learned, "
                         "so it needs it")
    return tuple(sorted(methods, key=LSTM_METHODS.index))


class _DecayedLM(nn.Module):
    """A plain LSTM language model with one weight decay per weight."""

    def __init__(self, net: LSTMLanguageModel, init_decay: float) -> None:
        super().__init__()
        self.net = net
        self.decay = WeightDecay(net, mode="per_weight", init=init_decay, include_biases=True)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)


def _decayed_loss(model: _DecayedLM, batch: tuple[Tensor, ...]) -> Tensor:
    return lm_val_loss(model, batch) + model.decay(model.net)


def lstm_overfit(
    *,
    data_root: str | Path,
    out: str | Path | None = "runs/lstm-overfit",
    n_sequences: int = 10,
    hidden_size: int = 200,
    num_layers: int = 2,
    seq_len: int = 35,
    hyper_steps: int = 200,
    inner_steps: int = 10,
    neumann_steps: int = 5,
    lr: float = 3e-3,
    hyper_lr: float = 0.1,
    init_decay: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fig. 8: fit ``n_sequences`` validation sequences with a weight decay per weight.

    The weights train on the first ``n_sequences`` training sequences (Adam, full batch), the
    log-decays (one per weight and bias, Adam at ``hyper_lr``) on the first ``n_sequences``
    validation sequences. The training and validation loss of each hyper step are recorded,
    with the validation loss before training (``start_val_loss``) and after it.

    How far the validation loss can fall is limited by the words of the validation sequences
    that never occur in the training sequences (on Penn Treebank's first ten of each, 56 % of
    the validation targets): the training loss only ever pushes their probability down, and a
    decay can scale a weight but not give it information the training data lacks.
    """
    for name, value, low in (("n_sequences", n_sequences, 1), ("hidden_size", hidden_size, 1),
                             ("num_layers", num_layers, 1), ("seq_len", seq_len, 2),
                             ("hyper_steps", hyper_steps, 1), ("inner_steps", inner_steps, 1),
                             ("neumann_steps", neumann_steps, 0), ("seed", seed, 0)):
        _check_int(name, value, low)
    for name, value in (("lr", lr), ("hyper_lr", hyper_lr), ("init_decay", init_decay)):
        _check_positive(name, value)
    dev = resolve_device(device)
    corpus = load_ptb(data_root, device=dev)
    return _overfit_corpus(corpus, out=out, n_sequences=n_sequences, hidden_size=hidden_size,
                           num_layers=num_layers, seq_len=seq_len, hyper_steps=hyper_steps,
                           inner_steps=inner_steps, neumann_steps=neumann_steps, lr=lr,
                           hyper_lr=hyper_lr, init_decay=init_decay, seed=seed, device=dev,
                           show_progress=show_progress)


def _overfit_corpus(corpus: Corpus, *, out, n_sequences, hidden_size, num_layers, seq_len,
                    hyper_steps, inner_steps, neumann_steps, lr, hyper_lr, init_decay, seed,
                    device, show_progress) -> dict[str, Any]:
    train = corpus.sequences("train", seq_len, max_sequences=n_sequences)
    val = corpus.sequences("valid", seq_len, max_sequences=n_sequences)
    torch.manual_seed(seed)
    net = LSTMLanguageModel(corpus.vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                            hyperparameters="none")
    model = _DecayedLM(net, init_decay).to(device)
    start = time.perf_counter()
    with progress(total=hyper_steps, desc="hyper steps", enable=show_progress) as bar:
        trainer = HyperTrainer(
            model, train_loss=_decayed_loss, val_loss=lm_val_loss, train_data=train,
            val_data=val, batch_size=n_sequences,
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
            hyper_optimizer=lambda p: torch.optim.Adam(p, lr=hyper_lr),
            solver=Neumann(steps=neumann_steps, alpha="auto"), inner_steps=inner_steps,
            alpha_every=10, device=device, callbacks=[BarCallback(bar)], progress=False,
            seed=seed)
        start_loss = trainer.evaluate(val, batch_size=n_sequences)["loss"]
        with count_warnings(NeumannDivergenceWarning) as cut:
            trainer.fit(hyper_steps)
    history = trainer.history.hyper_steps
    final = trainer.evaluate(val, batch_size=n_sequences)["loss"]
    n_weights, n_hyper = _count(model)
    results = {
        "start_val_loss": start_loss, "final_val_loss": final,
        "ratio": final / start_loss, "min_val_loss": min(r["val_loss"] for r in history),
        "final_train_loss": trainer.evaluate(train, batch_size=n_sequences)["loss"],
        "hyper_steps": [r["hyper_step"] for r in history],
        "val_loss": [r["val_loss"] for r in history],
        "train_loss": [r["train_loss"] for r in history],
        "weights": n_weights, "hyperparameters": n_hyper, "skipped": trainer.history.skipped,
        "neumann_cut_off": cut.value, "seconds": time.perf_counter() - start,
        "config": {"n_sequences": n_sequences, "hidden_size": hidden_size,
                   "num_layers": num_layers, "seq_len": seq_len, "inner_steps": inner_steps,
                   "neumann_steps": neumann_steps, "lr": lr, "hyper_lr": hyper_lr,
                   "init_decay": init_decay, "seed": seed, "device": str(device)},
    }
    if out is not None:
        from optuna_ift.plots import plot_lstm_overfit

        write_results(out, results)
        plot_lstm_overfit(results, Path(out) / "lstm_overfit.png")
    return results

