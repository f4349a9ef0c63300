from __future__ import annotations

import dataclasses

import pytest
import torch


@dataclasses.dataclass
class Ridge:
    """Ridge regression with one log weight decay per feature, solvable in closed form.

    ``L_T(w, theta) = |X w - y|^2 / (2 n) + sum(exp(theta) w^2) / 2`` and
    ``L_V(w) = |Xv w - yv|^2 / (2 m)``; ``w*(theta) = (X'X/n + diag(exp theta))^-1 X'y/n``.
    """

    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    theta: torch.Tensor

    def train_loss(self, w: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        n = self.X.shape[0]
        return ((self.X @ w - self.y) ** 2).sum() / (2 * n) + (theta.exp() * w**2).sum() / 2

    def val_loss(self, w: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return ((self.Xv @ w - self.yv) ** 2).sum() / (2 * self.Xv.shape[0])

    def train_fn(self, ws: tuple, hs: tuple) -> torch.Tensor:
        """``train_loss`` on tuples, the signature ``unrolled_hypergradient`` calls."""
        return self.train_loss(ws[0], hs[0])

    def val_fn(self, ws: tuple, hs: tuple) -> torch.Tensor:
        return self.val_loss(ws[0])

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        return self.X.T @ self.X / self.X.shape[0] + torch.diag(theta.exp())

    def optimum(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.hessian(theta), self.X.T @ self.y / self.X.shape[0])

    def true_hypergradient(self) -> torch.Tensor:
        """Differentiate the validation loss through the closed-form solution."""
        theta = self.theta.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(self.val_loss(self.optimum(theta)), theta)
        return g

    def losses_at_optimum(self):
        """``(val_loss, train_loss, w, theta)`` with graphs, at ``w*(theta)``."""
        theta = self.theta.detach().clone().requires_grad_()
        w = self.optimum(theta).detach().requires_grad_()
        return self.val_loss(w), self.train_loss(w, theta), w, theta


def make_ridge(n: int = 60, m: int = 40, d: int = 6, seed: int = 0) -> Ridge:
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    w_true = torch.randn(d, generator=g, dtype=dt)
    X = torch.randn(n, d, generator=g, dtype=dt)
    X[:, 1] = X[:, 0] + 0.3 * X[:, 1]  # correlated features: a non-trivial Hessian
    Xv = torch.randn(m, d, generator=g, dtype=dt)
    Xv[:, 1] = Xv[:, 0] + 0.3 * Xv[:, 1]
    y = X @ w_true + 0.5 * torch.randn(n, generator=g, dtype=dt)
    yv = Xv @ w_true + 0.5 * torch.randn(m, generator=g, dtype=dt)
    theta = torch.log(torch.rand(d, generator=g, dtype=dt) * 0.5 + 0.05)
    return Ridge(X, y, Xv, yv, theta)


@pytest.fixture
def ridge() -> Ridge:
    return make_ridge()
