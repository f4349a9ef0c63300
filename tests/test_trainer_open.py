"""The opened HyperTrainer: any data source, exact resume, weights-only mode, HyperStep in a
hand-written loop, callbacks, bad input and ``evaluate``.

Every model here is a small logistic regression, so each test runs in a second or two.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from optuna_ift import ConjugateGradient, Neumann
from optuna_ift.hyperparams import HyperParameter
from optuna_ift.trainer import (
    Callback,
    EarlyStopping,
    HyperStep,
    HyperTrainer,
    KeepBest,
    LRScheduler,
    TensorBatches,
    accuracy,
    evaluate,
)

from .test_trainer import blobs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")  # torchdata's own

# --- helpers ---------------------------------------------------------------------------------


class DecayedLinear(nn.Module):
    """Logistic regression with one log weight decay per weight (optionally input dropout)."""

    def __init__(self, features: int = 10, classes: int = 3, *, log_decay: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(features, classes)
        self.log_decay = HyperParameter(torch.full((classes, features), log_decay))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(x))

    def penalty(self) -> torch.Tensor:
        return (self.log_decay.exp() * self.linear.weight**2).sum() / 2


def _xy(batch):
    if isinstance(batch, Mapping):
        return batch["x"], batch["y"]
    return batch[0], batch[1]


def train_loss(model, batch):
    x, y = _xy(batch)
    return F.cross_entropy(model(x), y) + model.penalty()


def val_loss(model, batch):
    x, y = _xy(batch)
    return F.cross_entropy(model(x), y)


def dict_train_loss(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"]) + model.penalty()


def dict_val_loss(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def plain_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


TRAIN, VAL = blobs(200, seed=1), blobs(100, seed=2)


def options(**kwargs):
    base = {"train_loss": train_loss, "val_loss": val_loss, "train_data": TRAIN,
            "val_data": VAL, "batch_size": 50,
            "weight_optimizer": lambda p: torch.optim.SGD(p, lr=0.2),
            "hyper_optimizer": lambda p: torch.optim.Adam(p, lr=0.1),
            "solver": ConjugateGradient(steps=10), "inner_steps": 5, "progress": False,
            "device": "cpu"}
    return {**base, **kwargs}


def model0(**kwargs) -> DecayedLinear:
    torch.manual_seed(0)  # nn.Linear's initialisation
    return DecayedLinear(**kwargs)


def assert_same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state_dict()["state"].values()
            for _, v in sorted(state.items()) if isinstance(v, torch.Tensor)]


class BatchSampler:
    """The index lists a ``TensorBatches(..., seed=seed)`` (shuffled, drop_last) produces."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        for k in range(len(self)):
            yield order[k * self.batch_size:(k + 1) * self.batch_size].tolist()


class MemmapDataset(Dataset):
    """Examples read lazily from ``.npy`` files: each process opens them on first use."""

    def __init__(self, x_path: Path, y_path: Path) -> None:
        self.x_path, self.y_path = str(x_path), str(y_path)
        self.n = int(np.load(self.y_path, mmap_mode="r").shape[0])
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.x is None:
            self.x = np.load(self.x_path, mmap_mode="r")
            self.y = np.load(self.y_path, mmap_mode="r")
        info = torch.utils.data.get_worker_info()
        return {"x": torch.from_numpy(np.array(self.x[i])), "y": torch.tensor(int(self.y[i])),
                "worker": -1 if info is None else info.id}


