"""Bad inputs across the public API and the command line: each is refused with the right kind
of exception and a message that names the offending argument (or file) and says what is
allowed.

The convention asserted here, everywhere:

- a value of the wrong kind (a string where a number goes, a non-callable where a function
  goes, a class where an instance goes, numpy arrays where tensors go) raises ``TypeError``;
- a value of the right kind out of its range raises ``ValueError`` (and not a ``TypeError``);
- a missing file raises ``FileNotFoundError`` naming it;
- NumPy scalars are numbers and are accepted like Python ones;
- a bad command line exits with status 2 and one line on stderr naming the option.

Every case fails before any training. A case marked ``xfail(strict=True)`` is one that the code
does not follow yet: its ``reason`` says what the code does today, so each xfail is a to-do item
(and turns into a failure the day it is fixed, to be unmarked).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.artifacts import FileSystemArtifactStore
from torch import nn
from torch.utils.data import Dataset

import optuna_ift.data as data_mod
import optuna_ift.experiments as ex
from optuna_ift import (
    ConjugateGradient,
    EarlyStopping,
    Exact,
    HyperParameter,
    HyperStep,
    HyperTrainer,
    Identity,
    KeepBest,
    LRScheduler,
    Neumann,
    TensorBatches,
    Unrolled,
    evaluate,
    hypergradient,
    power_iteration,
    split_parameters,
    unrolled_hypergradient,
)
from optuna_ift.cli import main
from optuna_ift.hyperparams import (
    AugmentationNet,
    ConcreteDropout,
    DistilledData,
    LossWeights,
    WeightDecay,
)
from optuna_ift.integration import (
    HybridSampler,
    IFTPruningCallback,
    create_storage,
    load_learned,
    record_refined,
    run_trainer,
    save_learned,
    warm_start,
)
from optuna_ift.sklearn import IFTLogisticRegression, IFTRidge, validation_split_curve

optuna.logging.set_verbosity(optuna.logging.WARNING)

pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
    "ignore::RuntimeWarning",
)

# -- small things every case builds from --------------------------------------------------------

_G = torch.Generator().manual_seed(0)
X = torch.randn(16, 4, generator=_G)
Y = torch.randint(0, 3, (16,), generator=_G)
X_NP, Y_NP = X.numpy(), Y.numpy()


class Tiny(nn.Module):
    """A linear classifier with one global weight decay (a HyperParameter)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 3)
        self.decay = WeightDecay(self.net, mode="global", init=1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Plain(nn.Module):
    """A model without hyperparameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1]) + model.decay(model.net)


def val_ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def trainer_kwargs(**changes: Any) -> dict[str, Any]:
    """Valid ``HyperTrainer`` arguments, with ``changes``."""
    kwargs = {"model": Tiny(), "train_loss": train_ce, "val_loss": val_ce,
              "train_data": (X, Y), "val_data": (X, Y), "batch_size": 8, "inner_steps": 1,
              "device": "cpu", "progress": False}
    kwargs.update(changes)
    return kwargs


def trainer(**changes: Any) -> HyperTrainer:
    kwargs = trainer_kwargs(**changes)
    return HyperTrainer(kwargs.pop("model"), **kwargs)


def eval_trainer() -> HyperTrainer:
    return trainer(eval_data={"val": (X, Y)})


def losses() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(val_loss, train_loss, w, theta)`` of a tiny ridge problem, with graphs."""
    w = torch.ones(3, requires_grad=True)
    theta = torch.zeros(3, requires_grad=True)
    A = torch.arange(12.0).reshape(4, 3) / 10
    train = ((A @ w - 1) ** 2).mean() + (theta.exp() * w**2).sum()
    val = ((A @ w + 1) ** 2).mean()
    return val, train, w, theta


def hvp(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(2 * t for t in v)


def ridge_fns():
    A = torch.arange(12.0).reshape(4, 3) / 10

    def train_fn(ws, hs):
        return ((A @ ws[0] - 1) ** 2).mean() + (hs[0].exp() * ws[0] ** 2).sum()

    def val_fn(ws, hs):
        return ((A @ ws[0] + 1) ** 2).mean()

    return train_fn, val_fn, [torch.ones(3)], [torch.zeros(3, requires_grad=True)]


def unrolled(**changes: Any):
    train_fn, val_fn, params, hparams = ridge_fns()
    kwargs = {"steps": 3, "lr": 0.1} | changes
    return unrolled_hypergradient(train_fn, val_fn, params, hparams, **kwargs)


def hyper_step(**changes: Any) -> HyperStep:
    return HyperStep(changes.pop("model", Tiny()), **changes)


def hyper_step_over_weights() -> HyperStep:
    model = Tiny()
    return HyperStep(model, optimizer=torch.optim.Adam(model.net.parameters()))


def hyper_step_call(*, train_loss: Any = None, method: str = "__call__", **changes: Any):
    """A HyperStep of a ``Tiny`` model called with its losses (``train_loss`` replaced)."""
    model = Tiny()
    step = HyperStep(model, **changes)
    train = train_ce(model, (X, Y)) if train_loss is None else train_loss
    return getattr(step, method)(train, val_ce(model, (X, Y)))


class MapStyle(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, k: int):
        return X[k], Y[k]


class BadHook:
    def on_hyper_step(self, trainer):  # misses ``record``
        pass


RNG = np.random.default_rng(0)
SK_X = RNG.normal(size=(30, 3))
SK_Y_CLASS = np.arange(30) % 2
SK_Y_REG = SK_X @ np.array([1.0, -2.0, 0.5]) + 0.1 * RNG.normal(size=30)


def lr_fit(X_=SK_X, y_=SK_Y_CLASS, **params: Any):
    params = {"max_iter": 2, "device": "cpu", "random_state": 0} | params
    return IFTLogisticRegression(**params).fit(X_, y_)


def ridge_fit(X_=SK_X, y_=SK_Y_REG, **params: Any):
    params = {"max_iter": 2, "device": "cpu", "random_state": 0} | params
    return IFTRidge(**params).fit(X_, y_)


def curve(**changes: Any):
    kwargs = {"X": SK_X, "y": SK_Y_CLASS, "X_test": SK_X, "y_test": SK_Y_CLASS, "sizes": [20],
              "fractions": [0.5], "weight_decays": ("global",), "seeds": (0,),
              "estimator": IFTLogisticRegression(max_iter=1, device="cpu")}
    kwargs.update(changes)
    return validation_split_curve(kwargs.pop("X"), kwargs.pop("y"), kwargs.pop("X_test"),
                                  kwargs.pop("y_test"), **kwargs)


def write_corpus(root: Path, *, train: str | bytes = "the cat sat on the mat\n" * 12,
                 valid: str | bytes = "the cat sat\n" * 4,
                 test: str | bytes = "the mat sat\n" * 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        path = root / f"{name}.txt"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return root


class Ctx:
    """What a case may need: a fresh folder, and lazily an artifact store, a study with a
    running trial (``x`` float and ``c`` categorical suggested) and a tiny corpus."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._study: optuna.Study | None = None
        self._trial: optuna.Trial | None = None

    @property
    def store(self) -> FileSystemArtifactStore:
        folder = self.tmp / "artifacts"
        folder.mkdir(exist_ok=True)
        return FileSystemArtifactStore(str(folder))

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.create_study(study_name="bad-inputs")
            self._trial = self._study.ask()
            self._trial.suggest_float("x", 0.0, 1.0)
            self._trial.suggest_categorical("c", ["a", "b"])
        return self._study

    @property
    def trial(self) -> optuna.Trial:
        self.study  # noqa: B018 (builds the trial)
        return self._trial

    @property
    def frozen(self) -> optuna.trial.FrozenTrial:
        return self.study.get_trials(deepcopy=False)[0]

    @property
    def corpus(self) -> Path:
        return write_corpus(self.tmp / "ptb")


def saved_checkpoint(ctx: Ctx, model: nn.Module | None = None) -> Path:
    """A checkpoint of a trainer of ``model`` (default a ``Plain`` one, weights-only)."""
    t = trainer(model=model or Plain(), val_loss=None, val_data=None)
    return t.save(ctx.tmp / "other.pt")


def garbage(ctx: Ctx) -> Path:
    path = ctx.tmp / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    return path


def not_a_checkpoint(ctx: Ctx) -> Path:
    path = ctx.tmp / "dict.pt"
    torch.save({"a": 1}, path)
    return path


def a_file(ctx: Ctx) -> Path:
    path = ctx.tmp / "file.txt"
    path.write_text("in the way")
    return path


def lstm_tiny(ctx: Ctx, **changes: Any):
    kwargs = {"data_root": ctx.corpus, "out": None, "methods": ("none",), "hidden_size": 4,
              "num_layers": 1, "seq_len": 5, "batch_size": 4, "epochs": 1.0,
              "inner_steps": 2, "neumann_steps": 1, "evaluations": 1, "device": "cpu",
              "show_progress": False}
    kwargs.update(changes)
    return ex.lstm(**kwargs)


def lightning_callback(*args: Any, **kwargs: Any):
    from optuna_ift.lightning import IFTCallback

    return IFTCallback(*args, **kwargs)


# -- the table ----------------------------------------------------------------------------------

INT = r"int(eger)?"  # "an int" and "an integer" both say what is allowed
NUM = r"(finite )?(real )?number"
CALL_IT = r"(instance|call it|\(\))"  # a class was given: say to instantiate it
CONVERT = r"(torch\.as_tensor|torch\.from_numpy|torch\.tensor)"  # how to turn numpy into torch
DEVICE = r"device must be .*(auto|cpu)"


def case(id: str, call, error: type[BaseException], pattern: str, *, today: str | None = None):
    """One bad input: ``call(ctx)`` must raise ``error`` with a message matching ``pattern``.

    ``today``: what the code does instead, for a case it does not follow yet (strict xfail).
    """
    marks = [pytest.mark.xfail(strict=True, reason=today)] if today else []
    return pytest.param(call, error, pattern, id=id, marks=marks)


CASES = [
    # -- hypergradient --------------------------------------------------------------------------
    case("hypergradient-val_loss=float",
         lambda c: hypergradient(1.0, *losses()[1:]), TypeError,
         r"val_loss must be a scalar torch\.Tensor"),
    case("hypergradient-val_loss=vector",
         lambda c: hypergradient(losses()[2] * 2, *losses()[1:]), ValueError,
         r"val_loss must be a scalar tensor"),
    case("hypergradient-train_loss=str",
         lambda c: hypergradient(losses()[0], "loss", *losses()[2:]), TypeError,
         r"train_loss must be a scalar torch\.Tensor"),
    case("hypergradient-train_loss-no-graph",
         lambda c: hypergradient(losses()[0], torch.tensor(1.0), *losses()[2:]), ValueError,
         r"train_loss has no graph.*grad"),
    case("hypergradient-params=[]",
         lambda c: hypergradient(*losses()[:2], [], [losses()[3]]), ValueError,
         r"params must hold at least one tensor"),
    case("hypergradient-params=numpy",
         lambda c: hypergradient(*losses()[:2], [np.ones(3)], [losses()[3]]), TypeError,
         r"params\[0\] must be a torch\.Tensor"),
    case("hypergradient-params-no-grad",
         lambda c: hypergradient(*losses()[:2], [torch.ones(3)], [losses()[3]]), ValueError,
         r"params\[0\] does not require grad"),
    case("hypergradient-hparams=[]",
         lambda c: hypergradient(*losses()[:3], []), ValueError,
         r"hparams must hold at least one tensor"),
    case("hypergradient-hparams=float",
         lambda c: hypergradient(*losses()[:3], [0.5]), TypeError,
         r"hparams\[0\] must be a torch\.Tensor"),
    case("hypergradient-solver=str",
         lambda c: hypergradient(*losses(), solver="neumann"), TypeError,
         r"solver must be a solver\(hvp, v\) such as Neumann\(\)"),
    case("hypergradient-solver=Neumann-class",
         lambda c: hypergradient(*losses(), solver=Neumann), TypeError,
         rf"solver.*{CALL_IT}"),
    # -- solvers --------------------------------------------------------------------------------
    case("Neumann-steps=-1", lambda c: Neumann(steps=-1), ValueError,
         rf"steps must be an {INT} >= 0"),
    case("Neumann-steps=2.5", lambda c: Neumann(steps=2.5), TypeError,
         rf"steps must be an {INT} >= 0"),
    case("Neumann-steps=str", lambda c: Neumann(steps="5"), TypeError,
         rf"steps must be an {INT}"),
    case("Neumann-steps=True", lambda c: Neumann(steps=True), TypeError,
         rf"steps must be an {INT}"),
    case("Neumann-alpha=0", lambda c: Neumann(alpha=0), ValueError, r"alpha must be .*> 0"),
    case("Neumann-alpha=-1", lambda c: Neumann(alpha=-1.0), ValueError, r"alpha must be .*> 0"),
    case("Neumann-alpha=nan", lambda c: Neumann(alpha=math.nan), ValueError,
         rf"alpha must be .*{NUM}"),
    case("Neumann-alpha=str", lambda c: Neumann(alpha="fast"), TypeError,
         r"alpha must be .*'auto'"),
    case("Neumann-power_steps=0", lambda c: Neumann(power_steps=0), ValueError,
         rf"power_steps must be an {INT} >= 1"),
    case("Neumann-power_steps=1.5", lambda c: Neumann(power_steps=1.5), TypeError,
         rf"power_steps must be an {INT} >= 1"),
    case("ConjugateGradient-steps=0", lambda c: ConjugateGradient(steps=0), ValueError,
         rf"steps must be an {INT} >= 1"),
    case("ConjugateGradient-steps=str", lambda c: ConjugateGradient(steps="10"), TypeError,
         rf"steps must be an {INT}"),
    case("ConjugateGradient-tol=-1", lambda c: ConjugateGradient(tol=-1), ValueError,
         rf"tol must be a {NUM} >= 0"),
    case("ConjugateGradient-tol=inf", lambda c: ConjugateGradient(tol=math.inf), ValueError,
         rf"tol must be a {NUM} >= 0"),
    case("ConjugateGradient-tol=str", lambda c: ConjugateGradient(tol="small"), TypeError,
         rf"tol must be a {NUM} >= 0"),
    case("ConjugateGradient-tol=None", lambda c: ConjugateGradient(tol=None), TypeError,
         rf"tol must be a {NUM} >= 0"),
    case("Exact-max_size=0", lambda c: Exact(max_size=0), ValueError,
         rf"max_size must be an {INT} >= 1"),
    case("Exact-max_size=float", lambda c: Exact(max_size=1e3), TypeError,
         rf"max_size must be an {INT} >= 1"),
    case("Exact-problem-above-max_size", lambda c: Exact(max_size=2)(hvp, (torch.ones(3),)),
         ValueError, r"exceeds max_size = 2.*raise max_size"),
    case("Identity-steps=3", lambda c: Identity(steps=3), TypeError,
         r"unexpected keyword argument 'steps'"),
    case("power_iteration-steps=0", lambda c: power_iteration(hvp, (torch.ones(3),), steps=0),
         ValueError, rf"steps must be an {INT} >= 1"),
    case("power_iteration-steps=2.0", lambda c: power_iteration(hvp, (torch.ones(3),), steps=2.0),
         TypeError, rf"steps must be an {INT} >= 1"),
    case("power_iteration-hvp=str", lambda c: power_iteration("hvp", (torch.ones(3),)),
         TypeError, r"hvp must be callable"),
    case("power_iteration-v=zero", lambda c: power_iteration(hvp, (torch.zeros(3),)),
         ValueError, r"\bv\b.*(zero|non-zero)"),
    # -- unrolled_hypergradient -----------------------------------------------------------------
    case("unrolled-steps=-1", lambda c: unrolled(steps=-1), ValueError,
         rf"steps must be an {INT} >= 0"),
    case("unrolled-steps=1.5", lambda c: unrolled(steps=1.5), TypeError,
         rf"steps must be an {INT} >= 0"),
    case("unrolled-lr=0", lambda c: unrolled(lr=0), ValueError, rf"lr must be a {NUM} > 0"),
    case("unrolled-lr=str", lambda c: unrolled(lr="0.1"), TypeError, rf"lr must be a {NUM} > 0"),
    case("unrolled-truncate=0", lambda c: unrolled(truncate=0), ValueError,
         rf"truncate must be an {INT} in \[1, (steps=)?3\]"),
    case("unrolled-truncate>steps", lambda c: unrolled(truncate=5), ValueError,
         rf"truncate must be an {INT} in \[1, (steps=)?3\]"),
    case("unrolled-train_loss_fn=str",
         lambda c: unrolled_hypergradient("f", ridge_fns()[1], *ridge_fns()[2:], steps=2, lr=0.1),
         TypeError, r"train_loss_fn must be callable"),
    case("unrolled-val_loss_fn=None",
         lambda c: unrolled_hypergradient(ridge_fns()[0], None, *ridge_fns()[2:], steps=2,
                                          lr=0.1),
         TypeError, r"val_loss_fn must be callable"),
    case("unrolled-hparams=[]",
         lambda c: unrolled_hypergradient(*ridge_fns()[:3], [], steps=2, lr=0.1), ValueError,
         r"hparams must hold at least one tensor"),
    case("unrolled-train_loss_fn-returns-float",
         lambda c: unrolled_hypergradient(lambda w, h: 1.0, *ridge_fns()[1:], steps=2, lr=0.1),
         TypeError, r"train_loss_fn.* must be a scalar torch\.Tensor"),
    # -- HyperParameter, split_parameters -------------------------------------------------------
    case("split_parameters-str", lambda c: split_parameters("model"), TypeError,
         r"module must be a torch\.nn\.Module"),
    case("split_parameters-list", lambda c: split_parameters([nn.Linear(2, 2)]), TypeError,
         r"module must be a torch\.nn\.Module"),
    case("HyperParameter-str", lambda c: HyperParameter("abc"), TypeError,
         r"data.* must be (a )?(torch\.)?Tensor"),
    case("HyperParameter-numpy", lambda c: HyperParameter(np.zeros(3)), TypeError,
         r"data.* must be (a )?(torch\.)?Tensor"),
    case("HyperParameter-int-tensor", lambda c: HyperParameter(torch.zeros(3, dtype=torch.long)),
         TypeError, r"data.*floating"),
    case("HyperParameter-requires_grad=str",
         lambda c: HyperParameter(torch.zeros(3), requires_grad="yes"), TypeError,
         r"requires?_grad.* bool"),
    # -- WeightDecay ----------------------------------------------------------------------------
    case("WeightDecay-module=str", lambda c: WeightDecay("net"), TypeError,
         r"module must be a torch\.nn\.Module"),
    case("WeightDecay-mode=layer", lambda c: WeightDecay(nn.Linear(2, 2), mode="layer"),
         ValueError, r"mode must be one of .*per_layer"),
    case("WeightDecay-init=0", lambda c: WeightDecay(nn.Linear(2, 2), init=0), ValueError,
         rf"init must be a {NUM} > 0"),
    case("WeightDecay-init=inf", lambda c: WeightDecay(nn.Linear(2, 2), init=math.inf),
         ValueError, rf"init must be a {NUM} > 0"),
    case("WeightDecay-init=str", lambda c: WeightDecay(nn.Linear(2, 2), init="1e-4"), TypeError,
         rf"init must be a {NUM} > 0"),
    case("WeightDecay-include_biases=str",
         lambda c: WeightDecay(nn.Linear(2, 2), include_biases="yes"), TypeError,
         r"include_biases must be a bool"),
    case("WeightDecay-nothing-to-decay", lambda c: WeightDecay(nn.BatchNorm1d(3)), ValueError,
         r"module has no weights to decay.*include_biases=True"),
    case("WeightDecay.forward-int", lambda c: WeightDecay(nn.Linear(2, 2))(42), TypeError,
         r"module must be a torch\.nn\.Module or a mapping"),
    case("WeightDecay.forward-other-module",
         lambda c: WeightDecay(nn.Sequential(nn.Linear(2, 2)))(nn.Linear(2, 2)), ValueError,
         r"module has no parameter '0\.weight'"),
    case("WeightDecay.forward-wrong-shape",
         lambda c: WeightDecay(nn.Linear(2, 2))({"weight": torch.ones(3, 3)}), ValueError,
         r"parameter 'weight' has shape \(3, 3\).*built for shape \(2, 2\)"),
    # -- DistilledData --------------------------------------------------------------------------
    case("DistilledData-num_per_class=0", lambda c: DistilledData(0, 10, (4,)), ValueError,
         rf"num_per_class must be an {INT} >= 1"),
    case("DistilledData-num_per_class=1.5", lambda c: DistilledData(1.5, 10, (4,)), TypeError,
         rf"num_per_class must be an {INT}"),
    case("DistilledData-num_classes=1", lambda c: DistilledData(1, 1, (4,)), ValueError,
         rf"num_classes must be an {INT} >= 2"),
    case("DistilledData-num_classes=str", lambda c: DistilledData(1, "10", (4,)), TypeError,
         rf"num_classes must be an {INT}"),
    case("DistilledData-shape=(0,)", lambda c: DistilledData(1, 10, (0, 3)), ValueError,
         r"shape must be a sequence of ints >= 1"),
    case("DistilledData-shape=str", lambda c: DistilledData(1, 10, "28x28"), TypeError,
         r"shape must be a sequence of ints"),
    case("DistilledData-learn_labels=str",
         lambda c: DistilledData(1, 10, (4,), learn_labels="yes"), TypeError,
         r"learn_labels must be a bool"),
    case("DistilledData-init=numpy",
         lambda c: DistilledData(1, 10, (4,), init=np.zeros((10, 4))), TypeError,
         r"init must be a torch\.Tensor or None"),
    case("DistilledData-init-wrong-shape",
         lambda c: DistilledData(1, 10, (4,), init=torch.zeros(5, 4)), ValueError,
         r"init must have shape .*\(10, 4\)"),
    case("DistilledData-init-int-tensor",
         lambda c: DistilledData(1, 10, (4,), init=torch.zeros(10, 4, dtype=torch.long)),
         TypeError, r"init must be a floating-point tensor"),
    # -- AugmentationNet ------------------------------------------------------------------------
    case("AugmentationNet-channels=0", lambda c: AugmentationNet(0), ValueError,
         rf"channels must be an {INT} >= 1"),
    case("AugmentationNet-channels=float", lambda c: AugmentationNet(3.0), TypeError,
         rf"channels must be an {INT}"),
    case("AugmentationNet-hidden=0", lambda c: AugmentationNet(1, hidden=0), ValueError,
         rf"hidden must be an {INT} >= 1"),
    case("AugmentationNet-depth=-1", lambda c: AugmentationNet(1, depth=-1), ValueError,
         rf"depth must be an {INT} >= 0"),
    case("AugmentationNet-noise=str", lambda c: AugmentationNet(1, noise="yes"), TypeError,
         r"noise must be a bool"),
    case("AugmentationNet-generator=str", lambda c: AugmentationNet(1, generator="seed"),
         TypeError, r"generator must be (a )?(torch\.Generator|None)"),
    case("AugmentationNet.forward-wrong-channels",
         lambda c: AugmentationNet(1, hidden=2, depth=1)(torch.zeros(2, 3, 8, 8)), ValueError,
         r"x must be a tensor of shape \(batch, 1, height, width\), got \(2, 3, 8, 8\)"),
    case("AugmentationNet.forward-numpy",
         lambda c: AugmentationNet(1, hidden=2, depth=1)(np.zeros((2, 1, 8, 8))), TypeError,
         r"x must be a (torch\.)?[Tt]ensor"),
    case("AugmentationNet.forward-noise-shape",
         lambda c: AugmentationNet(1, hidden=2, depth=1)(torch.zeros(2, 1, 8, 8),
                                                         noise=torch.zeros(2, 1, 4, 4)),
         ValueError, r"noise must have shape \(2, 1, 8, 8\)"),
    case("AugmentationNet.forward-noise-without-channel",
         lambda c: AugmentationNet(1, hidden=2, depth=1, noise=False)(
             torch.zeros(2, 1, 8, 8), noise=torch.zeros(2, 1, 8, 8)),
         ValueError, r"noise was given .*noise=False"),
    # -- ConcreteDropout ------------------------------------------------------------------------
    case("ConcreteDropout-init=0", lambda c: ConcreteDropout(init=0), ValueError,
         r"init must be a rate in the open interval \(0, 1\)"),
    case("ConcreteDropout-init=1.5", lambda c: ConcreteDropout(init=1.5), ValueError,
         r"init must be a rate in the open interval \(0, 1\)"),
    case("ConcreteDropout-init=str", lambda c: ConcreteDropout(init="0.1"), TypeError,
         r"init must be a rate in the open interval \(0, 1\)"),
    case("ConcreteDropout-temperature=0", lambda c: ConcreteDropout(temperature=0), ValueError,
         rf"temperature must be a {NUM} > 0"),
    case("ConcreteDropout-temperature=str", lambda c: ConcreteDropout(temperature="hot"),
         TypeError, rf"temperature must be a {NUM} > 0"),
    case("ConcreteDropout-mode=spatial", lambda c: ConcreteDropout(mode="spatial"), ValueError,
         r"mode must be one of .*'unit'"),
    case("ConcreteDropout-shape=(0,)", lambda c: ConcreteDropout((0,)), ValueError,
         r"shape must be a sequence of ints >= 1"),
    case("ConcreteDropout-channel-mode-2d-shape",
         lambda c: ConcreteDropout((4, 2), mode="channel"), ValueError,
         r"shape must be \(\) or \(channels,\) in mode='channel'"),
    case("ConcreteDropout.forward-str", lambda c: ConcreteDropout()("x"), TypeError,
         r"x must be a torch\.Tensor"),
    case("ConcreteDropout.forward-shared_dims-out-of-range",
         lambda c: ConcreteDropout((3,))(torch.ones(2, 3), shared_dims=(5,)), ValueError,
         r"shared_dims must name dimensions of x among the first 1"),
    case("ConcreteDropout.forward-shared_dims=str",
         lambda c: ConcreteDropout((3,))(torch.ones(2, 3), shared_dims="0"), TypeError,
         r"shared_dims must be a sequence of ints"),
    case("ConcreteDropout.forward-channel-mismatch",
         lambda c: ConcreteDropout((4,), mode="channel")(torch.ones(2, 3, 5)), ValueError,
         r"x must have shape \(batch, 4, \.\.\.\) in mode='channel'"),
    case("ConcreteDropout.drop_connect-int", lambda c: ConcreteDropout().drop_connect(3),
         TypeError, r"weight must be a torch\.Tensor"),
    case("ConcreteDropout.drop_connect-wrong-shape",
         lambda c: ConcreteDropout((3, 2)).drop_connect(torch.ones(2, 3)), ValueError,
         r"weight of shape \(2, 3\) does not end in the rate's shape \(3, 2\)"),
    # -- LossWeights ----------------------------------------------------------------------------
    case("LossWeights-num_examples=0", lambda c: LossWeights(0), ValueError,
         rf"num_examples must be an {INT} >= 1"),
    case("LossWeights-num_examples=2.0", lambda c: LossWeights(2.0), TypeError,
         rf"num_examples must be an {INT}"),
    case("LossWeights-init=0", lambda c: LossWeights(4, init=0), ValueError,
         rf"init must be a {NUM} > 0"),
    case("LossWeights-init=str", lambda c: LossWeights(4, init="1"), TypeError,
         rf"init must be a {NUM} > 0"),
    case("LossWeights.forward-float-indices", lambda c: LossWeights(4)(torch.ones(2)),
         TypeError, r"indices must be an integer torch\.Tensor"),
    case("LossWeights.forward-list", lambda c: LossWeights(4)([0, 1]), TypeError,
         r"indices must be an integer torch\.Tensor"),
    case("LossWeights.forward-out-of-range", lambda c: LossWeights(4)(torch.tensor([0, 7])),
         ValueError, r"indices must lie in \[0, 3\]"),
    # -- HyperTrainer: model and losses ---------------------------------------------------------
    case("HyperTrainer-model=str", lambda c: trainer(model="net"), TypeError,
         r"model must be a torch\.nn\.Module"),
    case("HyperTrainer-model=class", lambda c: trainer(model=Tiny), TypeError,
         r"model must be a torch\.nn\.Module"),
    case("HyperTrainer-model-all-frozen",
         lambda c: trainer(model=Plain().requires_grad_(False)), ValueError,
         r"model has no trainable weights"),
    case("HyperTrainer-train_loss=str", lambda c: trainer(train_loss="ce"), TypeError,
         r"train_loss must be callable as train_loss\(model, batch\)"),
    case("HyperTrainer-train_loss=None", lambda c: trainer(train_loss=None), TypeError,
         r"train_loss must be callable"),
    case("HyperTrainer-val_loss=str", lambda c: trainer(val_loss="ce"), TypeError,
         r"val_loss must be (None or )?callable"),
    case("HyperTrainer-val_loss=None-when-tuning", lambda c: trainer(val_loss=None),
         ValueError, r"val_loss is required to tune hyperparameters"),
    case("HyperTrainer-train_loss-returns-float",
         lambda c: trainer(train_loss=lambda m, b: 1.0).fit(1), TypeError,
         r"train_loss.*(torch\.Tensor|scalar tensor)"),
    case("HyperTrainer-train_loss-returns-vector",
         lambda c: trainer(train_loss=lambda m, b: m(b[0]).sum(0)).fit(1), ValueError,
         r"train_loss.*scalar"),
    case("HyperTrainer-val_loss-returns-float",
         lambda c: trainer(val_loss=lambda m, b: 0.5).fit(1), TypeError,
         r"val_loss.*(torch\.Tensor|scalar tensor)"),
    # -- HyperTrainer: data of each wrong kind --------------------------------------------------
    case("HyperTrainer-train_data=numpy-tuple", lambda c: trainer(train_data=(X_NP, Y_NP)),
         TypeError, rf"train_data.*{CONVERT}"),
    case("HyperTrainer-train_data=numpy-array", lambda c: trainer(train_data=X_NP), TypeError,
         rf"train_data.*{CONVERT}"),
    case("HyperTrainer-train_data=str", lambda c: trainer(train_data="data.csv"), TypeError,
         r"train_data must be a tensor, a tuple of tensors"),
    case("HyperTrainer-train_data=dict", lambda c: trainer(train_data={"x": X}), TypeError,
         r"train_data must be a tensor, a tuple of tensors"),
    case("HyperTrainer-train_data=int", lambda c: trainer(train_data=42), TypeError,
         r"train_data must be a tensor, a tuple of tensors"),
    case("HyperTrainer-train_data=map-style-Dataset", lambda c: trainer(train_data=MapStyle()),
         TypeError, r"train_data is a map-style Dataset .*DataLoader"),
    case("HyperTrainer-train_data=list-of-ints", lambda c: trainer(train_data=[1, 2, 3]),
         TypeError, r"train_data must be .*first batch holds no tensor"),
    case("HyperTrainer-train_data=[]", lambda c: trainer(train_data=[]), ValueError,
         r"train_data is empty"),
    case("HyperTrainer-train_data-ragged", lambda c: trainer(train_data=(X, Y[:5])), ValueError,
         r"train_data: every tensor needs the same first dimension"),
    case("HyperTrainer-train_data-no-rows", lambda c: trainer(train_data=(X[:0], Y[:0])),
         ValueError, r"train_data is empty"),
    case("HyperTrainer-train_data-NaN",
         lambda c: trainer(train_data=(torch.full((4, 4), math.nan), Y[:4])), ValueError,
         r"train_data: tensor 0 holds a non-finite value"),
    case("HyperTrainer-val_data=None-when-tuning", lambda c: trainer(val_data=None), ValueError,
         r"val_data is required to tune hyperparameters"),
    case("HyperTrainer-val_data=numpy-tuple", lambda c: trainer(val_data=(X_NP, Y_NP)),
         TypeError, rf"val_data.*{CONVERT}"),
    case("HyperTrainer-val_data=str", lambda c: trainer(val_data="val"), TypeError,
         r"val_data must be a tensor, a tuple of tensors"),
    case("HyperTrainer-val_data-inf",
         lambda c: trainer(val_data=(torch.full((4, 4), math.inf), Y[:4])), ValueError,
         r"val_data: tensor 0 holds a non-finite value"),
    # -- HyperTrainer: sizes, optimizers, solver, steps ------------------------------------------
    case("HyperTrainer-batch_size=0", lambda c: trainer(batch_size=0), ValueError,
         rf"batch_size must be an {INT} >= 1"),
    case("HyperTrainer-batch_size=float", lambda c: trainer(batch_size=32.0), TypeError,
         rf"batch_size must be an {INT} >= 1"),
    case("HyperTrainer-batch_size=str", lambda c: trainer(batch_size="32"), TypeError,
         rf"batch_size must be an {INT} >= 1"),
    case("HyperTrainer-val_batch_size=0", lambda c: trainer(val_batch_size=0), ValueError,
         rf"val_batch_size must be an {INT} >= 1"),
    case("HyperTrainer-val_batch_size=1.5", lambda c: trainer(val_batch_size=1.5), TypeError,
         rf"val_batch_size must be an {INT} >= 1"),
    case("HyperTrainer-weight_optimizer=str", lambda c: trainer(weight_optimizer="adam"),
         TypeError, r"weight_optimizer must be a factory f\(params\)"),
    case("HyperTrainer-weight_optimizer-returns-None",
         lambda c: trainer(weight_optimizer=lambda p: None), TypeError,
         r"weight_optimizer\(params\) must return a torch\.optim\.Optimizer"),
    case("HyperTrainer-weight_optimizer-over-other-tensors",
         lambda c: trainer(weight_optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], 0.1)),
         ValueError, r"weight_optimizer is an optimizer that does not hold every tensor"),
    case("HyperTrainer-hyper_optimizer=str", lambda c: trainer(hyper_optimizer="rmsprop"),
         TypeError, r"hyper_optimizer must be a factory"),
    case("HyperTrainer-hyper_optimizer-returns-int",
         lambda c: trainer(hyper_optimizer=lambda p: 3), TypeError,
         r"hyper_optimizer\(params\) must return a torch\.optim\.Optimizer"),
    case("HyperTrainer-solver=Neumann-class", lambda c: trainer(solver=Neumann), TypeError,
         rf"solver.*{CALL_IT}"),
    case("HyperTrainer-solver=str", lambda c: trainer(solver="neumann"), TypeError,
         r"solver must be a solver\(hvp, v\)"),
    case("HyperTrainer-solver=None", lambda c: trainer(solver=None), TypeError,
         r"solver must be a solver\(hvp, v\)"),
    case("Unrolled-steps=0", lambda c: Unrolled(steps=0), ValueError,
         rf"steps must be an {INT} >= 1"),
    case("Unrolled-steps=str", lambda c: Unrolled(steps="3"), TypeError,
         rf"steps must be an {INT} >= 1"),
    case("Unrolled-lr=-1", lambda c: Unrolled(lr=-1.0), ValueError, rf"lr must be a {NUM} > 0"),
    case("HyperTrainer-inner_steps=0", lambda c: trainer(inner_steps=0), ValueError,
         rf"inner_steps must be an {INT} >= 1"),
    case("HyperTrainer-inner_steps=2.5", lambda c: trainer(inner_steps=2.5), TypeError,
         rf"inner_steps must be an {INT} >= 1"),
    case("HyperTrainer-val_batches=0", lambda c: trainer(val_batches=0), ValueError,
         rf"val_batches must be an {INT} >= 1"),
    case("HyperTrainer-warmup_steps=-1", lambda c: trainer(warmup_steps=-1), ValueError,
         rf"warmup_steps must be an {INT} >= 0"),
    case("HyperTrainer-alpha_every=0", lambda c: trainer(alpha_every=0), ValueError,
         rf"alpha_every must be an {INT} >= 1"),
    # -- HyperTrainer: evaluation ---------------------------------------------------------------
    case("HyperTrainer-eval_data=list", lambda c: trainer(eval_data=[(X, Y)]), TypeError,
         r"eval_data must be a dict of named data sets"),
    case("HyperTrainer-eval_data=tuple", lambda c: trainer(eval_data=(X, Y)), TypeError,
         r"eval_data must be a dict of named data sets"),
    case("HyperTrainer-eval_data-value=str", lambda c: trainer(eval_data={"val": "x"}),
         TypeError, r"eval_data\['val'\] must be a tensor"),
    case("HyperTrainer-eval_data-value=numpy", lambda c: trainer(eval_data={"val": (X_NP, Y_NP)}),
         TypeError, rf"eval_data\['val'\].*{CONVERT}"),
    case("HyperTrainer-eval_data-ragged", lambda c: trainer(eval_data={"val": (X, Y[:3])}),
         ValueError, r"eval_data\['val'\]: every tensor needs the same first dimension"),
    case("HyperTrainer-eval_data-key=int", lambda c: trainer(eval_data={1: (X, Y)}), TypeError,
         r"eval_data.*(names|keys) must be str"),
    case("HyperTrainer-eval_every=0", lambda c: trainer(eval_every=0), ValueError,
         rf"eval_every must be an {INT} >= 1"),
    case("HyperTrainer-eval_every=1.5", lambda c: trainer(eval_every=1.5), TypeError,
         rf"eval_every must be an {INT} >= 1"),
    case("HyperTrainer-metric=str", lambda c: trainer(metric="accuracy"), TypeError,
         r"metric must be (None or )?callable"),
    case("HyperTrainer-metric=int", lambda c: trainer(metric=42), TypeError,
         r"metric must be (None or )?callable"),
    # -- HyperTrainer: device, precision, clipping, callbacks, seeds ------------------------------
    case("HyperTrainer-device=gpu", lambda c: trainer(device="gpu"), ValueError, DEVICE),
    case("HyperTrainer-device=cuda:99", lambda c: trainer(device="cuda:99"), ValueError,
         r"device.*cuda:99"),
    case("HyperTrainer-autocast=str", lambda c: trainer(autocast="bf16"), TypeError,
         r"autocast must be None, torch\.bfloat16 or torch\.float16"),
    case("HyperTrainer-autocast=float64", lambda c: trainer(autocast=torch.float64), ValueError,
         r"autocast must be None, torch\.bfloat16 or torch\.float16"),
    case("HyperTrainer-clip_grad_norm=0", lambda c: trainer(clip_grad_norm=0), ValueError,
         rf"clip_grad_norm must be a {NUM} > 0"),
    case("HyperTrainer-clip_grad_norm=-1", lambda c: trainer(clip_grad_norm=-1.0), ValueError,
         rf"clip_grad_norm must be a {NUM} > 0"),
    case("HyperTrainer-clip_grad_norm=str", lambda c: trainer(clip_grad_norm="1"), TypeError,
         rf"clip_grad_norm must be a {NUM} > 0"),
    case("HyperTrainer-callbacks=single", lambda c: trainer(callbacks=EarlyStopping()),
         TypeError, r"callbacks must be an iterable of callbacks"),
    case("HyperTrainer-callbacks=str", lambda c: trainer(callbacks="early"), TypeError,
         r"callbacks must be an iterable of callbacks"),
    case("HyperTrainer-callbacks=[object]", lambda c: trainer(callbacks=[object()]), TypeError,
         r"callbacks\[0\] \(object\) has none of the hooks"),
    case("HyperTrainer-callbacks=[class]", lambda c: trainer(callbacks=[EarlyStopping]),
         TypeError, rf"callbacks\[0\].*{CALL_IT}"),
    case("HyperTrainer-callbacks-bad-signature", lambda c: trainer(callbacks=[BadHook()]),
         TypeError, r"callbacks\[0\]\.on_hyper_step must take \(trainer, record\)"),
    case("HyperTrainer-progress=str", lambda c: trainer(progress="no"), TypeError,
         r"progress must be (a bool|True or False)"),
    case("HyperTrainer-seed=-1", lambda c: trainer(seed=-1), ValueError,
         rf"seed must be an {INT} >= 0"),
    case("HyperTrainer-seed=0.5", lambda c: trainer(seed=0.5), TypeError,
         rf"seed must be an {INT} >= 0"),
    case("HyperTrainer-seed=str", lambda c: trainer(seed="0"), TypeError,
         rf"seed must be an {INT} >= 0"),
    case("HyperTrainer-max_non_finite=0", lambda c: trainer(max_non_finite=0), ValueError,
         rf"max_non_finite must be an {INT} >= 1"),
    case("HyperTrainer-max_non_finite=1.5", lambda c: trainer(max_non_finite=1.5), TypeError,
         rf"max_non_finite must be an {INT} >= 1"),
    # -- HyperTrainer.fit, save, resume ---------------------------------------------------------
    case("HyperTrainer.fit-hyper_steps=-1", lambda c: trainer().fit(-1), ValueError,
         rf"hyper_steps must be an {INT} >= 0"),
    case("HyperTrainer.fit-hyper_steps=2.5", lambda c: trainer().fit(2.5), TypeError,
         rf"hyper_steps must be an {INT} >= 0"),
    case("HyperTrainer.fit-hyper_steps=str", lambda c: trainer().fit("10"), TypeError,
         rf"hyper_steps must be an {INT} >= 0"),
    case("HyperTrainer.save-path=int", lambda c: trainer().save(123), TypeError,
         r"path must be a (str|string|path)"),
    case("HyperTrainer.save-parent-is-a-file",
         lambda c: trainer().save(a_file(c) / "ck.pt"), OSError, r"file\.txt"),
    case("HyperTrainer.resume-missing-file",
         lambda c: trainer().resume(c.tmp / "missing.pt"), FileNotFoundError,
         r"checkpoint .*missing\.pt does not exist"),
    case("HyperTrainer.resume-garbage", lambda c: trainer().resume(garbage(c)), ValueError,
         r"checkpoint .*garbage\.pt could not be read"),
    case("HyperTrainer.resume-not-a-checkpoint",
         lambda c: trainer().resume(not_a_checkpoint(c)), ValueError,
         r"not a HyperTrainer checkpoint \(missing"),
    case("HyperTrainer.resume-other-mode", lambda c: trainer().resume(saved_checkpoint(c)),
         ValueError, r"differ in mode"),
    case("HyperTrainer.resume-other-model",
         lambda c: trainer(model=nn.Linear(4, 3), val_loss=None, val_data=None,
                           train_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
         .resume(saved_checkpoint(c, nn.Sequential(nn.Linear(4, 3)))),
         ValueError, r"model: the checkpoint is of another model"),
    case("HyperTrainer.resume-path=None", lambda c: trainer().resume(None), TypeError,
         r"path must be a (str|string|path)"),
    # -- HyperStep ------------------------------------------------------------------------------
    case("HyperStep-model=str", lambda c: HyperStep("model"), TypeError,
         r"model must be a torch\.nn\.Module or a pair \(weights, hyperparameters\)"),
    case("HyperStep-no-hyperparameters", lambda c: HyperStep(Plain()), ValueError,
         r"model declares no HyperParameter"),
    case("HyperStep-empty-weights", lambda c: HyperStep(([], [losses()[3]])), ValueError,
         r"model: weights must be a non-empty sequence of tensors"),
    case("HyperStep-hyperparameters=numpy",
         lambda c: HyperStep(([losses()[2]], [np.zeros(3)])), TypeError,
         r"model: hyperparameters must be a non-empty sequence of tensors"),
    case("HyperStep-solver=str", lambda c: hyper_step(solver="cg"), TypeError,
         r"solver must be a solver\(hvp, v\)"),
    case("HyperStep-solver=ConjugateGradient-class",
         lambda c: hyper_step(solver=ConjugateGradient), TypeError, rf"solver.*{CALL_IT}"),
    case("HyperStep-optimizer=str", lambda c: hyper_step(optimizer="adam"), TypeError,
         r"optimizer must be a factory f\(params\)"),
    case("HyperStep-optimizer-over-weights", lambda c: hyper_step_over_weights(),
         ValueError, r"optimizer is an optimizer that does not hold every tensor"),
    case("HyperStep-alpha_every=0", lambda c: hyper_step(alpha_every=0), ValueError,
         rf"alpha_every must be an {INT} >= 1"),
    case("HyperStep-alpha_every=str", lambda c: hyper_step(alpha_every="50"), TypeError,
         rf"alpha_every must be an {INT} >= 1"),
    case("HyperStep.apply-wrong-count",
         lambda c: hyper_step().apply([torch.zeros(()), torch.zeros(())]), ValueError,
         r"grads holds 2 tensors for 1 hyperparameters"),
    case("HyperStep.__call__-train_loss=float",
         lambda c: hyper_step_call(train_loss=1.0), TypeError,
         r"train_loss must be a scalar torch\.Tensor"),
    case("HyperStep.hypergradient-Unrolled",
         lambda c: hyper_step_call(solver=Unrolled(), method="hypergradient"),
         TypeError, r"solver=Unrolled needs the loss functions"),
    # -- TensorBatches --------------------------------------------------------------------------
    case("TensorBatches-numpy", lambda c: TensorBatches(X_NP, batch_size=2), TypeError,
         r"tensors must be one or more tensors"),
    case("TensorBatches-ragged", lambda c: TensorBatches(X, Y[:3], batch_size=2), ValueError,
         r"tensors: every tensor needs the same first dimension"),
    case("TensorBatches-batch_size=0", lambda c: TensorBatches(X, batch_size=0), ValueError,
         rf"batch_size must be an {INT} >= 1"),
    case("TensorBatches-batch_size=2.5", lambda c: TensorBatches(X, batch_size=2.5), TypeError,
         rf"batch_size must be an {INT} >= 1"),
    case("TensorBatches-batch_size-missing", lambda c: TensorBatches(X), TypeError,
         r"missing 1 required keyword-only argument: 'batch_size'"),
    case("TensorBatches-seed=-1", lambda c: TensorBatches(X, batch_size=2, seed=-1), ValueError,
         rf"seed must be an {INT} >= 0"),
    case("TensorBatches-generator=str",
         lambda c: TensorBatches(X, batch_size=2, generator="g"), TypeError,
         r"generator must be (a )?(torch\.Generator|None)"),
    case("TensorBatches-shuffle=str", lambda c: TensorBatches(X, batch_size=2, shuffle="no"),
         TypeError, r"shuffle must be (a bool|True or False)"),
    # -- evaluate -------------------------------------------------------------------------------
    case("evaluate-model=str", lambda c: evaluate("model", (X, Y), val_ce), TypeError,
         r"model must be a torch\.nn\.Module"),
    case("evaluate-loss=str", lambda c: evaluate(Tiny(), (X, Y), "ce"), TypeError,
         r"loss must be callable"),
    case("evaluate-metric=str",
         lambda c: evaluate(Tiny(), (X, Y), val_ce, metric="accuracy"), TypeError,
         r"metric must be (None or )?callable"),
    case("evaluate-batch_size=0", lambda c: evaluate(Tiny(), (X, Y), val_ce, batch_size=0),
         ValueError, rf"batch_size must be an {INT} >= 1"),
    case("evaluate-batch_size=1.5", lambda c: evaluate(Tiny(), (X, Y), val_ce, batch_size=1.5),
         TypeError, rf"batch_size must be an {INT} >= 1"),
    case("evaluate-data=str", lambda c: evaluate(Tiny(), "data", val_ce), TypeError,
         r"data must be a tensor, a tuple of tensors"),
    case("evaluate-data=[]", lambda c: evaluate(Tiny(), [], val_ce), ValueError,
         r"data is empty"),
    case("evaluate-data=numpy", lambda c: evaluate(Tiny(), (X_NP, Y_NP), val_ce), TypeError,
         rf"data.*{CONVERT}"),
    case("evaluate-device=gpu", lambda c: evaluate(Tiny(), (X, Y), val_ce, device="gpu"),
         ValueError, DEVICE),
    # -- LRScheduler, EarlyStopping, KeepBest ---------------------------------------------------
    case("LRScheduler-optimizer=weights",
         lambda c: LRScheduler(lambda o: None, optimizer="weights"), ValueError,
         r"optimizer must be one of \('weight', 'hyper'\)"),
    case("LRScheduler-interval=epoch", lambda c: LRScheduler(lambda o: None, interval="epoch"),
         ValueError, r"interval must be one of \('weight_step', 'hyper_step', 'evaluation'\)"),
    case("LRScheduler-monitor-without-evaluation",
         lambda c: LRScheduler(lambda o: None, monitor="val_loss"), ValueError,
         r"monitor needs interval='evaluation'"),
    case("LRScheduler-scheduler=str", lambda c: LRScheduler("cosine"), TypeError,
         r"scheduler must be a learning-rate scheduler or a factory"),
    case("LRScheduler-hyper-on-weights-only",
         lambda c: trainer(model=Plain(), train_loss=val_ce, val_loss=None, val_data=None,
                           callbacks=[LRScheduler(lambda o: None, optimizer="hyper")]).fit(0),
         ValueError, r"LRScheduler\(optimizer='hyper'\) on a weights-only trainer"),
    case("LRScheduler-scheduler-of-another-optimizer",
         lambda c: trainer(callbacks=[LRScheduler(torch.optim.lr_scheduler.StepLR(
             torch.optim.SGD([nn.Parameter(torch.ones(1))], 0.1), 1))]).fit(0),
         ValueError, r"scheduler steps another optimizer .*factory"),
    case("EarlyStopping-monitor=int", lambda c: EarlyStopping(3), TypeError,
         r"monitor must be an evaluation key"),
    case("EarlyStopping-mode=minimum", lambda c: EarlyStopping(mode="minimum"), ValueError,
         r"mode must be 'min' or 'max'"),
    case("EarlyStopping-patience=0", lambda c: EarlyStopping(patience=0), ValueError,
         rf"patience must be an {INT} >= 1"),
    case("EarlyStopping-patience=2.5", lambda c: EarlyStopping(patience=2.5), TypeError,
         rf"patience must be an {INT} >= 1"),
    case("EarlyStopping-min_delta=-1", lambda c: EarlyStopping(min_delta=-1), ValueError,
         rf"min_delta must be a {NUM} >= 0"),
    case("EarlyStopping-min_delta=str", lambda c: EarlyStopping(min_delta="0"), TypeError,
         rf"min_delta must be a {NUM} >= 0"),
    case("KeepBest-monitor=()", lambda c: KeepBest(()), ValueError,
         r"monitor must be an evaluation key or a tuple of keys"),
    case("KeepBest-monitor=int", lambda c: KeepBest(5), TypeError,
         r"monitor must be an evaluation key or a tuple of keys"),
    case("KeepBest-mode-count", lambda c: KeepBest(("val_metric", "val_loss"), mode=("max",)),
         ValueError, r"mode must be 'min' or 'max' \(or one of them per monitored key\)"),
    case("KeepBest-mode=best", lambda c: KeepBest(mode="best"), ValueError,
         r"mode must be 'min' or 'max'"),
    case("KeepBest-restore=str", lambda c: KeepBest(restore="yes"), TypeError,
         r"restore must be (a bool|True or False)"),
    # -- integration: HybridSampler, record_refined, IFTPruningCallback -------------------------
    case("HybridSampler-base_sampler=str", lambda c: HybridSampler("tpe"), TypeError,
         r"base_sampler must be an optuna\.samplers\.BaseSampler or None"),
    case("HybridSampler-base_sampler=class",
         lambda c: HybridSampler(optuna.samplers.TPESampler), TypeError,
         r"base_sampler must be an optuna\.samplers\.BaseSampler or None"),
    case("HybridSampler-seed-with-base_sampler",
         lambda c: HybridSampler(optuna.samplers.RandomSampler(), seed=1), ValueError,
         r"seed seeds the default TPESampler and is only allowed with base_sampler=None"),
    case("HybridSampler-prefix=''", lambda c: HybridSampler(refined_attr_prefix=""), ValueError,
         r"refined_attr_prefix must be a non-empty string"),
    case("HybridSampler-prefix=int", lambda c: HybridSampler(refined_attr_prefix=3), TypeError,
         r"refined_attr_prefix must be a non-empty string"),
    case("HybridSampler-seed=str", lambda c: HybridSampler(seed="0"), TypeError,
         rf"seed must be (None or )?an {INT}"),
    case("record_refined-trial=str", lambda c: record_refined("trial", "x", 1.0), TypeError,
         r"trial must be an optuna trial"),
    case("record_refined-unknown-name", lambda c: record_refined(c.trial, "y", 1.0),
         ValueError, r"name must be a parameter the trial has suggested"),
    case("record_refined-value=nan", lambda c: record_refined(c.trial, "x", math.nan),
         ValueError, r"value must be a finite real number"),
    case("record_refined-value=str", lambda c: record_refined(c.trial, "x", "1.0"), TypeError,
         r"value must be a finite real number"),
    case("record_refined-categorical", lambda c: record_refined(c.trial, "c", 1.0), ValueError,
         r"parameter 'c' is categorical"),
    case("IFTPruningCallback-trial=str", lambda c: IFTPruningCallback("trial"), TypeError,
         r"trial must be an optuna\.Trial"),
    case("IFTPruningCallback-monitor=int", lambda c: IFTPruningCallback(c.trial, monitor=3),
         TypeError, r"monitor must be a str"),
    # -- integration: run_trainer ---------------------------------------------------------------
    case("run_trainer-trial=str",
         lambda c: run_trainer("trial", eval_trainer(), hyper_steps=2, artifact_store=c.store),
         TypeError, r"trial must be an optuna\.Trial"),
    case("run_trainer-trainer=str",
         lambda c: run_trainer(c.trial, "trainer", hyper_steps=2, artifact_store=c.store),
         TypeError, r"trainer must be a HyperTrainer"),
    case("run_trainer-hyper_steps=0",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=0, artifact_store=c.store),
         ValueError, rf"hyper_steps must be an {INT} >= 1"),
    case("run_trainer-hyper_steps=2.5",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=2.5, artifact_store=c.store),
         TypeError, rf"hyper_steps must be an {INT} >= 1"),
    case("run_trainer-hyper_steps=str",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps="4", artifact_store=c.store),
         TypeError, rf"hyper_steps must be an {INT} >= 1"),
    case("run_trainer-checkpoint_every=0",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=2, artifact_store=c.store,
                               checkpoint_every=0),
         ValueError, rf"checkpoint_every must be (None or )?an {INT} >= 1"),
    case("run_trainer-checkpoint_every=1.5",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=2, artifact_store=c.store,
                               checkpoint_every=1.5),
         TypeError, rf"checkpoint_every must be (None or )?an {INT} >= 1"),
    case("run_trainer-monitor=accuracy",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=2, artifact_store=c.store,
                               monitor="accuracy"),
         ValueError, r"monitor must be '<name>_loss' or '<name>_metric'"),
    case("run_trainer-monitor-not-in-eval_data",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=2, artifact_store=c.store,
                               monitor="test_loss"),
         ValueError, r"monitor must be .*eval_data \['val'\]"),
    case("run_trainer-monitor=int",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=2, artifact_store=c.store,
                               monitor=3),
         TypeError, r"monitor must be"),
    case("run_trainer-artifact_store=str",
         lambda c: run_trainer(c.trial, eval_trainer(), hyper_steps=1, artifact_store="dir",
                               checkpoint_every=None, prune=False),
         TypeError, r"artifact_store must be"),
    # -- integration: save_learned, load_learned, warm_start ------------------------------------
    case("save_learned-FrozenTrial-without-storage",
         lambda c: save_learned(c.frozen, eval_trainer(), c.store), ValueError,
         r"storage is required when trial is a FrozenTrial"),
    case("save_learned-trainer=str", lambda c: save_learned(c.trial, "model", c.store),
         TypeError, r"model must be a torch\.nn\.Module or a HyperTrainer"),
    case("save_learned-no-hyperparameters", lambda c: save_learned(c.trial, Plain(), c.store),
         ValueError, r"the model declares no HyperParameter"),
    case("save_learned-trial=str", lambda c: save_learned("trial", eval_trainer(), c.store),
         TypeError, r"trial must be an optuna"),
    case("save_learned-artifact_store=str",
         lambda c: save_learned(c.trial, eval_trainer(), "store"), TypeError,
         r"artifact_store must be"),
    case("load_learned-trial_number=str", lambda c: load_learned(c.study, "0", c.store),
         TypeError, rf"trial_number must be an {INT}"),
    case("load_learned-trial_number=True", lambda c: load_learned(c.study, True, c.store),
         TypeError, rf"trial_number must be an {INT}"),
    case("load_learned-no-such-trial", lambda c: load_learned(c.study, 99, c.store),
         ValueError, r"trial_number 99 is not a trial of study 'bad-inputs'"),
    case("load_learned-nothing-learned", lambda c: load_learned(c.study, 0, c.store),
         ValueError, r"trial 0 has no learned tensors"),
    case("load_learned-study=str", lambda c: load_learned("study", 0, c.store), TypeError,
         r"study must be an optuna\.Study"),
    case("warm_start-model=str", lambda c: warm_start("model", c.study, c.store), TypeError,
         r"model must be a torch\.nn\.Module or a HyperTrainer"),
    case("warm_start-study=str", lambda c: warm_start(Tiny(), "study", c.store), TypeError,
         r"study must be an optuna\.Study"),
    case("warm_start-multi-objective",
         lambda c: warm_start(Tiny(), optuna.create_study(directions=["minimize", "maximize"]),
                              c.store),
         ValueError, r"warm_start needs a single-objective study"),
    case("warm_start-exclude=str", lambda c: warm_start(Tiny(), c.study, c.store, exclude="3"),
         TypeError, rf"exclude must be (None or )?an {INT}"),
    # -- integration: create_storage ------------------------------------------------------------
    case("create_storage-int", lambda c: create_storage(3), TypeError,
         r"storage must be a URL, a path or an Optuna storage"),
    case("create_storage-empty", lambda c: create_storage(""), ValueError,
         r"storage must be a database URL or a journal file path"),
    case("create_storage-unknown-database", lambda c: create_storage("foo://bar"), ValueError,
         r"storage 'foo://bar' names the unknown database 'foo'"),
    case("create_storage-not-a-url", lambda c: create_storage("://nowhere"), ValueError,
         r"storage '://nowhere' is not a database URL"),
    case("create_storage-missing-driver",
         lambda c: create_storage("mysql+nosuchdriver://u@h/db"), ValueError,
         r"storage 'mysql\+nosuchdriver://u@h/db' (names the unknown database|needs the "
         r"database driver)"),
    case("create_storage-heartbeat_interval=0",
         lambda c: create_storage(c.tmp / "s.log", heartbeat_interval=0), ValueError,
         rf"heartbeat_interval must be (None or )?an {INT} >= 1"),
    case("create_storage-heartbeat_interval=1.5",
         lambda c: create_storage(c.tmp / "s.log", heartbeat_interval=1.5), TypeError,
         rf"heartbeat_interval must be (None or )?an {INT} >= 1"),
    case("create_storage-grace_period=0",
         lambda c: create_storage(c.tmp / "s.log", heartbeat_interval=1, grace_period=0),
         ValueError, rf"grace_period must be (None or )?an {INT} >= 1"),
    case("create_storage-connect_attempts=0",
         lambda c: create_storage(c.tmp / "s.log", connect_attempts=0), ValueError,
         rf"connect_attempts must be an {INT} >= 1"),
    case("create_storage-connect_attempts=str",
         lambda c: create_storage(c.tmp / "s.log", connect_attempts="5"), TypeError,
         rf"connect_attempts must be an {INT} >= 1"),
    case("create_storage-max_retry=-1",
         lambda c: create_storage(c.tmp / "s.log", max_retry=-1), ValueError,
         rf"max_retry must be (None or )?an {INT} >= 0"),
    case("create_storage-max_retry=-1-with-heartbeats",
         lambda c: create_storage(c.tmp / "s.log", heartbeat_interval=1, max_retry=-1),
         ValueError, rf"max_retry must be (None or )?an {INT} >= 0"),
    case("create_storage-max_retry=str",
         lambda c: create_storage(c.tmp / "s.log", heartbeat_interval=1, max_retry="3"),
         TypeError, rf"max_retry must be (None or )?an {INT}"),
    # -- scikit-learn: bad parameters -----------------------------------------------------------
    case("IFTLogisticRegression-weight_decay=l2", lambda c: lr_fit(weight_decay="l2"),
         ValueError, r"weight_decay must be one of 'global', 'per_weight'"),
    case("IFTLogisticRegression-validation_fraction=0",
         lambda c: lr_fit(validation_fraction=0), ValueError,
         r"validation_fraction must be a number in the open interval \(0, 1\)"),
    case("IFTLogisticRegression-validation_fraction=1.5",
         lambda c: lr_fit(validation_fraction=1.5), ValueError,
         r"validation_fraction must be a number in the open interval \(0, 1\)"),
    case("IFTLogisticRegression-validation_fraction=str",
         lambda c: lr_fit(validation_fraction="0.2"), TypeError,
         r"validation_fraction must be a number in the open interval \(0, 1\)"),
    case("IFTLogisticRegression-refit=str", lambda c: lr_fit(refit="yes"), TypeError,
         r"refit must be True or False"),
    case("IFTLogisticRegression-solver=lbfgs", lambda c: lr_fit(solver="lbfgs"), ValueError,
         r"solver must be one of 'cg', 'neumann', 'identity', 'exact'"),
    case("IFTLogisticRegression-solver_steps=0", lambda c: lr_fit(solver_steps=0), ValueError,
         rf"solver_steps must be an {INT} >= 1"),
    case("IFTLogisticRegression-solver_steps=2.5", lambda c: lr_fit(solver_steps=2.5),
         TypeError, rf"solver_steps must be an {INT} >= 1"),
    case("IFTLogisticRegression-inner_steps=0", lambda c: lr_fit(inner_steps=0), ValueError,
         rf"inner_steps must be an {INT} >= 1"),
    case("IFTLogisticRegression-inner_learning_rate=0",
         lambda c: lr_fit(inner_learning_rate=0), ValueError,
         rf"inner_learning_rate must be a {NUM} > 0"),
    case("IFTLogisticRegression-learning_rate=-0.1", lambda c: lr_fit(learning_rate=-0.1),
         ValueError, rf"learning_rate must be a {NUM} > 0"),
    case("IFTLogisticRegression-learning_rate=str", lambda c: lr_fit(learning_rate="fast"),
         TypeError, rf"learning_rate must be a {NUM} > 0"),
    case("IFTLogisticRegression-weight_decay_init=0", lambda c: lr_fit(weight_decay_init=0),
         ValueError, rf"weight_decay_init must be a {NUM} > 0"),
    case("IFTLogisticRegression-max_iter=0", lambda c: lr_fit(max_iter=0), ValueError,
         rf"max_iter must be an {INT} >= 1"),
    case("IFTLogisticRegression-tol=-1", lambda c: lr_fit(tol=-1), ValueError,
         rf"tol must be a {NUM} >= 0"),
    case("IFTLogisticRegression-tol=str", lambda c: lr_fit(tol="small"), TypeError,
         rf"tol must be a {NUM} >= 0"),
    case("IFTLogisticRegression-n_iter_no_change=0", lambda c: lr_fit(n_iter_no_change=0),
         ValueError, rf"n_iter_no_change must be an {INT} >= 1"),
    case("IFTLogisticRegression-verbose=-1", lambda c: lr_fit(verbose=-1), ValueError,
         rf"verbose must be an {INT} >= 0"),
    case("IFTLogisticRegression-verbose=str", lambda c: lr_fit(verbose="loud"), TypeError,
         rf"verbose must be an {INT} >= 0"),
    case("IFTLogisticRegression-random_state=str", lambda c: lr_fit(random_state="seed"),
         TypeError, r"random_state must be None, an integer or a numpy RandomState"),
    case("IFTLogisticRegression-device=gpu", lambda c: lr_fit(device="gpu"), ValueError,
         r'device must be "auto" \(CUDA when present\), "cpu", "cuda".*got \'gpu\''),
    # -- scikit-learn: bad X and y --------------------------------------------------------------
    case("IFTLogisticRegression.fit-one-class", lambda c: lr_fit(y_=np.zeros(30)), ValueError,
         r"\by\b.*2 classes|2 classes.*\by\b"),
    case("IFTLogisticRegression.fit-lengths-differ", lambda c: lr_fit(y_=SK_Y_CLASS[:20]),
         ValueError, r"\bX\b.*\by\b|\by\b.*\bX\b"),
    case("IFTLogisticRegression.fit-X-NaN",
         lambda c: lr_fit(X_=np.where(SK_X > 1, np.nan, SK_X)), ValueError,
         r"Input X contains NaN"),
    case("IFTLogisticRegression.fit-X-1d", lambda c: lr_fit(X_=SK_X[:, 0]), ValueError,
         r"\bX\b.*2D|2D.*\bX\b"),
    case("IFTLogisticRegression.fit-y-continuous", lambda c: lr_fit(y_=SK_Y_REG), ValueError,
         r"Unknown label type: continuous"),
    case("IFTLogisticRegression.fit-y=None", lambda c: lr_fit(y_=None), ValueError,
         r"requires y to be passed"),
    case("IFTRidge-weight_decay=layer", lambda c: ridge_fit(weight_decay="layer"), ValueError,
         r"weight_decay must be one of .*'global'"),
    case("IFTRidge-solver=svd", lambda c: ridge_fit(solver="svd"), ValueError,
         r"solver must be one of 'cg', 'neumann', 'identity', 'exact'"),
    case("IFTRidge-max_iter=0", lambda c: ridge_fit(max_iter=0), ValueError,
         rf"max_iter must be an {INT} >= 1"),
    case("IFTRidge-learning_rate=0", lambda c: ridge_fit(learning_rate=0), ValueError,
         rf"learning_rate must be a {NUM} > 0"),
    case("IFTRidge.fit-string-targets", lambda c: ridge_fit(y_=["a", "b"] * 15), ValueError,
         r"\by\b.*(numeric|number)"),
    case("IFTRidge.fit-y-2-columns", lambda c: ridge_fit(y_=np.ones((30, 2))), ValueError,
         r"\by\b should be a 1d array"),
    case("IFTRidge.fit-X-inf", lambda c: ridge_fit(X_=np.where(SK_X > 1, np.inf, SK_X)),
         ValueError, r"Input X contains infinity"),
    case("IFTRidge.fit-y-NaN", lambda c: ridge_fit(y_=np.where(SK_Y_REG > 0, np.nan, 0.0)),
         ValueError, r"Input y contains NaN"),
    case("IFTRidge.fit-one-sample", lambda c: ridge_fit(X_=SK_X[:1], y_=SK_Y_REG[:1]),
         ValueError, r"n_samples=1: an internal validation split needs at least 2 samples"),
    case("validation_split_curve-sizes=[1]", lambda c: curve(sizes=[1]), ValueError,
         r"sizes must lie in \[2, 30\]"),
    case("validation_split_curve-sizes-too-large", lambda c: curve(sizes=[1000]), ValueError,
         r"sizes must lie in \[2, 30\]"),
    case("validation_split_curve-sizes=str", lambda c: curve(sizes="20"), TypeError,
         r"sizes must be a sequence of integers"),
    case("validation_split_curve-fractions=[0]", lambda c: curve(fractions=[0.0]), ValueError,
         r"fractions must be a number in the open interval \(0, 1\)"),
    case("validation_split_curve-fractions=[1.5]", lambda c: curve(fractions=[1.5]),
         ValueError, r"fractions must be a number in the open interval \(0, 1\)"),
    case("validation_split_curve-weight_decays", lambda c: curve(weight_decays=["per_feature"]),
         ValueError, r"weight_decays must be one of 'global', 'per_weight'"),
    case("validation_split_curve-seeds=[]", lambda c: curve(seeds=[]), ValueError,
         r"seeds must each be non-empty"),
    case("validation_split_curve-seeds=[-1]", lambda c: curve(seeds=[-1]), ValueError,
         rf"seeds must be .*{INT}"),
    case("validation_split_curve-X-y-lengths", lambda c: curve(y=SK_Y_CLASS[:10]), ValueError,
         r"X and y have different lengths: 30 and 10"),
    case("validation_split_curve-X_test-features", lambda c: curve(X_test=SK_X[:, :2]),
         ValueError, r"X_test must be \(n_test, 3\)"),
    case("validation_split_curve-estimator=str", lambda c: curve(estimator="lr"), TypeError,
         r"estimator must be (None or )?an IFTLogisticRegression"),
    # -- data -----------------------------------------------------------------------------------
    case("load_dataset-name=imagenet", lambda c: data_mod.load_dataset("imagenet"), ValueError,
         r"name must be one of 'digits', 'mnist', 'fashion-mnist', 'cifar10'"),
    case("load_dataset-name=int", lambda c: data_mod.load_dataset(3), TypeError,
         r"name must be one of 'digits'"),
    case("load_dataset-val_fraction=0", lambda c: data_mod.load_dataset("digits", val_fraction=0),
         ValueError, r"val_fraction must be a number in \(0, 1\)"),
    case("load_dataset-val_fraction=str",
         lambda c: data_mod.load_dataset("digits", val_fraction="0.2"), TypeError,
         r"val_fraction must be a number in \(0, 1\)"),
    case("load_dataset-test_fraction-not-digits",
         lambda c: data_mod.load_dataset("mnist", root=c.tmp, test_fraction=0.2), ValueError,
         r"test_fraction applies only to 'digits'"),
    case("load_dataset-test_fraction=1",
         lambda c: data_mod.load_dataset("digits", test_fraction=1.0), ValueError,
         r"test_fraction must be a number in \(0, 1\)"),
    case("load_dataset-n_train=0", lambda c: data_mod.load_dataset("digits", n_train=0),
         ValueError, r"n_train must be None or a positive integer"),
    case("load_dataset-n_train=2.5", lambda c: data_mod.load_dataset("digits", n_train=2.5),
         TypeError, r"n_train must be None or a positive integer"),
    case("load_dataset-n_val=str", lambda c: data_mod.load_dataset("digits", n_val="10"),
         TypeError, r"n_val must be None or a positive integer"),
    case("load_dataset-seed=-1", lambda c: data_mod.load_dataset("digits", seed=-1), ValueError,
         r"seed must be a non-negative integer"),
    case("load_dataset-seed=1.5", lambda c: data_mod.load_dataset("digits", seed=1.5),
         TypeError, r"seed must be a non-negative integer"),
    case("load_dataset-dtype=int64", lambda c: data_mod.load_dataset("digits", dtype=torch.int64),
         ValueError, r"dtype must be a floating torch\.dtype"),
    case("load_dataset-dtype=str", lambda c: data_mod.load_dataset("digits", dtype="float32"),
         TypeError, r"dtype must be a floating torch\.dtype"),
    case("load_dataset-mnist-without-root", lambda c: data_mod.load_dataset("mnist"), ValueError,
         r"root is required for 'mnist'"),
    case("load_dataset-mnist-missing-files", lambda c: data_mod.load_dataset("mnist", root=c.tmp),
         FileNotFoundError, r"'mnist' files not found: expected .*train-images-idx3-ubyte"),
    case("load_dataset-cifar10-missing-folder",
         lambda c: data_mod.load_dataset("cifar10", root=c.tmp), FileNotFoundError,
         r"'cifar10' files not found: expected the folder .*cifar-10-batches-py"),
    case("load_dataset-n_train-too-large", lambda c: data_mod.load_dataset("digits", n_train=5000),
         ValueError, r"n_train must be at most \d+ \(the examples available\)"),
    case("load_dataset-balanced-not-multiple",
         lambda c: data_mod.load_dataset("digits", n_train=15, balanced=True), ValueError,
         r"n_train must be a multiple of num_classes \(10\) when balanced=True"),
    case("load_dataset-device=gpu", lambda c: data_mod.load_dataset("digits", device="gpu"),
         ValueError, DEVICE),
    case("load_diabetes-val_fraction=1", lambda c: data_mod.load_diabetes(val_fraction=1.0),
         ValueError, r"val_fraction must be a number in \(0, 1\)"),
    case("load_ptb-root=None", lambda c: data_mod.load_ptb(None), TypeError,
         r"root must be the folder"),
    case("load_ptb-missing-files", lambda c: data_mod.load_ptb(c.tmp / "nowhere"),
         FileNotFoundError, r"lacks .*train\.txt"),
    case("load_ptb-max_train_tokens=0", lambda c: data_mod.load_ptb(c.corpus, max_train_tokens=0),
         ValueError, rf"max_train_tokens must be an {INT} >= 1"),
    case("load_ptb-max_train_tokens=1.5",
         lambda c: data_mod.load_ptb(c.corpus, max_train_tokens=1.5), TypeError,
         rf"max_train_tokens must be an {INT} >= 1"),
    case("load_ptb-empty-train", lambda c: data_mod.load_ptb(write_corpus(c.tmp / "e", train="")),
         ValueError, r"train\.txt holds no words"),
    case("load_ptb-not-utf8",
         lambda c: data_mod.load_ptb(write_corpus(c.tmp / "u", valid=b"the \xff cat\n")),
         ValueError, r"valid\.txt: not valid UTF-8"),
    case("load_ptb-unknown-word",
         lambda c: data_mod.load_ptb(write_corpus(c.tmp / "w", test="the zebra\n")), ValueError,
         r"test\.txt: word 'zebra' is not in the training vocabulary"),
    case("Corpus.sequences-split=val",
         lambda c: data_mod.load_ptb(c.corpus).sequences("val", 5), ValueError,
         r"split must be one of \('train', 'valid', 'test'\)"),
    case("Corpus.sequences-seq_len=0",
         lambda c: data_mod.load_ptb(c.corpus).sequences("train", 0), ValueError,
         rf"seq_len must be an {INT} >= 1"),
    case("Corpus.sequences-seq_len-too-long",
         lambda c: data_mod.load_ptb(c.corpus).sequences("valid", 500), ValueError,
         r"too few for one sequence of seq_len=500"),
    # -- experiments: arguments refused up front ------------------------------------------------
    case("overfit-models=svm", lambda c: ex.overfit(models=("svm",)), ValueError,
         r"models may hold only 'linear', 'mlp', 'cnn'"),
    case("overfit-models=str", lambda c: ex.overfit(models="linear"), TypeError,
         r"models must be a non-empty sequence of 'linear', 'mlp', 'cnn'"),
    case("overfit-models=()", lambda c: ex.overfit(models=()), ValueError,
         r"models must be a non-empty sequence"),
    case("overfit-models-repeated", lambda c: ex.overfit(models=("mlp", "mlp")), ValueError,
         r"models must not repeat a kind"),
    case("overfit-n_train=0", lambda c: ex.overfit(n_train=0), ValueError,
         rf"n_train must be an {INT} >= 1"),
    case("overfit-hyper_steps=1.5", lambda c: ex.overfit(hyper_steps=1.5), TypeError,
         rf"hyper_steps must be an {INT} >= 1"),
    case("overfit-neumann_steps=-1", lambda c: ex.overfit(neumann_steps=-1), ValueError,
         rf"neumann_steps must be an {INT} >= 0"),
    case("overfit-weight_lr=0", lambda c: ex.overfit(weight_lr=0), ValueError,
         rf"weight_lr must be a {NUM} > 0"),
    case("overfit-init_decay=-1", lambda c: ex.overfit(init_decay=-1.0), ValueError,
         rf"init_decay must be a {NUM} > 0"),
    case("overfit-show_progress=str", lambda c: ex.overfit(show_progress="yes"), TypeError,
         r"show_progress must be a bool"),
    case("overfit-device=gpu", lambda c: ex.overfit(device="gpu"), ValueError, DEVICE),
    case("overfit-dataset=imagenet", lambda c: ex.overfit(dataset="imagenet"), ValueError,
         r"dataset must be one of"),
    case("distill-hyper_steps=0", lambda c: ex.distill(hyper_steps=0), ValueError,
         rf"hyper_steps must be an {INT} >= 1"),
    case("distill-decay=0", lambda c: ex.distill(decay=0), ValueError,
         rf"decay must be a {NUM} > 0"),
    case("distill-learn_labels=str", lambda c: ex.distill(learn_labels="yes"), TypeError,
         r"learn_labels must be a bool"),
    case("distill-init=zeros", lambda c: ex.distill(init="zeros"), ValueError,
         r"init must be one of .*'mean'"),
    case("distill-solver=exact", lambda c: ex.distill(solver="exact"), ValueError,
         r"solver must be one of .*'cg'"),
    case("distill-lr_schedule=step", lambda c: ex.distill(lr_schedule="step"), ValueError,
         r"lr_schedule must be one of .*'cosine'"),
    case("distill-batch_size=0", lambda c: ex.distill(batch_size=0), ValueError,
         rf"batch_size must be an {INT} >= 1"),
    case("distill-fit_iterations=2.5", lambda c: ex.distill(fit_iterations=2.5), TypeError,
         rf"fit_iterations must be an {INT} >= 1"),
    case("distill-dataset=svhn", lambda c: ex.distill(dataset="svhn"), ValueError,
         r"dataset must be one of"),
    case("augment-seeds=0", lambda c: ex.augment(seeds=0), ValueError,
         rf"seeds must be an {INT} >= 1"),
    case("augment-seeds=[]", lambda c: ex.augment(seeds=[]), ValueError,
         r"seeds must be an integer >= 1 or a non-empty sequence of integers"),
    case("augment-seeds=str", lambda c: ex.augment(seeds="3"), TypeError,
         r"seeds must be an integer >= 1 or a non-empty sequence of integers"),
    case("augment-methods=rotate", lambda c: ex.augment(methods=("rotate",)), ValueError,
         r"methods must be a non-empty sequence drawn from"),
    case("augment-methods=str", lambda c: ex.augment(methods="neumann"), TypeError,
         r"methods must be a non-empty sequence drawn from"),
    case("augment-n_test=0", lambda c: ex.augment(n_test=0), ValueError,
         rf"n_test must be an {INT} >= 1"),
    case("augment-noise_scale=-1", lambda c: ex.augment(noise_scale=-1.0), ValueError,
         rf"noise_scale must be a {NUM} >= 0"),
    case("augment-neumann_alpha=str", lambda c: ex.augment(neumann_alpha="fast"), TypeError,
         r"neumann_alpha must be .*'auto'"),
    case("augment-n_std_samples=1", lambda c: ex.augment(n_std_samples=1), ValueError,
         rf"n_std_samples must be an {INT} >= 2"),
    case("augment-dataset=svhn", lambda c: ex.augment(dataset="svhn"), ValueError,
         r"dataset must be one of"),
    case("augment-mnist-without-data_root", lambda c: ex.augment(dataset="mnist"), ValueError,
         r"data_root is required for dataset='mnist'"),
    case("split_ratio-seeds=0", lambda c: ex.split_ratio(seeds=0), ValueError,
         r"seeds must be a positive integer or a sequence of integers"),
    case("split_ratio-seeds=str", lambda c: ex.split_ratio(seeds="3", sizes=[1]), TypeError,
         r"seeds must be a positive integer or a sequence of integers"),
    case("split_ratio-sizes-too-large", lambda c: ex.split_ratio(sizes=[100000], seeds=1),
         ValueError, r"sizes must be at most \d+ \(the training pool of digits\)"),
    case("split_ratio-fractions=[0]",
         lambda c: ex.split_ratio(sizes=[50], fractions=[0.0], seeds=1, show_progress=False),
         ValueError, r"fractions must be a number in the open interval \(0, 1\)"),
    case("split_ratio-max_iter=0",
         lambda c: ex.split_ratio(sizes=[50], fractions=[0.5], seeds=1, max_iter=0,
                                  show_progress=False),
         ValueError, rf"max_iter must be an {INT} >= 1"),
    case("split_ratio-dataset=imagenet", lambda c: ex.split_ratio(dataset="imagenet"),
         ValueError, r"dataset must be one of"),
    case("compare_inverse-max_steps=0", lambda c: ex.compare_inverse(max_steps=0), ValueError,
         rf"max_steps must be an {INT} >= 1"),
    case("compare_inverse-max_steps=2.5", lambda c: ex.compare_inverse(max_steps=2.5),
         TypeError, rf"max_steps must be an {INT} >= 1"),
    case("compare_inverse-max_steps=True",
         lambda c: ex.compare_inverse(max_steps=True, n_draws=0), TypeError,
         rf"max_steps must be an {INT} >= 1"),
    case("compare_inverse-n_draws=0", lambda c: ex.compare_inverse(n_draws=0), ValueError,
         rf"n_draws must be an {INT} >= 1"),
    case("compare_inverse-range-reversed",
         lambda c: ex.compare_inverse(log10_decay_range=(0.0, -2.0)), ValueError,
         r"log10_decay_range must be \(low, high\) with low <= high"),
    case("compare_inverse-range-three-numbers",
         lambda c: ex.compare_inverse(log10_decay_range=(1.0, 2.0, 3.0)), ValueError,
         r"log10_decay_range must be \(low, high\)"),
    case("compare_inverse-range=str", lambda c: ex.compare_inverse(log10_decay_range="ab"),
         TypeError, r"log10_decay_range must be \(low, high\)"),
    case("lstm-epochs-below-one-round", lambda c: lstm_tiny(c, epochs=0.2, inner_steps=20),
         ValueError, r"epochs.*inner_steps"),
    case("lstm-epochs=0", lambda c: lstm_tiny(c, epochs=0), ValueError,
         rf"epochs must be a {NUM} > 0"),
    case("lstm-methods=grid", lambda c: lstm_tiny(c, methods=["grid"]), ValueError,
         r"methods must be distinct names from 'none', 'ift-7', 'ift-many', "
         r"'ift-many-from-7', 'tpe'"),
    case("lstm-methods-many-from-7-alone", lambda c: lstm_tiny(c, methods=["ift-many-from-7"]),
         ValueError, r"methods: 'ift-many-from-7' starts from the values 'ift-7' learned"),
    case("lstm-methods-tpe-alone", lambda c: lstm_tiny(c, methods=["tpe"]), ValueError,
         r"methods: 'tpe' gets the wall-clock time of 'ift-7'"),
    case("lstm-optimizer=rmsprop", lambda c: lstm_tiny(c, optimizer="rmsprop"), ValueError,
         r"optimizer must be one of"),
    case("lstm-seq_len=1", lambda c: lstm_tiny(c, seq_len=1), ValueError,
         rf"seq_len must be an {INT} >= 2"),
    case("lstm-missing-corpus", lambda c: lstm_tiny(c, data_root=c.tmp / "nowhere"),
         FileNotFoundError, r"lacks .*train\.txt"),
    case("lstm_overfit-n_sequences=0",
         lambda c: ex.lstm_overfit(data_root=c.corpus, out=None, n_sequences=0), ValueError,
         rf"n_sequences must be an {INT} >= 1"),
    case("demo-n_trials=0", lambda c: ex.demo(n_trials=0, out=c.tmp), ValueError,
         rf"n_trials must be an {INT} >= 1"),
    case("demo-hyper_steps=str", lambda c: ex.demo(hyper_steps="60", out=c.tmp), TypeError,
         rf"hyper_steps must be an {INT} >= 1"),
    case("demo-top=0", lambda c: ex.demo(top=0, out=c.tmp), ValueError,
         rf"top must be an {INT} >= 1"),
    case("demo-timeout=0", lambda c: ex.demo(timeout=0, out=c.tmp), ValueError,
         rf"timeout must be a {NUM} > 0"),
    case("demo-timeout=str", lambda c: ex.demo(timeout="1h", out=c.tmp), TypeError,
         rf"timeout must be a {NUM} > 0"),
    case("demo-seed=-1", lambda c: ex.demo(seed=-1, out=c.tmp), ValueError,
         rf"seed must be an {INT} >= 0"),
    case("demo-show_progress=str", lambda c: ex.demo(show_progress="no", out=c.tmp), TypeError,
         r"show_progress must be a bool"),
    case("demo-baseline=str", lambda c: ex.demo(baseline="no", out=c.tmp), TypeError,
         r"baseline must be a bool"),
    case("demo-val_fraction=1", lambda c: ex.demo(val_fraction=1.0, out=c.tmp), ValueError,
         rf"val_fraction must be a {NUM} > 0 and < 1, got 1.0"),
    case("demo-warm_start=str", lambda c: ex.demo(warm_start="yes", out=c.tmp), TypeError,
         r"warm_start must be a bool"),
    case("run_worker-val_fraction=str",
         lambda c: ex.run_worker(storage=str(c.tmp / "s.log"), n_trials=1, out=c.tmp,
                                 val_fraction="half"),
         TypeError, rf"val_fraction must be a {NUM} > 0 and < 1"),
    case("resplit-val_fraction=0",
         lambda c: data_mod.load_dataset("digits", n_train=10, n_val=10, n_test=10).resplit(0.0),
         ValueError, r"val_fraction must be a number in \(0, 1\), got 0.0"),
    case("demo-storage=unknown", lambda c: ex.demo(storage="foo://bar", out=c.tmp), ValueError,
         r"storage 'foo://bar' names the unknown database"),
    case("demo-device=gpu", lambda c: ex.demo(device="gpu", out=c.tmp, n_trials=1,
                                              hyper_steps=1, show_progress=False),
         ValueError, DEVICE),
    case("run_worker-n_trials=0",
         lambda c: ex.run_worker(storage=str(c.tmp / "s.log"), n_trials=0, out=c.tmp),
         ValueError, rf"n_trials must be an {INT} >= 1"),
    case("run_worker-total_trials=0",
         lambda c: ex.run_worker(storage=str(c.tmp / "s.log"), n_trials=1, total_trials=0,
                                 out=c.tmp),
         ValueError, rf"total_trials must be an {INT} >= 1"),
    # -- Lightning: IFTCallback -----------------------------------------------------------------
    case("IFTCallback-val_data=None", lambda c: lightning_callback(None), TypeError,
         r"val_data is required"),
    case("IFTCallback-val_data=str", lambda c: lightning_callback("val"), TypeError,
         r"val_data must be a tensor, a tuple of tensors"),
    case("IFTCallback-val_data=numpy", lambda c: lightning_callback((X_NP, Y_NP)), TypeError,
         rf"val_data.*{CONVERT}"),
    case("IFTCallback-every_n_steps=0", lambda c: lightning_callback((X, Y), every_n_steps=0),
         ValueError, rf"every_n_steps must be an {INT} >= 1"),
    case("IFTCallback-every_n_steps=2.5",
         lambda c: lightning_callback((X, Y), every_n_steps=2.5), TypeError,
         rf"every_n_steps must be an {INT} >= 1"),
    case("IFTCallback-alpha_every=0", lambda c: lightning_callback((X, Y), alpha_every=0),
         ValueError, rf"alpha_every must be an {INT} >= 1"),
    case("IFTCallback-val_batches=0", lambda c: lightning_callback((X, Y), val_batches=0),
         ValueError, rf"val_batches must be an {INT} >= 1"),
    case("IFTCallback-val_batch_size=0", lambda c: lightning_callback((X, Y), val_batch_size=0),
         ValueError, rf"val_batch_size must be an {INT} >= 1"),
    case("IFTCallback-seed=-1", lambda c: lightning_callback((X, Y), seed=-1), ValueError,
         rf"seed must be an {INT} >= 0"),
    case("IFTCallback-solver=Unrolled", lambda c: lightning_callback((X, Y), solver=Unrolled()),
         TypeError, r"solver=Unrolled is not available in IFTCallback"),
    case("IFTCallback-solver=str", lambda c: lightning_callback((X, Y), solver="cg"), TypeError,
         r"solver must be a solver\(hvp, v\)"),
    case("IFTCallback-solver=Neumann-class", lambda c: lightning_callback((X, Y), solver=Neumann),
         TypeError, rf"solver.*{CALL_IT}"),
    case("IFTCallback-hyper_optimizer=instance",
         lambda c: lightning_callback((X, Y), hyper_optimizer=torch.optim.Adam(
             [nn.Parameter(torch.ones(1))])),
         TypeError, r"hyper_optimizer must be a factory f\(hyperparameters\)"),
    case("IFTCallback-hyper_optimizer=str",
         lambda c: lightning_callback((X, Y), hyper_optimizer="adam"), TypeError,
         r"hyper_optimizer must be a factory f\(hyperparameters\)"),
    case("IFTCallback-train_loss=str", lambda c: lightning_callback((X, Y), train_loss="ce"),
         TypeError, r"train_loss must be a function train_loss\(module, batch\)"),
    case("IFTCallback-val_loss=int", lambda c: lightning_callback((X, Y), val_loss=3),
         TypeError, r"val_loss must be a function val_loss\(module, batch\)"),
    case("IFTCallback-log=str", lambda c: lightning_callback((X, Y), log="yes"), TypeError,
         r"log must be a bool"),
]


@pytest.fixture()
def ctx(tmp_path: Path) -> Ctx:
    return Ctx(tmp_path)


@pytest.mark.parametrize("call, error, pattern", CASES)
def test_bad_input_is_refused_with_a_message_naming_it(call, error, pattern, ctx):
    with pytest.raises(error) as info:
        call(ctx)
    if error is ValueError:  # out of range, not of the wrong kind
        assert not isinstance(info.value, TypeError), f"a TypeError: {info.value!r}"
    message = str(info.value)
    assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"


# -- the command line ---------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``main(argv)``'s exit status, whether it returns or raises ``SystemExit``, and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as done:
            code = 0 if done.code is None else done.code
    return code, stderr.getvalue()


def line(id: str, argv: list[str], pattern: str, *, today: str | None = None):
    """A bad command line: exit status 2, one line on stderr matching ``pattern`` ("{tmp}": a
    fresh folder, "{corpus}": a valid tiny corpus)."""
    marks = [pytest.mark.xfail(strict=True, reason=today)] if today else []
    return pytest.param(argv, pattern, id=id, marks=marks)


COMMAND_LINES = [
    line("demo--device=gpu", ["demo", "--out", "{tmp}", "--device", "gpu"],
         r"argument --device: must be \"auto\""),
    line("demo--n-trials=0", ["demo", "--out", "{tmp}", "--n-trials", "0"],
         r"argument --n-trials: must be an integer >= 1"),
    line("demo--timeout=-5", ["demo", "--out", "{tmp}", "--timeout", "-5"],
         r"argument --timeout: must be a finite number > 0"),
    line("demo--seed=-1", ["demo", "--out", "{tmp}", "--seed", "-1"],
         r"argument --seed: must be an integer >= 0"),
    line("demo--hyper-steps=abc", ["demo", "--out", "{tmp}", "--hyper-steps", "abc"],
         r"argument --hyper-steps: must be an integer >= 1"),
    line("demo--storage=unknown", ["demo", "--out", "{tmp}", "--storage", "foo://bar"],
         r"storage 'foo://bar' names the unknown database"),
    line("demo--bogus", ["demo", "--out", "{tmp}", "--bogus", "1"],
         r"unrecognized arguments: --bogus"),
    line("unknown-command", ["train"], r"argument COMMAND: invalid choice: 'train'"),
    line("worker-missing-arguments", ["worker"],
         r"the following arguments are required: --storage, --n-trials"),
    line("worker--n-trials=0", ["worker", "--storage", "{tmp}/s.log", "--n-trials", "0"],
         r"argument --n-trials: must be an integer >= 1"),
    line("worker--heartbeat-interval=0",
         ["worker", "--storage", "{tmp}/s.log", "--n-trials", "1", "--heartbeat-interval", "0"],
         r"argument --heartbeat-interval: must be an integer >= 1"),
    line("worker--device=tpu9",
         ["worker", "--storage", "{tmp}/s.log", "--n-trials", "1", "--device", "tpu9"],
         r"argument --device"),
    line("overfit--models=svm", ["overfit", "--out", "{tmp}", "--models", "svm"],
         r"argument --models: invalid choice: 'svm'"),
    line("overfit--hyper-steps=0", ["overfit", "--out", "{tmp}", "--hyper-steps", "0"],
         r"argument --hyper-steps: must be an integer >= 1"),
    line("overfit--dataset=mnist-without-data-root",
         ["overfit", "--out", "{tmp}", "--dataset", "mnist"],
         r"argument --data-root: required with --dataset mnist"),
    line("distill--seed=-3", ["distill", "--out", "{tmp}", "--seed", "-3"],
         r"argument --seed: must be an integer >= 0"),
    line("augment--seeds=0", ["augment", "--out", "{tmp}", "--seeds", "0"],
         r"argument --seeds: must be an integer >= 1"),
    line("split-ratio--fractions=abc", ["split-ratio", "--out", "{tmp}", "--fractions", "0.1,abc"],
         r"argument --fractions: must be comma-separated numbers"),
    line("split-ratio--sizes=empty", ["split-ratio", "--out", "{tmp}", "--sizes", ","],
         r"argument --sizes: must name at least one"),
    line("split-ratio--fractions=0", ["split-ratio", "--out", "{tmp}", "--fractions", "0,0.5",
                                      "--sizes", "50", "--seeds", "1", "--no-progress"],
         r"fractions must be a number in the open interval \(0, 1\)"),
    line("compare-inverse--max-steps=0", ["compare-inverse", "--out", "{tmp}", "--max-steps", "0"],
         r"argument --max-steps: must be an integer >= 1"),
    line("compare-inverse--log10-decay-range-reversed",
         ["compare-inverse", "--out", "{tmp}", "--log10-decay-range", "0", "-2"],
         r"log10.decay.range must be \(low, high\) with low <= high"),
    line("lstm-without-data-root", ["lstm"],
         r"the following arguments are required: --data-root"),
    line("lstm--epochs=0", ["lstm", "--data-root", "{corpus}", "--out", "{tmp}", "--epochs", "0"],
         r"argument --epochs: must be a finite number > 0"),
    line("lstm--data-root-missing", ["lstm", "--data-root", "{tmp}/nowhere", "--out", "{tmp}"],
         r"lacks .*train\.txt"),
    line("lstm--overfit--epochs", ["lstm", "--data-root", "{corpus}", "--out", "{tmp}",
                                   "--overfit", "--epochs", "2"],
         r"argument --epochs: not allowed with --overfit"),
    line("lstm--hyper-steps-without-overfit",
         ["lstm", "--data-root", "{corpus}", "--out", "{tmp}", "--hyper-steps", "3"],
         r"argument --hyper-steps: only with --overfit"),
    line("lstm--epochs-below-one-round",
         ["lstm", "--data-root", "{corpus}", "--out", "{tmp}", "--epochs", "0.2",
          "--methods", "none", "--hidden-size", "4", "--num-layers", "1", "--seq-len", "5",
          "--batch-size", "4", "--inner-steps", "20", "--evaluations", "1", "--device", "cpu",
          "--no-progress"],
         r"epochs.*inner.steps"),
]


@pytest.mark.parametrize("argv, pattern", COMMAND_LINES)
def test_bad_command_line_exits_2_with_one_line(argv, pattern, ctx):
    corpus = ctx.corpus
    argv = [a.format(tmp=ctx.tmp, corpus=corpus) for a in argv]
    code, stderr = run_cli(argv)
    assert code == 2, f"exit status {code}, stderr {stderr!r}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr!r}"
    assert lines[0].startswith("optuna-ift"), lines[0]
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"


# -- what must be accepted (from a user's report) -----------------------------------------------


def test_conjugate_gradient_accepts_a_numpy_float_tol():
    assert ConjugateGradient(tol=np.float32(1e-6)).tol == pytest.approx(1e-6)


def test_distilled_data_accepts_a_numpy_int_num_classes():
    distilled = DistilledData(num_per_class=1, num_classes=np.int64(10), shape=(4,))
    assert distilled.images.shape == (10, 4)


def test_run_trainer_accepts_numpy_int_hyper_steps(ctx):
    t = eval_trainer()
    value = run_trainer(ctx.trial, t, hyper_steps=np.int64(4), artifact_store=ctx.store,
                        checkpoint_every=None)
    assert math.isfinite(value) and t.hyper_step == 4


def test_ift_ridge_accepts_per_weight_like_logistic_regression():
    model = ridge_fit(weight_decay="per_weight")
    assert model.weight_decay_.shape == (3,)


def test_ift_ridge_keeps_accepting_per_feature():
    model = ridge_fit(weight_decay="per_feature")
    assert model.weight_decay_.shape == (3,)


def accepts(id: str, call, *, today: str | None = None):
    """A call with NumPy scalars where numbers go, which must be accepted."""
    marks = [pytest.mark.xfail(strict=True, reason=today)] if today else []
    return pytest.param(call, id=id, marks=marks)


NUMPY_SCALARS = [
    accepts("Neumann", lambda: Neumann(steps=np.int64(3), alpha=np.float32(0.5))),
    accepts("Exact", lambda: Exact(max_size=np.int32(10))),
    accepts("LossWeights", lambda: LossWeights(np.int64(4), init=np.float32(1.0))),
    accepts("ConcreteDropout", lambda: ConcreteDropout(np.int64(3), init=np.float32(0.2),
                                                       temperature=np.float64(0.1))),
    accepts("WeightDecay", lambda: WeightDecay(nn.Linear(2, 2), init=np.float32(1e-3))),
    accepts("AugmentationNet",
            lambda: AugmentationNet(np.int64(1), hidden=np.int64(2), depth=np.int64(1))),
    accepts("HyperTrainer",
            lambda: trainer(batch_size=np.int64(8), inner_steps=np.int32(2),
                            clip_grad_norm=np.float32(1.0), seed=np.int64(1))),
    accepts("unrolled_hypergradient", lambda: unrolled(steps=np.int64(2), lr=np.float32(0.1))),
    accepts("load_dataset",
            lambda: data_mod.load_dataset("digits", n_train=np.int64(50),
                                          val_fraction=np.float32(0.2))),
]


@pytest.mark.parametrize("call", NUMPY_SCALARS)
def test_numpy_scalars_are_numbers(call):
    call()
