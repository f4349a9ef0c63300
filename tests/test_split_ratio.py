"""The split-ratio study (Fig. 9) on a small slice of the embedded digits."""

from __future__ import annotations

import json

import pytest

from optuna_ift.experiments.split_ratio import split_ratio


def test_split_ratio_writes_results_and_figure(tmp_path):
    results = split_ratio(dataset="digits", sizes=[60, 120], fractions=[0.25, 0.5], seeds=2,
                          max_iter=3, device="cpu", out=tmp_path, show_progress=False)
    assert results["study"] == "split-ratio" and results["dataset"] == "digits"
    assert results["seeds"] == [0, 1]
    assert len(results["records"]) == 2 * 2 * 3 * 2  # sizes x fractions x modes x seeds
    assert results["weight_decays"] == ["global", "per_weight", "per_weight_from_global"]
    for mode in results["weight_decays"]:
        finding = results["findings"][mode]["120"]
        assert finding["best_fraction_refit"] in (0.25, 0.5)
        assert 0.3 < finding["best_accuracy_refit"] <= 1.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["global"]["refit"]["60"]["mean"] == pytest.approx(
        results["summary"]["global"]["refit"]["60"]["mean"])
    png = (tmp_path / "split_ratio.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("kwargs, match", [
    (dict(seeds=0), "seeds"),
    (dict(sizes=[10**6]), "sizes"),
    (dict(fractions=[0.0]), "fractions"),
    (dict(dataset="nope"), "dataset must be one of"),
])
def test_split_ratio_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_ratio(show_progress=False, **kwargs)
