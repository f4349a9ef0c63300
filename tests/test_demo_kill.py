"""The demo killed with SIGKILL in the middle of a trial, then run again on the same folder:
the killed trial is failed, retried and resumed from its last checkpoint, and the rerun's
sampler draws new parameters instead of repeating the first run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optuna_ift.experiments import demo
from optuna_ift.integration import ATTR_CHECKPOINT, ATTR_RESUMED_FROM, create_storage

ROOT = Path(__file__).resolve().parents[1]


def _start_demo(out: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        from optuna_ift.experiments import demo
        demo(out={str(out)!r}, n_trials=4, hyper_steps=30, device="cpu", show_progress=False,
             step_seconds=0.05)
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    journal = out / "study.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.is_file() and ATTR_CHECKPOINT in journal.read_text(errors="replace"):
            return
        if process.poll() is not None:
            pytest.fail("the demo ended before any trial checkpointed")
        time.sleep(0.02)
    pytest.fail("no checkpoint was written in time")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_demo_killed_and_rerun_retries_and_resumes_the_killed_trial(tmp_path):
    out = tmp_path / "demo"
    process = _start_demo(out)
    try:
        _wait_for_checkpoint(out, process)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    storage = create_storage(str(out / "study.log"))
    killed = [t for t in optuna.load_study(study_name="optuna-ift-demo", storage=storage)
              .get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and ATTR_CHECKPOINT in killed[0].user_attrs
    first_params = {t.number: t.params for t in optuna.load_study(
        study_name="optuna-ift-demo", storage=storage).get_trials(deepcopy=False)}

    results = demo(out=out, n_trials=4, hyper_steps=30, device="cpu", show_progress=False)

    study = optuna.load_study(study_name="optuna-ift-demo",
                              storage=create_storage(str(out / "study.log")))
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert study.trials[killed[0].number].state == TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get(ATTR_RESUMED_FROM) == killed[0].number]
    assert len(retried) == 1, "the killed trial must be retried and resumed from its checkpoint"
    assert retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == killed[0].params  # a retry runs the same parameters
    assert retried[0].user_attrs["ift:resumed_at_hyper_step"] >= 10
    # Apart from the retry, the rerun's new trials do not repeat the first run's parameters.
    new = [t.params for t in trials if t.number not in first_params and t is not retried[0]]
    assert new and not [p for p in new if p in first_params.values()]
    assert results["resumed_trials"] >= 1
