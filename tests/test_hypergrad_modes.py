"""Hessian-vector and mixed products from loss functions: reverse over reverse, forward over
reverse and finite differences of gradients, against the closed-form ridge, each other on
non-quadratic models, and a BatchNorm CNN in train mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from optuna_ift.hypergrad import (
    HVP_MODES,
    MIXED_MODES,
    Exact,
    Neumann,
    finite_difference_step,
    functional_hvp,
    functional_hypergradient,
    hypergradient,
)

from .conftest import make_ridge


def rel(a, b) -> float:
    fa = torch.cat([t.reshape(-1) for t in a])
    fb = torch.cat([t.reshape(-1) for t in b])
    return float(torch.linalg.vector_norm(fa - fb) / torch.linalg.vector_norm(fb))


def test_finite_difference_step_is_chosen_for_the_dtype():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        eps = torch.finfo(dtype).eps
        assert finite_difference_step(dtype) == pytest.approx(eps ** (1 / 3))
        assert finite_difference_step(dtype, central=False) == pytest.approx(eps**0.5)
    assert finite_difference_step(torch.float16) > 100 * finite_difference_step(torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        finite_difference_step(torch.int64)


@pytest.mark.parametrize("mode", HVP_MODES)
@pytest.mark.parametrize("central", [True, False])
def test_every_hvp_mode_is_the_ridge_hessian(mode, central):
    ridge = make_ridge()
    w = ridge.optimum(ridge.theta)
    hvp = functional_hvp(lambda ws: ridge.train_loss(ws[0], ridge.theta), (w,), mode=mode,
                         central=central)
    v = torch.randn(w.shape, generator=torch.Generator().manual_seed(3), dtype=w.dtype)
    (got,) = hvp((v,))
    # The loss is quadratic: a forward difference is exact up to rounding too.
    assert rel([got], [ridge.hessian(ridge.theta) @ v]) < (1e-12 if mode != "finite_difference"
                                                            else 1e-7)


class Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 3))

    def loss(self, weights, x, y):
        names = [n for n, _ in self.named_parameters()]
        return F.cross_entropy(functional_call(self, dict(zip(names, weights)), (x,)), y)

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-7), (torch.float32, 2e-3)])
def test_finite_differences_agree_with_reverse_on_a_network_with_dropout(dtype, tol):
    # Dropout draws the same mask in every evaluation of one product: the finite difference
    # differentiates one function, not two different samples of it.
    torch.manual_seed(0)
    model = Tanh().to(dtype).train()
    x = torch.randn(32, 5, dtype=dtype)
    y = torch.randint(0, 3, (32,))
    weights = tuple(p.detach() for p in model.parameters())
    v = tuple(torch.randn_like(p) for p in weights)
    reverse = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="reverse")(v)
    for central in (True, False):
        fd = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="finite_difference",
                            central=central)(v)
        assert rel(fd, reverse) < tol * (1 if central else 30), central
    forward = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="forward")(v)
    assert rel(forward, reverse) < (1e-5 if dtype == torch.float32 else 1e-12)


class BatchNormNet(nn.Module):
    """A small CNN with BatchNorm in train mode, called functionally with copied buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    def forward(self, x):
        return self.body(x)

    def loss(self, weights, x, y):
        names = [n for n, _ in self.named_parameters()]
        state = {**dict(zip(names, weights)),
                 **{n: b.clone() for n, b in self.named_buffers()}}
        return F.cross_entropy(functional_call(self, state, (x,)), y)


def test_each_hvp_path_on_a_batchnorm_cnn_is_right_or_refused():
    torch.manual_seed(1)
    model = BatchNormNet().double().train()
    x = torch.randn(16, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    weights = tuple(p.detach() for p in model.parameters())
    v = tuple(torch.randn_like(p) for p in weights)
    fd = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="finite_difference")(v)
    reverse = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="reverse")(v)
    assert rel(reverse, fd) < 1e-7
    unchecked = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="forward",
                               verify=False)(v)
    checked = functional_hvp(lambda w: model.loss(w, x, y), weights, mode="forward")
    if rel(unchecked, fd) < 1e-7:  # right on this torch: accepted, and the same products
        assert rel(checked(v), fd) < 1e-7
    else:  # wrong on this torch: refused
        with pytest.raises(ValueError, match="forward"):
            checked(v)


