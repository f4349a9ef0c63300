"""A short hybrid study on scikit-learn's embedded digits (8x8 images, 10 classes).

Optuna (TPE inside ``HybridSampler``) samples the learning rate and a global weight decay;
inside each trial a ``HyperTrainer`` trains a softmax regression and keeps tuning the decay
by implicit hypergradients on a validation split. The trial records where the decay ended
(``record_refined``), and the sampler shows TPE that value instead of the sampled one.
Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import optunahub
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from optuna_ift import Neumann
from optuna_ift.hyperparams import WeightDecay
from optuna_ift.trainer import HyperTrainer

# From OptunaHub: optunahub.load_module(package="samplers/hybrid_ift"). Here, the copy beside
# this file (the registry root is two folders up).
hub = optunahub.load_local_module(
    package="samplers/hybrid_ift", registry_root=str(Path(__file__).resolve().parents[2])
)

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
train, val = perm[:1000], perm[1000:1400]


class Model(nn.Module):
    def __init__(self, decay: float) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)
        self.decay = WeightDecay(self.net, mode="global", init=decay)


def objective(trial: optuna.Trial) -> float:
    torch.manual_seed(trial.number)
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    model = Model(trial.suggest_float("decay", 1e-5, 1e-1, log=True))
    trainer = HyperTrainer(
        model,
        train_loss=lambda m, b: F.cross_entropy(m.net(b[0]), b[1]) + m.decay(m.net),
        val_loss=lambda m, b: F.cross_entropy(m.net(b[0]), b[1]),
        train_data=(x[train], y[train]), val_data=(x[val], y[val]), batch_size=1000,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        hyper_optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
        solver=Neumann(steps=3, alpha=0.1), inner_steps=5, device="cpu", progress=False,
    )
    trainer.fit(10)
    hub.record_refined(trial, "decay", float(model.decay.log_decays[0].detach().exp()))
    with torch.no_grad():
        return float(F.cross_entropy(model.net(x[val]), y[val]))


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The view of refined values is experimental (an ExperimentalWarning says so once).
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    sampler = hub.HybridSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=5)
    best = study.best_trial
    print(f"best validation loss {best.value:.4f} with lr={best.params['lr']:.4g}, "
          f"decay sampled {best.params['decay']:.3g}, refined to "
          f"{best.user_attrs[hub.refined_key('decay')]:.3g}")
