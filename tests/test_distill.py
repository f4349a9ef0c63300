"""The distillation study (Fig. 6) on the embedded digits: its fitting procedure, its claims,
its files and its argument checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from optuna_ift.data import load_dataset
from optuna_ift.experiments.distill import distill, fit_logistic_regression
from optuna_ift.hypergrad import ConjugateGradient, hypergradient

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = dict(hyper_steps=30, eval_every=10, fit_iterations=200, n_random_draws=2,
             batch_size=256, hyper_lr=0.03, show_progress=False, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, dtype=torch.float64)


def _class_means(data):
    return torch.stack([data.X_train[data.y_train == c].mean(0) for c in range(10)])


def test_fit_is_the_unique_optimum_and_lives_in_the_span_of_the_images(digits):
    images, labels, decay = _class_means(digits), torch.arange(10), 1e-2
    fits = [fit_logistic_regression(images, labels, num_classes=10, decay=decay,
                                    grad_tol=1e-10, generator=torch.Generator().manual_seed(s))[0]
            for s in (0, 1)]
    # Strictly convex: two different initialisations end at the same weights.
    for a, b in zip(fits[0].parameters(), fits[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Stationarity: decay * W = (Y - P)^T X / n, so W's rows are combinations of the images.
    classifier = fits[0]
    weight, bias = classifier[1].weight, classifier[1].bias
    X = images.flatten(1)
    residual = F.one_hot(labels, 10).double() - (X @ weight.T + bias).softmax(-1)
    torch.testing.assert_close(decay * weight, residual.T @ X / 10, atol=1e-6, rtol=0)
    torch.testing.assert_close(decay * bias, residual.sum(0) / 10, atol=1e-6, rtol=0)
    basis = torch.linalg.qr(X.T).Q
    assert torch.linalg.vector_norm(weight.T - basis @ (basis.T @ weight.T)) < 1e-6


def test_implicit_hypergradient_of_the_pixels_matches_finite_differences(digits):
    """The study's inner problem, differentiated through L-BFGS fits by central differences."""
    decay, images, labels = 1e-2, _class_means(digits), torch.arange(10)
    X_val, y_val = digits.X_val, digits.y_val
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(3),
                            dtype=images.dtype)

    def val_at(x):
        classifier, _ = fit_logistic_regression(x, labels, num_classes=10, decay=decay,
                                                max_iter=1000, grad_tol=1e-10)
        return classifier, F.cross_entropy(classifier(X_val), y_val)

    classifier, _ = val_at(images)
    classifier.requires_grad_(True)
    pixels = images.clone().requires_grad_()
    params = list(classifier.parameters())
    train = (F.cross_entropy(classifier(pixels), labels)
             + decay / 2 * sum(p.pow(2).sum() for p in params))
    val = F.cross_entropy(classifier(X_val), y_val)
    (g,) = hypergradient(val, train, params, [pixels], solver=ConjugateGradient(steps=200))
    eps = 1e-3
    numeric = (val_at(images + eps * direction)[1] - val_at(images - eps * direction)[1]) / (
        2 * eps)
    assert float((g * direction).sum()) == pytest.approx(float(numeric), rel=1e-3)


def test_distill_beats_its_start_and_writes_its_files(tmp_path):
    results = distill(out=tmp_path, seed=0, **SMALL)
    baselines = results["baselines"]
    # Ten images learned on the real data beat the ten class means they started from, and
    # a random real image per class by far.
    assert results["initial"]["val_accuracy"] == pytest.approx(
        baselines["class_means"]["val_accuracy"])
    assert results["val_accuracy"] > baselines["class_means"]["val_accuracy"] + 0.01
    assert results["test_accuracy"] > baselines["random_real"]["test_accuracy"] + 0.1
    assert baselines["full_training_set"]["test_accuracy"] > 0.9
    # The outer loss fell.
    losses = results["hyper_steps_history"]["val_loss"]
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
    assert results["curve"]["hyper_step"] == [0, 10, 20, 30]
    assert results["skipped_hypergradients"] == 0
    # Each inner solve is a fresh, warm-started L-BFGS: at least one iteration, at most the cap.
    assert 1 <= results["inner_lbfgs_iterations_mean"] <= results["settings"]["fit_iterations"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_accuracy", "val_accuracy", "baselines", "settings", "seconds", "curve"):
        assert key in on_disk
    assert set(on_disk["baselines"]) == {"class_means", "random_real", "full_training_set"}
    assert on_disk["settings"]["decay"] == 1e-3 and on_disk["seconds"] > 0
    for name in ("distill_images.png", "distill_curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    saved = torch.load(tmp_path / "distilled.pt", weights_only=True)
    assert saved["images"].shape == (10, 1, 8, 8)
    assert saved["targets"].tolist() == list(range(10))


def test_distill_with_learned_labels_and_neumann(tmp_path):
    results = distill(learn_labels=True, solver="neumann", init="noise", out=tmp_path,
                      **{**SMALL, "hyper_steps": 10, "eval_every": 5})
    targets = torch.tensor(results["distilled_targets"])
    assert targets.shape == (10, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(10, dtype=targets.dtype))
    assert (targets.argmax(1) == torch.arange(10)).all()
    # Noise is a poor start; ten steps already make it a useful training set.
    assert results["val_accuracy"] > results["initial"]["val_accuracy"]
    assert (tmp_path / "distill_images.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"hyper_steps": 0}, "hyper_steps"),
    ({"decay": 0.0}, "decay"),
    ({"decay": float("nan")}, "decay"),
    ({"hyper_lr": -1.0}, "hyper_lr"),
    ({"init": "zeros"}, "init"),
    ({"solver": "exact"}, "solver"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"solver_steps": 0}, "solver_steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"eval_every": 0}, "eval_every"),
    ({"n_random_draws": 0}, "n_random_draws"),
    ({"seed": -1}, "seed"),
    ({"dataset": "imagenet"}, "dataset must be one of"),
])
def test_distill_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distill(show_progress=False, **kwargs)


def test_distill_learn_labels_must_be_bool():
    with pytest.raises(TypeError, match="learn_labels"):
        distill(learn_labels="yes", show_progress=False)
