"""The learned-augmentation study (Table 3 and Fig. 7), on the embedded digits only."""

from __future__ import annotations

import json
import math

import pytest

from optuna_ift.experiments.augment import AUGMENT_METHODS, augment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMALL = dict(n_train=100, n_val=100, hyper_steps=6, inner_steps=4, batch_size=16,
             val_batch_size=32, eval_every=3, lr=1e-2, hyper_lr=1e-3, n_std_samples=8,
             n_show=2, device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("augment")
    return augment(seeds=2, out=out, **SMALL), out


def test_augment_table_and_files(study):
    results, out = study
    assert results["methods"] == list(AUGMENT_METHODS)
    assert results["seeds"] == [0, 1]
    assert [row["method"] for row in results["table"]] == [
        "No augmentation", "Identity (i=0)", "Neumann (i=3)", "Unrolled (i=3)"]
    for method in AUGMENT_METHODS:
        s = results["results"][method]
        for key in ("test_accuracy", "val_accuracy", "final_test_accuracy"):
            values = s[key]
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
            assert s[f"{key}_mean"] == pytest.approx(sum(values) / 2)
            sd = abs(values[0] - values[1]) / math.sqrt(2)  # sample sd of two values
            assert s[f"{key}_std"] == pytest.approx(sd, abs=1e-12)
        # Every run learns the task: far above chance (10 %) on the test set.
        assert min(s["test_accuracy"]) > 0.5
        assert s["skipped_hyper_steps"] == 0
        # Evaluations every eval_every hyper steps (weight-step counts alike for "none").
        assert [r["weight_step"] for r in s["curves"][0]] == [12, 24]
    gain = results["test_accuracy_gain_over_none"]
    assert gain["neumann"] == pytest.approx(results["results"]["neumann"]["test_accuracy_mean"]
                                            - results["results"]["none"]["test_accuracy_mean"])
    paired = results["paired_test_gain_over_none"]["neumann"]
    assert paired["mean"] == pytest.approx(gain["neumann"])
    assert paired["wins"] == sum(d > 0 for d in paired["per_seed"])
    assert results["n_train"] == 100 and results["n_val"] == 100
    assert results["settings"]["weight_steps"] == 24
    assert results["seconds"] > 0

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["table"] == results["table"]
    assert on_disk["results"]["neumann"]["test_accuracy"] == (
        results["results"]["neumann"]["test_accuracy"])
    for name in ("augment.png", "augment_accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_learned_augmentation_moves_images_at_random(study):
    results, _ = study
    # The augmentation starts as the identity; hyper steps make it move the images, and only
    # the methods with an augmentation do.
    assert results["results"]["none"]["augmentation_change"] == [0.0, 0.0]
    for method in ("identity", "neumann", "unrolled"):
        assert min(results["results"][method]["augmentation_change"]) > 0.0
    figure = results["figure"]
    assert figure["method"] == "neumann"
    assert len(figure["original"]) == 2 and len(figure["labels"]) == 2
    # Two noise draws give two different images; the pixel deviation is positive somewhere.
    assert figure["sample_1"] != figure["sample_2"]
    assert max(max(max(row) for row in image) for image in figure["pixel_std"]) > 0.0
    assert min(min(min(row) for row in image) for image in figure["pixel_std"]) >= 0.0


def test_augment_is_reproducible_and_seeds_matter():
    kwargs = dict(SMALL, methods=("none", "neumann"), n_show=0)
    first = augment(seeds=[3], **kwargs)
    again = augment(seeds=[3], **kwargs)
    other = augment(seeds=[4], **kwargs)
    for method in ("none", "neumann"):
        a, b, c = (r["results"][method] for r in (first, again, other))
        assert a["curves"] == b["curves"]
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["curves"] != c["curves"]
    assert first["seeds"] == [3]
    assert "figure" not in first  # n_show=0: no images kept


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(seeds=0), "seeds"),
        (dict(seeds=[]), "seeds"),
        (dict(seeds=[1, -2]), "seeds"),
        (dict(methods=("none", "bogus")), "methods"),
        (dict(methods="neumann"), "methods"),
        (dict(hyper_lr=0.0), "hyper_lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(noise_scale=-1.0), "noise_scale"),
        (dict(hyper_steps=0), "hyper_steps"),
        (dict(inner_steps=1.5), "inner_steps"),
        (dict(neumann_alpha=-0.1), "neumann_alpha"),
        (dict(unrolled_steps=0), "unrolled_steps"),
        (dict(n_std_samples=1), "n_std_samples"),
        (dict(dataset="mnist"), "data_root"),
    ],
)
def test_augment_arguments_are_checked(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        augment(show_progress=False, **kwargs)
