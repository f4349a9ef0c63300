"""A worker group of two processes (gloo, 127.0.0.1; the environment torchrun gives them, set
by hand so that no launcher tears the group down for us) loses a rank to SIGKILL in the middle
of a trial: the other rank ends by itself within seconds, the trial is failed (by its
heartbeat when rank 0 died, at once when rank 1 did) and retried, and the retry resumes from
the trial's last checkpoint. Also ``optuna-ift worker --nproc 2`` through torchrun."""

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

from optuna_ift.integration import (
    ATTR_CHECKPOINT,
    ATTR_RESUMED_AT_STEP,
    ATTR_RESUMED_FROM,
    create_storage,
)
from tests._ranks import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _start_group(folder: Path, **options) -> list[subprocess.Popen]:
    code = textwrap.dedent(f"""
        from optuna_ift.experiments import run_worker
        run_worker(storage={str(folder / "study.log")!r}, n_trials=1, out={str(folder)!r},
                   device="cpu", heartbeat_interval=1, grace_period=3, hyper_steps=20,
                   checkpoint_every=5, **{options!r})
    """)
    port = free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
    return processes


def _wait_for_checkpoint(journal: Path, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.is_file() and ATTR_CHECKPOINT in journal.read_text(errors="replace"):
            return
        if any(p.poll() is not None for p in processes):
            pytest.fail("a rank ended before the trial checkpointed")
        time.sleep(0.02)
    pytest.fail("no checkpoint was written in time")


@pytest.mark.parametrize("victim", [0, 1], ids=["rank0-killed", "rank1-killed"])
def test_a_killed_rank_ends_the_group_and_the_trial_is_retried_from_its_checkpoint(
        tmp_path, victim):
    processes = _start_group(tmp_path, step_seconds=0.1)
    try:
        _wait_for_checkpoint(tmp_path / "study.log", processes)
        os.kill(processes[victim].pid, signal.SIGKILL)
        start = time.monotonic()
        survivor = processes[1 - victim]
        code = survivor.wait(timeout=60)  # no hang: TimeoutExpired fails the test
        assert time.monotonic() - start < 60
        assert code != 0  # it ended on the broken group's error, not as if it had finished
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    storage = create_storage(str(tmp_path / "study.log"), heartbeat_interval=1,
                             grace_period=3)
    killed = optuna.load_study(study_name="optuna-ift-demo", storage=storage).trials[0]
    # Rank 0 alive at the end failed the trial and queued its retry; a dead rank 0 left it
    # running for the heartbeat.
    assert killed.state == (TrialState.RUNNING if victim == 0 else TrialState.FAIL)

    # A new group on the same storage fails the stale trial (rank 0 killed), runs the retry
    # and resumes it from the checkpoint (taken by two processes: resumed by two).
    rerun = _start_group(tmp_path, total_trials=1)
    try:
        assert [p.wait(timeout=120) for p in rerun] == [0, 0]
    finally:
        for process in rerun:
            if process.poll() is None:
                process.kill()
    study = optuna.load_study(study_name="optuna-ift-demo",
                              storage=create_storage(str(tmp_path / "study.log")))
    assert study.trials[0].state == TrialState.FAIL
    retried = [t for t in study.trials if t.user_attrs.get(ATTR_RESUMED_FROM) == 0]
    assert len(retried) == 1
    assert retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == killed.params
    assert retried[0].user_attrs[ATTR_RESUMED_AT_STEP] >= 5


def test_worker_nproc_2_runs_each_trial_on_both_processes(tmp_path):
    command = [sys.executable, "-m", "optuna_ift", "worker", "--nproc", "2",
               "--storage", str(tmp_path / "study.log"), "--n-trials", "2",
               "--out", str(tmp_path), "--hyper-steps", "6", "--checkpoint-every", "3",
               "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("this worker ran 2 trials (0, 1)") == 1  # rank 0 reports alone
    study = optuna.load_study(study_name="optuna-ift-demo",
                              storage=create_storage(str(tmp_path / "study.log")))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["ift:hyper_steps"] == 6 for t in study.trials)
