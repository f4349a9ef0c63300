"""The hypergradient core against closed forms, the exact inverse and finite differences."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from optuna_ift import (
    ConjugateGradient,
    Exact,
    Identity,
    Neumann,
    NeumannDivergenceWarning,
    NonPositiveCurvatureWarning,
    hypergradient,
    power_iteration,
    unrolled_hypergradient,
)
from optuna_ift.hypergrad import train_gradient_hvp

from .conftest import make_ridge


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def diagonal_hvp(diag: torch.Tensor):
    return lambda v: (diag * v[0],)


# --- closed form -------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [Exact(), ConjugateGradient(steps=6, tol=0.0)])
def test_exact_and_cg_match_closed_form(ridge, solver):
    truth = ridge.true_hypergradient()
    val, train, w, theta = ridge.losses_at_optimum()
    (g,) = hypergradient(val, train, [w], [theta], solver=solver)
    assert g.shape == theta.shape and g.dtype == torch.float64
    assert rel(g, truth) < 1e-8


def test_neumann_matches_closed_form_and_error_falls_with_steps(ridge):
    truth = ridge.true_hypergradient()
    lam_max = float(torch.linalg.eigvalsh(ridge.hessian(ridge.theta)).max())
    errors = []
    for steps in (2, 5, 20, 100):
        val, train, w, theta = ridge.losses_at_optimum()
        (g,) = hypergradient(val, train, [w], [theta], solver=Neumann(steps, 1 / lam_max))
        errors.append(rel(g, truth))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6, errors


def test_neumann_tends_to_inverse_hessian_vector_product():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(8, 8, generator=g, dtype=torch.float64)
    H = A @ A.T + 0.5 * torch.eye(8, dtype=torch.float64)
    v = torch.randn(8, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(H, v)
    alpha = 1 / float(torch.linalg.eigvalsh(H).max())
    (x,) = Neumann(steps=3000, alpha=alpha)(lambda u: (H @ u[0],), (v,))
    assert rel(x, exact) < 1e-8  # the alpha prefactor: H^-1 v itself, not a multiple


def test_neumann_auto_alpha(ridge):
    truth = ridge.true_hypergradient()
    val, train, w, theta = ridge.losses_at_optimum()
    (g,) = hypergradient(val, train, [w], [theta], solver=Neumann(2000, "auto", power_steps=20))
    assert rel(g, truth) < 1e-6


def test_power_iteration_finds_top_eigenvalue():
    diag = torch.tensor([0.5, 2.0, 7.0, 1.0], dtype=torch.float64)
    v = (torch.ones(4, dtype=torch.float64),)
    assert float(power_iteration(diagonal_hvp(diag), v, steps=60)) == pytest.approx(7.0, rel=1e-9)


def test_identity_is_t1_t2(ridge):
    # T1-T2 with H^-1 ~ I: direct term minus (dL_V/dw) . d2L_T/dw dtheta = -(v1 * e^theta * w).
    val, train, w, theta = ridge.losses_at_optimum()
    (v1,) = torch.autograd.grad(val, w, retain_graph=True)
    expected = -(v1 * theta.exp() * w).detach()
    (g,) = hypergradient(val, train, [w], [theta], solver=Identity())
    assert torch.allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_finite_differences_of_reoptimised_validation_loss(ridge):
    val, train, w, theta = ridge.losses_at_optimum()
    (g,) = hypergradient(val, train, [w], [theta], solver=Exact())
    eps = 1e-6
    for j in range(theta.numel()):
        e = torch.zeros_like(ridge.theta)
        e[j] = eps
        up = ridge.val_loss(ridge.optimum(ridge.theta + e))
        down = ridge.val_loss(ridge.optimum(ridge.theta - e))
        fd = float((up - down) / (2 * eps))
        assert float(g[j]) == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_direct_term_and_unused_hyperparameter(ridge):
    val, train, w, theta = ridge.losses_at_optimum()
    unused = torch.ones(3, dtype=torch.float64, requires_grad=True)
    val = val + 0.5 * (theta**2).sum()  # the validation loss depends on theta directly
    g, g_unused = hypergradient(val, train, [w], [theta, unused], solver=Exact())
    truth = ridge.true_hypergradient() + ridge.theta
    assert rel(g, truth) < 1e-8
    assert torch.equal(g_unused, torch.zeros(3, dtype=torch.float64))


def test_graph_of_train_gradient_built_once():
    calls = []

    class Counted(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            calls.append(1)
            return grad * 1.0

    r = make_ridge()
    theta = r.theta.clone().requires_grad_()
    w = r.optimum(theta).detach().requires_grad_()
    train = Counted.apply(r.train_loss(w, theta))
    hypergradient(r.val_loss(w), train, [w], [theta], solver=Neumann(steps=7, alpha=0.1))
    assert len(calls) == 1


def test_losses_keep_their_graphs(ridge):
    val, train, w, theta = ridge.losses_at_optimum()
    hypergradient(val, train, [w], [theta], solver=Neumann(steps=3, alpha=0.1))
    train.backward()  # the user can still take a training step with the same loss
    assert w.grad is not None and theta.grad is not None


def test_dtype_follows_inputs():
    r = make_ridge()
    theta = r.theta.float().requires_grad_()
    w = r.optimum(r.theta).float().requires_grad_()
    X, y, Xv, yv = r.X.float(), r.y.float(), r.Xv.float(), r.yv.float()
    train = ((X @ w - y) ** 2).mean() / 2 + (theta.exp() * w**2).sum() / 2
    val = ((Xv @ w - yv) ** 2).mean() / 2
    (g,) = hypergradient(val, train, [w], [theta], solver=ConjugateGradient(steps=6))
    assert g.dtype == torch.float32 and g.device == theta.device
    assert rel(g.double(), r.true_hypergradient()) < 1e-4


# --- unrolled differentiation ----------------------------------------------------------------


def test_unrolled_from_optimum_is_neumann_and_approaches_ift(ridge):
    truth = ridge.true_hypergradient()
    lr = 0.5 / float(torch.linalg.eigvalsh(ridge.hessian(ridge.theta)).max())
    w0 = ridge.optimum(ridge.theta)
    errors = []
    for steps in (1, 10, 100, 500):
        (u,) = unrolled_hypergradient(
            ridge.train_fn, ridge.val_fn, [w0], [ridge.theta.clone().requires_grad_()],
            steps=steps, lr=lr,
        )
        val, train, w, theta = ridge.losses_at_optimum()
        (n,) = hypergradient(val, train, [w], [theta], solver=Neumann(steps - 1, lr))
        assert rel(u, n) < 1e-9  # Theorem 2: unrolling from w* is a Neumann series
        errors.append(rel(u, truth))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4


def test_truncated_unrolling(ridge):
    lr = 0.05
    theta = ridge.theta.clone().requires_grad_()
    w0 = ridge.optimum(ridge.theta)
    args = (ridge.train_fn, ridge.val_fn, [w0], [theta])
    (full,) = unrolled_hypergradient(*args, steps=8, lr=lr)
    (same,) = unrolled_hypergradient(*args, steps=8, lr=lr, truncate=8)
    (last3,) = unrolled_hypergradient(*args, steps=8, lr=lr, truncate=3)
    (short,) = unrolled_hypergradient(*args, steps=3, lr=lr)
    assert torch.equal(full, same)
    # From the optimum the first 5 steps stay there, so the last 3 are the whole story.
    assert rel(last3, short) < 1e-10
    assert rel(last3, full) > 1e-3
    # Away from the optimum the weights move, and the truncated answer sees where they went.
    far = [torch.zeros_like(w0)]
    (a,) = unrolled_hypergradient(ridge.train_fn, ridge.val_fn, far, [theta], steps=8, lr=lr,
                                  truncate=3)
    (b,) = unrolled_hypergradient(ridge.train_fn, ridge.val_fn, far, [theta], steps=3, lr=lr)
    assert rel(a, b) > 1e-3


def test_unrolled_does_not_modify_start(ridge):
    w0 = torch.zeros(ridge.theta.numel(), dtype=torch.float64)
    unrolled_hypergradient(ridge.train_fn, ridge.val_fn, [w0],
                           [ridge.theta.clone().requires_grad_()], steps=4, lr=0.1)
    assert torch.equal(w0, torch.zeros_like(w0))


# --- a neural network with BatchNorm -----------------------------------------------------------


def test_mlp_with_batchnorm_neumann_approaches_exact():
    torch.manual_seed(0)  # nn.Module initialisation only
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    X = torch.randn(64, 4, generator=g, dtype=dt)
    y = (X[:, 0] * X[:, 1] > 0).long()
    Xv = torch.randn(32, 4, generator=g, dtype=dt)
    yv = (Xv[:, 0] * Xv[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).to(dt)
    params = list(model.parameters())
    log_decay = [torch.full_like(p, -2.0, requires_grad=True) for p in params]

    def train_loss():
        reg = sum((d.exp() * p**2).sum() for d, p in zip(log_decay, params)) / 2
        return nn.functional.cross_entropy(model(X), y) + reg

    opt = torch.optim.LBFGS(params, lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = train_loss()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)

    def losses():
        return nn.functional.cross_entropy(model(Xv), yv), train_loss()

    exact = hypergradient(*losses(), params, log_decay, solver=Exact())
    exact_flat = torch.cat([e.reshape(-1) for e in exact])
    assert torch.linalg.vector_norm(exact_flat) > 0
    errors = []
    for steps in (10, 100, 1000):
        approx = hypergradient(*losses(), params, log_decay,
                               solver=Neumann(steps, "auto", power_steps=30))
        errors.append(rel(torch.cat([a.reshape(-1) for a in approx]), exact_flat))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2, errors


# --- guards and errors -------------------------------------------------------------------


def test_neumann_divergence_is_cut_off_with_warning():
    diag = torch.tensor([1.0, 10.0], dtype=torch.float64)
    v = (torch.ones(2, dtype=torch.float64),)
    # alpha * 10 = 2.5 > 2: the first term (0.75, -1.5) is already larger than v.
    with pytest.warns(NeumannDivergenceWarning, match="term 1 of 50 grew"):
        (x,) = Neumann(steps=50, alpha=0.25)(diagonal_hvp(diag), v)
    assert torch.equal(x, 0.25 * v[0])


def test_neumann_cut_off_later_returns_partial_sum():
    diag = torch.tensor([1.0, -0.01], dtype=torch.float64)  # indefinite: slow growth
    v = (torch.tensor([1.0, 1e-3], dtype=torch.float64),)
    alpha = 0.5
    with pytest.warns(NeumannDivergenceWarning) as record:
        (x,) = Neumann(steps=200, alpha=alpha)(diagonal_hvp(diag), v)
    assert torch.isfinite(x).all()
    j = int(str(record[0].message).split("term ")[1].split(" ")[0])
    assert 1 < j < 200
    partial = Neumann(steps=j - 1, alpha=alpha)(diagonal_hvp(diag), v)[0]
    assert torch.equal(x, partial)


def test_neumann_non_finite_hvp_is_cut_off():
    v = (torch.ones(3),)
    with pytest.warns(NeumannDivergenceWarning):
        (x,) = Neumann(steps=5, alpha=0.1)(lambda u: (u[0] * float("nan"),), v)
    assert torch.equal(x, 0.1 * v[0])


def test_convergent_neumann_does_not_warn(ridge):
    val, train, w, theta = ridge.losses_at_optimum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hypergradient(val, train, [w], [theta], solver=Neumann(500, "auto"))


def test_cg_reports_indefinite_hessian():
    diag = torch.tensor([2.0, -1.0], dtype=torch.float64)
    v = (torch.tensor([1.0, 1.0], dtype=torch.float64),)
    with pytest.warns(NonPositiveCurvatureWarning, match="non-positive curvature"):
        (x,) = ConjugateGradient(steps=10)(diagonal_hvp(diag), v)
    # The first direction v has curvature 2 - 1 = 1 > 0, so one step is taken and kept.
    assert torch.allclose(x, v[0] * (2.0 / 1.0))


def test_cg_stops_on_tolerance():
    calls = []
    diag = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)

    def hvp(u):
        calls.append(1)
        return (diag * u[0],)

    (x,) = ConjugateGradient(steps=50, tol=1e-12)(hvp, (torch.ones(3, dtype=torch.float64),))
    assert len(calls) == 1 and torch.allclose(x, torch.ones(3, dtype=torch.float64))


def test_exact_refuses_large_problems():
    v = (torch.ones(10),)
    with pytest.raises(ValueError, match="max_size"):
        Exact(max_size=5)(lambda u: u, v)


def test_exact_refuses_singular_hessian():
    v = (torch.ones(2, dtype=torch.float64),)
    with pytest.raises(ValueError, match="singular"):
        Exact()(lambda u: (u[0] * torch.tensor([1.0, 0.0], dtype=torch.float64),), v)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Neumann(steps=-1), "steps"),
        (lambda: Neumann(steps=2.5), "steps"),
        (lambda: Neumann(alpha=0.0), "alpha"),
        (lambda: Neumann(alpha="big"), "alpha"),
        (lambda: Neumann(alpha=float("nan")), "alpha"),
        (lambda: Neumann(power_steps=0), "power_steps"),
        (lambda: ConjugateGradient(steps=0), "steps"),
        (lambda: ConjugateGradient(tol=-1.0), "tol"),
        (lambda: Exact(max_size=0), "max_size"),
    ],
)
def test_solver_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_hypergradient_arguments_are_checked(ridge):
    val, train, w, theta = ridge.losses_at_optimum()
    with pytest.raises(ValueError, match=r"params\[0\] does not require grad"):
        hypergradient(val, train, [w.detach()], [theta])
    with pytest.raises(ValueError, match="hparams must hold at least one tensor"):
        hypergradient(val, train, [w], [])
    with pytest.raises(ValueError, match="val_loss must be a scalar"):
        hypergradient(torch.stack([val, val]), train, [w], [theta])
    with pytest.raises(TypeError, match=r"solver must be a solver\(hvp, v\)"):
        hypergradient(val, train, [w], [theta], solver="neumann")
    with pytest.raises(ValueError, match="steps must be an integer"):
        unrolled_hypergradient(ridge.train_fn, ridge.val_fn, [w], [theta], steps=-1, lr=0.1)
    with pytest.raises(ValueError, match="truncate"):
        unrolled_hypergradient(ridge.train_fn, ridge.val_fn, [w], [theta], steps=3, lr=0.1,
                               truncate=4)


def test_train_gradient_hvp_matches_dense_hessian(ridge):
    theta = ridge.theta.clone().requires_grad_()
    w = torch.randn(theta.numel(), dtype=torch.float64, requires_grad=True)
    _, hvp = train_gradient_hvp(ridge.train_loss(w, theta), [w])
    v = torch.randn(theta.numel(), dtype=torch.float64)
    assert torch.allclose(hvp((v,))[0], ridge.hessian(ridge.theta) @ v, rtol=1e-12)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", [Neumann(50, "auto"), ConjugateGradient(6), Exact()])
def test_device_follows_inputs(device, solver):
    r = make_ridge()
    theta = r.theta.to(device).requires_grad_()
    w = r.optimum(r.theta).to(device).requires_grad_()
    X, y, Xv, yv = (t.to(device) for t in (r.X, r.y, r.Xv, r.yv))
    train = ((X @ w - y) ** 2).sum() / (2 * len(y)) + (theta.exp() * w**2).sum() / 2
    val = ((Xv @ w - yv) ** 2).sum() / (2 * len(yv))
    (g,) = hypergradient(val, train, [w], [theta], solver=solver)
    assert g.device.type == device and g.dtype == torch.float64
    assert rel(g.cpu(), r.true_hypergradient()) < 1e-3


def test_cg_non_finite_input_propagates():
    v = (torch.tensor([1.0, float("nan")]),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (x,) = ConjugateGradient(steps=5)(diagonal_hvp(torch.ones(2)), v)
    assert not torch.isfinite(x).all()  # never a silent zero for a caller to apply


def test_cg_in_float32_stops_at_rounding_without_warning():
    r = make_ridge()
    H = r.hessian(r.theta).float()
    v = (torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0)),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (x,) = ConjugateGradient(steps=200, tol=0.0)(lambda u: (H @ u[0],), v)
    assert rel(x.double(), torch.linalg.solve(H.double(), v[0].double())) < 1e-5
