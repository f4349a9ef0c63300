"""Data-parallel HyperTrainer on a gloo process group of two CPU processes (127.0.0.1): the
weights and hyperparameters equal a one-process run on the global batch (float64, 1e-6
relative), are identical on both ranks, and each rank computed on its share of the batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optuna_ift import ConjugateGradient, Identity, Neumann
from optuna_ift.hyperparams import HyperParameter
from optuna_ift.trainer import HyperTrainer
from tests._ranks import WORLD, gloo_group, spawn_ranks

SOLVERS = {"neumann": Neumann(steps=5, alpha="auto"), "cg": ConjugateGradient(steps=8),
           "identity": Identity()}


class DecayedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.log_decay = HyperParameter(torch.full((3, 6), -1.0))
        self.seen: list[int] = []  # batch sizes of the training loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def train_loss(model, batch):
    x, y = batch
    model.seen.append(x.shape[0])
    return F.cross_entropy(model(x), y) + (model.log_decay.exp() * model.linear.weight**2).sum()


def val_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x[:, 0] += 2.0 * y
    return x, y


def run(solver: str, rank_seed: int = 0) -> tuple[dict, list[int]]:
    torch.manual_seed(rank_seed)  # different initial weights per rank: rank 0's must win
    model = DecayedLinear().double()
    trainer = HyperTrainer(
        model, train_loss=train_loss, val_loss=val_loss, train_data=data(96, 1),
        val_data=data(48, 2), batch_size=32, val_batch_size=24,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
        solver=SOLVERS[solver], inner_steps=3, alpha_every=2, device="cpu", progress=False)
    trainer.fit(6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, model.seen


def _worker(rank: int, port: int, folder: str) -> None:
    with gloo_group(rank, port):
        results = {name: run(name, rank_seed=rank) for name in SOLVERS}
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    spawn_ranks(_worker, folder)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_two_processes_take_the_one_process_steps(two_ranks, solver):
    alone, seen_alone = run(solver)
    (rank0, seen0), (rank1, seen1) = two_ranks[0][solver], two_ranks[1][solver]
    for key, value in alone.items():
        assert torch.equal(rank0[key], rank1[key]), key  # identical on both ranks
        scale = float(value.abs().max())
        assert float((rank0[key] - value).abs().max()) <= 1e-6 * scale, key
    assert not torch.equal(alone["log_decay"], torch.full((3, 6), -1.0, dtype=torch.float64))
    assert set(seen_alone) == {32} and set(seen0) == set(seen1) == {32 // WORLD}


def _bad_inputs_worker(rank: int, port: int, folder: str) -> None:
    with gloo_group(rank, port):
        errors = {}

        def make(**kwargs):
            torch.manual_seed(0)
            options = dict(train_loss=train_loss, val_loss=val_loss, train_data=data(96, 1),
                           val_data=data(48, 2), batch_size=32, val_batch_size=24,
                           solver=Identity(), inner_steps=2, device="cpu", progress=False)
            return HyperTrainer(DecayedLinear().double(), **{**options, **kwargs})

        for name, call in {
            "batch": lambda: make(batch_size=33),
            "resume": lambda: make().resume(os.path.join(folder, "alone.pt")),
        }.items():
            try:
                call()
                errors[name] = None
            except ValueError as error:
                errors[name] = str(error)
        trainer = make()
        trainer.fit(1)
        if rank == 1:  # a drift: one process's hyperparameters changed alone
            with torch.no_grad():
                trainer.hyperparameters[0].add_(1.0)
        try:
            trainer.save(os.path.join(folder, "drift.pt"))
            errors["drift"] = None
        except RuntimeError as error:
            errors["drift"] = str(error)
        torch.save(errors, os.path.join(folder, f"errors{rank}.pt"))


def test_bad_inputs_of_a_process_group_are_clear_errors(tmp_path):
    torch.manual_seed(0)
    alone = HyperTrainer(DecayedLinear().double(), train_loss=train_loss, val_loss=val_loss,
                         train_data=data(96, 1), val_data=data(48, 2), batch_size=32,
                         val_batch_size=24, solver=Identity(), inner_steps=2, device="cpu",
                         progress=False)
    alone.fit(1)
    alone.save(tmp_path / "alone.pt")
    spawn_ranks(_bad_inputs_worker, tmp_path)
    for rank in range(WORLD):
        errors = torch.load(tmp_path / f"errors{rank}.pt", weights_only=True)
        assert "batch_size=33" in errors["batch"] and "multiple of the 2 processes" in (
            errors["batch"])
        assert "taken with 1 processes, this run has 2" in errors["resume"]
        assert "hyperparameters differ across the processes" in errors["drift"]
    assert not (tmp_path / "drift.pt").exists()


def _loader_run(world: int, rank: int, own_sampler: bool = True) -> dict:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    def loader(tensors, per_rank: int, seed: int) -> DataLoader:
        dataset = TensorDataset(*tensors)
        if world == 1:
            return DataLoader(dataset, batch_size=per_rank * WORLD, shuffle=False)
        if not own_sampler:  # the trainer gives it a DistributedSampler
            return DataLoader(dataset, batch_size=per_rank, shuffle=False)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler)

    torch.manual_seed(rank)
    model = DecayedLinear().double()
    trainer = HyperTrainer(
        model, train_loss=train_loss, val_loss=val_loss, train_data=loader(data(96, 1), 16, 0),
        val_data=loader(data(48, 2), 12, 1), solver=ConjugateGradient(steps=8),
        weight_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        hyper_optimizer=lambda p: torch.optim.SGD(p, lr=0.1), inner_steps=3, device="cpu",
        progress=False)
    trainer.fit(4)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _loader_worker(rank: int, port: int, folder: str) -> None:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    with gloo_group(rank, port):
        runs = {own: _loader_run(WORLD, rank, own_sampler=own) for own in (True, False)}
        # A shuffled loader without DistributedSampler gets a shuffled one of this rank.
        trainer = HyperTrainer(
            DecayedLinear().double(), train_loss=train_loss, val_loss=val_loss,
            train_data=DataLoader(TensorDataset(*data(96, 1)), batch_size=8, shuffle=True,
                                  drop_last=True),
            val_data=data(48, 2), batch_size=16, solver=Identity(), device="cpu",
            progress=False, seed=5)
        sampler = trainer.train_data.sampler
        given = {"distributed": isinstance(sampler, DistributedSampler),
                 "rank": sampler.rank, "replicas": sampler.num_replicas,
                 "shuffle": sampler.shuffle, "seed": sampler.seed,
                 "batch_size": trainer.train_data.batch_size,
                 "drop_last": trainer.train_data.drop_last,
                 "order": list(sampler)}
        torch.save({"runs": runs, "given": given}, os.path.join(folder, f"loader{rank}.pt"))


@pytest.fixture(scope="module")
def loader_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader_ranks")
    spawn_ranks(_loader_worker, folder)
    return [torch.load(folder / f"loader{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("own_sampler", [True, False], ids=["own-sampler", "sampler-given"])
def test_a_dataloader_with_a_distributed_sampler_takes_the_one_process_steps(loader_ranks,
                                                                             own_sampler):
    alone = _loader_run(1, 0)
    ranks = [r["runs"][own_sampler] for r in loader_ranks]
    for key, value in alone.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert float((ranks[0][key] - value).abs().max()) <= 1e-6 * float(value.abs().max())


def test_a_loader_without_distributed_sampler_gets_one_per_rank(loader_ranks):
    given = [r["given"] for r in loader_ranks]
    for rank, g in enumerate(given):
        assert g["distributed"] and g["rank"] == rank and g["replicas"] == WORLD
        assert g["shuffle"] and g["seed"] == 5 and g["batch_size"] == 8 and g["drop_last"]
    # The two ranks share out one shuffled epoch: disjoint halves of all 96 examples.
    orders = [g["order"] for g in given]
    assert not set(orders[0]) & set(orders[1])
    assert sorted(orders[0] + orders[1]) == list(range(96))
    assert orders[0] != sorted(orders[0])
