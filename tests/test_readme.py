"""Every Python block of README.md runs as written, in order, in one namespace (a later block
may use what an earlier one defined, as a reader would), in a temporary folder. A block whose
first line is ``# sketch`` is shown for reading only and is the one kind left out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text()
    blocks = [chunk.split("```")[0] for chunk in text.split("```python\n")[1:]]
    return [b for b in blocks if not b.lstrip().startswith("# sketch")]


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    pytest.importorskip("lightning")  # one block trains under lightning.Trainer
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert len(blocks) == 9
    namespace: dict = {"__name__": "readme"}
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md, python block {k + 1}", "exec"), namespace)  # noqa: S102

    grad = namespace["grad"]  # a hypergradient in ten lines
    assert grad.shape == (5,) and bool(grad.isfinite().all()) and float(grad.abs().sum()) > 0
    history = namespace["history"]  # HyperTrainer on digits, 200 hyper steps
    assert len(history.hyper_steps) == 200 and history.skipped == 0
    assert history.hyper_steps[-1]["val_loss"] < history.hyper_steps[0]["val_loss"]
    from_loader = namespace["trainer"]  # the DataLoader of dict batches, workers
    assert len(from_loader.history.hyper_steps) == 20 and from_loader.history.skipped == 0
    assert from_loader.weight_step == 200 and from_loader.epoch >= 1
    schedule, refit = namespace["schedule"], namespace["refit"]  # re-training on all the data
    assert len(schedule.states) == 30
    assert all(torch.equal(p, schedule.states[-1][n]) for n, p in refit.named_parameters()
               if n in schedule.states[-1])  # the replay ends on the last recorded decays
    digits = namespace["digits"]
    assert float((refit(digits.X_test).argmax(1) == digits.y_test).float().mean()) > 0.9
    hyper = namespace["hyper"]  # your own loop
    assert hyper.steps == len(namespace["digits"].y_train) // 64 // 10 and hyper.skipped == 0
    assert float(hyper.hyperparameters[0].detach().std()) > 0  # all 1e-3 at the start
    callback = namespace["callback"]  # Lightning
    assert len(callback.history) == 10 and callback.hyper.skipped == 0
    study = namespace["study"]  # inside an Optuna study
    assert len(study.trials) == 10 and study.best_trial.user_attrs["ift:final_val_metric"] > 0.8
    assert any((tmp_path / "runs" / "artifacts").iterdir())
    assert namespace["clf"].score(namespace["X_test"], namespace["y_test"]) > 0.9
    assert namespace["net"].score(namespace["X_test"], namespace["y_test"]) > 0.9  # neural