def test_a_forward_product_that_disagrees_is_refused():
    # A loss that is not the same function from call to call stands in for a transform that
    # goes wrong: reverse builds its graph on the first call, forward runs on later ones.
    ridge = make_ridge()
    w = ridge.optimum(ridge.theta)
    calls = []

    def drifting(ws):
        calls.append(1)
        return len(calls) * ridge.train_loss(ws[0], ridge.theta)

    hvp = functional_hvp(drifting, (w,), mode="forward")
    with pytest.raises(ValueError, match="disagrees with reverse over reverse"):
        hvp((torch.ones_like(w),))


def test_forward_mode_that_cannot_transform_the_loss_says_what_to_do():
    model = BatchNormNet().double().train()
    names = [n for n, _ in model.named_parameters()]
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    weights = tuple(p.detach() for p in model.parameters())

    def in_place(ws):  # the module's own running statistics, updated in place
        return F.cross_entropy(functional_call(model, dict(zip(names, ws)), (x,)), y)

    with pytest.raises(ValueError, match="copies through torch.func.functional_call"):
        functional_hvp(in_place, weights, mode="forward")(tuple(torch.ones_like(t)
                                                               for t in weights))


@pytest.mark.parametrize("hvp", HVP_MODES)
@pytest.mark.parametrize("mixed", MIXED_MODES)
def test_functional_hypergradient_is_the_closed_form_ridge_in_every_mode(hvp, mixed):
    ridge = make_ridge()
    w = ridge.optimum(ridge.theta)
    (got,) = functional_hypergradient(ridge.val_fn, ridge.train_fn, (w,), (ridge.theta,),
                                      solver=Exact(), hvp=hvp, mixed=mixed)
    assert rel([got], [ridge.true_hypergradient()]) < 1e-7


def test_functional_hypergradient_matches_the_tensor_api_with_a_curvature_sub_batch():
    ridge = make_ridge()
    val, train, w, theta = ridge.losses_at_optimum()
    half = make_ridge()
    half.X, half.y = ridge.X[:30], ridge.y[:30]
    (expected,) = hypergradient(val, train, [w], [theta], solver=Exact(),
                                curvature_loss=half.train_loss(w, theta))
    for mode in HVP_MODES:
        (got,) = functional_hypergradient(ridge.val_fn, ridge.train_fn, (w,), (theta,),
                                          solver=Exact(), hvp=mode, mixed="finite_difference",
                                          curvature_fn=half.train_fn)
        assert rel([got], [expected]) < 1e-7, mode
    # Without a curvature function, the tensor API's hypergradient exactly.
    (plain,) = hypergradient(*ridge.losses_at_optimum(), solver=Neumann(steps=4, alpha=0.5))
    (same,) = functional_hypergradient(ridge.val_fn, ridge.train_fn, (w,), (theta,),
                                       solver=Neumann(steps=4, alpha=0.5))
    assert torch.equal(plain, same)


def test_bad_modes_name_the_argument():
    ridge = make_ridge()
    w = ridge.optimum(ridge.theta)
    with pytest.raises(ValueError, match="mode"):
        functional_hvp(lambda ws: ridge.train_loss(ws[0], ridge.theta), (w,), mode="sideways")
    with pytest.raises(ValueError, match="mixed"):
        functional_hypergradient(ridge.val_fn, ridge.train_fn, (w,), (ridge.theta,),
                                 mixed="forward")
    with pytest.raises(ValueError, match="params"):
        functional_hvp(lambda ws: ws, (), mode="reverse")


