"""Stateful solvers (WarmNeumann, WarmConjugateGradient, Nystrom) against the exact inverse, the
closed-form ridge, a cold Neumann(20) along a joint-training trajectory, and exact resume."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optuna_ift.hypergrad import (
    ConjugateGradient,
    Exact,
    Neumann,
    NeumannDivergenceWarning,
    Nystrom,
    SolverState,
    WarmConjugateGradient,
    WarmNeumann,
    hypergradient,
    is_stateful,
    train_gradient_hvp,
)
from optuna_ift.hyperparams import HyperParameter
from optuna_ift.trainer import HyperStep, HyperTrainer

from .conftest import make_ridge


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def cosine(a, b) -> float:
    fa = torch.cat([x.reshape(-1) for x in a]).double()
    fb = torch.cat([x.reshape(-1) for x in b]).double()
    return float(fa @ fb / (fa.norm() * fb.norm()))


def spd(n: int, seed: int, floor: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T / n + floor * torch.eye(n, dtype=torch.float64)


def matvec(h: torch.Tensor):
    return lambda v: (h @ v[0],)


# --- against the exact inverse --------------------------------------------------------------


@pytest.mark.parametrize("solver", [WarmNeumann(steps=4, alpha="auto"),
                                    WarmConjugateGradient(steps=3, tol=0.0)])
def test_warm_solvers_converge_to_the_exact_inverse_over_calls(solver):
    h = spd(12, seed=0)
    v = (torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64),)
    exact = Exact()(matvec(h), v)[0]
    state = solver.new_state()
    errors = [rel(solver(matvec(h), v, state=state)[0], exact) for _ in range(80)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errors, errors[1:]) if a > 1e-12), errors
    assert errors[-1] < 1e-8 < errors[0]
    # Without a state, every call is the first one: cold.
    assert rel(solver(matvec(h), v)[0], exact) == pytest.approx(errors[0], rel=1e-12)


def test_warm_neumann_first_call_is_neumann_and_warm_calls_spend_steps_hvps():
    h = spd(10, seed=2)
    v = (torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64),)
    alpha = 1 / float(torch.linalg.eigvalsh(h).max())
    state = SolverState()
    first = WarmNeumann(steps=3, alpha=alpha)(matvec(h), v, state=state)[0]
    assert torch.allclose(first, Neumann(steps=3, alpha=alpha)(matvec(h), v)[0], rtol=0,
                          atol=1e-14)
    WarmNeumann(steps=3, alpha=alpha)(matvec(h), v, state=state)
    assert state.hvps == 6 and state.calls == 2


def test_warm_start_is_never_worse_than_a_cold_start_on_a_new_system():
    # The previous solution is useless (the system changed completely): the scaled start
    # falls back towards zero and the warm result is as good as a cold one.
    h1, h2 = spd(10, seed=4), spd(10, seed=5)
    v1 = (torch.randn(10, generator=torch.Generator().manual_seed(6), dtype=torch.float64),)
    v2 = (torch.randn(10, generator=torch.Generator().manual_seed(7), dtype=torch.float64),)
    solver = WarmConjugateGradient(steps=4, tol=0.0)
    state = solver.new_state()
    solver(matvec(h1), v1, state=state)
    warm = solver(matvec(h2), v2, state=state)[0]
    cold = solver(matvec(h2), v2)[0]
    exact = torch.linalg.solve(h2, v2[0])
    energy = lambda x: float(x @ h2 @ x / 2 - v2[0] @ x)  # noqa: E731
    # CG with 3 iterations after a start no worse than zero stays within a step of cold CG.
    assert energy(warm) <= energy(WarmConjugateGradient(steps=3, tol=0.0)(matvec(h2), v2)[0])
    assert rel(warm, exact) < 1.0 and rel(cold, exact) < 1.0


def test_nystrom_full_rank_is_the_exact_inverse_and_low_rank_keeps_the_top():
    h = spd(15, seed=8, floor=0.05)
    v = (torch.randn(15, generator=torch.Generator().manual_seed(9), dtype=torch.float64),)
    exact = torch.linalg.solve(h, v[0])
    (x,) = Nystrom(rank=15, rho=1e-10)(matvec(h), v)
    assert rel(x, exact) < 1e-6
    # Rank k: exactly the damped inverse of the sketch; for a Hessian of rank k + a ridge, the
    # sketch is exact and (sketch + rho I)^-1 is the inverse.
    g = torch.Generator().manual_seed(10)
    u = torch.linalg.qr(torch.randn(15, 4, generator=g, dtype=torch.float64)).Q
    low = u @ torch.diag(torch.tensor([9.0, 5.0, 2.0, 1.0], dtype=torch.float64)) @ u.T
    rho = 0.3
    ridge_h = low + rho * torch.eye(15, dtype=torch.float64)
    (x,) = Nystrom(rank=4, rho=rho)(matvec(low), v)
    assert rel(x, torch.linalg.solve(ridge_h, v[0])) < 1e-8


def test_nystrom_reuses_its_sketch_and_refreshes_when_stale():
    h = spd(8, seed=11)
    v = (torch.ones(8, dtype=torch.float64),)
    solver = Nystrom(rank=3, rho=0.5, refresh_every=3)
    state = solver.new_state()
    outs = [solver(matvec(h), v, state=state)[0] for _ in range(7)]
    assert state.hvps == 3 * 3 and state.builds == 3  # built at calls 1, 4 and 7
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    assert not torch.equal(outs[2], outs[3])  # new test vectors, a new sketch


def test_nystrom_drops_negative_curvature_of_an_indefinite_hessian():
    h = torch.diag(torch.tensor([4.0, 2.0, -1.0, -3.0], dtype=torch.float64))
    (x,) = Nystrom(rank=4, rho=1.0)(matvec(h), (torch.ones(4, dtype=torch.float64),))
    expected = torch.tensor([1 / 5, 1 / 3, 1.0, 1.0], dtype=torch.float64)  # 1/(s+rho), s>=0
    assert torch.allclose(x, expected, atol=1e-10)


@pytest.mark.parametrize("solver", [WarmNeumann(steps=60, alpha="auto", power_steps=30),
                                    WarmConjugateGradient(steps=6, tol=0.0),
                                    Nystrom(rank=6, rho=1e-12)])
def test_stateful_solvers_match_the_closed_form_ridge(solver):
    ridge = make_ridge()
    truth = ridge.true_hypergradient()
    state = solver.new_state()
    for _ in range(3):
        val, train, w, theta = ridge.losses_at_optimum()
        (g,) = hypergradient(val, train, [w], [theta], solver=solver.bind(state))
    assert rel(g, truth) < 1e-6


def test_batched_sketch_equals_the_one_by_one_sketch_on_a_batchnorm_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 36, 2)).double().train()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(2, (6,))
    params = tuple(model.parameters())
    _, hvp = train_gradient_hvp(F.cross_entropy(model(x), y), params)
    solver = Nystrom(rank=5)
    batched = solver.sketch(hvp, params)
    one_by_one = Nystrom(rank=5, batched=False).sketch(hvp, params)
    assert torch.allclose(batched[1], one_by_one[1], rtol=1e-10, atol=1e-12)
    # The basis agrees up to the sign of each column.
    assert torch.allclose((batched[0] * one_by_one[0]).sum(0).abs(),
                          torch.ones(batched[0].shape[1], dtype=torch.float64), atol=1e-8)


def test_stateful_solvers_are_checked():
    assert is_stateful(Nystrom()) and not is_stateful(Neumann())
    with pytest.raises(ValueError, match="rank"):
        Nystrom(rank=0)
    with pytest.raises(ValueError, match="rho"):
        Nystrom(rho=-1.0)
    with pytest.raises(ValueError, match="steps"):
        WarmNeumann(steps=0)
    with pytest.raises(TypeError, match="state"):
        WarmConjugateGradient()(matvec(torch.eye(2)), (torch.ones(2),), state={})
    with pytest.raises(ValueError, match="SolverState"):
        SolverState().load_state_dict({"solution": None})


def test_warm_neumann_divergence_drops_the_warm_start():
    h = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
    state = SolverState()
    solver = WarmNeumann(steps=4, alpha=1.0)  # alpha * 3 > 2: diverges
    with pytest.warns(NeumannDivergenceWarning, match="WarmNeumann diverged"):
        solver(matvec(h), (torch.ones(2, dtype=torch.float64),), state=state)
    assert state.solution is None


# --- along a joint-training trajectory -------------------------------------------------------


class TinyNet(nn.Module):
    """4-6-3 tanh network with a log decay per weight: 51 weights, small enough for Exact."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        self.log_decay = HyperParameter(torch.full((51,), -3.0))

    def forward(self, x):
        return self.net(x)

    def penalty(self):
        flat = torch.cat([p.reshape(-1) for p in self.net.parameters()])
        return (self.log_decay.exp() * flat**2).sum() / 2


