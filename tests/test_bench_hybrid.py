"""The harness of ``benchmarks/bench_hybrid.py`` on digits with a tiny budget: its JSON, equal
budgets per method, and a test split that never takes part in the selection."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hybrid.py"
BUDGET_S = 1.5
SEEDS = 2
TOLERANCE_S = 1.0  # interpreter overhead between trials on a loaded machine


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_hybrid", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def timed(bench, tmp_path_factory):
    """All default methods, 2 seeds, ``BUDGET_S`` each, through the command line."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    out = bench.main(["--dataset", "digits", "--seeds", str(SEEDS), "--budget-s", str(BUDGET_S),
                      "--weight-steps", "60", "--eval-every", "2", "--quiet",
                      "--json", str(path)])
    return out, json.loads(path.read_text())


def test_json_keys_and_one_entry_per_seed(bench, timed):
    out, written = timed
    assert {"methods", "summary", "config", "data"} <= set(written)
    assert set(written["methods"]) == set(bench.DEFAULT_METHODS)
    assert {"tpe", "hybrid", "random", "tpe-share", "hybrid-given", "hybrid-refit",
            "tpe-share-refit", "hybrid-plain"} <= set(written["methods"])
    for name, r in written["methods"].items():
        for key in ("test_accuracy", "test_loss", "best_at_s", "val_loss", "elapsed_s",
                    "trials", "selected_trial", "selected_params", "curves"):
            assert len(r[key]) == SEEDS, (name, key)
        for acc, loss in zip(r["test_accuracy"], r["test_loss"]):
            assert 0.5 < acc <= 1.0 and math.isfinite(loss), name  # digits is easy
        for at, elapsed in zip(r["best_at_s"], r["elapsed_s"]):
            assert 0 < at <= elapsed
    params = written["methods"]
    assert set(params["tpe"]["selected_params"][0]) == {"lr", "width", "decay"}
    assert set(params["random"]["selected_params"][0]) == {"lr", "width", "decay"}
    assert set(params["hybrid"]["selected_params"][0]) == {"lr", "width", "decay"}
    assert set(params["hybrid-plain"]["selected_params"][0]) == {"lr", "width"}
    assert set(params["hybrid-refit"]["selected_params"][0]) == {"lr", "width", "decay"}
    summary = written["summary"]
    assert summary["target_test_accuracy"] == pytest.approx(
        sum(params["tpe"]["test_accuracy"]) / SEEDS)  # the median of two seeds
    for name, row in summary["methods"].items():
        assert len(row["iqr_test_accuracy"]) == 2 and len(row["time_to_target_s"]) == SEEDS
        if name != "tpe":
            assert sum(row["vs_tpe"].values()) == SEEDS
    assert written["config"]["dataset"] == "digits" and written["config"]["seeds"] == SEEDS
    assert out["methods"]["tpe"]["test_accuracy"] == params["tpe"]["test_accuracy"]


def test_every_method_gets_the_same_budget(bench, timed):
    _, written = timed
    for name, r in written["methods"].items():
        for run in r["runs"]:
            # Optuna starts no trial after the budget; the last one may run over by one trial
            # (a re-training method keeps back about one trial's time for its re-training).
            assert run["elapsed_s"] <= BUDGET_S + run["max_trial_s"] + TOLERANCE_S, name
            assert run["elapsed_s"] >= BUDGET_S - run["max_trial_s"] - TOLERANCE_S, name
            assert run["trials"] >= 1 and run["complete"] >= 1
            # A trial still training at the deadline stops after its hyper step: none ends
            # after the budget, and a method that does not re-train ends with its last trial.
            assert run["trial_end_s"][-1] <= BUDGET_S + TOLERANCE_S, name
            if not bench.METHODS[name].refit:
                assert run["elapsed_s"] <= BUDGET_S + TOLERANCE_S, name
        assert max(r["elapsed_s"]) - min(r["elapsed_s"]) < 2 * TOLERANCE_S + max(
            run["max_trial_s"] for run in r["runs"])
    per_trial = {run["selected_user_attrs"]["weight_steps"]
                 for r in written["methods"].values() for run in r["runs"]}
    assert max(per_trial) <= 60  # the per-trial step budget holds for every method


def test_a_refit_method_s_curve_re_trains_every_best_so_far_trial(bench, timed):
    """Had the study stopped after a best-so-far trial, that trial re-trained would have been
    its result, there once the re-training ended: the last point is the pick's own re-training,
    each point comes after its trial's end, and a plain method's curve is its trials' models."""
    _, written = timed
    for name in ("hybrid", "tpe-share-refit", "hybrid-refit", "tpe", "tpe-share"):
        refits = bench.METHODS[name].refit
        for run in written["methods"][name]["runs"]:
            curve = run["curve"]
            numbers = [p["trial"] for p in curve]
            assert numbers == sorted(set(numbers)) and numbers[-1] == run["selected_trial"]
            assert all(p.get("refit", False) == refits for p in curve), name
            assert curve[-1]["test_accuracy"] == run["test_accuracy"]
            for p in curve:
                end = run["trial_end_s"][p["trial"]]
                assert p["t"] > end if refits else p["t"] == pytest.approx(end)
                assert 0.5 < p["test_accuracy"] <= 1.0
            if refits:
                assert curve[-1]["t"] == pytest.approx(run["best_at_s"] + run["refit_s"])
                assert all(0 < p["trial_test_accuracy"] <= 1 for p in curve)


