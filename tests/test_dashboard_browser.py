"""The previews in a real browser: optuna-dashboard shows a trial's learned tensors.

A short hybrid study (SQLite storage, artifact folder) stores its previews; the
``optuna-dashboard`` command serves that storage and folder on 127.0.0.1 at a free port; headless
Chromium (Debian's ``chromium`` package, driven by Playwright through its executable path, no
browser download) opens the trial's page, and the test asserts that the distilled-image preview
is an ``<img>`` whose ``src`` is the artifact's URL and that it loaded (``naturalWidth > 0``).

Needs ``/usr/bin/chromium`` (``.ci/browser.sh`` installs it) and the ``dashboard`` extra
(optuna-dashboard, playwright). Without them the test is skipped, except in CI (``CI=true``),
where it fails. Set ``OPTUNA_IFT_SCREENSHOT=docs/dashboard.png`` to keep the page's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from optuna.artifacts import FileSystemArtifactStore

from optuna_ift.integration import ATTR_PREVIEWS, create_storage
from tests.test_previews import run_study

CHROMIUM = os.environ.get("OPTUNA_IFT_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home, which a closed network
# refuses (or lets hang); the user-data folder is a fresh one (Playwright's persistent context).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 60.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/browser.sh and the dashboard extra must provide "
                    "it)")
    pytest.skip(f"{reason}; run `bash .ci/browser.sh` and `pip install '.[dashboard]'`")


def _requirements() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed")
    command = shutil.which("optuna-dashboard", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if command is None:
        _missing("the optuna-dashboard command is not installed")
    return Path(command)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"optuna-dashboard exited with {process.returncode}:\n"
                        f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"optuna-dashboard did not answer {url} within {START_TIMEOUT:.0f} s:\n"
                f"{log.read_text()[-3000:]}")


def test_dashboard_shows_the_preview_image(tmp_path):
    dashboard = _requirements()
    from playwright.sync_api import sync_playwright

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = create_storage(url)
    study = run_study(storage, FileSystemArtifactStore(str(artifacts)), n_trials=2,
                      hyper_steps=4, study_name="dashboard")
    trial = study.trials[-1]
    preview = trial.user_attrs[ATTR_PREVIEWS]["distilled_images"]
    study_id = storage.get_study_id_from_name("dashboard")
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    artifact_path = f"/artifacts/{study_id}/{trial_id}/{preview}"

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(dashboard), url, "--host", "127.0.0.1", "--port", str(port),
             "--artifact-dir", str(artifacts)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(process, f"{base}/api/studies", log)
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
            try:
                page = context.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{base}/dashboard/studies/{study_id}/trials?numbers={trial.number}")
                image = page.locator(f'img[src$="{artifact_path}"]')
                image.first.wait_for(state="attached")
                page.wait_for_function(
                    "src => [...document.images].some(i => i.getAttribute('src').endsWith(src)"
                    " && i.complete && i.naturalWidth > 0)", arg=artifact_path)
                src, width, height = image.first.evaluate(
                    "i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]")
                image.first.evaluate("i => i.scrollIntoView({block: 'center'})")
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=False)
                # the other previews are listed on the same card
                text = page.content()
            finally:
                context.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    assert src.endswith(artifact_path)
    assert (width, height) == (1000, 140)  # the PNG itself, 10 classes of 100 px
    for name in ("distilled_images.png", "weight_decays.png", "learned_tensors.csv"):
        assert name in text
    keep = os.environ.get("OPTUNA_IFT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
