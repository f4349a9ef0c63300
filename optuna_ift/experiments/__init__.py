"""The paper's studies, each a function that returns its results and writes its figures."""

from __future__ import annotations

from optuna_ift.experiments._common import jsonable
from optuna_ift.experiments._lm import REGULARIZERS, LSTMLanguageModel, lm_train_loss, lm_val_loss
from optuna_ift.experiments.augment import augment
from optuna_ift.experiments.compare_inverse import compare_inverse
from optuna_ift.experiments.demo import demo, run_worker
from optuna_ift.experiments.distill import distill
from optuna_ift.experiments.lstm import LSTM_METHODS, lstm, lstm_overfit, perplexity
from optuna_ift.experiments.overfit import overfit
from optuna_ift.experiments.split_ratio import split_ratio

__all__ = [
    "LSTMLanguageModel",
    "LSTM_METHODS",
    "REGULARIZERS",
    "augment",
    "compare_inverse",
    "demo",
    "distill",
    "jsonable",
    "lm_train_loss",
    "lm_val_loss",
    "lstm",
    "lstm_overfit",
    "overfit",
    "perplexity",
    "run_worker",
    "split_ratio",
]
