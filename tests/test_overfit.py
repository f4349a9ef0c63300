"""The overfit study (Fig. 5): tuned decays fit the validation set, the test set shows it."""

from __future__ import annotations

import json
import math

import pytest

from optuna_ift.experiments.overfit import overfit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Small and fast on the embedded digits: 2 examples per class for training and validation.
SMALL = dict(models=("linear",), n_train=20, n_val=20, n_test=200, hyper_steps=50,
             inner_steps=10, eval_every=5, hyper_lr=0.3, show_progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("overfit")
    return overfit(out=out, **SMALL), out


def test_validation_set_is_overfit(run):
    results, _ = run
    linear = results["per_model"]["linear"]
    final, baseline = linear["final"], linear["baseline_final"]
    # Tuned decays reach 100% validation accuracy; the held-out test set stays well below.
    assert final["val_accuracy"] == 1.0
    assert final["train_accuracy"] == 1.0
    assert final["test_accuracy"] <= 0.95
    step = linear["first_perfect_val_step"]
    assert step is not None and 0 < step <= SMALL["hyper_steps"]
    curves = linear["curves"]
    at = curves["hyper_step"].index(step)
    assert curves["val_accuracy"][at] == 1.0
    assert all(a < 1.0 for a in curves["val_accuracy"][:at])
    # The baseline (same weights, same weight steps, decay fixed) does not fit validation.
    assert baseline["val_accuracy"] < 0.95
    assert final["val_accuracy"] - baseline["val_accuracy"] >= 0.1
    # Validation loss falls along the hyper steps: the hypergradient is doing it.
    val_loss = linear["val_loss_per_hyper_step"]
    assert len(val_loss) == SMALL["hyper_steps"]
    assert sum(val_loss[-5:]) < 0.5 * sum(val_loss[:5])
    assert linear["skipped_hyper_steps"] == 0


def test_one_hyperparameter_per_weight_and_they_spread(run):
    results, _ = run
    linear = results["per_model"]["linear"]
    assert linear["num_hyperparameters"] == linear["num_weights"] == 64 * 10 + 10
    decays = linear["decays"]
    q = decays["log10_quantiles"]
    init = math.log10(results["settings"]["init_decay"])
    # The decays moved by orders of magnitude, both up and down.
    assert q["0.0"] < init - 1 and q["1.0"] > init + 1
    assert decays["share_raised"] > 0.1 and decays["share_lowered"] > 0.1
    assert sum(decays["histogram_counts"]) == linear["num_hyperparameters"]


def test_curves_and_baseline_are_aligned(run):
    results, _ = run
    linear = results["per_model"]["linear"]
    steps = [0] + list(range(5, SMALL["hyper_steps"] + 1, 5))
    for curves in (linear["curves"], linear["baseline_curves"]):
        assert curves["hyper_step"] == steps
        assert curves["weight_step"] == [s * SMALL["inner_steps"] for s in steps]
        for split in ("train", "val", "test"):
            assert len(curves[f"{split}_accuracy"]) == len(steps)
            assert all(0.0 <= a <= 1.0 for a in curves[f"{split}_accuracy"])
    # Both runs start from the same initial model.
    for split in ("train", "val", "test"):
        assert (linear["curves"][f"{split}_accuracy"][0]
                == linear["baseline_curves"][f"{split}_accuracy"][0])


def test_results_json_and_pngs(run):
    results, out = run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["study"] == "overfit"
    assert on_disk["dataset"] == "digits"
    assert on_disk["models"] == ["linear"]
    assert on_disk["seconds"] > 0
    assert on_disk["settings"]["hyper_steps"] == SMALL["hyper_steps"]
    assert on_disk["settings"]["weight_steps"] == SMALL["hyper_steps"] * SMALL["inner_steps"]
    summary = on_disk["summary"]["linear"]
    for key in ("first_perfect_val_step", "num_hyperparameters", "neumann_cutoffs",
                "tuned_val_accuracy", "tuned_test_accuracy", "baseline_val_accuracy",
                "baseline_test_accuracy"):
        assert key in summary
    assert on_disk["per_model"]["linear"]["final"] == results["per_model"]["linear"]["final"]
    for name in ("overfit.png", "overfit_decays.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_every_model_kind_runs_and_is_reproducible():
    kwargs = dict(models=("mlp", "cnn"), n_train=10, n_val=10, n_test=100, hyper_steps=2,
                  inner_steps=2, eval_every=1, hidden=16, channels=4, show_progress=False)
    first, second = overfit(**kwargs), overfit(**kwargs)
    for kind in ("mlp", "cnn"):
        a, b = first["per_model"][kind], second["per_model"][kind]
        assert a["num_hyperparameters"] == a["num_weights"]
        assert a["curves"] == b["curves"] and a["baseline_curves"] == b["baseline_curves"]
        assert a["curves"]["hyper_step"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"models": ("rnn",)}, "models"),
        ({"models": "linear"}, "models"),
        ({"models": ()}, "models"),
        ({"models": ("mlp", "mlp")}, "models"),
        ({"hyper_steps": 0}, "hyper_steps"),
        ({"inner_steps": 1.5}, "inner_steps"),
        ({"neumann_steps": -1}, "neumann_steps"),
        ({"eval_every": 0}, "eval_every"),
        ({"alpha_every": 0}, "alpha_every"),
        ({"hyper_lr": 0.0}, "hyper_lr"),
        ({"weight_lr": float("nan")}, "weight_lr"),
        ({"init_decay": -1e-3}, "init_decay"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": 15}, "n_val"),  # balanced: a multiple of the 10 classes
        ({"dataset": "imagenet"}, "dataset must be one of"),
        ({"dataset": "mnist"}, "root"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        overfit(show_progress=False, **kwargs)
