"""IFTCallback under a real lightning.Trainer: it tunes, it applies HyperStep's hypergradient,
it lives beside Optuna's pruning callback, it refuses bad set-ups and it resumes."""

from __future__ import annotations

import copy
import importlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optuna_ift import HyperParameter, HyperStep, Neumann, split_parameters
from optuna_ift.hyperparams import WeightDecay
from optuna_ift.trainer import BatchStream, TensorBatches, Unrolled

lightning = pytest.importorskip("lightning")
IFTCallback = importlib.import_module("optuna_ift.lightning").IFTCallback

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*The number of training batches.*",
    "ignore:.*GPU available but not used.*",
    "ignore:.*you defined a `validation_step` but have no `val_dataloader`.*",
    "ignore:.*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    "ignore:.*Checkpoint directory .* exists and is not empty.*",
)


def make_data(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 6 dimensions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[1.5, 0, 0, 0, 0, 0], [0, 1.5, 0, 0, 0, 0], [0, 0, 1.5, 0, 0, 0]])
    x = centres[y] + torch.randn(n, 6, generator=g)
    return x, y


TRAIN = make_data(64, seed=1)
VAL = make_data(48, seed=2)


def train_loader() -> DataLoader:
    return DataLoader(TensorDataset(*TRAIN), batch_size=16, shuffle=False)  # 4 batches


