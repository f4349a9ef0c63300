"""Previews of the learned tensors that optuna-dashboard shows (optuna_ift/integration/_previews.py).

A short hybrid study on scikit-learn's digits, with a model that holds every family the
previews draw (a decay per weight, concrete dropout, distilled images, an augmentation net),
stores its previews in a FileSystemArtifactStore; the files are read back and checked.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from PIL import Image
from torch import nn

from optuna_ift.hypergrad import Identity
from optuna_ift.hyperparams import AugmentationNet, ConcreteDropout, DistilledData, WeightDecay
from optuna_ift.integration import (
    ATTR_LEARNED,
    ATTR_PREVIEWS,
    PREVIEW_KINDS,
    HybridSampler,
    create_storage,
    preview_files,
    run_trainer,
    save_previews,
)
from optuna_ift.trainer import HyperTrainer

optuna.logging.set_verbosity(optuna.logging.WARNING)

NUM_CLASSES = 10
HIDDEN = 16


def digits(n_train: int = 300, n_val: int = 200):
    """Digits as (n, 1, 8, 8) images in [0, 1], split into train and validation."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    return (X[:n_train], y[:n_train]), (X[n_train:n_train + n_val], y[n_train:n_train + n_val])


class Everything(nn.Module):
    """A small classifier with every family the previews draw."""

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, hidden: int = HIDDEN,
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        first = torch.stack([train_x[train_y == c][0] for c in range(NUM_CLASSES)])
        self.net = nn.ModuleDict({"body": nn.Linear(64, hidden), "head": nn.Linear(hidden, 10)})
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.decay = WeightDecay(self.net, mode="per_weight", init=1e-3)
        self.dropout = ConcreteDropout((hidden,), init=0.2, generator=g)
        self.distilled = DistilledData(1, NUM_CLASSES, (1, 8, 8), learn_labels=True,
                                       init=first)
        self.augment = AugmentationNet(1, hidden=4, depth=1, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.net["body"](x.flatten(1)))
        return self.net["head"](self.dropout(h))


def _train_loss(model: Everything, batch) -> torch.Tensor:
    x, y = batch
    images, targets = model.distilled()
    return (F.cross_entropy(model(model.augment(x)), y)
            + F.cross_entropy(model(images), targets) + model.decay(model.net))