class StreamDataset(IterableDataset):
    """Batches of ``tensors`` in a fixed order, a stream of unknown length; counts its passes."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for start in range(0, len(self.y) - self.batch_size + 1, self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]


def save_npy(tmp_path: Path, name: str, x: torch.Tensor, y: torch.Tensor) -> tuple[Path, Path]:
    x_path, y_path = tmp_path / f"{name}_x.npy", tmp_path / f"{name}_y.npy"
    np.save(x_path, x.numpy())
    np.save(y_path, y.numpy())
    return x_path, y_path


# --- 1. a DataLoader with workers over a lazily read file -------------------------------------


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="the workers are forked")
def test_joint_training_from_worker_dataloader_over_files_on_disk(tmp_path):
    train_set = MemmapDataset(*save_npy(tmp_path, "train", *TRAIN))
    val_set = MemmapDataset(*save_npy(tmp_path, "val", *VAL))
    train = DataLoader(train_set, batch_size=50, shuffle=True, num_workers=2,
                       persistent_workers=True, multiprocessing_context="fork",
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(val_set, batch_size=50, shuffle=True,
                     generator=torch.Generator().manual_seed(1))
    workers: set[int] = set()

    def train_fn(model, batch):
        assert set(batch) == {"x", "y", "worker"}
        workers.update(batch["worker"].tolist())
        return dict_train_loss(model, batch)

    trainer = HyperTrainer(model0(), **options(
        train_loss=train_fn, val_loss=dict_val_loss, train_data=train, val_data=val,
        inner_steps=10))
    start_decay = trainer.model.log_decay.detach().clone()
    before = trainer.evaluate(val)["loss"]  # one pass of the dict batches
    trainer.fit(10)
    after = trainer.evaluate(val)["loss"]
    with torch.no_grad():
        assert after == pytest.approx(float(val_loss(trainer.model, VAL)), rel=1e-5)
    assert workers == {0, 1}  # the batches came from both worker processes
    assert train_set.x is None  # the main process never read the training file
    assert trainer.history.skipped == 0
    assert len(trainer.history.hyper_steps) == 10 and trainer.weight_step == 100
    assert all(math.isfinite(r["val_loss"]) and r["hypergradient_norm"] > 0
               for r in trainer.history.hyper_steps)
    assert trainer.epoch == 110 // 4  # 110 training batches drawn, 4 per pass
    assert not torch.equal(start_decay, trainer.model.log_decay)
    assert trainer.model.log_decay.mean() < start_decay.mean()  # the too strong decay fell
    assert after < before - 0.05


# --- 2. a transforming collate_fn, an IterableDataset, cycling epochs ----------------------------


def test_collate_transform_and_iterable_dataset_train_and_epochs_cycle():
    dataset = TensorDataset(*TRAIN)
    mean, std = TRAIN[0].mean(0), TRAIN[0].std(0)
    seen = {"normalised": 0}

    def normalise(items):
        x = torch.stack([item[0] for item in items])
        y = torch.stack([item[1] for item in items])
        seen["normalised"] += 1
        return {"x": (x - mean) / std, "y": y}

    loader = DataLoader(dataset, batch_size=50, shuffle=True, collate_fn=normalise,
                        generator=torch.Generator().manual_seed(0))
    val_x = (VAL[0] - mean) / std
    trainer = HyperTrainer(model0(), **options(train_data=loader, val_data=(val_x, VAL[1]),
                                               inner_steps=3))
    before = trainer.evaluate((val_x, VAL[1]))["loss"]
    trainer.fit(4)  # 16 training batches: 4 passes over the 4-batch loader
    assert seen["normalised"] == 16
    assert trainer.epoch == 4
    assert trainer.history.skipped == 0
    assert trainer.evaluate((val_x, VAL[1]))["loss"] < before

    # A stream of unknown length, restarted whenever it ends.
    stream = StreamDataset(*TRAIN, batch_size=50)
    stream_loader = DataLoader(stream, batch_size=None)
    with pytest.raises(TypeError):
        len(stream_loader)
    trainer = HyperTrainer(model0(), **options(train_data=stream_loader, inner_steps=4))
    start_decay = trainer.model.log_decay.detach().clone()
    trainer.fit(3)  # 15 batches: passes 1-3 complete, the fourth one drawn from
    assert stream.passes == 4
    assert trainer.epoch == 3
    assert trainer.history.skipped == 0
    assert all(math.isfinite(r["val_loss"]) for r in trainer.history.hyper_steps)
    assert not torch.equal(start_decay, trainer.model.log_decay)

    # TensorBatches with a short epoch: it restarts and the epoch counter follows.
    batches = TensorBatches(*TRAIN, batch_size=100, seed=3)
    trainer = HyperTrainer(model0(), **options(train_data=batches, inner_steps=2))
    trainer.fit(2)  # 6 batches of a 2-batch epoch
    assert trainer.epoch == 3 and batches.epoch == 3
    assert trainer.train_data is batches


# Epochs that end on the hyper step's training batch (or on a stream without a length) must
# trigger the per-epoch evaluation too (eval_every=None: "at each training epoch").


def test_epoch_ended_by_the_hyper_step_batch_is_evaluated():
    # inner_steps=3 + the hyper step's batch = 4 batches per round = one epoch per round.
    trainer = HyperTrainer(model0(), **options(inner_steps=3, eval_data={"val": VAL}))
    trainer.fit(4)
    assert trainer.epoch == 4
    assert [e["epoch"] for e in trainer.history.evaluations] == [1, 2, 3, 4]


def test_epoch_of_a_stream_without_length_is_evaluated():
    stream = DataLoader(StreamDataset(*TRAIN, batch_size=50), batch_size=None)
    trainer = HyperTrainer(model0(), **options(train_data=stream, inner_steps=4,
                                               eval_data={"val": VAL}))
    trainer.fit(3)
    assert trainer.epoch == 3
    assert len(trainer.history.evaluations) == 3


# --- 3. TensorBatches and a DataLoader over the same batches agree bit for bit ------------------


def test_tensor_batches_and_dataloader_with_same_batches_train_identically():
    seed = 4
    x, y = blobs(210, seed=1)  # a ragged tail of 10 rows, dropped
    vx, vy = blobs(110, seed=2)
    kwargs = {"inner_steps": 3, "solver": Neumann(steps=5, alpha="auto"), "alpha_every": 2,
              "weight_optimizer": lambda p: torch.optim.Adam(p, lr=0.05), "seed": seed}
    tensors = HyperTrainer(model0(), **options(train_data=(x, y), val_data=(vx, vy), **kwargs))
    assert isinstance(tensors.train_data, TensorBatches)
    train = DataLoader(TensorDataset(x, y), batch_sampler=BatchSampler(210, 50, seed))
    val = DataLoader(TensorDataset(vx, vy), batch_sampler=BatchSampler(110, 50, seed + 1))
    loader = HyperTrainer(model0(), **options(train_data=train, val_data=val, **kwargs))
    # The same first batches, to make sure the comparison below compares like with like.
    first = next(iter(TensorBatches(x, y, batch_size=50, seed=seed)))
    assert torch.equal(first[0], next(iter(DataLoader(
        TensorDataset(x, y), batch_sampler=BatchSampler(210, 50, seed))))[0])
    tensors.fit(6)
    loader.fit(6)
    assert_same_state(tensors.model.state_dict(), loader.model.state_dict())
    assert tensors.history.to_dict() == loader.history.to_dict()
    assert tensors.epoch == loader.epoch == 24 // 4
    assert not torch.equal(tensors.model.log_decay, torch.zeros(3, 10))
    # A different seed gives different batches and so different weights: the check can fail.
    other = HyperTrainer(model0(), **options(train_data=(x, y), val_data=(vx, vy),
                                             **{**kwargs, "seed": seed + 10}))
    other.fit(6)
    assert not torch.equal(other.model.linear.weight, tensors.model.linear.weight)


# --- 4. kill and resume, bit for bit ----------------------------------------------------------


def tensor_sources():
    return TRAIN, TensorBatches(*VAL, batch_size=50, seed=5)


def stateful_sources(generators: bool = True):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader(data, seed):
        generator = torch.Generator().manual_seed(seed) if generators else None
        return StatefulDataLoader(TensorDataset(*data), batch_size=50, shuffle=True,
                                  generator=generator)

    return loader(TRAIN, 0), loader(VAL, 1)


SOURCES = {
    "tensors": tensor_sources,
    # Shuffled with the loaders' own seeded generators.
    "stateful": stateful_sources,
    # Shuffled, the samplers seeded from the global random state.
    "stateful_global": lambda: stateful_sources(generators=False),
}


class Saver(Callback):
    """Writes a checkpoint at the evaluation of hyper step ``at`` and kills its process."""

    def __init__(self, path: Path, at: int, kill: bool) -> None:
        self.path, self.at, self.kill = path, at, kill

    def on_evaluation(self, trainer, record):
        if trainer.hyper_step == self.at:
            trainer.save(self.path)
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)


def resumable(sources: str, *, restore: bool = False, extra: tuple = (),
              dropout: float = 0.1) -> HyperTrainer:
    """A run with everything that has state: dropout (the random state), Adam on both sides,
    Neumann's cached alpha, three schedulers, EarlyStopping, KeepBest and evaluations."""
    torch.manual_seed(0)  # the seed of a sampler without a generator of its own
    train, val = SOURCES[sources]()
    callbacks = [
        LRScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.8)),
        LRScheduler(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
                    optimizer="hyper"),
        LRScheduler(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
                    interval="evaluation", monitor="val_metric"),
        EarlyStopping("val_loss", patience=100, min_delta=1e3),  # waits, never stops
        KeepBest(("val_metric", "val_loss"), mode=("max", "min"), restore=restore),
        *extra,
    ]
    return HyperTrainer(model0(dropout=dropout), **options(
        train_data=train, val_data=val, inner_steps=2, solver=Neumann(steps=5, alpha="auto"),
        alpha_every=2, weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.05), eval_data={"val": VAL},
        metric=accuracy, eval_every=1, warmup_steps=1, callbacks=callbacks))