def make_trainer(max_steps: int, callbacks: list, **kwargs) -> lightning.Trainer:
    options = {"max_steps": max_steps, "accelerator": "cpu", "devices": 1, "logger": False,
               "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "num_sanity_val_steps": 0}
    options.update(kwargs)
    return lightning.Trainer(callbacks=callbacks, **options)


class Classifier(lightning.LightningModule):
    """A linear classifier with one weight decay per weight (a HyperParameter each)."""

    def __init__(self, *, lr: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(6, 3))  # convex: a positive definite Hessian
        self.decay = WeightDecay(self.net, mode="per_weight", init=1e-2)
        self.lr = lr
        self.modes: list[tuple[str, bool]] = []  # (step kind, self.training) of every call

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y) + self.decay(self.net)

    def val_objective(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        self.modes.append(("train", self.training))
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.modes.append(("val", self.training))
        loss = self.val_objective(batch)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(split_parameters(self)[0], lr=self.lr)


def hyper_values(module: nn.Module) -> list[torch.Tensor]:
    return [h.detach().clone() for h in split_parameters(module)[1]]


# -- 1. it tunes ---------------------------------------------------------------------------


def test_callback_tunes_hyperparameters_under_lightning_trainer():
    model = Classifier()
    before = hyper_values(model)
    callback = IFTCallback(VAL, every_n_steps=3, val_batch_size=16, val_batches=2,
                           solver=Neumann(steps=3, alpha="auto"))
    trainer = make_trainer(14, [callback])
    trainer.fit(model, train_loader())

    assert trainer.global_step == 14
    assert len(callback.history) == 14 // 3
    assert [r["global_step"] for r in callback.history] == [3, 6, 9, 12]
    assert [r["hyper_step"] for r in callback.history] == [1, 2, 3, 4]
    assert callback.hyper.steps == 4 and callback.hyper.skipped == 0
    assert all(r["skipped"] == 0.0 for r in callback.history)
    assert all(math.isfinite(r["hypergradient_norm"]) and r["hypergradient_norm"] > 0
               for r in callback.history)
    assert all(math.isfinite(r["val_loss"]) for r in callback.history)
    after = hyper_values(model)
    moved = max(float((a - b).abs().max()) for a, b in zip(after, before))
    assert moved > 1e-3  # RMSprop at 1e-2 moves each decay by about 0.1 in the first step
    # logged through pl_module.log, the last hyper step's values
    metrics = trainer.callback_metrics
    assert float(metrics["hyper/val_loss"]) == pytest.approx(callback.history[-1]["val_loss"])
    assert float(metrics["hyper/hypergradient_norm"]) == pytest.approx(
        callback.history[-1]["hypergradient_norm"])
    assert float(metrics["hyper/skipped"]) == 0.0
    # what the recomputed validation_step logs is dropped: no validation loop ran, so no
    # val_loss may have reached the trainer's metrics
    assert "val_loss" not in metrics
    # validation losses in eval mode, training losses in training mode, mode restored
    assert ("val", False) in model.modes and ("val", True) not in model.modes
    assert all(training for kind, training in model.modes if kind == "train")
    assert sum(kind == "train" for kind, _ in model.modes) == 14 + 4
    assert model.training


# -- 2. it applies HyperStep's hypergradient -------------------------------------------------


class Snapshot(lightning.Callback):
    """The module's state and the batch right before each hyper step (placed before the
    IFTCallback), or the hyperparameters right after it (placed after)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.records: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.records.append({"step": trainer.global_step,
                                 "state": copy.deepcopy(pl_module.state_dict()),
                                 "batch": copy.deepcopy(batch),
                                 "hyper": hyper_values(pl_module)})


def test_applied_update_equals_hyperstep_hypergradient():
    every, val_batches, val_batch_size, seed = 2, 2, 12, 5
    solver = Neumann(steps=4, alpha=0.5)
    model = Classifier()
    before, after = Snapshot(every), Snapshot(every)
    callback = IFTCallback(VAL, every_n_steps=every, solver=solver,
                           hyper_optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
                           val_batches=val_batches, val_batch_size=val_batch_size, seed=seed,
                           val_loss=lambda m, b: m.val_objective(b))
    make_trainer(6, [before, callback, after]).fit(model, train_loader())
    assert [r["step"] for r in before.records] == [2, 4, 6]
    assert len(callback.history) == 3

    # the same validation batches, in the same order: a TensorBatches with the same seed
    val_stream = BatchStream("val", TensorBatches(*VAL, batch_size=val_batch_size, seed=seed),
                             torch.device("cpu"))
    for pre, post in zip(before.records, after.records):
        rebuilt = Classifier()
        rebuilt.load_state_dict(pre["state"])
        hyper = HyperStep(rebuilt, solver=solver)
        train_loss = rebuilt.loss(pre["batch"])
        rebuilt.eval()
        losses = [rebuilt.val_objective(val_stream.next()[0]) for _ in range(val_batches)]
        rebuilt.train()
        val_loss = sum(losses) / len(losses)
        grads = hyper.hypergradient(train_loss, val_loss)
        assert sum(float(g.norm()) for g in grads) > 1e-4
        for h_pre, h_post, g in zip(pre["hyper"], post["hyper"], grads):
            torch.testing.assert_close(h_post, h_pre - g)
        record = callback.history[before.records.index(pre)]
        assert record["val_loss"] == pytest.approx(float(val_loss.detach()), rel=1e-6)
        assert record["train_loss"] == pytest.approx(float(train_loss.detach()), rel=1e-6)


# -- 3. beside optuna-integration's pruning callback -----------------------------------------


def test_works_with_optuna_pruning_callback():
    optuna = pytest.importorskip("optuna")
    integration = pytest.importorskip("optuna_integration")
    pruning_callback = integration.PyTorchLightningPruningCallback
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    moved: dict[int, float] = {}

    def objective(trial):
        model = Classifier(lr=trial.suggest_float("lr", 1e-6, 1.0, log=True))
        start = hyper_values(model)
        callback = IFTCallback(VAL, every_n_steps=2, val_batch_size=16,
                               solver=Neumann(steps=2, alpha="auto"))
        trainer = make_trainer(12, [callback, pruning_callback(trial, monitor="val_loss")])
        try:
            trainer.fit(model, train_loader(),
                        DataLoader(TensorDataset(*VAL), batch_size=24))
        finally:
            moved[trial.number] = max(float((a - b).abs().max())
                                      for a, b in zip(hyper_values(model), start))
        assert callback.history and all(r["skipped"] == 0.0 for r in callback.history)
        return float(trainer.callback_metrics["val_loss"])

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                     n_warmup_steps=0))
    study.enqueue_trial({"lr": 0.5})
    study.enqueue_trial({"lr": 1e-6})  # learns nothing: worse than the first at every epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=2)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    first, second = study.trials
    assert sorted(first.intermediate_values) == [0, 1, 2]  # one report per epoch of 4 steps
    assert first.value == pytest.approx(first.intermediate_values[2])
    assert first.value < 1.0 < min(second.intermediate_values.values())
    assert moved[0] > 1e-3 and moved[1] > 1e-3


# -- 4. bad input ------------------------------------------------------------------------------


class OptimizesEverything(Classifier):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NoHyperparameters(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NoValidationStep(Classifier):
    validation_step = lightning.LightningModule.validation_step


class ReturnsNothing(Classifier):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.val_objective(batch))


def test_hyperparameters_in_the_optimizer_are_refused():
    callback = IFTCallback(VAL, every_n_steps=2)
    with pytest.raises(ValueError, match=r"HyperParameter.*decay\.log_decays\.0.*split_parameters"):
        make_trainer(2, [callback]).fit(OptimizesEverything(), train_loader())


def test_module_without_hyperparameters_is_refused():
    callback = IFTCallback(VAL, val_loss=lambda m, b: F.cross_entropy(m.net(b[0]), b[1]))
    with pytest.raises(ValueError, match="declares no HyperParameter"):
        make_trainer(2, [callback]).fit(NoHyperparameters(), train_loader())


def test_missing_or_unusable_validation_loss_is_refused():
    with pytest.raises(ValueError, match="val_loss: NoValidationStep has no validation_step"):
        make_trainer(2, [IFTCallback(VAL)]).fit(NoValidationStep(), train_loader())
    with pytest.raises(TypeError, match=r"val_loss: ReturnsNothing\.validation_step .*NoneType"):
        make_trainer(2, [IFTCallback(VAL, every_n_steps=1)]).fit(ReturnsNothing(),
                                                                  train_loader())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"every_n_steps": 0}, ValueError, "every_n_steps must be an integer >= 1, got 0"),
    ({"every_n_steps": 2.5}, ValueError, "every_n_steps"),
    ({"val_batches": 0}, ValueError, "val_batches must be an integer >= 1"),
    ({"val_batch_size": -1}, ValueError, "val_batch_size"),
    ({"alpha_every": 0}, ValueError, "alpha_every"),
    ({"hyper_optimizer": "adam"}, TypeError, "hyper_optimizer must be a factory"),
    ({"solver": 3}, TypeError, "solver must be"),
    ({"solver": Unrolled()}, TypeError, "solver=Unrolled is not available"),
    ({"val_loss": 1.0}, TypeError, "val_loss must be a function"),
    ({"log": "yes"}, TypeError, "log must be a bool"),
])
def test_bad_arguments_name_themselves(kwargs, error, match):
    with pytest.raises(error, match=match):
        IFTCallback(VAL, **kwargs)


def test_bad_val_data_is_refused():
    with pytest.raises(ValueError, match="val_data is required"):
        IFTCallback(None)
    with pytest.raises(TypeError, match="val_data"):
        IFTCallback(3)


# -- 5. checkpoints ----------------------------------------------------------------------------


def test_state_dict_round_trip_waits_for_fit_start():
    model = Classifier()
    callback = IFTCallback(VAL, every_n_steps=2, val_batch_size=16)
    make_trainer(4, [callback]).fit(model, train_loader())
    state = copy.deepcopy(callback.state_dict())
    assert state["hyper_step"]["steps"] == 2 and state["last_step"] == 4
    assert state["hyper_step"]["optimizer"]["state"]  # RMSprop's square averages

    fresh = IFTCallback(VAL, every_n_steps=2, val_batch_size=16)
    fresh.load_state_dict(state)  # before any fit: kept pending, and given back as it is
    assert fresh.hyper is None
    assert len(fresh.history) == 2
    again = fresh.state_dict()
    assert again["hyper_step"]["steps"] == 2
    torch.testing.assert_close(again["hyper_step"]["optimizer"], state["hyper_step"]["optimizer"])
    torch.testing.assert_close(again["val_stream"], state["val_stream"])


def test_checkpoint_resume_continues_the_run_exactly(tmp_path):
    def run(max_steps, **fit_kwargs):
        model = Classifier()
        callback = IFTCallback(VAL, every_n_steps=4, val_batch_size=16, seed=3)
        # at step 8, the end of the second epoch: the training DataLoader (not resumable)
        # starts its next epoch in the same order as the uninterrupted run
        checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}")
        trainer = make_trainer(max_steps, [callback, checkpoint], enable_checkpointing=True)
        trainer.fit(model, train_loader(), **fit_kwargs)
        return model, callback

    straight, straight_cb = run(16)
    assert len(straight_cb.history) == 4
    resumed, resumed_cb = run(16, ckpt_path=tmp_path / "step=8.ckpt")

    assert resumed_cb.hyper.steps == 4 and resumed_cb.hyper.skipped == 0
    assert [r["global_step"] for r in resumed_cb.history] == [4, 8, 12, 16]
    for a, b in zip(straight_cb.history, resumed_cb.history):
        assert a == pytest.approx(b, rel=1e-5, nan_ok=True)
    # the hyper optimizer's state came back: without it RMSprop's square averages restart
    # and the hyperparameters end elsewhere
    for a, b in zip(hyper_values(straight), hyper_values(resumed)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(resumed_cb.hyper.optimizer.state_dict()["state"],
                               straight_cb.hyper.optimizer.state_dict()["state"])


def test_resume_without_the_callback_state_differs(tmp_path):
    """The check above can fail: the same resume with a callback that forgets its state
    ends with other hyperparameters."""

    class Forgetful(IFTCallback):
        @property
        def state_key(self) -> str:
            return "IFTCallback"  # finds the state in the checkpoint, and drops it

        def load_state_dict(self, state_dict):
            pass

    def run(cls, max_steps, **fit_kwargs):
        model = Classifier()
        callback = cls(VAL, every_n_steps=4, val_batch_size=16, seed=3)
        checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}")
        make_trainer(max_steps, [callback, checkpoint], enable_checkpointing=True).fit(
            model, train_loader(), **fit_kwargs)
        return model, callback

    straight, _ = run(IFTCallback, 16)
    resumed, callback = run(Forgetful, 16, ckpt_path=tmp_path / "step=8.ckpt")
    assert callback.hyper.steps == 2  # counted from zero again
    differs = max(float((a - b).abs().max())
                  for a, b in zip(hyper_values(straight), hyper_values(resumed)))
    assert differs > 1e-4


def test_hyperparameter_is_a_module_parameter():
    """A hand-declared HyperParameter (a log-decay on the output layer) works the same."""

    class LogDecay(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Linear(6, 3)
            self.log_decay = HyperParameter(torch.full((3, 6), -3.0))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return {"loss": F.cross_entropy(self.net(x), y)
                    + (self.log_decay.exp() * self.net.weight.square()).sum() / 2}

        def configure_optimizers(self):
            return torch.optim.SGD(split_parameters(self)[0], lr=0.3)

    model = LogDecay()
    start = model.log_decay.detach().clone()
    callback = IFTCallback(TensorDataset(*VAL), every_n_steps=4, val_batch_size=16,
                           val_loss=lambda m, b: F.cross_entropy(m.net(b[0]), b[1]), log=False)
    trainer = make_trainer(8, [callback])
    trainer.fit(model, train_loader())
    assert len(callback.history) == 2 and callback.hyper.skipped == 0
    assert float((model.log_decay.detach() - start).abs().max()) > 1e-3
    assert not any(k.startswith("hyper/") for k in trainer.callback_metrics)


def test_gradient_accumulation_steps_once_per_optimizer_step():
    callback = IFTCallback(VAL, every_n_steps=2, val_batch_size=16, log=False)
    trainer = make_trainer(4, [callback], accumulate_grad_batches=2)
    trainer.fit(Classifier(), train_loader())
    assert trainer.global_step == 4  # 8 batches
    assert [r["global_step"] for r in callback.history] == [2, 4]


def test_resume_inside_gradient_accumulation_does_not_repeat_the_hyper_step(tmp_path):
    def run(max_steps, **fit_kwargs):
        callback = IFTCallback(VAL, every_n_steps=2, val_batch_size=16, log=False)
        checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
        make_trainer(max_steps, [callback, checkpoint], enable_checkpointing=True,
                     accumulate_grad_batches=2).fit(Classifier(), train_loader(), **fit_kwargs)
        return callback

    run(2)
    # the first batch after the resume leaves global_step at 2: no second hyper step there
    resumed = run(4, ckpt_path=tmp_path / "step=2.ckpt")
    assert [r["global_step"] for r in resumed.history] == [2, 4]
    assert resumed.hyper.steps == 2


def test_a_second_fit_continues_with_the_same_hyper_step():
    model = Classifier()
    callback = IFTCallback(VAL, every_n_steps=2, val_batch_size=16, log=False)
    make_trainer(2, [callback]).fit(model, train_loader())
    first = callback.hyper
    make_trainer(2, [callback]).fit(model, train_loader())  # a new trainer: steps from 0
    assert callback.hyper is first and first.steps == 2
    assert [r["global_step"] for r in callback.history] == [2, 2]


def test_training_step_on_dataloader_iter_needs_train_loss():
    class IteratorStep(Classifier):
        def training_step(self, dataloader_iter):
            batch, _, _ = next(dataloader_iter)
            return self.loss(batch)

    with pytest.raises(ValueError, match="train_loss is required.*dataloader_iter"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning: the dataloader_iter flavour is experimental
        make_trainer(2, [IFTCallback(VAL)]).fit(IteratorStep(), train_loader())
    callback = IFTCallback(VAL, every_n_steps=1, val_batch_size=16, log=False,
                           train_loss=lambda m, b: m.loss(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(2, [callback]).fit(IteratorStep(), train_loader())
    assert len(callback.history) == 2