def tiny_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def test_warm_solvers_along_a_joint_training_trajectory():
    """Per hyper step: cosine and relative error of each solver's hypergradient against the
    exact inverse and a cold Neumann(20), printed. A warm solver beats the cold solver of the
    same cost once it has a few steps behind it, and tracks the exact hypergradient."""
    torch.manual_seed(0)
    model = TinyNet().double()
    with torch.no_grad():
        model.log_decay.fill_(-2.0)  # condition number about 10: the solvers can get there
    x, y = tiny_data(200, seed=1)
    xv, yv = tiny_data(200, seed=2)
    weights, hparams = list(model.net.parameters()), [model.log_decay]
    opt = torch.optim.Adam(weights, lr=0.05)
    for _ in range(300):  # near a minimum first: the premise of the implicit function theorem
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + model.penalty()).backward(inputs=weights)
        opt.step()
    solvers = {"warm-neumann-3": WarmNeumann(steps=3), "neumann-3": Neumann(steps=3),
               "warm-cg-3": WarmConjugateGradient(steps=3, tol=0.0),
               "cg-3": ConjugateGradient(steps=3, tol=0.0),
               "nystrom-20": Nystrom(rank=20, rho="auto", refresh_every=5)}
    states = {name: s.new_state() for name, s in solvers.items() if is_stateful(s)}
    hyper_opt = torch.optim.RMSprop(hparams, lr=1e-2)
    cos_exact: dict[str, list[float]] = {name: [] for name in solvers}
    for step in range(12):
        for _ in range(10):
            opt.zero_grad()
            (F.cross_entropy(model(x), y) + model.penalty()).backward(inputs=weights)
            opt.step()

        def grad(solver):
            train = F.cross_entropy(model(x), y) + model.penalty()
            return hypergradient(F.cross_entropy(model(xv), yv), train, weights, hparams,
                                 solver=solver)

        exact, cold = grad(Exact()), grad(Neumann(steps=20))
        line = [f"step {step}:"]
        for name, solver in solvers.items():
            got = grad(solver.bind(states[name]) if name in states else solver)
            cos_exact[name].append(cosine(got, exact))
            line.append(f"{name} cos/rel vs exact {cosine(got, exact):.4f}/"
                        f"{rel(got[0], exact[0]):.2e}, vs neumann-20 {cosine(got, cold):.4f}/"
                        f"{rel(got[0], cold[0]):.2e}")
        print(" | ".join(line))
        hparams[0].grad = exact[0]
        hyper_opt.step()

    def late(name: str) -> float:  # mean cosine to the exact hypergradient from step 3 on
        return sum(cos_exact[name][3:]) / len(cos_exact[name][3:])

    # Same HVPs per call, and the warm start adds up the iterations of earlier hyper steps.
    assert late("warm-neumann-3") > late("neumann-3") + 0.01, cos_exact
    assert late("warm-cg-3") > late("cg-3") + 0.005, cos_exact
    assert min(cos_exact["warm-cg-3"][3:]) > 0.985, cos_exact["warm-cg-3"]
    assert min(cos_exact["warm-neumann-3"][3:]) > 0.95, cos_exact["warm-neumann-3"]
    assert min(cos_exact["nystrom-20"][3:]) > 0.84, cos_exact["nystrom-20"]


