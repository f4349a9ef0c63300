"""Faults the trainer must survive: non-finite data and losses, kills during a save, and
checkpoints that do not fit (refused before anything changes, never unpickled unsafely)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optuna_ift import ConjugateGradient
from optuna_ift.hyperparams import HyperParameter
from optuna_ift.trainer import HyperTrainer, NonFiniteLossError, TensorBatches, read_checkpoint


class DecayedLinear(nn.Module):
    def __init__(self, features: int = 10, classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.log_decay = HyperParameter(torch.zeros(classes, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def train_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y) + (model.log_decay.exp() * model.linear.weight**2).sum()


def val_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def blobs(n: int, seed: int, features: int = 10):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.randn(n, features, generator=g)
    x[:, 0] += 2.0 * y
    return x, y


TRAIN, VAL = blobs(120, 1), blobs(60, 2)


def make(model=None, **kwargs) -> HyperTrainer:
    torch.manual_seed(0)
    options = dict(train_loss=train_loss, val_loss=val_loss, train_data=TRAIN, val_data=VAL,
                   batch_size=40, weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                   hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
                   solver=ConjugateGradient(steps=5), inner_steps=3, progress=False,
                   device="cpu")
    options.update(kwargs)
    return HyperTrainer(model or DecayedLinear(), **options)


def snapshot(trainer: HyperTrainer) -> dict:
    """Everything that a refused resume must leave alone, as plain comparable values."""
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "weight_optimizer": repr(trainer.weight_optimizer.state_dict()),
        "hyper": repr(trainer.hyper.state_dict()),
        "steps": (trainer.hyper_step, trainer.weight_step),
        "history": trainer.history.to_dict(),
        "train": repr(trainer.train_data.state_dict()),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert {k: v for k, v in a.items() if k != "model"} == {
        k: v for k, v in b.items() if k != "model"}


# -- non-finite values ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["train_data", "val_data", "eval_data", "tensor_batches"])
def test_tensor_data_with_infinity_is_refused_at_construction(where):
    x, y = blobs(120, 1)
    x = x.clone()
    x[37, 4] = math.inf
    kwargs = {"train_data": (x, y), "val_data": (x, y), "eval_data": {"test": (x, y)},
              "tensor_batches": TensorBatches(x, y, batch_size=40)}
    name = {"eval_data": "eval_data['test']", "tensor_batches": "train_data"}.get(where, where)
    arg = {"tensor_batches": "train_data"}.get(where, where)
    with pytest.raises(ValueError, match=rf"{name.replace('[', '.').replace(']', '.')}"
                                         r": tensor 0 holds a non-finite value.*row 37"):
        make(**{arg: kwargs[where]})


def test_a_non_finite_batch_from_a_loader_is_not_applied(caplog):
    x, y = TRAIN
    bad = x.clone()
    bad[40:80] = math.nan  # the second batch of the first pass
    loader = DataLoader(TensorDataset(bad, y), batch_size=40)
    trainer = make(train_data=loader, hyper_optimizer=None)
    seen = []
    trainer.callbacks.append(type("Watch", (), {"on_weight_step": lambda self, t, loss: seen.append(
        ({k: v.clone() for k, v in t.model.state_dict().items()}, float(loss)))})())
    with caplog.at_level(logging.WARNING):
        trainer.fit(2)  # 6 weight steps: batches 1, 2 (NaN), 3, 1, 2 (NaN), 3
    assert trainer.history.skipped_weight_steps == 2
    assert [math.isnan(loss) for _, loss in seen] == [False, True, False, False, True, False]
    for k, v in seen[0][0].items():  # the NaN step left the weights exactly as they were
        assert torch.equal(seen[1][0][k], v)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert "training loss nan, step not applied" in caplog.text


@pytest.mark.parametrize("lbfgs", [False, True])
def test_consecutive_non_finite_losses_stop_training_with_a_clear_error(lbfgs):
    x, y = TRAIN
    loader = DataLoader(TensorDataset(torch.full_like(x, math.inf), y), batch_size=40)
    optimizer = ((lambda p: torch.optim.LBFGS(p, max_iter=5)) if lbfgs
                 else (lambda p: torch.optim.SGD(p, lr=0.1)))
    trainer = make(train_data=loader, weight_optimizer=optimizer, max_non_finite=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="train_loss was not finite at 3 weight steps "
                                                 "in a row.*none of them was applied"):
        trainer.fit(5)
    assert trainer.weight_step == 3 and trainer.history.skipped_weight_steps == 3
    for k, v in before.items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    with pytest.raises(ValueError, match="max_non_finite must be an integer >= 1"):
        make(max_non_finite=0)


# -- saving -------------------------------------------------------------------------------


def test_a_kill_during_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.pt"
    trainer = make()
    trainer.fit(2)
    trainer.save(path)
    good = path.read_bytes()
    trainer.fit(4)
    real_save = torch.save

    def dies_halfway(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.seek(0)
        file.truncate(100)  # what a kill in the middle of writing leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no leftovers
    resumed = make().resume(path)
    assert resumed.hyper_step == 2


# -- resuming ------------------------------------------------------------------------------


def _checkpoint(tmp_path, **kwargs):
    trainer = make(**kwargs)
    trainer.fit(2)
    return trainer.save(tmp_path / "checkpoint.pt")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": DecayedLinear(features=10, classes=4)}, r"model: the checkpoint is of another "
                                                       r"model: shapes differ for \['linear"),
    ({"model": nn.Sequential()}, "model"),  # replaced below: a model of other keys
    ({"weight_optimizer": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)},
     "weight_optimizer: the checkpoint holds the state of a Adam, this trainer has a SGD"),
    ({"hyper_optimizer": lambda p: torch.optim.RMSprop(p, lr=0.1)},
     "hyper_optimizer: the checkpoint holds the state of a Adam"),
    ({"train_data": blobs(80, 1)}, "train_data: the checkpoint was taken with 120 examples, "
                                   "this trainer has 80"),
    ({"hyper_optimizer": None}, "differ in mode"),
    ({"callbacks": [__import__("optuna_ift").KeepBest("val_loss")],
      "eval_data": {"val": VAL}}, r"callbacks: the checkpoint holds the state of \[\]"),
])
def test_a_resume_that_does_not_fit_is_refused_and_changes_nothing(tmp_path, kwargs, message):
    path = _checkpoint(tmp_path)
    if isinstance(kwargs.get("model"), nn.Sequential):
        class Other(DecayedLinear):
            def __init__(self):
                super().__init__()
                self.extra = nn.Linear(2, 2)
        kwargs = {"model": Other()}
        message = r"model: the checkpoint is of another model: missing \['extra.bias'"
    trainer = make(**kwargs)
    trainer.fit(1)
    if trainer.hyper is None:
        with pytest.raises(ValueError, match=message):
            trainer.resume(path)
        return
    before = snapshot(trainer)
    with pytest.raises(ValueError, match=message):
        trainer.resume(path)
    assert_same(before, snapshot(trainer))
    trainer.fit(2)  # and it still trains


def test_an_unreadable_checkpoint_is_a_clear_error_without_unsafe_advice(tmp_path):
    path = _checkpoint(tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    trainer = make()
    before = snapshot(trainer)
    with pytest.raises(ValueError, match=r"checkpoint .*truncated.pt could not be read") as info:
        trainer.resume(truncated)
    assert "weights_only" not in str(info.value)
    assert_same(before, snapshot(trainer))
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        trainer.resume(tmp_path / "missing.pt")
    plain = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(ValueError, match="not a HyperTrainer checkpoint"):
        trainer.resume(plain)


class _Marker:
    """An object whose unpickling would write a file: a checkpoint must never run it."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Marker(marker)}, evil)
    with pytest.raises(ValueError, match="refused unread") as info:
        read_checkpoint(evil)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()