def assert_same_run(a: HyperTrainer, b: HyperTrainer) -> None:
    assert a.hyper_step == b.hyper_step and a.weight_step == b.weight_step
    assert a.epoch == b.epoch
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    for opt_a, opt_b in ((a.weight_optimizer, b.weight_optimizer),
                         (a.hyper_optimizer, b.hyper_optimizer)):
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
        ta, tb = optimizer_tensors(opt_a), optimizer_tensors(opt_b)
        assert len(ta) == len(tb) > 0 and all(torch.equal(u, v) for u, v in zip(ta, tb))
    assert a.hyper.alpha == b.hyper.alpha
    assert a.history.to_dict() == b.history.to_dict()
    for ca, cb in zip(a.callbacks, b.callbacks):
        if isinstance(ca, LRScheduler):
            assert ca.scheduler.state_dict() == cb.scheduler.state_dict()
        if isinstance(ca, EarlyStopping):
            assert (ca.best, ca.wait, ca.stopped_at) == (cb.best, cb.wait, cb.stopped_at)
        if isinstance(ca, KeepBest):
            assert ca.best_record == cb.best_record and ca.best_record
            assert_same_state(ca.best_state, cb.best_state)


@pytest.mark.parametrize(("sources", "dropout"), [
    ("tensors", 0.1),
    ("stateful", 0.0),  # the loader's own generator: kept where the checkpoint had it
    ("stateful_global", 0.0),  # no global random numbers used: exact
    ("stateful_global", 0.1),  # the loader seeded from the global random state
])
def test_kill_and_resume_is_bit_exact(tmp_path, sources, dropout):
    if sources != "tensors":
        pytest.importorskip("torchdata")
    K = 7
    straight = resumable(sources, dropout=dropout)
    straight.fit(K)
    es = straight.callbacks[3]
    assert es.wait == K - 1 and es.stopped_at is None
    # The weight learning rate moved by StepLR (every 4 weight steps) and the plateau, the
    # hyper one by the cosine.
    assert straight.weight_optimizer.param_groups[0]["lr"] < 0.05 * 0.8 ** 3
    assert straight.hyper_optimizer.param_groups[0]["lr"] < 0.05
    # Training: one warm-up batch, then three a round (two weight steps and the hyper step's),
    # four a pass. Validation: one a round, two a pass. At k=4 training is mid-pass and
    # validation at a pass boundary; at k=5 training is at a boundary and validation mid-pass.
    for k, train_mid_pass in ((4, True), (5, False)):
        first = resumable(sources, dropout=dropout)
        first.fit(k)
        drawn = 1 + 3 * k
        assert (drawn % 4 != 0) == train_mid_pass and first.epoch == drawn // 4
        assert (k % 2 != 0) == (not train_mid_pass)
        path = first.save(tmp_path / f"checkpoint_{k}.pt")
        del first  # the kill
        second = resumable(sources, dropout=dropout).resume(path)
        assert second.hyper_step == k
        second.fit(K)
        assert_same_run(straight, second)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_resume_from_a_checkpoint_of_a_killed_process(tmp_path):
    """A real process, killed with SIGKILL right after it wrote its checkpoint."""
    path = tmp_path / "killed.pt"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path\n"
            "from tests.test_trainer_open import Saver, resumable\n"
            f"t = resumable('tensors', restore=True, extra=(Saver(Path({str(path)!r}), 3, "
            "True),))\nt.fit(6)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    straight = resumable("tensors", restore=True)
    straight.fit(6)
    second = resumable("tensors", restore=True).resume(path)
    assert second.hyper_step == 3
    second.fit(6)
    assert_same_run(straight, second)
    # KeepBest restored the best evaluation's state at the end of both runs.
    assert_same_state(straight.model.state_dict(), straight.callbacks[4].best_state)


