"""Trial helpers: pruning, artifacts, checkpoints, warm start, resume of retried trials."""

from __future__ import annotations

import time
import warnings

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
from torch import nn

from optuna_ift.hypergrad import Neumann
from optuna_ift.hyperparams import WeightDecay
from optuna_ift.integration import (
    ATTR_CHECKPOINT_STEP,
    ATTR_LEARNED,
    ATTR_RESUMED_AT_STEP,
    ATTR_RESUMED_FROM,
    ATTR_WARM_START,
    IFTPruningCallback,
    create_storage,
    learned_hyperparameters,
    load_checkpoint,
    load_learned,
    retry_history,
    run_trainer,
    save_checkpoint,
    save_learned,
    warm_start,
)
from optuna_ift.trainer import Callback, HyperTrainer

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Net(nn.Module):
    def __init__(self, hidden: int = 5, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        self.decay = WeightDecay(self.net, mode="per_weight", init=1e-2)

    def forward(self, x):
        return self.net(x)


def _train(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1]) + model.decay(model.net)


def _val(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def make_trainer(hidden: int = 5, *, seed: int = 0, callbacks=(), eval_every: int = 1):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)
    return HyperTrainer(
        Net(hidden, seed), train_loss=_train, val_loss=_val, train_data=(X[:40], y[:40]),
        val_data=(X[40:], y[40:]), batch_size=20, inner_steps=2,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
        solver=Neumann(steps=2, alpha=0.1), eval_data={"val": (X[40:], y[40:])},
        eval_every=eval_every, callbacks=list(callbacks), progress=False, device="cpu",
        seed=seed,
    )


