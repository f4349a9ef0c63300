"""Tune one weight decay per feature of a ridge regression by implicit hypergradients.

Run: python examples/ridge_hypergradient.py

Each outer step trains the weights to (near) their optimum with a few L-BFGS iterations, then
takes one Adam step on the log decays along the hypergradient of the validation loss. The
validation loss falls below that of the best single decay found on a grid.
"""

from __future__ import annotations

import torch

from optuna_ift import ConjugateGradient, hypergradient
from optuna_ift.data import load_diabetes

data = load_diabetes(val_fraction=0.5, seed=0)
X, y, Xv, yv = data.X_train, data.y_train, data.X_val, data.y_val


def train_loss(w, log_decay):
    return ((X @ w - y) ** 2).mean() / 2 + (log_decay.exp() * w**2).sum() / 2


def val_loss(w):
    return ((Xv @ w - yv) ** 2).mean() / 2


def fit(log_decay, w):
    inner = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        inner.zero_grad()
        loss = train_loss(w, log_decay.detach())
        loss.backward()
        return loss

    inner.step(closure)
    return w


def best_grid_decay():
    best = None
    for log10 in torch.linspace(-4, 1, 26):
        log_decay = torch.full((X.shape[1],), float(log10) * 2.302585, dtype=X.dtype)
        w = fit(log_decay, torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True))
        loss = float(val_loss(w.detach()))
        best = loss if best is None else min(best, loss)
    return best


log_decay = torch.full((X.shape[1],), -2.0, dtype=X.dtype, requires_grad=True)
w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
outer = torch.optim.Adam([log_decay], lr=0.1)
for step in range(60):
    fit(log_decay, w)
    (g,) = hypergradient(val_loss(w), train_loss(w, log_decay), [w], [log_decay],
                         solver=ConjugateGradient(steps=10))
    outer.zero_grad()
    log_decay.grad = g
    outer.step()
    if step % 10 == 0:
        print(f"step {step:2d}  validation loss {float(val_loss(w.detach())):.5f}")

fit(log_decay, w)
print(f"tuned, a decay per feature: validation loss {float(val_loss(w.detach())):.5f}")
print(f"best single decay on a grid: validation loss {best_grid_decay():.5f}")
print("learned decays:", [f"{d:.2g}" for d in log_decay.exp().tolist()])
