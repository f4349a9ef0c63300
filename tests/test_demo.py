"""The demo: a hybrid study on digits, end to end, and the worker that joins one."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from optuna_ift.data import load_dataset
from optuna_ift.experiments.demo import demo, make_objective, run_worker
from optuna_ift.integration import ATTR_WARM_START, HybridSampler, load_learned

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_hybrid_study_on_digits_with_pruner_artifacts_and_warm_start(tmp_path):
    data = load_dataset("digits", n_train=300, n_val=100, n_test=100, seed=0)
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    study = optuna.create_study(
        sampler=HybridSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=3)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    objective = make_objective(data=data, artifact_store=store, hyper_steps=6, eval_every=2,
                               checkpoint_every=2, neumann_steps=2, warm_start=True)
    study.optimize(objective, n_trials=8)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) >= 2
    assert {"lr", "width", "inner_steps", "decay"} == set(study.best_params)
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        tensors = load_learned(study, trial.number, store)  # artifacts round-trip
        assert {k: list(v.shape) for k, v in tensors.items()} == trial.user_attrs["ift:shapes"]
        width = trial.params["width"]
        assert trial.user_attrs["ift:num_hyperparameters"] == 64 * width + width * 10
        assert all(torch.isfinite(t).all() for t in tensors.values())
    warm = [t for t in study.trials if t.user_attrs.get(ATTR_WARM_START) is not None]
    assert warm, "no trial was warm-started"
    for trial in warm:
        source = study.trials[trial.user_attrs[ATTR_WARM_START]]
        assert source.params["width"] == trial.params["width"]
        assert source.state == TrialState.COMPLETE and source.number < trial.number


@pytest.mark.parametrize("init_decay", [None, 1e-3])
def test_the_per_weight_decays_start_from_the_sampled_decay(tmp_path, init_decay):
    """The recipe: Optuna samples the decay every weight's own decay starts from (with a fixed
    ``init_decay``, ``decay`` leaves the search space); nothing is warm-started by default."""
    data = load_dataset("digits", n_train=200, n_val=100, n_test=100, seed=0)
    store = FileSystemArtifactStore(str(tmp_path))
    study = optuna.create_study(sampler=HybridSampler(optuna.samplers.RandomSampler(seed=0)))
    fixed = {"lr": 1e-2, "width": 32, "inner_steps": 2}
    study.enqueue_trial({**fixed, "decay": 3e-2} if init_decay is None else fixed)
    study.enqueue_trial({**fixed, "decay": 1e-5} if init_decay is None else fixed)
    objective = make_objective(data=data, artifact_store=store, hyper_steps=2, eval_every=1,
                               checkpoint_every=None, hyper_lr=0.0, init_decay=init_decay)
    study.optimize(objective, n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert ("decay" in trial.params) == (init_decay is None)
        assert trial.user_attrs.get(ATTR_WARM_START) is None
        start = trial.params.get("decay", init_decay)
        for log_decay in load_learned(study, trial.number, store).values():
            assert torch.allclose(log_decay.double().exp(),
                                  torch.full(log_decay.shape, start, dtype=torch.float64))


def test_demo_writes_results_and_figures(tmp_path, capsys):
    results = demo(n_trials=4, hyper_steps=6, out=tmp_path, show_progress=False)
    printed = capsys.readouterr().out
    assert f"optuna-dashboard {tmp_path / 'study.log'}" in printed
    assert "val loss" in printed and "Best trials" in printed
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["storage"] == str(tmp_path / "study.log")
    assert sum(saved["states"].values()) == 4
    best = saved["best"]
    assert best["num_decays"] == len(best["log10_decays"])
    assert best["validation_curve"]["hyper_step"][-1] == 6
    for name in ("demo.png", "demo_history.png", "demo_importances.png", "demo_decays.png",
                 "demo_curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    # Beside it, the weights-only baseline: TPE with one global decay, for as long as the
    # hybrid trials took, its best trial's test accuracy printed beside the hybrid's.
    base = saved["weights_only"]
    assert base["trials"] >= 1 and base["seconds"] >= base["budget_seconds"] > 0
    assert set(base["best"]) >= {"lr", "width", "inner_steps", "decay", "test_accuracy"}
    assert 0.0 <= base["best"]["test_accuracy"] <= 1.0
    assert "What IFT bought" in printed
    assert f"{best['test_accuracy']:.1%}" in printed
    assert f"{base['best']['test_accuracy']:.1%}" in printed
    # Running it again continues the same study (journal file under out).
    again = demo(n_trials=1, hyper_steps=6, out=tmp_path, show_progress=False, baseline=False)
    assert again["weights_only"] is None
    assert sum(again["states"].values()) == 5


def test_worker_joins_a_journal_study_until_total(tmp_path):
    kwargs = dict(storage=str(tmp_path / "shared.log"), study_name="w", out=tmp_path,
                  hyper_steps=3, checkpoint_every=1, heartbeat_interval=1,
                  pruner=optuna.pruners.NopPruner(), total_trials=3)
    first = run_worker(n_trials=2, seed=1, **kwargs)
    assert len(first["trials_run"]) == 2 and first["states"]["COMPLETE"] == 2
    second = run_worker(n_trials=5, seed=2, **kwargs)
    assert second["trials_run"] == [2] and second["states"]["COMPLETE"] == 3
    with pytest.raises(ValueError, match="n_trials"):
        run_worker(n_trials=0, **kwargs)