# --- checkpoints --------------------------------------------------------------------------


def decayed_trainer(solver, **kwargs) -> HyperTrainer:
    torch.manual_seed(0)
    model = TinyNet()
    x, y = tiny_data(256, seed=3)
    xv, yv = tiny_data(128, seed=4)
    return HyperTrainer(
        model, train_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]) + m.penalty(),
        val_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]), train_data=(x.float(), y),
        val_data=(xv.float(), yv), batch_size=64, solver=solver, inner_steps=3,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=0.02), device="cpu", progress=False,
        **kwargs)


@pytest.mark.parametrize("solver", [WarmNeumann(steps=2, alpha_every=2),
                                    WarmConjugateGradient(steps=2),
                                    Nystrom(rank=4, refresh_every=3)])
def test_resume_with_a_stateful_solver_is_exact(tmp_path, solver):
    straight = decayed_trainer(solver)
    straight.fit(7)
    first = decayed_trainer(solver)
    first.fit(4)
    first.save(tmp_path / "c.pt")
    second = decayed_trainer(solver).resume(tmp_path / "c.pt")
    assert second.hyper.solver_state.calls == 4
    second.fit(7)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert straight.history.to_dict() == second.history.to_dict()
    # A run that forgot the state (cold restart) would differ: the state matters.
    forgot = decayed_trainer(solver).resume(tmp_path / "c.pt")
    forgot.hyper.solver_state.reset()
    forgot.fit(7)
    assert not torch.equal(forgot.model.log_decay, straight.model.log_decay)