@pytest.fixture
def store(tmp_path):
    (tmp_path / "artifacts").mkdir()
    return FileSystemArtifactStore(str(tmp_path / "artifacts"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _learned(model) -> dict:
    return {k: v.detach().clone() for k, v in learned_hyperparameters(model).items()}


def test_learned_tensors_round_trip_with_summaries(store):
    study = optuna.create_study()
    trial = study.ask()
    trainer = make_trainer()
    trainer.fit(3)
    artifact_id = save_learned(trial, trainer, store)
    attrs = study.trials[0].user_attrs
    assert attrs[ATTR_LEARNED] == artifact_id
    assert attrs["ift:num_hyperparameters"] == trainer.model.decay.num_hyperparameters == 35
    assert attrs["ift:shapes"] == {"decay.log_decays.0": [5, 4], "decay.log_decays.1": [3, 5]}
    decays = torch.cat([d.flatten() for d in trainer.model.decay.decays().values()])
    assert attrs["ift:mean_decay"] == pytest.approx(float(decays.mean()))
    norms = attrs["ift:hyperparameter_norms"]
    assert attrs["ift:hyperparameter_norm"] == pytest.approx(
        sum(v**2 for v in norms.values()) ** 0.5)
    assert _same(load_learned(study, trial.number, store), _learned(trainer.model))
    # The artifact is a safetensors file (no pickle), named so in the trial's artifact list.
    metas = optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage)
    assert [m.filename for m in metas] == ["learned_hyperparameters.safetensors"]
    with pytest.raises(ValueError, match="no learned tensors"):
        load_learned(study, study.ask().number, store)


def test_checkpoint_round_trip_loads_with_weights_only(store, monkeypatch):
    study = optuna.create_study()
    trial = study.ask()
    trainer = make_trainer()
    trainer.fit(3)
    first = save_checkpoint(trial, trainer, store)
    trainer.fit(4)
    save_checkpoint(trial, trainer, store)
    attrs = study.trials[0].user_attrs
    assert attrs[ATTR_CHECKPOINT_STEP] == 4
    with pytest.raises(Exception):  # the trial's older checkpoint was removed from the store
        store.open_reader(first)

    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    fresh = make_trainer()
    assert load_checkpoint(study, trial.number, fresh, store) == 4
    assert calls == [True]
    assert fresh.hyper_step == 4 and fresh.weight_step == trainer.weight_step
    assert _same(dict(fresh.model.state_dict()), dict(trainer.model.state_dict()))
    assert load_checkpoint(study, study.ask().number, make_trainer(), store) is None


def test_warm_start_copies_matching_shapes_and_skips_others(store):
    study = optuna.create_study()
    values = {}
    for value, seed in ((0.5, 1), (0.2, 2)):  # the second is the better trial
        trial = study.ask()
        trainer = make_trainer(seed=seed)
        trainer.fit(2 + seed)
        save_learned(trial, trainer, store)
        study.tell(trial, value)
        values[trial.number] = _learned(trainer.model)
    other = study.ask()  # a different width: never a candidate
    save_learned(other, make_trainer(hidden=7), store)
    study.tell(other, 0.01)

    model = Net()
    assert warm_start(model, study, store) == 1
    assert _same(_learned(model), values[1])
    assert warm_start(model, study, store, exclude=1) == 0
    assert _same(_learned(model), values[0])

    wide = Net(hidden=6)
    before = _learned(wide)
    assert warm_start(wide, study, store) is None
    assert _same(_learned(wide), before)
    assert warm_start(Net(hidden=7), study, store) == 2
    assert warm_start(Net(), optuna.create_study(), store) is None


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruning_callback_reports_and_raises():
    study = optuna.create_study(pruner=AlwaysPrune())
    trial = study.ask()
    trainer = make_trainer(eval_every=2, callbacks=[])
    trainer.callbacks.append(IFTPruningCallback(trial))
    with pytest.raises(optuna.TrialPruned, match="hyper step 2"):
        trainer.fit(10)
    assert trainer.hyper_step == 2
    assert list(study.trials[0].intermediate_values) == [2]
    assert study.trials[0].intermediate_values[2] == pytest.approx(
        trainer.history.evaluations[-1]["val_loss"])

    trainer = make_trainer(eval_every=1)
    trainer.callbacks.append(IFTPruningCallback(study.ask(), monitor="test_loss"))
    with pytest.raises(KeyError, match="test_loss"):
        trainer.fit(1)


def test_run_trainer_prunes_and_still_saves(store):
    study = optuna.create_study(pruner=AlwaysPrune())
    study.optimize(lambda t: run_trainer(t, make_trainer(), hyper_steps=5,
                                         artifact_store=store), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert ATTR_LEARNED in trial.user_attrs and trial.user_attrs["ift:hyper_steps"] == 1


def test_run_trainer_summaries_and_warm_start(store):
    study = optuna.create_study()
    study.optimize(lambda t: run_trainer(t, make_trainer(seed=t.number), hyper_steps=4,
                                         artifact_store=store, checkpoint_every=2),
                   n_trials=2)
    first, second = study.trials
    assert first.state == second.state == TrialState.COMPLETE
    assert first.user_attrs[ATTR_WARM_START] is None
    assert second.user_attrs[ATTR_WARM_START] == 0
    for t in (first, second):
        attrs = t.user_attrs
        assert attrs["ift:final_val_loss"] == pytest.approx(t.value)
        assert attrs["ift:hyper_steps"] == 4 and attrs["ift:final_hyper_step"] == 4
        assert attrs[ATTR_CHECKPOINT_STEP] == 2  # none taken at the last step
        assert {"ift:mean_decay", "ift:num_hyperparameters",
                "ift:hyperparameter_norm"} <= attrs.keys()
        assert list(t.intermediate_values) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="monitor"):
        run_trainer(study.ask(), make_trainer(), hyper_steps=1, artifact_store=store,
                    monitor="train_loss")


class Crash(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_hyper_step(self, trainer, record):
        if trainer.hyper_step == self.at:
            raise RuntimeError("worker died")


def test_retried_trial_resumes_from_checkpoint(store):
    reference = optuna.create_study()
    reference.optimize(lambda t: run_trainer(t, make_trainer(), hyper_steps=7,
                                             artifact_store=store, checkpoint_every=2),
                       n_trials=1)

    study = optuna.create_study()
    with pytest.raises(RuntimeError, match="worker died"):
        study.optimize(lambda t: run_trainer(t, make_trainer(callbacks=[Crash(5)]),
                                             hyper_steps=7, artifact_store=store,
                                             checkpoint_every=2), n_trials=1)
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs[ATTR_CHECKPOINT_STEP] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.RetryFailedTrialCallback(max_retry=1)(study, failed)
    assert study.trials[1].state == TrialState.WAITING

    seen = []
    study.optimize(lambda t: seen.append(retry_history(t)) or run_trainer(
        t, make_trainer(seed=123), hyper_steps=7, artifact_store=store, checkpoint_every=2),
        n_trials=1)
    retried = study.trials[1]
    assert seen == [[0]]
    assert retried.state == TrialState.COMPLETE
    assert retried.user_attrs[ATTR_RESUMED_FROM] == 0
    assert retried.user_attrs[ATTR_RESUMED_AT_STEP] == 4
    assert retried.user_attrs["ift:hyper_steps"] == 7
    # Evaluations before the checkpoint are reported again: the pruner sees the whole curve.
    assert list(retried.intermediate_values) == list(range(1, 8))
    # Resuming is exact: the same result as the run that never died.
    assert retried.value == pytest.approx(reference.trials[0].value, rel=1e-5)
    assert _same_close(load_learned(study, 1, store), load_learned(reference, 0, store))


def _same_close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_journal_storage_fails_stale_trials_and_queues_retries(tmp_path):
    storage = create_storage(str(tmp_path / "study.log"), heartbeat_interval=1,
                             grace_period=2, max_retry=1)
    assert storage.get_heartbeat_interval() == 1
    study = optuna.create_study(storage=storage, study_name="s")
    alive, dead = study.ask(), study.ask()
    storage.record_heartbeat(alive._trial_id)
    storage.set_trial_system_attr(dead._trial_id, "ift:heartbeat", time.time() - 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    assert study.get_trials()[2].system_attrs["failed_trial"] == dead.number
    # Without heartbeats, and for database URLs, plain Optuna storages come back.
    assert type(create_storage(str(tmp_path / "b.log"))) is optuna.storages.JournalStorage
    rdb = create_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=3)
    assert isinstance(rdb, optuna.storages.RDBStorage) and rdb.get_heartbeat_interval() == 3
    with pytest.raises(ValueError, match="heartbeat_interval"):
        create_storage(str(tmp_path / "d.log"), heartbeat_interval=0)
