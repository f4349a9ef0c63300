"""Optuna trials that span a gloo process group of two CPU processes: rank 0 talks to a journal
file, both ranks train the same parameters data-parallel through
``optuna_integration.TorchDistributedTrial``, a pruned trial is pruned on both, warm starts and
learned tensors agree, and a data-parallel trainer refuses a trial of one process."""

from __future__ import annotations

import os

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from optuna_ift import Neumann
from optuna_ift.integration import (
    ATTR_CHECKPOINT,
    ATTR_WARM_START,
    load_learned,
    optimize_distributed,
    run_trainer,
)
from optuna_ift.trainer import HyperTrainer
from tests._ranks import WORLD, gloo_group, spawn_ranks
from tests.test_data_parallel import DecayedLinear, data, train_loss, val_loss

PRUNED = 1  # the trial number the pruner prunes at its first report


class PruneOne(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == PRUNED


def make_trainer(lr: float, seed: int) -> HyperTrainer:
    torch.manual_seed(seed)
    return HyperTrainer(
        DecayedLinear().double(), train_loss=train_loss, val_loss=val_loss, train_data=data(64, 1),
        val_data=data(32, 2), batch_size=16, val_batch_size=16,
        weight_optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
        solver=Neumann(steps=3, alpha=0.2), inner_steps=2,
        eval_data={"val": data(32, 2)}, eval_every=2, device="cpu", progress=False)


def _worker(rank: int, port: int, folder: str) -> None:
    with gloo_group(rank, port):
        os.makedirs(os.path.join(folder, "artifacts"), exist_ok=True)
        store = FileSystemArtifactStore(os.path.join(folder, "artifacts"))
        seen: list[dict] = []

        def objective(trial) -> float:
            lr = trial.suggest_float("lr", 0.05, 0.5, log=True)
            width = trial.suggest_int("width", 1, 9)  # sampled, shared, unused
            record = {"number": trial.number, "params": dict(trial.params), "width": width}
            seen.append(record)
            # Different initial weights per rank: rank 0's are broadcast by the trainer.
            trainer = make_trainer(lr, seed=100 * rank + trial.number)
            try:
                record["value"] = run_trainer(trial, trainer, hyper_steps=6, artifact_store=store,
                                              checkpoint_every=2)
            except optuna.TrialPruned:
                record["value"] = "pruned"
                raise
            finally:
                record["log_decay"] = trainer.model.log_decay.detach().clone()
                record["hyper_step"] = trainer.hyper_step
            return record["value"]

        study = None
        if rank == 0:
            storage = JournalStorage(JournalFileBackend(os.path.join(folder, "study.log")))
            study = optuna.create_study(
                storage=storage, study_name="dp", pruner=PruneOne(),
                sampler=optuna.samplers.RandomSampler(seed=rank + 3))
        optimize_distributed(study, objective, n_trials=3)
        # A data-parallel trainer with a trial of one process is refused before any collective.
        trainer = make_trainer(0.1, seed=rank)
        refusal = None
        if rank == 0:
            asked = study.ask()
            try:
                run_trainer(asked, trainer, hyper_steps=1, artifact_store=store)
            except ValueError as error:
                refusal = str(error)
            study.tell(asked, state=TrialState.FAIL)
        torch.save({"seen": seen, "refusal": refusal}, os.path.join(folder, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed_trials")
    spawn_ranks(_worker, folder)
    runs = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    storage = JournalStorage(JournalFileBackend(str(folder / "study.log")))
    return runs, optuna.load_study(study_name="dp", storage=storage), folder


def test_every_rank_runs_the_same_trials_with_the_same_parameters(ranks):
    runs, study, _ = ranks
    zero, one = (run["seen"] for run in runs)
    assert [r["number"] for r in zero] == [r["number"] for r in one] == [0, 1, 2]
    for a, b, trial in zip(zero, one, study.trials):
        assert a["params"] == b["params"] == trial.params
        assert a["width"] == b["width"] == trial.params["width"]
    assert len({r["params"]["lr"] for r in zero}) == 3  # three different draws


def test_a_pruned_trial_is_pruned_on_both_ranks_and_the_others_agree(ranks):
    runs, study, _ = ranks
    zero, one = (run["seen"] for run in runs)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                               TrialState.COMPLETE, TrialState.FAIL]
    assert zero[PRUNED]["value"] == one[PRUNED]["value"] == "pruned"
    assert zero[PRUNED]["hyper_step"] == one[PRUNED]["hyper_step"] == 2  # its first report
    for a, b, trial in zip(zero, one, study.trials):
        assert torch.equal(a["log_decay"], b["log_decay"])  # the hyperparameters agree
        if trial.state == TrialState.COMPLETE:
            assert a["value"] == b["value"] == trial.value
            assert a["hyper_step"] == 6
        tuned = not torch.equal(a["log_decay"], torch.full((3, 6), -1.0, dtype=torch.float64))
        assert tuned


def test_rank_0_stores_checkpoints_learned_tensors_and_the_warm_start(ranks):
    runs, study, folder = ranks
    zero = runs[0]["seen"]
    store = FileSystemArtifactStore(str(folder / "artifacts"))
    for trial, record in zip(study.trials, zero):
        # (the pruned trial stopped at its first evaluation, before its first checkpoint)
        assert (ATTR_CHECKPOINT in trial.user_attrs) == (trial.state == TrialState.COMPLETE)
        assert torch.equal(load_learned(study, trial.number, store)["log_decay"],
                           record["log_decay"])
    # Trials 1 and 2 start from trial 0's decays (the only complete one before them), on
    # both ranks: otherwise their hyperparameters would have drifted apart and been refused.
    assert study.trials[0].user_attrs[ATTR_WARM_START] is None
    assert study.trials[1].user_attrs[ATTR_WARM_START] == 0
    assert study.trials[2].user_attrs[ATTR_WARM_START] == 0


def test_a_data_parallel_trainer_refuses_a_trial_of_one_process(ranks):
    runs, _, _ = ranks
    assert "TorchDistributedTrial" in runs[0]["refusal"]
    assert "2 processes" in runs[0]["refusal"]


def test_optimize_distributed_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        optimize_distributed(optuna.create_study(), lambda trial: 0.0, n_trials=1)
