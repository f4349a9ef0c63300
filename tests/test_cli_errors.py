"""The command line's errors, output and secrets: one line per user error (exit status 2),
--debug and --version, defaults in --help, only files it wrote claimed, passwords masked."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest

import optuna_ift
import optuna_ift.experiments
from optuna_ift.cli import build_parser, main
from optuna_ift.experiments._common import jsonable, write_results
from optuna_ift.hypergrad import NeumannDivergenceWarning
from optuna_ift.integration import create_storage
from optuna_ift.integration import mask_password

# The module (optuna_ift.experiments.demo is the function of that name).
DEMO_MODULE = importlib.import_module("optuna_ift.experiments.demo")
SECRET = "s3cr3t-Passw0rd"
SECRET_URL = f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:1/db"


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "ptb"
    root.mkdir()
    for name in ("train", "valid", "test"):
        (root / f"{name}.txt").write_text("the cat sat on the mat\nthe dog sat on the log\n" * 5)
    return root


def run_cli(argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether it returns or raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as done:
        return 0 if done.code is None else done.code  # type: ignore[return-value]


# (command line, text the one-line message must contain: the argument or the file).
# "{tmp}" is a fresh folder, "{corpus}" a valid tiny corpus; every line fails before training.
BAD_COMMAND_LINES = [
    # demo
    (["demo", "--timeout", "-5"], "argument --timeout: must be a finite number > 0"),
    (["demo", "--timeout", "soon"], "argument --timeout"),
    (["demo", "--device", "gpu"], "argument --device"),
    (["demo", "--device", "cuda:999"], "argument --device: 'cuda:999'"),
    (["demo", "--n-trials", "0"], "argument --n-trials: must be an integer >= 1"),
    (["demo", "--hyper-steps", "-1"], "argument --hyper-steps"),
    (["demo", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["demo", "--val-fraction", "1"], "argument --val-fraction: must be a number in (0, 1)"),
    (["demo", "--storage", "foo://bar"], "storage 'foo://bar' names the unknown database"),
    (["demo", "--storage", f"postgresql://user:{SECRET}@host:port/db"], "storage"),
    (["demo", "--storage", "://nowhere"], "storage '://nowhere' is not a database URL"),
    (["demo", "--bogus", "1"], "unrecognized arguments: --bogus"),
    # worker
    (["worker"], "the following arguments are required: --storage, --n-trials"),
    (["worker", "--storage", "{tmp}/s.log"], "--n-trials"),
    (["worker", "--storage", "{tmp}/s.log", "--n-trials", "0"], "argument --n-trials"),
    (["worker", "--storage", "foo://bar", "--n-trials", "1"], "storage 'foo://bar'"),
    (["worker", "--storage", f"mysql+nosuchdriver://u:{SECRET}@h/db", "--n-trials", "1"],
     "storage 'mysql+nosuchdriver://u:***@h/db'"),
    (["worker", "--storage", "{tmp}/s.log", "--n-trials", "1", "--heartbeat-interval", "0"],
     "argument --heartbeat-interval"),
    (["worker", "--storage", "{tmp}/s.log", "--n-trials", "1", "--grace-period", "soon"],
     "argument --grace-period"),
    (["worker", "--storage", "{tmp}/s.log", "--n-trials", "1", "--device", "tpu9"],
     "argument --device"),
    (["worker", "--storage", "{tmp}/s.log", "--n-trials", "1", "--total-trials", "-3"],
     "argument --total-trials"),
    # overfit
    (["overfit", "--models", "svm"], "argument --models: invalid choice: 'svm'"),
    (["overfit", "--hyper-steps", "0"], "argument --hyper-steps"),
    (["overfit", "--dataset", "mnist"], "argument --data-root: required with --dataset mnist"),
    (["overfit", "--dataset", "mnist", "--data-root", "{tmp}/nope"], "nope/MNIST/raw"),
    (["overfit", "--dataset", "imagenet"], "argument --dataset: invalid choice"),
    # distill
    (["distill", "--hyper-steps", "many"], "argument --hyper-steps"),
    (["distill", "--dataset", "cifar10", "--data-root", "{tmp}/nope"], "nope"),
    (["distill", "--device", "gpu"], "argument --device"),
    # augment
    (["augment", "--seeds", "0"], "argument --seeds"),
    (["augment", "--n-train", "-5"], "argument --n-train"),
    (["augment", "--dataset", "fashion-mnist", "--data-root", "{tmp}/nope"], "nope"),
    # split-ratio
    (["split-ratio", "--sizes", "a,b"], "argument --sizes: must be comma-separated integers"),
    (["split-ratio", "--fractions", ","], "argument --fractions"),
    (["split-ratio", "--fractions", "1.5"], "fractions must be a number in the open interval"),
    (["split-ratio", "--sizes", "999999"], "sizes must be at most"),
    (["split-ratio", "--max-iter", "0"], "argument --max-iter"),
    # lstm
    (["lstm"], "the following arguments are required: --data-root"),
    (["lstm", "--data-root", "{tmp}/nope"], "nope/train.txt"),
    (["lstm", "--data-root", "{corpus}", "--epochs", "0"], "argument --epochs"),
    (["lstm", "--data-root", "{corpus}", "--optimizer", "rmsprop"], "argument --optimizer"),
    (["lstm", "--data-root", "{corpus}", "--methods", "tpe"], "methods: 'tpe'"),
    (["lstm", "--data-root", "{corpus}", "--overfit", "--methods", "none"],
     "argument --methods: not allowed with --overfit"),
    (["lstm", "--data-root", "{corpus}", "--hyper-steps", "5"],
     "argument --hyper-steps: only with --overfit"),
    (["lstm", "--data-root", "{corpus}", "--lr", "-1"], "argument --lr"),
    # compare-inverse
    (["compare-inverse", "--max-steps", "0"], "argument --max-steps"),
    (["compare-inverse", "--log10-decay-range", "1", "-1"], "log10_decay_range"),
    (["compare-inverse", "--log10-decay-range", "1"], "argument --log10-decay-range"),
    (["compare-inverse", "--draws", "x"], "argument --draws"),
    # no or an unknown subcommand
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_COMMAND_LINES,
                         ids=[" ".join(argv) or "(nothing)" for argv, _ in BAD_COMMAND_LINES])
def test_a_bad_command_line_is_one_line_and_status_2(argv, expected, tmp_path, corpus, capsys,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out folders land here, if anywhere
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{corpus}", str(corpus)) for a in argv]
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    command = argv[0] if argv and argv[0] in build_parser().commands else None
    prefix = f"optuna-ift {command}: error: " if command else "optuna-ift: error: "
    assert err.startswith(prefix), err
    assert expected in err, err
    assert "Traceback" not in err and SECRET not in err
    assert captured.out == ""


def test_device_error_lists_the_allowed_forms(capsys):
    assert run_cli(["demo", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    for form in ('"auto"', '"cpu"', '"cuda"', '"cuda:N"', "'gpu'"):
        assert form in err


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "optuna_ift", "compare-inverse", "--log10-decay-range", "1",
         "-1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        ("optuna-ift compare-inverse: error: log10_decay_range must be (low, high) with low "
         "<= high, two finite numbers, got (1.0, -1.0)")]
    assert done.stdout == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    bad = ["compare-inverse", "--log10-decay-range", "1", "-1", "--out", str(tmp_path)]
    argv = ["--debug", *bad] if where == "before" else [*bad, "--debug"]
    with pytest.raises(ValueError, match="log10_decay_range"):
        main(argv)


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    def broken(**kwargs):
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr(optuna_ift.experiments, "compare_inverse", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["compare-inverse", "--out", str(tmp_path)])


def test_version(capsys):
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out == f"optuna-ift {optuna_ift.__version__}\n"


def test_every_option_with_a_value_shows_its_default_in_help():
    parser = build_parser()
    assert set(parser.commands) == {"demo", "worker", "overfit", "distill", "augment",
                                    "split-ratio", "lstm", "compare-inverse"}
    for name, sub in parser.commands.items():
        text = sub.format_help()
        usage, options = text.split("\noptions:\n")
        usage = " ".join(usage.split())
        checked = 0
        for entry in re.split(r"\n(?=  -)", options):
            head = re.match(r"\s*((?:-[\w-]+, )*--?[\w-]+) ([A-Z{]\S*)", entry)
            if head is None or head.group(1) in ("-h, --help",):
                continue  # an on/off flag: no value, no default
            flag = head.group(1).split(", ")[-1]
            if f"[{flag}" not in usage:
                continue  # required
            checked += 1
            assert "(default: " in " ".join(entry.split()), f"{name} {flag}: {entry}"
        assert checked >= 3, name


def test_help_shows_the_studies_own_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no line breaks inside "--paper-size"
    shown = {}
    for command in ("demo", "overfit", "lstm", "split-ratio"):
        assert run_cli([command, "--help"]) == 0
        shown[command] = " ".join(capsys.readouterr().out.split())
    assert "trials to add to the study (default: 40)" in shown["demo"]
    assert "hyper steps per model (default: 150)" in shown["overfit"]
    assert "(default: linear mlp cnn)" in shown["overfit"]
    assert "LSTM units per layer (default: 200; 650 with --paper-size)" in shown["lstm"]
    assert "(default: 0.1,0.25,0.5,0.75,0.9)" in shown["split-ratio"]


# -- output: a summary of what it did, only files it wrote ---------------------------------------


def test_a_study_prints_its_summary_and_only_the_files_it_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("from an earlier run\n")
    assert main(["compare-inverse", "--out", str(out), "--max-steps", "2", "--draws", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary, files = printed.split("\nresults written to ")
    assert json.loads(summary)["study"] == "compare-inverse"
    assert files == f"{out}: compare_inverse.png, results.json\n"


def test_the_summary_is_valid_json_and_never_empty(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(optuna_ift.experiments, "compare_inverse",
                        lambda **kwargs: {"study": "x", "cosine": math.nan, "big": math.inf,
                                          "nested": {"a": 1}})
    assert main(["compare-inverse", "--out", str(tmp_path / "none")]) == 0
    printed = capsys.readouterr().out
    summary, _ = printed.split("\nnothing written to ")
    assert json.loads(summary) == {"study": "x", "cosine": None, "big": None}
    assert "NaN" not in printed and "Infinity" not in printed

    monkeypatch.setattr(optuna_ift.experiments, "compare_inverse", lambda **kwargs: {"a": [1]})
    assert main(["compare-inverse", "--out", str(tmp_path / "none")]) == 0
    assert "{}" not in capsys.readouterr().out


def test_worker_reports_what_it_did_and_counts_the_neumann_warnings(monkeypatch, tmp_path,
                                                                    capsys):
    def make_objective(**kwargs):
        def objective(trial: optuna.Trial) -> float:
            for _ in range(3):
                warnings.warn("Neumann series diverged ... use alpha='auto'",
                              NeumannDivergenceWarning, stacklevel=1)
            return float(trial.number)

        return objective

    monkeypatch.setattr(DEMO_MODULE, "make_objective", make_objective)
    out = tmp_path / "w"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["worker", "--storage", str(tmp_path / "s.log"), "--n-trials", "2",
                     "--study-name", "w", "--out", str(out)]) == 0
    assert not [w for w in shown if issubclass(w.category, NeumannDivergenceWarning)]
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"this worker ran 2 trials (0, 1) of study 'w' in {tmp_path / 's.log'}",
        "the study holds 2 trials: 2 complete",
        f"artifacts (learned decays, checkpoints): {out / 'artifacts'}",
        ("6 Neumann series cut off where their terms grew (the hypergradient kept the terms "
         "before; counted here instead of one warning each)"),
    ]
    assert "NeumannDivergenceWarning" not in captured.err and "alpha='auto'" not in captured.err
    assert not (out / "results.json").exists()


# -- results.json ------------------------------------------------------------------------------


def test_results_json_writes_non_finite_numbers_as_null(tmp_path):
    path = write_results(tmp_path, {"a": math.nan, "b": [math.inf, 1.5, 2], "c": {"d": -math.inf},
                                    "t": (1, math.nan), "ok": True})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and "nan" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert strict == {"a": None, "b": [None, 1.5, 2], "c": {"d": None}, "t": [1, None],
                      "ok": True}
    assert jsonable({1: math.nan}) == {"1": None}


def test_results_json_is_replaced_atomically(tmp_path):
    write_results(tmp_path, {"run": 1})
    write_results(tmp_path, {"run": 2})
    assert json.loads((tmp_path / "results.json").read_text()) == {"run": 2}
    with pytest.raises(TypeError):
        write_results(tmp_path, {"run": 3, "bad": object()})
    assert json.loads((tmp_path / "results.json").read_text()) == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql+psycopg2://user:secret@host/db", "postgresql+psycopg2://user:***@host/db"),
    ("postgresql://user:secret@host:5432/db?sslmode=require",
     "postgresql://user:***@host:5432/db?sslmode=require"),
    ("mysql+pymysql://u:p%40ss%2Fw@h/db", "mysql+pymysql://u:***@h/db"),
    ("mysql+pymysql://u:a/b:c@h/db", "mysql+pymysql://u:***@h/db"),  # unescaped / and :
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # unescaped @
    ("redis://:secret@localhost:6379/0", "redis://:***@localhost:6379/0"),
    ("postgresql://u@h/db?password=secret&sslmode=x", "postgresql://u@h/db?password=***&sslmode=x"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("postgresql://user:@host/db", "postgresql://user:***@host/db"),
    ("sqlite:///runs/study.db", "sqlite:///runs/study.db"),
    ("sqlite:////abs/path/study.db", "sqlite:////abs/path/study.db"),
    ("journal:///runs/study.log", "journal:///runs/study.log"),
    ("runs/demo/study.log", "runs/demo/study.log"),
    ("/tmp/user:x@y/study.log", "/tmp/user:x@y/study.log"),  # a path, not a URL
    (Path("runs") / "study.log", str(Path("runs") / "study.log")),
])
def test_mask_password(url, masked):
    assert mask_password(url) == masked
    assert "secret" not in mask_password(url)


def test_mask_password_rejects_non_text():
    with pytest.raises(TypeError, match="url"):
        mask_password(42)  # type: ignore[arg-type]


def test_create_storage_logs_its_retries_without_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionError, match="cannot connect") as raised:
        create_storage(SECRET_URL, connect_attempts=2)
    messages = [record.getMessage() for record in caplog.records]
    retries = [m for m in messages if "attempt 1 of 2" in m]
    assert retries and "user:***@127.0.0.1:1/db" in retries[0]
    assert not [m for m in messages if SECRET in m]
    assert SECRET not in str(raised.value) and "user:***@127.0.0.1:1/db" in str(raised.value)
    assert SECRET not in str(raised.value.__cause__)


def test_create_storage_names_storage_in_its_errors(tmp_path):
    for bad, expected in ((f"foo://u:{SECRET}@h", "unknown database 'foo'"),
                          (f"postgresql://u:{SECRET}@h:port/db", "is not a database URL"),
                          ("://x", "is not a database URL"), ("", "storage must be")):
        with pytest.raises(ValueError, match=expected) as raised:
            create_storage(bad)
        assert SECRET not in str(raised.value)
    with pytest.raises(ValueError, match="connect_attempts"):
        create_storage(str(tmp_path / "s.log"), connect_attempts=0)
    create_storage(f"sqlite:///{tmp_path / 'new' / 'study.db'}")  # its folder is created
    assert (tmp_path / "new" / "study.db").exists()


def test_cli_errors_mask_the_password(capsys):
    assert run_cli(["worker", "--storage", SECRET_URL.replace("psycopg2", "nosuchdriver"),
                    "--n-trials", "1"]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "user:***@127.0.0.1:1/db" in err


def test_demo_never_shows_or_saves_the_password(monkeypatch, tmp_path, capsys, caplog):
    # The study lives in a journal file; demo() is told the URL of a database with a password.
    caplog.set_level(logging.DEBUG)
    journal = tmp_path / "journal.log"
    monkeypatch.setattr(DEMO_MODULE, "create_storage",
                        lambda storage, **kwargs: create_storage(str(journal)))
    out = tmp_path / "out"
    assert main(["-v", "demo", "--storage", SECRET_URL, "--n-trials", "1", "--hyper-steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "optuna-dashboard 'postgresql+psycopg2://user:***@127.0.0.1:1/db'" in captured.out
    assert SECRET not in captured.out and SECRET not in captured.err
    assert not [r for r in caplog.records if SECRET in r.getMessage()]
    saved = json.loads((out / "results.json").read_text())
    assert saved["storage"] == "postgresql+psycopg2://user:***@127.0.0.1:1/db"
    for folder, _, names in os.walk(tmp_path):
        for name in names:
            assert SECRET.encode() not in (Path(folder) / name).read_bytes(), name
