"""HyperTrainer (Algorithm 1) and the HyperParameter / split_parameters contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optuna_ift import ConjugateGradient, Neumann
from optuna_ift.hyperparams import HyperParameter, split_parameters
from optuna_ift.trainer import Callback, HyperStep, HyperTrainer, Unrolled, accuracy


class DecayedLinear(nn.Module):
    """Logistic regression with one log weight decay per weight: a small convex problem."""

    def __init__(self, features: int, classes: int, *, log_decay: float) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.log_decay = HyperParameter(torch.full((classes, features), log_decay))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def penalty(self) -> torch.Tensor:
        return (self.log_decay.exp() * self.linear.weight**2).sum() / 2


def train_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y) + model.penalty()


def val_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def blobs(n: int, *, seed: int, features: int = 10, classes: int = 3):
    """Gaussian classes where only the first two features carry signal."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = torch.randn(n, features, generator=g)
    x[:, 0] += 2.0 * torch.cos(2.1 * y)
    x[:, 1] += 2.0 * torch.sin(2.1 * y)
    return x, y


def make_trainer(model=None, *, seed=0, **kwargs):
    torch.manual_seed(0)  # nn.Linear's initialisation
    model = model or DecayedLinear(10, 3, log_decay=0.0)
    options = dict(
        train_loss=train_loss, val_loss=val_loss,
        train_data=blobs(200, seed=1), val_data=blobs(100, seed=2),
        batch_size=50,
        weight_optimizer=lambda p: torch.optim.SGD(p, lr=0.2),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
        solver=ConjugateGradient(steps=20), inner_steps=10, progress=False, seed=seed,
        device="cpu",
    )
    options.update(kwargs)
    return HyperTrainer(model, **options)


# --- split_parameters ----------------------------------------------------------------------


def test_split_parameters_nested_shared_and_frozen():
    shared = nn.Linear(2, 2)
    inner = nn.Sequential(shared, nn.ReLU())
    inner.scale = HyperParameter(torch.ones(2))
    outer = nn.ModuleDict({"a": inner, "b": shared, "c": nn.Linear(2, 1)})
    outer.c.bias.requires_grad_(False)
    outer.rate = HyperParameter(torch.zeros(()))
    weights, hparams = split_parameters(outer)
    assert {id(w) for w in weights} == {id(shared.weight), id(shared.bias), id(outer.c.weight)}
    assert len(weights) == 3  # the shared layer counted once, the frozen bias in neither list
    assert sorted(map(id, hparams)) == sorted([id(inner.scale), id(outer.rate)])
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        split_parameters([shared.weight])


def test_hyperparameter_survives_to_copy_and_state_dict(tmp_path):
    model = DecayedLinear(4, 2, log_decay=-1.0).to(torch.float64)
    assert isinstance(model.log_decay, HyperParameter)
    assert model.log_decay.dtype == torch.float64
    assert isinstance(copy.deepcopy(model).log_decay, HyperParameter)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    clone = DecayedLinear(4, 2, log_decay=0.0).double()
    clone.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert isinstance(clone.log_decay, HyperParameter)
    assert torch.equal(clone.log_decay, model.log_decay)


# --- the trainer ---------------------------------------------------------------------------