# --- 5. a plain DataLoader in a checkpoint -----------------------------------------------------


def test_plain_dataloader_checkpoint_warns_once_that_resume_is_not_exact(tmp_path):
    def build():
        loader = DataLoader(TensorDataset(*TRAIN), batch_size=50, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        return HyperTrainer(model0(), **options(train_data=loader, inner_steps=2))

    trainer = build()
    trainer.fit(2)
    with pytest.warns(UserWarning, match="cannot say where it is") as caught:
        trainer.save(tmp_path / "a.pt")
    inexact = [w for w in caught if "cannot say where it is" in str(w.message)]
    assert len(inexact) == 1  # for train_data; val_data is a TensorBatches
    assert "train_data" in str(inexact[0].message)
    assert "StatefulDataLoader" in str(inexact[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.save(tmp_path / "b.pt")  # once: not at the next checkpoint
    with pytest.warns(UserWarning, match="cannot say where it is") as caught:
        resumed = build().resume(tmp_path / "b.pt")
    assert len([w for w in caught if "cannot say where it is" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit(4)  # it trains on, starting a new pass, without warning again
    assert resumed.hyper_step == 4 and resumed.history.skipped == 0
    # A TensorBatches source is exact: no warning at all.
    exact = HyperTrainer(model0(), **options(inner_steps=2))
    exact.fit(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact.save(tmp_path / "c.pt")


# --- 6. weights-only mode --------------------------------------------------------------------


def weights_only(**kwargs) -> HyperTrainer:
    torch.manual_seed(0)
    base = {"train_loss": plain_loss, "train_data": TRAIN, "batch_size": 50,
            "weight_optimizer": lambda p: torch.optim.Adam(p, lr=0.05), "inner_steps": 3,
            "eval_data": {"val": VAL}, "metric": accuracy, "progress": False, "device": "cpu"}
    return HyperTrainer(nn.Linear(10, 3), **{**base, **kwargs})


def test_weights_only_model_trains_evaluates_and_resumes(tmp_path):
    trainer = weights_only()
    assert trainer.hyper is None and trainer.hyper_optimizer is None and not trainer.tunes
    before = trainer.evaluate(VAL)["loss"]
    trainer.fit(8)  # 24 weight steps, 6 passes: evaluated after the rounds that end a pass
    assert trainer.weight_step == 24 and len(trainer.history.hyper_steps) == 8
    assert trainer.evaluate(VAL)["loss"] < before - 0.2
    losses = [r["train_loss"] for r in trainer.history.hyper_steps]
    assert losses[-1] < losses[0]
    # Passes end at weight steps 4, 8, ..., 24: in rounds 2, 3, 4, 6, 7 and 8.
    assert [(e["hyper_step"], e["epoch"]) for e in trainer.history.evaluations] == [
        (2, 1), (3, 2), (4, 3), (6, 4), (7, 5), (8, 6)]
    assert trainer.history.evaluations[-1]["val_metric"] > 0.6

    # The same seed and data as a hand-written Adam loop over the same TensorBatches.
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    batches = TensorBatches(*TRAIN, batch_size=50, seed=0)
    steps = 0
    while steps < 24:
        for batch in batches:
            optimizer.zero_grad()
            plain_loss(model, batch).backward()
            optimizer.step()
            steps += 1
            if steps == 24:
                break
    assert_same_state(model.state_dict(), trainer.model.state_dict())

    # Checkpoints: 3 rounds, save, resume in a fresh trainer, 8 rounds = 8 rounds straight.
    first = weights_only()
    first.fit(3)
    first.save(tmp_path / "w.pt")
    second = weights_only().resume(tmp_path / "w.pt")
    second.fit(8)
    assert_same_state(trainer.model.state_dict(), second.model.state_dict())
    assert trainer.history.to_dict() == second.history.to_dict()
    # A weights-only checkpoint does not load into a tuning trainer.
    with pytest.raises(ValueError, match="differ in mode"):
        HyperTrainer(model0(), **options()).resume(tmp_path / "w.pt")


def test_hyper_optimizer_none_keeps_hyperparameters_fixed():
    model = model0(log_decay=-2.0)
    trainer = HyperTrainer(model, **options(hyper_optimizer=None, val_data=None, val_loss=None,
                                            eval_data={"val": VAL}))
    assert trainer.hyper is None and not trainer.tunes
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(4)
    assert torch.equal(model.log_decay, start["log_decay"])
    assert model.log_decay.grad is None
    assert not torch.equal(model.linear.weight, start["linear.weight"])
    assert trainer.weight_step == 20
    # Evaluations use the training loss (penalty included) when there is no val_loss.
    record = trainer.evaluate(VAL)
    with torch.no_grad():
        assert record["loss"] == pytest.approx(float(train_loss(model.eval(), VAL)), rel=1e-6)
    with pytest.raises(ValueError, match="no hyper optimizer"):
        HyperTrainer(model0(), **options(
            hyper_optimizer=None, callbacks=[LRScheduler(
                lambda o: torch.optim.lr_scheduler.StepLR(o, 1), optimizer="hyper")])).fit(1)


# --- 7. HyperStep in a hand-written loop -------------------------------------------------------


def test_hyper_step_in_a_hand_written_loop_equals_the_trainer():
    kwargs = {"solver": Neumann(steps=5, alpha="auto"), "alpha_every": 2, "inner_steps": 3,
              "weight_optimizer": lambda p: torch.optim.Adam(p, lr=0.05),
              "hyper_optimizer": lambda p: torch.optim.RMSprop(p, lr=0.02), "seed": 7}
    trainer = HyperTrainer(model0(dropout=0.2), **options(**kwargs))
    torch.manual_seed(123)
    trainer.fit(4)

    model = model0(dropout=0.2)
    weights = [p for n, p in model.named_parameters() if n != "log_decay"]
    weight_opt = torch.optim.Adam(weights, lr=0.05)
    hyper = HyperStep(model, solver=Neumann(steps=5, alpha="auto"), alpha_every=2,
                      optimizer=lambda p: torch.optim.RMSprop(p, lr=0.02))
    train = iter(_cycle(TensorBatches(*TRAIN, batch_size=50, seed=7)))
    val = iter(_cycle(TensorBatches(*VAL, batch_size=50, seed=8)))
    torch.manual_seed(123)
    records = []
    for _ in range(4):
        for _ in range(3):
            model.train()
            loss = train_loss(model, next(train))
            weight_opt.zero_grad()
            loss.backward(inputs=weights)
            weight_opt.step()
        model.train()
        t_loss = train_loss(model, next(train))
        model.eval()
        v_loss = val_loss(model, next(val))
        model.train()
        records.append(hyper(t_loss, v_loss))
    assert_same_state(model.state_dict(), trainer.model.state_dict())
    assert hyper.alpha == trainer.hyper.alpha and hyper.steps == trainer.hyper.steps == 4
    assert [r["val_loss"] for r in records] == [r["val_loss"]
                                                for r in trainer.history.hyper_steps]
    assert not torch.equal(model.log_decay, torch.zeros(3, 10))


def _cycle(source):
    while True:
        yield from source


# --- 8. callbacks ----------------------------------------------------------------------------


class Counter:
    """Every hook, counted (a plain object, not a Callback subclass)."""

    def __init__(self) -> None:
        self.calls = dict.fromkeys(("setup", "on_fit_start", "on_weight_step", "on_hyper_step",
                                    "on_evaluation", "on_fit_end"), 0)
        self.losses: list[float] = []

    def setup(self, trainer):
        self.calls["setup"] += 1

    def on_fit_start(self, trainer):
        self.calls["on_fit_start"] += 1

    def on_weight_step(self, trainer, loss):
        assert isinstance(loss, torch.Tensor) and not loss.requires_grad
        self.losses.append(float(loss))
        self.calls["on_weight_step"] += 1

    def on_hyper_step(self, trainer, record):
        assert record["hyper_step"] == trainer.hyper_step
        self.calls["on_hyper_step"] += 1

    def on_evaluation(self, trainer, record):
        self.calls["on_evaluation"] += 1

    def on_fit_end(self, trainer):
        self.calls["on_fit_end"] += 1


def scripted_metric(values):
    """A metric giving ``values`` in turn, one per call (one batch per evaluation)."""
    it = iter(values)
    return lambda model, batch: torch.tensor(next(it))


def test_callback_hooks_are_called_the_right_number_of_times():
    counter = Counter()
    trainer = HyperTrainer(model0(), **options(inner_steps=3, warmup_steps=2, eval_every=2,
                                               eval_data={"val": VAL}, callbacks=[counter]))
    trainer.fit(3)
    trainer.fit(5)
    assert counter.calls == {"setup": 1, "on_fit_start": 2, "on_weight_step": 2 + 5 * 3,
                             "on_hyper_step": 5, "on_evaluation": 2, "on_fit_end": 2}
    assert trainer.weight_step == 17 and len(counter.losses) == 17


def test_early_stopping_stops_fit():
    stopper = EarlyStopping("val_metric", mode="max", patience=2)
    counter = Counter()
    trainer = HyperTrainer(model0(), **options(
        inner_steps=2, eval_every=1, eval_data={"val": VAL},
        metric=scripted_metric([0.5, 0.6, 0.6, 0.55] + [0.9] * 20),
        callbacks=[stopper, counter]))
    history = trainer.fit(20)
    assert stopper.stopped_at == 4 and trainer.hyper_step == 4
    assert len(history.hyper_steps) == 4 and trainer.weight_step == 8
    assert stopper.best == pytest.approx(0.6) and stopper.wait == 2
    assert counter.calls["on_fit_end"] == 1


def test_keep_best_restores_the_best_evaluation_at_fit_end():
    snapshots = []

    class Snapshot(Callback):
        def on_evaluation(self, trainer, record):
            snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    keep = KeepBest("val_metric", mode="max")
    trainer = HyperTrainer(model0(), **options(
        inner_steps=2, eval_every=1, eval_data={"val": VAL},
        metric=scripted_metric([0.1, 0.9, 0.3, 0.2, 0.9]), callbacks=[Snapshot(), keep]))
    trainer.fit(5)
    assert len(snapshots) == 5
    assert keep.best_record["hyper_step"] == 2
    assert keep.best_record["val_metric"] == pytest.approx(0.9)
    assert_same_state(trainer.model.state_dict(), snapshots[1])  # the tie at 5 is no better
    assert not torch.equal(snapshots[4]["linear.weight"], snapshots[1]["linear.weight"])


def test_lr_scheduler_per_evaluation_and_reduce_on_plateau():
    step = LRScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
                       interval="evaluation")
    hyper = LRScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.9),
                        optimizer="hyper")
    trainer = HyperTrainer(model0(), **options(inner_steps=2, eval_every=2,
                                               eval_data={"val": VAL}, callbacks=[step, hyper]))
    trainer.fit(6)  # three evaluations, six hyper steps
    assert trainer.weight_optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5**3)
    assert trainer.hyper_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**6)

    plateau = LRScheduler(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, mode="max", factor=0.5, patience=0), interval="evaluation", monitor="val_metric")
    trainer = HyperTrainer(model0(), **options(
        inner_steps=2, eval_every=1, eval_data={"val": VAL},
        metric=scripted_metric([0.5, 0.5, 0.7, 0.6]), callbacks=[plateau]))
    trainer.fit(4)  # no gain at evaluations 2 and 4
    assert trainer.weight_optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.25)
    with pytest.raises(ValueError, match="monitor needs interval='evaluation'"):
        LRScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, 1), monitor="val_loss")
    missing = LRScheduler(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
                          interval="evaluation", monitor="test_loss")
    with pytest.raises(KeyError, match="test_loss"):
        HyperTrainer(model0(), **options(eval_every=1, eval_data={"val": VAL},
                                         callbacks=[missing])).fit(1)


