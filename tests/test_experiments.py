"""The studies: their claims, their files, and the command that runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optuna_ift.cli import main
from optuna_ift.experiments import compare_inverse

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compare_inverse_reproduces_fig3(tmp_path):
    results = compare_inverse(max_steps=20, n_draws=4, out=tmp_path, show_progress=False)
    neumann, cg, identity = (results["solvers"][k] for k in ("neumann", "cg", "identity"))
    # CG solves the 11-dimensional system exactly once it has taken 11 steps.
    assert cg["cosine_mean"][-1] == pytest.approx(1.0, abs=1e-12)
    assert max(cg["l2_mean"][12:]) < 1e-12
    # Neumann converges steadily in distance, and its direction is right early.
    l2 = neumann["l2_mean"]
    assert all(b <= a for a, b in zip(l2, l2[1:]))
    assert results["neumann_cosine_at_20_steps"] >= 0.99
    # Both beat the identity approximation, which cannot improve with steps.
    assert identity["cosine_mean"][0] < neumann["cosine_mean"][0]
    assert len(set(identity["cosine_mean"])) == 1
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["solvers"]["cg"]["cosine_mean"] == cg["cosine_mean"]
    assert (tmp_path / "compare_inverse.png").read_bytes()[:8] == PNG_MAGIC


def test_compare_inverse_arguments_are_checked():
    with pytest.raises(ValueError, match="max_steps"):
        compare_inverse(max_steps=0, show_progress=False)
    with pytest.raises(ValueError, match="log10_decay_range"):
        compare_inverse(log10_decay_range=(1.0, -1.0), show_progress=False)


def test_cli_compare_inverse(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare-inverse", "--out", str(out), "--max-steps", "3", "--draws", "2",
                 "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["steps"] == [1, 2, 3]
    assert '"study": "compare-inverse"' in capsys.readouterr().out


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare-inverse", "--max-steps", "0"])
    assert exit_info.value.code == 2
    assert "--max-steps: must be an integer >= 1" in capsys.readouterr().err


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "optuna_ift", "--help"], capture_output=True,
                          text=True, check=True)
    assert "compare-inverse" in done.stdout


def test_example_beats_grid_search():
    example = Path(__file__).parents[1] / "examples" / "ridge_hypergradient.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          check=True, timeout=300)
    lines = {line.split(":")[0]: float(line.split("validation loss")[1])
             for line in done.stdout.splitlines() if "validation loss" in line and ":" in line}
    assert lines["tuned, a decay per feature"] < lines["best single decay on a grid"]