def _val_loss(model: Everything, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def make_trainer(lr: float = 1e-2, hidden: int = HIDDEN) -> HyperTrainer:
    (xt, yt), (xv, yv) = digits()
    return HyperTrainer(
        Everything(xt, yt, hidden), train_loss=_train_loss, val_loss=_val_loss,
        train_data=(xt, yt), val_data=(xv, yv), batch_size=100, inner_steps=2,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
        solver=Identity(), eval_data={"val": (xv, yv)}, eval_every=2,
        progress=False, device="cpu", seed=0,
    )


def run_study(storage: optuna.storages.BaseStorage, artifact_store, *, n_trials: int = 2,
              hyper_steps: int = 4, previews=True, study_name: str = "previews"
              ) -> optuna.Study:
    """A short hybrid study whose trials store previews (also used by the browser test)."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 3e-3, 3e-2, log=True)
        hidden = trial.suggest_int("hidden", 8, 24, step=8)
        return run_trainer(trial, make_trainer(lr, hidden), hyper_steps=hyper_steps,
                           artifact_store=artifact_store, checkpoint_every=None,
                           previews=previews)

    study = optuna.create_study(storage=storage, study_name=study_name,
                                sampler=HybridSampler(seed=0), load_if_exists=True)
    study.optimize(objective, n_trials=n_trials)
    return study


@pytest.fixture
def store(tmp_path) -> FileSystemArtifactStore:
    (tmp_path / "artifacts").mkdir()
    return FileSystemArtifactStore(str(tmp_path / "artifacts"))


def _fetch(store, artifact_id: str, path: Path) -> Path:
    download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
    return path


def _artifact_names(storage, trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """{filename: mimetype} of the trial's artifacts, as the dashboard lists them."""
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=storage)
    return {m.filename: m.mimetype for m in metas}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One study of two trials (module scope: it is the slow part)."""
    folder = tmp_path_factory.mktemp("previews")
    (folder / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(folder / "artifacts"))
    storage = create_storage(f"sqlite:///{folder / 'study.db'}")
    return run_study(storage, store), store, storage


def test_every_preview_is_an_artifact_of_the_trial(finished):
    study, _, storage = finished
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        stored = trial.user_attrs[ATTR_PREVIEWS]
        assert set(stored) == set(PREVIEW_KINDS)
        names = _artifact_names(storage, trial)
        # the safetensors file and the five previews, with types the dashboard previews
        assert names.pop("learned_hyperparameters.safetensors")
        assert names == {"distilled_images.png": "image/png", "weight_decays.png": "image/png",
                         "dropout_rates.png": "image/png",
                         "augmentation_samples.png": "image/png",
                         "learned_tensors.csv": "text/csv"}
        assert ATTR_LEARNED in trial.user_attrs


def test_pngs_are_valid_and_sized(finished, tmp_path):
    study, store, _ = finished
    trial = study.trials[0]
    stored = trial.user_attrs[ATTR_PREVIEWS]
    sizes = {}
    for kind in ("distilled_images", "weight_decays", "dropout_rates", "augmentation_samples"):
        path = _fetch(store, stored[kind], tmp_path / f"{kind}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            sizes[kind] = image.size
            assert image.getextrema() != ((255, 255),) * len(image.getbands())  # not blank
    # histograms: 6.4 x 4 inches at 100 dpi
    assert sizes["weight_decays"] == (640, 400)
    assert sizes["dropout_rates"] == (640, 400)
    # grids: 1 inch (100 px) per image, one column per class, plus 0.4 inch of title
    assert sizes["distilled_images"] == (100 * NUM_CLASSES, 100 * 1 + 40)
    # augmentation: 8 inputs in a row, then 3 rows of augmented draws
    assert sizes["augmentation_samples"] == (100 * 8, 100 * 4 + 40)


def test_csv_has_a_row_per_tensor_and_per_quantity(finished, tmp_path):
    study, store, _ = finished
    trial = study.trials[0]
    hidden = trial.params["hidden"]
    path = _fetch(store, trial.user_attrs[ATTR_PREVIEWS]["summary"], tmp_path / "s.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == ["name", "family", "quantity", "shape", "numel", "min", "mean",
                             "max", "std"]
    raw = {r["name"]: r for r in rows if r["quantity"] == "raw"}
    # every learned tensor of the model, named as in the safetensors file
    assert set(raw) == set(trial.user_attrs["ift:shapes"])
    assert raw["decay.log_decays.0"]["shape"] == f"{hidden}x64"
    assert raw["decay.log_decays.0"]["family"] == "WeightDecay"
    assert raw["dropout.logit"]["shape"] == str(hidden)
    assert raw["distilled.images"]["shape"] == "10x1x8x8"
    assert raw["distilled.images"]["family"] == "DistilledData"
    assert raw["distilled.label_logits"]["shape"] == "10x10"
    assert raw["augment.stem.weight"]["family"] == "AugmentationNet"
    decays = {r["name"]: r for r in rows if r["quantity"] == "decay"}
    assert set(decays) == {"decay:body.weight", "decay:head.weight"}
    rates = [r for r in rows if r["quantity"] == "rate"]
    assert [r["name"] for r in rates] == ["dropout"]
    # the numbers are the tensors' own
    learned = optuna_ift_load(study, trial, store)
    logit = learned["dropout.logit"].double()
    rate = torch.sigmoid(logit)
    assert float(rates[0]["min"]) == pytest.approx(float(rate.min()), rel=1e-5)
    assert float(rates[0]["max"]) == pytest.approx(float(rate.max()), rel=1e-5)
    assert float(raw["dropout.logit"]["mean"]) == pytest.approx(float(logit.mean()), rel=1e-5)
    assert float(raw["dropout.logit"]["std"]) == pytest.approx(
        float(logit.std(unbiased=False)), rel=1e-4, abs=1e-9)
    w = learned["decay.log_decays.1"].double().exp()
    assert float(decays["decay:head.weight"]["mean"]) == pytest.approx(float(w.mean()), rel=1e-5)
    assert int(decays["decay:head.weight"]["numel"]) == 10 * hidden
    for r in rows:
        assert float(r["min"]) <= float(r["mean"]) <= float(r["max"])
        assert math.isfinite(float(r["std"]))


def optuna_ift_load(study, trial, store):
    from optuna_ift.integration import load_learned

    return load_learned(study, trial.number, store)


def test_a_failing_preview_is_logged_and_skipped(store, monkeypatch, caplog):
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)  # every PNG fails, the CSV does not
    storage = optuna.storages.InMemoryStorage()
    with caplog.at_level(logging.WARNING, logger="optuna_ift.integration._previews"):
        study = run_study(storage, store, n_trials=1, hyper_steps=2)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE  # the trial did not pay for it
    assert ATTR_LEARNED in trial.user_attrs
    assert list(trial.user_attrs[ATTR_PREVIEWS]) == ["summary"]
    assert set(_artifact_names(storage, trial)) == {"learned_hyperparameters.safetensors",
                                                    "learned_tensors.csv"}
    failed = [r.getMessage() for r in caplog.records if "failed and is skipped" in r.getMessage()]
    assert len(failed) == 4
    assert "preview weight_decays failed and is skipped: OSError: [Errno 28] No space left" in (
        "\n".join(failed))


class _RefusesPngs(FileSystemArtifactStore):
    """A store whose disk is 'full' for everything but the first file (the tensors)."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.writes = 0

    def write(self, artifact_id, content_body):
        self.writes += 1
        if self.writes > 1:
            raise OSError(28, "No space left on device")
        return super().write(artifact_id, content_body)


