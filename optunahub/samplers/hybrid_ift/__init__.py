"""OptunaHub package ``samplers/hybrid_ift``: optuna-ift's ``HybridSampler``, any Optuna
sampler for the few low-dimensional hyperparameters, taught by the values that the trials
refined with implicit hypergradients (recorded with ``record_refined``)."""

from optuna_ift.integration import HybridSampler, record_refined, refined_key

__all__ = ["HybridSampler", "record_refined", "refined_key"]
