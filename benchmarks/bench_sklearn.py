"""``IFTLogisticRegression`` against scikit-learn's ``LogisticRegressionCV``, side by side.

Both estimators see the same training set and are scored on the same test set:

* digits: scikit-learn's embedded 8x8 digits, 80 % train / 20 % test (``load_dataset``,
  standardised with the training mean and deviation);
* MNIST: ``--mnist-train`` examples drawn from the official training set (``--data-root``)
  and the official 10,000 test images, standardised likewise.

``IFTLogisticRegression`` learns one global decay (``1 / C``) on a 20 % validation split by
implicit hypergradients and re-trains on all the training data; ``LogisticRegressionCV``
searches its default 10 values of ``C`` by 5-fold cross-validation (L-BFGS, ``max_iter=100``)
and re-fits. After one small warm-up fit of each, fits run interleaved (``--repeats`` rounds,
alternating order); the table shows the median fit time, the test accuracy, and the ratios
ours / theirs. Float32 features for both (each keeps float32).

With ``--models neural``: ``IFTNeuralNetClassifier`` (one hidden layer of ``--width`` units,
a decay per weight learned on a 20 % validation split, re-trained on all the training data)
against scikit-learn's ``MLPClassifier`` of the same width (Adam, its defaults otherwise) at
its best ``alpha`` by ``GridSearchCV`` (``--alphas``, ``--cv``-fold, re-fitted): test accuracy
and fit time side by side on each split, the competitor in the same process, both on
``--threads`` threads (torch's and the BLAS pool).

Run ``python benchmarks/bench_sklearn.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from optuna_ift.data import load_dataset
from optuna_ift.sklearn import IFTLogisticRegression, IFTNeuralNetClassifier


def _data(name: str, root: str, n_train: int | None, seed: int):
    if name == "digits":
        d = load_dataset("digits", val_fraction=0.1, seed=seed, dtype=torch.float32)
        X = np.concatenate([d.X_train.flatten(1).numpy(), d.X_val.flatten(1).numpy()])
        y = np.concatenate([d.y_train.numpy(), d.y_val.numpy()])
    else:
        d = load_dataset(name, root=root, n_train=n_train, seed=seed, dtype=torch.float32)
        X, y = d.X_train.flatten(1).numpy(), d.y_train.numpy()
    return X, y, d.X_test.flatten(1).numpy(), d.y_test.numpy()


def _fit(make, X, y, X_test, y_test) -> tuple[float, float, int, object]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        started = time.perf_counter()
        model = make().fit(X, y)
        seconds = time.perf_counter() - started
    not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return seconds, float(model.score(X_test, y_test)), not_converged, model


def run(dataset: str, args: argparse.Namespace, seed: int) -> dict:
    X, y, X_test, y_test = _data(dataset, args.data_root, args.mnist_train, seed)
    makers = {
        "IFTLogisticRegression": lambda: IFTLogisticRegression(
            weight_decay="global", random_state=seed, device=args.device),
        "LogisticRegressionCV": lambda: LogisticRegressionCV(n_jobs=1),
    }
    if args.per_weight:
        makers["IFT per_weight"] = lambda: IFTLogisticRegression(
            weight_decay="per_weight", random_state=seed, device=args.device,
            validation_fraction=0.5)
    # Warm-up: the first torch call of a process pays one-off start-up costs.
    for make in makers.values():
        _fit(make, X[:200], y[:200], X_test[:10], y_test[:10])
    times = {k: [] for k in makers}
    rows = {}
    for r in range(args.repeats):
        order = list(makers) if r % 2 == 0 else list(reversed(makers))
        for name in order:
            seconds, acc, warned, model = _fit(makers[name], X, y, X_test, y_test)
            times[name].append(seconds)
            c = (1.0 / model.weight_decay_ if isinstance(model, IFTLogisticRegression)
                 and model.weight_decay == "global" else
                 float(model.C_[0]) if hasattr(model, "C_") else float("nan"))
            rows[name] = {"test_accuracy": acc, "C": c, "convergence_warnings": warned}
    for name in makers:
        rows[name]["fit_seconds_median"] = statistics.median(times[name])
        rows[name]["fit_seconds_all"] = times[name]
    ours, theirs = rows["IFTLogisticRegression"], rows["LogisticRegressionCV"]
    summary = {
        "accuracy_difference": ours["test_accuracy"] - theirs["test_accuracy"],
        "time_ratio": ours["fit_seconds_median"] / theirs["fit_seconds_median"],
    }
    print(f"\n== {dataset}, split seed {seed}: n_train={len(y)}, n_test={len(y_test)}, "
          f"n_features={X.shape[1]}, repeats={args.repeats}")
    print(f"{'estimator':24s} {'test acc':>9s} {'fit s':>8s} {'C':>10s} {'conv.warn':>9s}")
    for name, row in rows.items():
        print(f"{name:24s} {row['test_accuracy']:9.4f} {row['fit_seconds_median']:8.2f} "
              f"{row['C']:10.4g} {row['convergence_warnings']:9d}")
    print(f"ours - theirs accuracy: {summary['accuracy_difference']:+.4f} "
          f"({'matches or beats' if summary['accuracy_difference'] >= 0 else 'below'}); "
          f"time ratio ours / theirs: {summary['time_ratio']:.2f}x "
          f"({'HOLDS' if summary['time_ratio'] <= 3 else 'FAILS'} <= 3x)")
    return {"seed": seed, "n_train": len(y), "n_test": len(y_test), "rows": rows, **summary}


def summarize(dataset: str, runs: list[dict]) -> dict:
    """Mean accuracies and the paired difference over splits: one split's 359 test digits
    move the accuracy in steps of 0.28 points, so a single split decides little."""
    ours = np.array([r["rows"]["IFTLogisticRegression"]["test_accuracy"] for r in runs])
    theirs = np.array([r["rows"]["LogisticRegressionCV"]["test_accuracy"] for r in runs])
    ratios = [r["time_ratio"] for r in runs]
    diff = ours - theirs
    summary = {
        "splits": len(runs), "ours_mean": float(ours.mean()), "theirs_mean": float(theirs.mean()),
        "difference_mean": float(diff.mean()),
        "difference_sd": float(diff.std(ddof=1)) if len(runs) > 1 else 0.0,
        "wins_ties_losses": [int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())],
        "time_ratio_median": float(statistics.median(ratios)),
    }
    print(f"\n== {dataset} over {len(runs)} split(s): IFTLogisticRegression "
          f"{summary['ours_mean']:.4f}, LogisticRegressionCV {summary['theirs_mean']:.4f}, "
          f"paired difference {summary['difference_mean']:+.4f} ± {summary['difference_sd']:.4f} "
          f"(wins/ties/losses {summary['wins_ties_losses']}); median time ratio "
          f"{summary['time_ratio_median']:.2f}x")
    return summary


def run_neural(dataset: str, args: argparse.Namespace, seed: int) -> dict:
    """One split: the neural estimator against MLPClassifier tuned by GridSearchCV."""
    X, y, X_test, y_test = _data(dataset, args.data_root, args.mnist_train, seed)
    makers = {
        "IFTNeuralNetClassifier": lambda: IFTNeuralNetClassifier(
            module__width=args.width, random_state=seed, device=args.device),
        "MLPClassifier+GridSearchCV": lambda: GridSearchCV(
            MLPClassifier(hidden_layer_sizes=(args.width,), random_state=seed),
            {"alpha": args.alphas}, cv=args.cv, n_jobs=1),
    }
    for make in makers.values():  # warm-up
        _fit(make, X[:200], y[:200], X_test[:10], y_test[:10])
    rows = {}
    for name in (list(makers) if seed % 2 == 0 else list(reversed(makers))):
        seconds, acc, warned, model = _fit(makers[name], X, y, X_test, y_test)
        if isinstance(model, GridSearchCV):
            detail = f"alpha={model.best_params_['alpha']:g}"
        else:
            decays = np.concatenate([np.ravel(d) for d in model.weight_decay_.values()])
            detail = (f"decay geo-mean={np.exp(np.log(decays).mean()):.3g}, "
                      f"{model.n_iter_} hyper steps (best {model.best_iter_})")
        rows[name] = {"test_accuracy": acc, "fit_seconds": seconds, "detail": detail,
                      "convergence_warnings": warned}
    ours, theirs = rows["IFTNeuralNetClassifier"], rows["MLPClassifier+GridSearchCV"]
    summary = {"accuracy_difference": ours["test_accuracy"] - theirs["test_accuracy"],
               "time_ratio": ours["fit_seconds"] / theirs["fit_seconds"]}
    print(f"\n== {dataset}, split seed {seed}: n_train={len(y)}, n_test={len(y_test)}, "
          f"width={args.width}, alphas={args.alphas}, cv={args.cv}")
    print(f"{'estimator':28s} {'test acc':>9s} {'fit s':>8s}  detail")
    for name, row in rows.items():
        print(f"{name:28s} {row['test_accuracy']:9.4f} {row['fit_seconds']:8.2f}  "
              f"{row['detail']} (convergence warnings: {row['convergence_warnings']})")
    print(f"ours - theirs accuracy: {summary['accuracy_difference']:+.4f}; "
          f"fit time ratio ours / theirs: {summary['time_ratio']:.3f}x")
    return {"seed": seed, "n_train": len(y), "n_test": len(y_test), "rows": rows, **summary}


def summarize_neural(dataset: str, runs: list[dict]) -> dict:
    names = ("IFTNeuralNetClassifier", "MLPClassifier+GridSearchCV")
    acc = {n: np.array([r["rows"][n]["test_accuracy"] for r in runs]) for n in names}
    sec = {n: np.array([r["rows"][n]["fit_seconds"] for r in runs]) for n in names}
    diff = acc[names[0]] - acc[names[1]]
    ratios = [r["time_ratio"] for r in runs]
    print(f"\n== {dataset} over {len(runs)} split(s)")
    print(f"{'estimator':28s} {'test acc (mean ± sd)':>22s} {'fit s (median)':>15s}")
    for n in names:
        sd = acc[n].std(ddof=1) if len(runs) > 1 else 0.0
        print(f"{n:28s} {acc[n].mean():14.4f} ± {sd:.4f} {np.median(sec[n]):15.2f}")
    sd = float(diff.std(ddof=1)) if len(runs) > 1 else 0.0
    summary = {"splits": len(runs), "difference_mean": float(diff.mean()), "difference_sd": sd,
               "wins_ties_losses": [int((diff > 0).sum()), int((diff == 0).sum()),
                                    int((diff < 0).sum())],
               "time_ratio_median": float(statistics.median(ratios)),
               "ours_mean": float(acc[names[0]].mean()),
               "theirs_mean": float(acc[names[1]].mean())}
    print(f"paired accuracy difference ours - theirs {summary['difference_mean']:+.4f} ± "
          f"{sd:.4f} (wins/ties/losses {summary['wins_ties_losses']}); median fit time ratio "
          f"ours / theirs {summary['time_ratio_median']:.3f}x")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"],
                        choices=("digits", "mnist", "fashion-mnist"))
    parser.add_argument("--data-root", default=None,
                        help="folder holding MNIST/raw (torchvision layout); without it only "
                        "digits runs")
    parser.add_argument("--mnist-train", type=int, default=10000,
                        help="training examples drawn from MNIST (default 10000)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first split")
    parser.add_argument("--splits", type=int, default=10,
                        help="random train/test splits of digits (seeds seed, seed+1, ...)")
    parser.add_argument("--mnist-splits", type=int, default=1,
                        help="random training subsets of MNIST")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-weight", action="store_true",
                        help="also fit IFTLogisticRegression with a decay per weight")
    parser.add_argument("--models", choices=("linear", "neural"), default="linear",
                        help="linear: IFTLogisticRegression vs LogisticRegressionCV; neural: "
                        "IFTNeuralNetClassifier vs MLPClassifier tuned by GridSearchCV")
    parser.add_argument("--width", type=int, default=100, help="hidden units (neural)")
    parser.add_argument("--alphas", type=float, nargs="+",
                        default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                        help="MLPClassifier's alpha grid (neural)")
    parser.add_argument("--cv", type=int, default=3, help="GridSearchCV folds (neural)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for both sides (neural)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, python {sys.version.split()[0]}")
    results = {}
    if args.data_root is None and any(name != "digits" for name in args.datasets):
        print("no --data-root: running digits only", file=sys.stderr)
        args.datasets = [name for name in args.datasets if name == "digits"]
    if args.models == "neural":
        torch.set_num_threads(args.threads)
    for name in args.datasets:
        count = args.splits if name == "digits" else args.mnist_splits
        if args.models == "neural":
            with threadpool_limits(args.threads):
                runs = [run_neural(name, args, args.seed + k) for k in range(count)]
            results[name] = {"runs": runs, "summary": summarize_neural(name, runs)}
        else:
            runs = [run(name, args, args.seed + k) for k in range(count)]
            results[name] = {"runs": runs, "summary": summarize(name, runs)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