def test_a_store_that_fails_costs_the_previews_only(tmp_path, caplog):
    store = _RefusesPngs(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="optuna_ift.integration._previews"):
        study = run_study(optuna.storages.InMemoryStorage(), store, n_trials=1, hyper_steps=2)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert ATTR_LEARNED in trial.user_attrs
    assert ATTR_PREVIEWS not in trial.user_attrs
    assert sum("could not be stored and is skipped" in r.getMessage()
               for r in caplog.records) == len(PREVIEW_KINDS)


def test_previews_can_be_chosen_or_switched_off(store):
    storage = optuna.storages.InMemoryStorage()
    study = run_study(storage, store, n_trials=1, hyper_steps=2, previews=False)
    trial = study.trials[0]
    assert ATTR_PREVIEWS not in trial.user_attrs
    assert list(_artifact_names(storage, trial)) == ["learned_hyperparameters.safetensors"]
    study = run_study(optuna.storages.InMemoryStorage(), store, n_trials=1, hyper_steps=2,
                      previews=["summary"])
    assert list(study.trials[0].user_attrs[ATTR_PREVIEWS]) == ["summary"]


@pytest.mark.parametrize("bad, error, words", [
    ("summary", TypeError, "previews must be True (every preview), False (none) or a list"),
    (1, TypeError, "previews must be True"),
    (None, TypeError, "previews must be True"),
    ([1], TypeError, "previews must be True"),
    (["summary", "histograms"], ValueError, "unknown preview kinds ['histograms']"),
])
def test_bad_previews_argument_is_refused_before_training(store, bad, error, words):
    trainer = make_trainer()
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(error) as caught:
        run_trainer(trial, trainer, hyper_steps=2, artifact_store=store, previews=bad)
    assert words in str(caught.value)
    assert "distilled_images" in str(caught.value)  # the kinds are listed
    assert trainer.hyper_step == 0  # nothing was trained


def test_only_what_the_model_holds_is_drawn(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    model = nn.Module()
    model.net = net
    model.decay = WeightDecay(net, mode="global", init=1e-2)
    written = preview_files(model, tmp_path)
    assert set(written) == {"weight_decays", "summary"}
    rows = list(csv.DictReader(io.StringIO(written["summary"].read_text())))
    assert [(r["name"], r["quantity"], r["shape"]) for r in rows] == [
        ("decay.log_decays.0", "raw", "scalar"), ("decay:0.weight", "decay", "scalar")]
    assert float(rows[1]["mean"]) == pytest.approx(1e-2)
    with Image.open(written["weight_decays"]) as image:
        assert image.size == (640, 400)


def test_flat_distilled_images_and_wide_grids(tmp_path):
    model = nn.Module()
    model.distilled = DistilledData(2, 12, (64,))  # flat 8 x 8 examples, 12 classes
    written = preview_files(model, tmp_path, kinds=["distilled_images"])
    with Image.open(written["distilled_images"]) as image:
        assert image.size == (100 * 10, 100 * 3 + 40)  # 24 images wrap at 10 a row


def test_odd_shapes_are_skipped_not_raised(tmp_path, caplog):
    model = nn.Module()
    model.distilled = DistilledData(1, 2, (5, 7))  # 5 x 7 one-channel images: fine
    model.other = DistilledData(1, 2, (7,))  # second module is ignored
    assert set(preview_files(model, tmp_path)) == {"distilled_images", "summary"}
    odd = nn.Module()
    odd.distilled = DistilledData(1, 2, (3, 5, 5, 5))
    (tmp_path / "odd").mkdir()
    with caplog.at_level(logging.WARNING, logger="optuna_ift.integration._previews"):
        written = preview_files(odd, tmp_path / "odd")
    assert set(written) == {"summary"}
    assert any("distilled_images failed" in r.getMessage() for r in caplog.records)


def test_save_previews_on_a_frozen_trial(store):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.ask()
    frozen = study.trials[0]  # a running trial, as a FrozenTrial
    model = nn.Module()
    model.dropout = ConcreteDropout((3,), init=0.3)
    stored = save_previews(frozen, model, store, storage=storage)
    assert set(stored) == {"dropout_rates", "summary"}
    assert study.trials[0].user_attrs[ATTR_PREVIEWS] == stored
    with pytest.raises(ValueError, match="storage is required"):
        save_previews(frozen, model, store)
    with pytest.raises(TypeError, match="artifact_store must be an Optuna artifact store"):
        save_previews(frozen, model, "folder", storage=storage)
    with pytest.raises(TypeError, match="trainer must be a HyperTrainer or a torch.nn.Module"):
        save_previews(frozen, "model", store, storage=storage)