def test_the_test_split_is_never_used_for_selection(bench, monkeypatch):
    """Scrambling the test labels changes the recorded test accuracies, and nothing else: every
    trial's value, the pick, its parameters."""
    args = bench.parse_args(["--dataset", "digits", "--seeds", "1", "--budget-s", "600",
                             "--max-trials", "3", "--startup", "1", "--weight-steps", "40",
                             "--eval-every", "1", "--quiet"])
    plain = bench.run(args)

    load = bench.load_data

    def scrambled(args, seed):
        data = load(args, seed)
        g = torch.Generator().manual_seed(123)
        return dataclasses.replace(data, y_test=torch.randint(0, 10, data.y_test.shape,
                                                              generator=g),
                                   x_test=data.x_test[torch.randperm(len(data.y_test),
                                                                     generator=g)])

    monkeypatch.setattr(bench, "load_data", scrambled)
    shuffled = bench.run(args)
    for name in plain["methods"]:
        a, b = plain["methods"][name], shuffled["methods"][name]
        assert a["trials"] == b["trials"] == [3], name
        assert a["runs"][0]["trial_values"] == b["runs"][0]["trial_values"], name
        assert a["selected_trial"] == b["selected_trial"], name
        assert a["selected_params"] == b["selected_params"], name
        assert a["val_loss"] == b["val_loss"], name
        assert a["test_accuracy"] != b["test_accuracy"], name  # the scrambling took effect
        assert b["test_accuracy"][0] < 0.5, name


def test_the_recipes_resplit_moves_only_train_and_validation(bench):
    args = bench.parse_args(["--dataset", "digits", "--quiet"])
    data = bench.load_data(args, 3)
    again = bench.resplit(data, 0.5, 3)
    same = bench.resplit(data, 0.5, 3)  # the same for every method of a seed
    assert torch.equal(again.x_val, same.x_val) and torch.equal(again.y_train, same.y_train)
    n = len(data.y_train) + len(data.y_val)
    assert len(again.y_val) == round(0.5 * n) and len(again.y_train) == n - len(again.y_val)
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_test, data.y_test)

    def rows(*xs):
        return sorted(map(tuple, torch.cat(xs).tolist()))

    assert rows(again.x_train, again.x_val) == rows(data.x_train, data.x_val)


def test_select_trial_reads_only_the_values(bench):
    def trial(value, test_accuracy, state=TrialState.COMPLETE):
        return create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                            user_attrs={"test_accuracy": test_accuracy})

    trials = [trial(0.3, 0.99), trial(0.1, 0.50), trial(0.1, 0.99), trial(None, 1.0,
                                                                          TrialState.FAIL)]
    for k, t in enumerate(trials):
        t.number = k
    assert bench.select_trial(trials).number == 1  # lowest value, ties to the earlier trial
    assert bench.select_trial(trials[3:]) is None


def test_summary_pairs_seeds_and_times_the_target(bench):
    def curve(*points):
        return [{"t": t, "trial": k, "value": 0.0, "test_accuracy": a}
                for k, (t, a) in enumerate(points)]

    methods = {
        "tpe": {"test_accuracy": [0.90, 0.92, 0.94], "test_loss": [0.3, 0.2, 0.1],
                "trials": [5, 5, 5],
                "curves": [curve((10, 0.9)), curve((10, 0.90), (80, 0.92)), curve((40, 0.94))]},
        "hybrid": {"test_accuracy": [0.93, 0.92, 0.91], "test_loss": [0.2, 0.2, 0.2],
                   "trials": [4, 4, 4],
                   "curves": [curve((5, 0.93)), curve((20, 0.92)), curve((30, 0.91))]},
    }
    summary = bench.summarise(methods, budget_s=100.0)
    assert summary["target_test_accuracy"] == pytest.approx(0.92)
    row = summary["methods"]["hybrid"]
    assert row["vs_tpe"] == {"wins": 1, "ties": 1, "losses": 1}
    assert row["median_test_accuracy"] == pytest.approx(0.92)
    assert row["iqr_test_accuracy"] == pytest.approx([0.915, 0.925])
    assert row["time_to_target_s"] == [5, 20, None]
    assert row["median_time_to_target_s"] == 20
    tpe = summary["methods"]["tpe"]
    assert tpe["time_to_target_s"] == [None, 80, 40] and tpe["median_time_to_target_s"] == 80
    assert row["median_time_to_target_over_tpe"] == pytest.approx(0.25)
    assert "hybrid" in bench.format_summary(summary, 3)


def test_bad_arguments_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "tpe,bogus"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--dataset", "mnist"])  # needs --data-root
    args = bench.parse_args(["--dataset", "mnist", "--data-root", "somewhere"])
    assert (args.train_size, args.val_size) == (2000, 1000)


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_trial_still_training_at_the_deadline_stops_there(bench):
    """A trial that would train far past the budget stops after the hyper step at which the
    budget runs out, and reports the state it kept."""
    args = bench.parse_args(["--dataset", "digits", "--seeds", "1", "--budget-s", "1.0",
                             "--weight-steps", "1000000", "--patience", "0", "--quiet"])
    data = bench.load_data(args, 0)
    bench.warm_up(data, args)  # the first steps of a process are slow
    for name in ("tpe", "hybrid"):
        r = bench.run_method(name, data, args, 0)
        assert r["trials"] == r["complete"] == 1, name
        assert r["elapsed_s"] <= args.budget_s + TOLERANCE_S, name
        attrs = r["selected_user_attrs"]
        assert 0 < attrs["weight_steps"] <= attrs["trained_weight_steps"] < 1_000_000, name
        assert 0.5 < r["test_accuracy"] <= 1.0, name
