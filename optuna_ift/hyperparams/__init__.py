"""Hyperparameter families: small modules whose parameters are hyperparameters.

Each family is an ``nn.Module`` whose tunable tensors are :class:`HyperParameter`s, so putting it
inside a model is all it takes: :func:`split_parameters` (and the trainer) find them.

=====================  ============================================================
``WeightDecay``        an L2 penalty with a log decay, global, per layer or per weight
``DistilledData``      learned training images, optionally learned soft labels
``AugmentationNet``    a U-Net with a noise channel, the identity at initialisation
``ConcreteDropout``    dropout or DropConnect with a rate learned through the concrete relaxation
``LossWeights``        one positive (log-parameterised) weight per training example
=====================  ============================================================
"""

from __future__ import annotations

from optuna_ift.hyperparams._base import HyperParameter, split_parameters
from optuna_ift.hyperparams.augmentation import AugmentationNet, as_hyperparameters
from optuna_ift.hyperparams.distilled_data import DistilledData
from optuna_ift.hyperparams.dropout import ConcreteDropout
from optuna_ift.hyperparams.loss_weights import LossWeights
from optuna_ift.hyperparams.weight_decay import WeightDecay

__all__ = [
    "AugmentationNet",
    "ConcreteDropout",
    "DistilledData",
    "HyperParameter",
    "LossWeights",
    "WeightDecay",
    "as_hyperparameters",
    "split_parameters",
]