# --- 9. bad input -----------------------------------------------------------------------------


class Numpy:
    """A re-iterable source of numpy batches."""

    def __iter__(self):
        for _ in range(3):
            yield np.zeros((5, 10), np.float32), np.zeros(5, np.int64)


def test_bad_input_is_a_clear_error_naming_the_argument():
    empty = DataLoader(TensorDataset(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)),
                       batch_size=5)
    with pytest.raises(ValueError, match="train_data yielded no batch"):
        HyperTrainer(model0(), **options(train_data=empty)).fit(1)
    with pytest.raises(ValueError, match="val_data yielded no batch"):
        HyperTrainer(model0(), **options(val_data=empty)).fit(1)
    with pytest.raises(ValueError, match="train_data is empty"):
        HyperTrainer(model0(), **options(train_data=[]))
    with pytest.raises(TypeError, match="train_data must be .*first batch holds no tensor"):
        HyperTrainer(model0(), **options(train_data=[[1, 2], [3, 4]]))
    ints = DataLoader(list(range(10)), batch_size=5, collate_fn=list)
    with pytest.raises(TypeError, match="train_data yielded a batch with no tensor in it"):
        HyperTrainer(model0(), **options(train_data=ints)).fit(1)
    with pytest.raises(TypeError, match="val_data yielded a batch with no tensor in it.*ndarray"
                       "|val_data yielded a batch with no tensor in it.*tuple"):
        HyperTrainer(model0(), **options(val_data=Numpy())).fit(1)
    meta = [(torch.zeros(5, 10, device="meta"), torch.zeros(5, dtype=torch.long))]
    with pytest.raises(RuntimeError, match="train_data: a batch could not be moved to cpu"):
        HyperTrainer(model0(), **options(train_data=meta)).fit(1)

    class WrongSignature(Callback):
        def on_hyper_step(self, trainer):
            pass

    with pytest.raises(TypeError, match=r"callbacks\[1\]\.on_hyper_step must take "
                                        r"\(trainer, record\)"):
        HyperTrainer(model0(), **options(callbacks=[Counter(), WrongSignature()]))
    with pytest.raises(TypeError, match=r"callbacks\[0\] \(object\) has none of the hooks"):
        HyperTrainer(model0(), **options(callbacks=[object()]))
    with pytest.raises(ValueError, match="declares no HyperParameter"):
        HyperStep(nn.Linear(10, 3))

    class Examples(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return TRAIN[0][i], TRAIN[1][i]

    with pytest.raises(TypeError, match="train_data is a map-style Dataset .*DataLoader"):
        HyperTrainer(model0(), **options(train_data=Examples()))
    with pytest.raises(TypeError, match="val_data is a map-style Dataset"):
        HyperTrainer(model0(), **options(val_data=Examples()))

    def one_shot():
        yield TRAIN

    exhausted = one_shot()
    list(exhausted)
    with pytest.raises(ValueError, match="train_data yielded no batch"):
        HyperTrainer(model0(), **options(train_data=exhausted)).fit(1)
    # A generator that runs dry mid-training cannot start a second epoch.
    with pytest.raises(ValueError, match="train_data is an iterator and it is exhausted"):
        HyperTrainer(model0(), **options(train_data=one_shot(), inner_steps=2)).fit(1)
    # An endless generator is fine.
    endless = _cycle([TRAIN])
    HyperTrainer(model0(), **options(train_data=endless, inner_steps=2)).fit(2)


def test_bad_eval_data_is_an_error_naming_the_entry():
    empty = DataLoader(TensorDataset(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)),
                       batch_size=5)
    with pytest.raises(ValueError, match=r"eval_data\['val'\] yielded no batch"):
        HyperTrainer(model0(), **options(eval_data={"val": empty}, eval_every=1)).fit(1)
    with pytest.raises(TypeError, match=r"eval_data\['test'\] yielded a batch with no tensor"):
        HyperTrainer(model0(), **options(eval_data={"test": Numpy()}, eval_every=1)).fit(1)