def test_hyper_step_keeps_the_state_of_a_stateful_solver():
    model = TinyNet()
    step = HyperStep(model, solver=WarmConjugateGradient(steps=2))
    x, y = tiny_data(32, seed=5)
    for _ in range(3):
        step(train_loss=F.cross_entropy(model(x.float()), y) + model.penalty(),
             val_loss=F.cross_entropy(model(x.float()), y))
    assert step.solver_state.calls == 3 and step.solver_state.solution is not None
    assert step.state_dict()["solver_state"]["calls"] == 3
    assert HyperStep(model, solver=Neumann()).state_dict()["solver_state"] is None


def test_hessian_batch_size_uses_a_sub_batch_for_curvature_only():
    # With hessian_batch_size = the whole batch the run is the ordinary one; with a smaller one
    # the hypergradient changes but stays close, and buffers are left as they were.
    full = decayed_trainer(WarmConjugateGradient(steps=2))
    full.fit(3)
    same = decayed_trainer(WarmConjugateGradient(steps=2), hessian_batch_size=64)
    same.fit(3)
    assert torch.equal(full.model.log_decay, same.model.log_decay)
    sub = decayed_trainer(WarmConjugateGradient(steps=2), hessian_batch_size=16)
    sub.fit(3)
    assert not torch.equal(full.model.log_decay, sub.model.log_decay)
    with pytest.raises(ValueError, match="hessian_batch_size"):
        decayed_trainer(Neumann(), hessian_batch_size=0)


def test_curvature_loss_on_the_whole_batch_changes_nothing():
    ridge = make_ridge()
    val, train, w, theta = ridge.losses_at_optimum()
    (a,) = hypergradient(val, train, [w], [theta], solver=Exact())
    (b,) = hypergradient(val, train, [w], [theta], solver=Exact(),
                         curvature_loss=ridge.train_loss(w, theta))
    assert rel(b, a) < 1e-12
    # A curvature loss on half the rows: the Hessian of that half, solved exactly.
    half = ((ridge.X[:30] @ w - ridge.y[:30]) ** 2).sum() / 60 + (theta.exp() * w**2).sum() / 2
    (c,) = hypergradient(val, train, [w], [theta], solver=Exact(), curvature_loss=half)
    h_half = ridge.X[:30].T @ ridge.X[:30] / 30 + torch.diag(theta.exp())
    v1 = torch.autograd.grad(ridge.val_loss(w), w)[0]
    expected = -torch.linalg.solve(h_half.detach(), v1) * theta.detach().exp() * w.detach()
    assert rel(c, expected) < 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hypergradient(val, train, [w], [theta], solver=Nystrom(rank=6))  # no warning