# --- in the trainer ---------------------------------------------------------------------------


def mode_trainer(model, data, **kwargs):
    from optuna_ift.trainer import HyperTrainer

    x, y, xv, yv = data
    options = dict(train_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]) + m.penalty(),
                   val_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]), train_data=(x, y),
                   val_data=(xv, yv), batch_size=len(x), inner_steps=2, device="cpu",
                   weight_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                   hyper_optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
                   solver=Neumann(steps=3, alpha=0.1), progress=False, seed=0)
    options.update(kwargs)
    return HyperTrainer(model, **options)


class DecayedBatchNormNet(BatchNormNet):
    def __init__(self) -> None:
        super().__init__()
        from optuna_ift.hyperparams import HyperParameter

        self.log_decay = HyperParameter(torch.full((4, 1, 3, 3), -2.0))

    def penalty(self):
        return (self.log_decay.exp() * self.body[0].weight ** 2).sum() / 2


def batchnorm_data():
    g = torch.Generator().manual_seed(7)
    x, xv = (torch.randn(32, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    return x, torch.randint(0, 3, (32,), generator=g), xv, torch.randint(0, 3, (32,), generator=g)


@pytest.mark.parametrize(("hvp", "mixed"), [("finite_difference", "finite_difference"),
                                            ("finite_difference", "reverse"),
                                            ("reverse", "finite_difference")])
def test_trainer_modes_give_the_reverse_hypergradient_and_leave_buffers_alone(hvp, mixed):
    data = batchnorm_data()
    runs = {}
    for key, options in (("reverse", {}), ("mode", {"hvp_mode": hvp, "mixed_mode": mixed})):
        torch.manual_seed(0)
        trainer = mode_trainer(DecayedBatchNormNet().double(), data, **options)
        trainer.fit(2)
        runs[key] = trainer
    a, b = runs["reverse"].model, runs["mode"].model
    with torch.no_grad():  # what the two hyper steps moved, the same way
        assert rel([b.log_decay + 2.0], [a.log_decay + 2.0]) < 1e-6
    assert float((a.log_decay + 2.0).abs().max()) > 1e-3
    # The extra evaluations ran on copies of the buffers: the same running statistics.
    for name, buffer in a.named_buffers():
        assert torch.allclose(buffer.double(), dict(b.named_buffers())[name].double(),
                              rtol=0, atol=1e-12), name
    records = [r["val_loss"] for r in runs["mode"].history.hyper_steps]
    assert records == pytest.approx([r["val_loss"] for r in runs["reverse"].history.hyper_steps])


def test_trainer_forward_mode_is_right_or_refused_on_batchnorm():
    data = batchnorm_data()
    torch.manual_seed(0)
    reverse = mode_trainer(DecayedBatchNormNet().double(), data)
    reverse.fit(1)
    torch.manual_seed(0)
    forward = mode_trainer(DecayedBatchNormNet().double(), data, hvp_mode="forward")
    try:
        forward.fit(1)
    except ValueError as error:  # refused where forward over reverse is wrong
        assert "forward" in str(error)
    else:
        with torch.no_grad():
            assert rel([forward.model.log_decay + 2.0], [reverse.model.log_decay + 2.0]) < 1e-10


def test_trainer_modes_are_checked():
    data = batchnorm_data()
    from optuna_ift.trainer import Unrolled

    with pytest.raises(ValueError, match="hvp_mode must be one of"):
        mode_trainer(DecayedBatchNormNet().double(), data, hvp_mode="sideways")
    with pytest.raises(ValueError, match="mixed_mode must be one of"):
        mode_trainer(DecayedBatchNormNet().double(), data, mixed_mode="forward")
    with pytest.raises(ValueError, match="solver=Unrolled"):
        mode_trainer(DecayedBatchNormNet().double(), data, hvp_mode="finite_difference",
                     solver=Unrolled(steps=2, lr=0.1))