# --- 10. evaluate -----------------------------------------------------------------------------


def test_evaluate_is_the_mean_over_examples():
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    x, y = blobs(103, seed=9)
    with torch.no_grad():
        logits = model(x)
    loss = float(F.cross_entropy(logits, y, reduction="sum")) / 103
    acc = float((logits.argmax(-1) == y).float().sum()) / 103
    assert 0.2 < acc < 0.8  # a non-trivial value to compare against

    model.train()
    for data in ((x, y), TensorDataset(x, y), TensorBatches(x, y, batch_size=7)):
        result = evaluate(model, data, plain_loss, metric=accuracy, batch_size=25)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)
        assert result["metric"] == pytest.approx(acc, rel=1e-6)
    assert model.training  # restored
    ragged = DataLoader(TensorDataset(x, y), batch_size=25)  # 4 x 25 + 3
    sizes = [len(b[1]) for b in ragged]
    assert sizes == [25, 25, 25, 25, 3]
    result = evaluate(model, ragged, plain_loss, metric=accuracy)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["metric"] == pytest.approx(acc, rel=1e-6)
    with torch.no_grad():
        unweighted = float(np.mean([float(plain_loss(model, b)) for b in ragged]))
    assert abs(unweighted - loss) > 1e-4  # the weighting matters here

    def dict_metric(model, batch):
        return (model(batch["x"]).argmax(-1) == batch["y"]).float().mean()

    dict_batches = [{"name": "part", "x": x[i:i + 40], "y": y[i:i + 40]}
                    for i in range(0, 103, 40)]
    result = evaluate(model, dict_batches, lambda m, b: F.cross_entropy(m(b["x"]), b["y"]),
                      metric=dict_metric)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["metric"] == pytest.approx(acc, rel=1e-6)
    assert set(evaluate(model, (x, y), plain_loss)) == {"loss"}
    with pytest.raises(ValueError, match="data yielded no batch"):
        evaluate(model, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4), plain_loss)