def test_tuning_lowers_validation_loss_below_untuned_start():
    # Start with a decay far too strong (1.0 on every weight): the tuned run must end with a
    # lower validation loss than the same run whose hyperparameters are frozen.
    test = blobs(500, seed=3)
    tuned = make_trainer(DecayedLinear(10, 3, log_decay=0.0))
    tuned.fit(30)
    frozen = make_trainer(DecayedLinear(10, 3, log_decay=0.0),
                          hyper_optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    frozen.fit(30)
    assert torch.equal(frozen.model.log_decay, torch.zeros(3, 10))
    tuned_val = tuned.evaluate(tuned.val_data.tensors)
    frozen_val = frozen.evaluate(frozen.val_data.tensors)
    assert tuned_val["loss"] < frozen_val["loss"] - 0.05
    assert tuned.evaluate(test)["loss"] < frozen.evaluate(test)["loss"]
    # The decays fell most on the two informative features.
    decay = tuned.model.log_decay.detach()
    assert decay[:, :2].mean() < decay[:, 2:].mean()
    assert tuned.history.skipped == 0
    assert len(tuned.history.hyper_steps) == 30 and tuned.weight_step == 300


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    kwargs = dict(solver=Neumann(steps=5, alpha="auto"), alpha_every=2,
                  weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                  eval_data={"val": blobs(100, seed=2)}, metric=accuracy, warmup_steps=3)
    straight = make_trainer(**kwargs)
    straight.fit(7)

    first = make_trainer(**kwargs)
    first.fit(3)
    first.save(tmp_path / "checkpoint.pt")
    second = make_trainer(**kwargs).resume(tmp_path / "checkpoint.pt")
    second.fit(7)

    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert straight.history.to_dict() == second.history.to_dict()
    assert second.weight_step == straight.weight_step == 3 + 7 * 10


def test_non_finite_hypergradients_are_skipped_and_counted(caplog):
    calls = {"n": 0}

    def flaky_val_loss(model, batch):
        calls["n"] += 1
        loss = val_loss(model, batch)
        return loss * float("nan") if calls["n"] in (2, 4) else loss

    trainer = make_trainer(val_loss=flaky_val_loss)
    before = []

    class Snapshot(Callback):
        def on_hyper_step(self, trainer, record):
            before.append(trainer.model.log_decay.detach().clone())

    trainer.callbacks.append(Snapshot())
    with caplog.at_level("WARNING"):
        trainer.fit(5)
    assert trainer.history.skipped == 2
    skipped = [r["skipped"] for r in trainer.history.hyper_steps]
    assert skipped == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert torch.equal(before[0], before[1])  # step 2 left the hyperparameters alone
    assert not torch.equal(before[1], before[2])  # step 3 moved them
    assert torch.isfinite(trainer.model.log_decay).all()
    assert "non-finite hypergradient skipped" in caplog.text


def test_dtype_and_device_follow_the_model():
    model = DecayedLinear(10, 3, log_decay=0.0).double()
    trainer = make_trainer(model, train_data=tuple(t.double() if t.is_floating_point() else t
                                                   for t in blobs(200, seed=1)),
                           val_data=tuple(t.double() if t.is_floating_point() else t
                                          for t in blobs(100, seed=2)))
    trainer.fit(2)
    assert trainer.model.log_decay.dtype == torch.float64
    assert trainer.model.log_decay.device.type == "cpu"
    assert trainer.history.hyper_steps[-1]["hypergradient_norm"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_device_runs_on_cuda():
    trainer = make_trainer(device="auto")
    trainer.fit(2)
    assert trainer.model.log_decay.device.type == "cuda"


def test_unrolled_option_tunes_too():
    trainer = make_trainer(solver=Unrolled(steps=3, lr=0.2))
    start = trainer.model.log_decay.detach().clone()
    trainer.fit(3)
    assert not torch.equal(start, trainer.model.log_decay)
    assert all(r["hypergradient_norm"] > 0 for r in trainer.history.hyper_steps)


def test_evaluations_callbacks_and_stop():
    seen = {"steps": 0, "evals": 0}

    class Stopper(Callback):
        def on_hyper_step(self, trainer, record):
            seen["steps"] += 1
            if record["hyper_step"] == 4:
                trainer.stop()

        def on_evaluation(self, trainer, record):
            seen["evals"] += 1
            assert 0.0 <= record["test_metric"] <= 1.0

    trainer = make_trainer(eval_data={"test": blobs(50, seed=5)}, metric=accuracy,
                           eval_every=2, callbacks=[Stopper()])
    trainer.fit(10)
    assert seen == {"steps": 4, "evals": 2}
    assert [e["hyper_step"] for e in trainer.history.evaluations] == [2, 4]


def test_bf16_autocast_weight_steps():
    trainer = make_trainer(autocast=torch.bfloat16)
    trainer.fit(2)
    assert trainer.model.linear.weight.dtype == torch.float32
    assert trainer.history.skipped == 0


def test_arguments_are_checked():
    # A model without HyperParameter trains weights-only (tests/test_trainer_open.py); the
    # hyper step alone refuses it.
    with pytest.raises(ValueError, match="declares no HyperParameter"):
        HyperStep(nn.Linear(10, 3))
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 1"):
        make_trainer(inner_steps=0)
    with pytest.raises(ValueError, match="same first dimension"):
        make_trainer(train_data=(torch.zeros(5, 10), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(TypeError, match="train_data must be a tensor"):
        make_trainer(train_data=[[1, 2]])
    with pytest.raises(ValueError, match="autocast"):
        make_trainer(autocast=torch.float64)
    with pytest.raises(TypeError, match="solver"):
        make_trainer(solver="neumann")


def test_stale_neumann_alpha_is_refreshed_on_divergence():
    import warnings

    trainer = make_trainer(solver=Neumann(steps=5, alpha="auto"), alpha_every=1000)
    trainer.fit(1)  # the first hyper step estimates alpha = 1 / lambda_max
    fresh = trainer.hyper.alpha
    trainer.hyper.alpha = 50 * fresh  # as if the Hessian had grown 50-fold since the estimate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refreshed series converges: nothing to warn about
        trainer.fit(2)
    assert trainer.alpha_refreshes == 1
    assert trainer.hyper.alpha == pytest.approx(fresh, rel=0.5)
    assert trainer.history.skipped == 0


def test_lbfgs_weight_optimizer_gets_its_closure():
    data = blobs(200, seed=1)
    trainer = make_trainer(weight_optimizer=lambda p: torch.optim.LBFGS(
        p, max_iter=100, tolerance_grad=1e-9, line_search_fn="strong_wolfe"),
        inner_steps=1, batch_size=200, train_data=data)
    trainer.fit(3)
    trainer._weight_step()  # full batch: L-BFGS, given its closure, solves the inner problem
    grads = torch.autograd.grad(train_loss(trainer.model, data), trainer.weights)
    assert max(float(g.abs().max()) for g in grads) < 1e-4
    assert trainer.history.skipped == 0


def test_clip_grad_norm_bounds_every_weight_step():
    # With SGD and a tiny clip, each weight step moves the weights by exactly lr * clip.
    trainer = make_trainer(clip_grad_norm=1e-3, warmup_steps=0, inner_steps=3)
    before = [w.detach().clone() for w in trainer.weights]
    trainer._weight_step()
    moved = torch.sqrt(sum(((w.detach() - b) ** 2).sum() for w, b in zip(trainer.weights, before)))
    assert float(moved) == pytest.approx(0.2 * 1e-3, rel=1e-4)
    unclipped = make_trainer()
    before = [w.detach().clone() for w in unclipped.weights]
    unclipped._weight_step()
    moved = torch.sqrt(sum(((w.detach() - b) ** 2).sum()
                           for w, b in zip(unclipped.weights, before)))
    assert float(moved) > 10 * 0.2 * 1e-3
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip_grad_norm"):
            make_trainer(clip_grad_norm=bad)
