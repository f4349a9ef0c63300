"""Distributed workers on one shared study: a real PostgreSQL server, and the journal file.

Each test runs two phases against one storage:

1. four ``optuna-ift worker`` processes on one study; every requested trial must complete
   exactly once (none lost, none duplicated);
2. a worker is killed with SIGKILL in the middle of a trial, after it stored a checkpoint
   artifact; a fresh worker must fail the dead trial, retry it, resume the retried trial's
   inner training from that checkpoint, and the study must end with the requested number of
   complete trials.

PostgreSQL: a throwaway cluster on 127.0.0.1 at a free port in a temporary folder
(``tests/_pg.py``), with Optuna's own heartbeats (``RDBStorage``). Journal file: Optuna's
``JournalStorage`` has no heartbeat (in Optuna 5.0 only ``RDBStorage`` implements
``BaseHeartbeat``); ``optuna_ift.integration.create_storage`` adds one (a trial system attribute
holding the time of the last beat), and the same test checks that it finds the dead trial.

The workers are ``python -m optuna_ift worker`` processes, as a user starts them. They take a
few seconds each to start (torch), so they do not all start at the same instant; the PostgreSQL
schema is created by whichever connects first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from . import _pg

try:  # Optuna >= 4.9; RetryFailedTrialCallback is its deprecated alias
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry
except ImportError:  # pragma: no cover
    from optuna.storages import RetryFailedTrialCallback as _Retry

# The user attributes that optuna_ift.integration.run_trainer records on a trial.
ATTR_CHECKPOINT = "ift:checkpoint_artifact"
ATTR_CHECKPOINT_STEP = "ift:checkpoint_hyper_step"
ATTR_LEARNED = "ift:learned_artifact"
ATTR_RESUMED_FROM = "ift:resumed_from_trial"
ATTR_RESUMED_AT_STEP = "ift:resumed_at_hyper_step"
ATTR_PID = "ift:pid"

N_WORKERS = 4
TRIALS_PER_WORKER = 2  # phase 1: --n-trials of each worker
REQUESTED = N_WORKERS * TRIALS_PER_WORKER
KILL_REQUESTED = 2  # phase 2: complete trials requested of the study whose worker is killed
HYPER_STEPS = 6  # phase 1: short trials
KILL_HYPER_STEPS = 20  # phase 2: long enough (~5 s) to be killed between checkpoints
CHECKPOINT_EVERY = 2
HEARTBEAT_INTERVAL = 1
GRACE_PERIOD = 3
PHASE_TIMEOUT = 120.0  # seconds; a bound on every wait, far above the expected run time

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# storages


@pytest.fixture(params=["postgresql", "journal"])
def storage_url(request, tmp_path):
    if request.param == "journal":
        yield str(tmp_path / "journal.log")
        return
    reason = _pg.missing_reason()
    if reason is not None:
        if _pg.in_ci():
            pytest.fail(f"CI=true but the PostgreSQL test cannot run: {reason}")
        pytest.skip(reason)
    with _pg.postgres_url() as url:
        yield url


def _is_rdb(url: str) -> bool:
    return "://" in url


def _reader(url: str):
    """A storage for the test process to inspect the study (no heartbeat of its own)."""
    if _is_rdb(url):
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(url))


def _trials(storage, study_name: str) -> list:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:  # not created yet by any worker
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


# ---------------------------------------------------------------------------------------------
# worker processes


def _worker_cmd(url: str, study_name: str, out: Path, *, seed: int, n_trials: int,
                total: int | None, hyper_steps: int) -> list[str]:
    """``optuna-ift worker`` (as ``python -m optuna_ift``, so the venv's CLI is the one tested).

    ``n_trials`` is per worker (Optuna counts each process's own trials, exactly). ``total``
    (``--total-trials``) makes the worker keep going until the study holds that many finished
    trials, running the retries of dead workers' trials first. The demo's ``MedianPruner``
    cannot prune here (fewer than its 5 startup trials in phase 2; in phase 1 every report
    comes before its 10 warm-up steps), so every trial must complete.
    """
    cmd = [
        sys.executable, "-m", "optuna_ift", "worker",
        "--storage", url,
        "--study-name", study_name,
        "--n-trials", str(n_trials),
        "--out", str(out),
        "--hyper-steps", str(hyper_steps),
        "--checkpoint-every", str(CHECKPOINT_EVERY),
        "--heartbeat-interval", str(HEARTBEAT_INTERVAL),
        "--grace-period", str(GRACE_PERIOD),
        "--seed", str(seed),
        "--device", "cpu",
    ]
    if total is not None:
        cmd += ["--total-trials", str(total)]
    return cmd


class _Workers:
    """Started worker processes, each logging to a file; all killed on exit, whatever happens."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, cmd: list[str]) -> subprocess.Popen:
        log = self.tmp_path / f"worker{len(self.procs)}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append((proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen) -> str:
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")[-3000:]
        return ""

    def wait(self, procs: list[subprocess.Popen], deadline: float) -> None:
        for proc in procs:
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {proc.pid} still running after the timeout:\n"
                            f"{self.log_of(proc)}")
            assert rc == 0, f"worker {proc.pid} exited with {rc}:\n{self.log_of(proc)}"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def _wait_for(predicate, deadline: float, what: str, workers: _Workers, procs):
    while True:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"worker {proc.pid} exited ({proc.returncode}) before {what}:\n"
                            f"{workers.log_of(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _has_checkpoint(trial) -> bool:
    """Whether a trial stored a checkpoint artifact (id: a user attr; metadata: a system attr)."""
    artifact_id = trial.user_attrs.get(ATTR_CHECKPOINT)
    return artifact_id is not None and f"artifacts:{artifact_id}" in trial.system_attrs


def _retried_from(trial) -> int | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _Retry.retried_trial_number(trial)


# ---------------------------------------------------------------------------------------------
# the test


def test_workers_share_one_study_and_survive_sigkill(storage_url, tmp_path):
    """Four workers complete each requested trial once; a SIGKILLed trial resumes elsewhere."""
    url = storage_url
    t0 = time.monotonic()
    reader = _reader(url)
    try:
        _run_phases(url, reader, tmp_path, t0)
    finally:
        if isinstance(reader, optuna.storages.RDBStorage):
            reader.engine.dispose()  # before the fixture stops the server


def _run_phases(url: str, reader, tmp_path: Path, t0: float) -> None:
    with _Workers(tmp_path) as workers:
        # ---- phase 1: four workers on one study, started together ----
        # Each asks for TRIALS_PER_WORKER trials (Optuna's per-process n_trials), so the study
        # must end with exactly REQUESTED. (--total-trials is not used here: its check of the
        # study's count and the creation of the trial are not atomic, so concurrent workers can
        # overshoot it.)
        name = "four-workers"
        out = tmp_path / "out1"
        procs = [workers.start(_worker_cmd(url, name, out, seed=i, n_trials=TRIALS_PER_WORKER,
                                           total=None, hyper_steps=HYPER_STEPS))
                 for i in range(N_WORKERS)]
        workers.wait(procs, time.monotonic() + PHASE_TIMEOUT)
        trials = _trials(reader, name)
        states = [t.state.name for t in trials]
        assert states == ["COMPLETE"] * REQUESTED, states  # none lost, none extra
        assert sorted(t.number for t in trials) == list(range(REQUESTED))
        assert all(t.value is not None for t in trials)
        # Each trial ran in one worker, each worker ran its TRIALS_PER_WORKER trials.
        pids = [t.user_attrs[ATTR_PID] for t in trials]
        assert sorted(pids) == sorted(p.pid for p in procs for _ in range(TRIALS_PER_WORKER)), pids
        params = [tuple(sorted(t.params.items())) for t in trials]
        assert len(set(params)) == REQUESTED, f"two trials sampled the same parameters: {params}"
        for t in trials:  # each trial's learned decays were stored, once
            assert f"artifacts:{t.user_attrs[ATTR_LEARNED]}" in t.system_attrs
            assert t.user_attrs["ift:hyper_steps"] == HYPER_STEPS
            assert ATTR_RESUMED_FROM not in t.user_attrs
        phase1 = time.monotonic() - t0

        # ---- phase 2: SIGKILL a worker in the middle of a trial ----
        name = "sigkill"
        out = tmp_path / "out2"
        victim = workers.start(_worker_cmd(url, name, out, seed=100, n_trials=KILL_REQUESTED,
                                           total=KILL_REQUESTED, hyper_steps=KILL_HYPER_STEPS))
        deadline = time.monotonic() + PHASE_TIMEOUT

        def running_with_checkpoint():
            for t in _trials(reader, name):
                if t.state == TrialState.RUNNING and _has_checkpoint(t):
                    return t
            return None

        doomed = _wait_for(running_with_checkpoint, deadline,
                           "a running trial with a checkpoint artifact", workers, [victim])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        doomed = next(t for t in _trials(reader, name) if t.number == doomed.number)
        assert doomed.state == TrialState.RUNNING  # its worker is dead: nobody will finish it
        checkpoint_step = doomed.user_attrs[ATTR_CHECKPOINT_STEP]
        assert 1 <= checkpoint_step < KILL_HYPER_STEPS

        # A fresh worker, started right away: it waits for the heartbeat to go stale (a dead
        # worker's trial cannot be told from a slow one before grace_period), fails the trial,
        # which RetryFailedTrialCallback queues again, and runs that retry.
        rescuer = workers.start(_worker_cmd(url, name, out, seed=101, n_trials=KILL_REQUESTED,
                                            total=KILL_REQUESTED, hyper_steps=KILL_HYPER_STEPS))
        workers.wait([rescuer], time.monotonic() + PHASE_TIMEOUT)

        trials = _trials(reader, name)
        summary = [(t.number, t.state.name, _retried_from(t)) for t in trials]
        by_number = {t.number: t for t in trials}
        assert by_number[doomed.number].state == TrialState.FAIL, summary
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == KILL_REQUESTED, summary
        assert [t.state for t in trials].count(TrialState.FAIL) == 1, summary
        assert not [t for t in trials if not t.state.is_finished()], summary
        retried = [t for t in trials if _retried_from(t) == doomed.number]
        assert len(retried) == 1, summary
        (retry,) = retried
        assert retry.state == TrialState.COMPLETE, summary
        assert retry.params == doomed.params
        # Resumed from the dead trial's last checkpoint, not from scratch.
        attrs = retry.user_attrs
        assert attrs.get(ATTR_RESUMED_FROM) == doomed.number, attrs
        assert attrs.get(ATTR_RESUMED_AT_STEP) >= checkpoint_step, attrs
        assert attrs.get("ift:hyper_steps") == KILL_HYPER_STEPS, attrs
        assert attrs.get(ATTR_PID) == rescuer.pid, attrs
        # The other requested trial ran to the end in one of the two workers.
        (other,) = [t for t in complete if t.number != retry.number]
        assert other.user_attrs[ATTR_PID] in (victim.pid, rescuer.pid)
    print(f"\n{url.split(':')[0]}: phase 1 {phase1:.1f} s, total {time.monotonic() - t0:.1f} s")
