"""Fig. 9 of the paper: how much data to hold out for validation, and whether to re-train.

Logistic regression with its weight decay learned on a validation split
(:class:`optuna_ift.sklearn.IFTLogisticRegression`), for several data sizes and validation
shares, with one global decay and with a decay per weight, scored on the test set as trained on
the non-validation part and after re-training on all the data with the learned decays. The
paper's finding: with one global decay the best validation share is small and re-training
barely matters; with a decay per weight (as many hyperparameters as weights) the best share is
larger and re-training on all the data matters. A third mode starts the decays per weight from
the global decay learned on the same split (the hybrid's recipe: many hyperparameters refining
one tuned first).
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optuna_ift._validation import ArgumentKindError
from optuna_ift._validation import check_int as _check_int
from optuna_ift.data import check_dataset, load_dataset
from optuna_ift.experiments._common import write_results
from optuna_ift.sklearn import CURVE_DECAY_MODES, IFTLogisticRegression, validation_split_curve
from optuna_ift.trainer import resolve_device

__all__ = ["split_ratio"]

_logger = logging.getLogger(__name__)

_DEFAULT_SIZES = {"digits": (100, 400, 1400), "mnist": (1000, 5000)}
_DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _findings(curve: dict[str, Any]) -> dict[str, Any]:
    """Per decay mode and size: the best validation share, and what re-training adds."""
    fractions = curve["fractions"]
    out: dict[str, Any] = {}
    for mode in curve["weight_decays"]:
        out[mode] = {}
        for size in curve["sizes"]:
            no = np.asarray(curve["summary"][mode]["no_refit"][str(size)]["mean"])
            re = np.asarray(curve["summary"][mode]["refit"][str(size)]["mean"])
            out[mode][str(size)] = {
                "best_fraction_no_refit": fractions[int(no.argmax())],
                "best_accuracy_no_refit": float(no.max()),
                "best_fraction_refit": fractions[int(re.argmax())],
                "best_accuracy_refit": float(re.max()),
                "refit_gain_at_best": float(re.max() - no.max()),
                "refit_gain_mean_over_fractions": float((re - no).mean()),
            }
    return out


def split_ratio(
    *,
    dataset: str = "digits",
    data_root: str | Path | None = None,
    download: bool = False,
    sizes: Sequence[int] | None = None,
    fractions: Sequence[float] = _DEFAULT_FRACTIONS,
    weight_decays: Sequence[str] = CURVE_DECAY_MODES,
    seeds: int | Sequence[int] = 3,
    seed: int = 0,
    max_iter: int = 50,
    device: str = "auto",
    out: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the study and, if ``out`` is given, write ``results.json`` and ``split_ratio.png``.

    Args:
        dataset: ``"digits"`` (embedded, the default) or ``"mnist"`` (and the other sets of
            :func:`optuna_ift.data.load_dataset`), read from ``data_root``.
        data_root: Folder of the torchvision files; not needed for ``"digits"``.
        download: Let torchvision download missing files.
        sizes: Numbers of examples (train + validation) drawn from the training pool; default
            ``(100, 400, 1400)`` on digits and ``(1000, 5000)`` otherwise.
        fractions: Validation shares, each in (0, 1).
        weight_decays: Decay modes, of ``"global"``, ``"per_weight"`` and
            ``"per_weight_from_global"`` (a decay per weight started from the global decay
            learned on the same split); all three by default.
        seeds: A number of seeds (``seed, seed + 1, ...``) or the seeds themselves; each seed
            draws its own data subset and validation split.
        seed: First seed when ``seeds`` is a number; also the seed of the test split of digits.
        max_iter: Most hyper steps per fit.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        out: Folder for the results; created if missing.
        show_progress: Show a tqdm progress bar.

    Returns:
        The results: the curve of :func:`optuna_ift.sklearn.validation_split_curve` (every
        run and the mean and deviation over seeds) plus ``findings`` (per mode and size: the
        best share with and without re-training, and what re-training adds) and ``seconds``.
    """
    seeds_allowed = "seeds must be a positive integer or a sequence of integers >= 0"
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"{seeds_allowed}, got {seeds!r}")
        seeds = [seed + k for k in range(int(seeds))]
    elif isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in seeds
    ):
        raise ArgumentKindError(f"{seeds_allowed}, got {type(seeds).__name__} {seeds!r:.60}")
    elif any(s < 0 for s in seeds):
        raise ValueError(f"{seeds_allowed}, got {seeds!r}")
    seeds = [int(s) for s in seeds]
    _check_int("seed", seed, 0)
    _check_int("max_iter", max_iter, 1)
    key = check_dataset(dataset, "dataset")
    resolve_device(device)  # refused here, before the data are read; used by the estimator

    started = time.perf_counter()
    if sizes is None:
        sizes = _DEFAULT_SIZES.get(key, _DEFAULT_SIZES["mnist"])
    # One split into a training pool and a test set; the pool is train + validation here.
    data = load_dataset(dataset, root=data_root, download=download, val_fraction=0.1,
                        seed=seed)
    X = np.concatenate([data.X_train.flatten(1).numpy(), data.X_val.flatten(1).numpy()])
    y = np.concatenate([data.y_train.numpy(), data.y_val.numpy()])
    X_test, y_test = data.X_test.flatten(1).numpy(), data.y_test.numpy()
    if sizes and max(sizes) > len(y):
        raise ValueError(f"sizes must be at most {len(y)} (the training pool of {dataset}), "
                         f"got {max(sizes)}")

    curve = validation_split_curve(
        X, y, X_test, y_test, sizes=sizes, fractions=fractions, seeds=seeds,
        weight_decays=weight_decays,
        estimator=IFTLogisticRegression(max_iter=max_iter, device=device),
        show_progress=show_progress,
    )
    results = {
        "study": "split-ratio",
        "dataset": data.name,
        "model": "logistic regression, weight decay learned on the validation split (IFT, CG)",
        "n_pool": int(len(y)),
        "n_test": int(len(y_test)),
        "max_iter": max_iter,
        **curve,
        "findings": _findings(curve),
        "seconds": time.perf_counter() - started,
    }
    _logger.info("split-ratio on %s took %.0f s", data.name, results["seconds"])
    if out is not None:
        from optuna_ift.plots import plot_split_ratio

        out = Path(out)
        write_results(out, results)
        plot_split_ratio(results, out / "split_ratio.png")
    return results