def test_resume_says_which_settings_the_checkpoint_replaces(tmp_path, caplog):
    path = _checkpoint(tmp_path)
    trainer = make(weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.5))
    with caplog.at_level(logging.WARNING):
        trainer.resume(path)
    assert "weight_optimizer group 0 lr: 0.5 -> 0.05" in caplog.text
    assert trainer.weight_optimizer.param_groups[0]["lr"] == 0.05


def test_a_diverging_series_under_auto_alpha_gives_advice_that_fits_it():
    # Training loss 0.5 w' diag(1, -0.5) w + lambda * w_0: the Hessian has a negative
    # eigenvalue, so a Neumann series with alpha = 1 / lambda_max diverges along it.
    from optuna_ift import HyperStep, Neumann, NeumannDivergenceWarning

    w = torch.tensor([0.3, 0.4], requires_grad=True)
    lam = torch.tensor(0.1, requires_grad=True)
    step = HyperStep(([w], [lam]), solver=Neumann(steps=8, alpha="auto"),
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    train = 0.5 * (w[0] ** 2 - 0.5 * w[1] ** 2) + lam * w[0]
    val = (w ** 2).sum()
    with pytest.warns(NeumannDivergenceWarning) as caught:
        step(train, val)
    messages = [str(w.message) for w in caught]
    assert any("diverged with alpha='auto'" in m for m in messages)
    assert not any("use alpha='auto'" in m for m in messages)
    assert step.steps == 1 and step.skipped == 0


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs SIGKILL")
def test_a_real_kill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    # A child saves a large checkpoint over and over; it is SIGKILLed at a random moment,
    # mostly in the middle of a save. The checkpoint left behind must always load.
    import os
    import random
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    path = tmp_path / "checkpoint.pt"
    code = textwrap.dedent(f"""
        import torch
        from torch import nn
        from optuna_ift.trainer import HyperTrainer
        model = nn.Linear(2000, 1000)
        x, y = torch.randn(64, 2000), torch.randn(64, 1000)
        trainer = HyperTrainer(model, train_loss=lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
                               train_data=(x, y), batch_size=64, inner_steps=1,
                               device="cpu", progress=False)
        while True:
            trainer.fit(trainer.hyper_step + 1)
            trainer.save({str(path)!r})
    """)
    rng = random.Random(0)
    for attempt in range(3):
        child = subprocess.Popen([sys.executable, "-c", code])
        try:
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert path.exists(), "the child never saved"
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        state = read_checkpoint(path)  # whole: never a half-written file
        assert state["weight_step"] >= 1
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
        assert all(name.endswith(".partial") for name in leftovers)
    make().save(path)  # the next save clears what killed saves left behind
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
