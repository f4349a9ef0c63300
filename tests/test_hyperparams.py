"""The hyperparameter families: what they do to the loss, how they are declared, and that the
implicit hypergradient reaches them (for every family, checked against a finite difference of
the validation loss at re-optimised weights)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from optuna_ift import ConjugateGradient, Exact, Neumann, hypergradient
from optuna_ift.hyperparams import (
    AugmentationNet,
    ConcreteDropout,
    DistilledData,
    HyperParameter,
    LossWeights,
    WeightDecay,
    as_hyperparameters,
    split_parameters,
)

DT = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def classification(n: int = 30, d: int = 6, classes: int = 3, seed: int = 0):
    """Inputs and labels from a random linear teacher, in float64."""
    g = gen(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    teacher = torch.randn(d, classes, generator=g, dtype=DT)
    return X, (X @ teacher).argmax(dim=1)


def linear(d: int, out: int, seed: int = 1) -> nn.Linear:
    layer = nn.Linear(d, out).to(DT)
    with torch.no_grad():
        layer.weight.copy_(0.3 * torch.randn(out, d, generator=gen(seed), dtype=DT))
        layer.bias.zero_()
    return layer


def ridge(net: nn.Module, strength: float = 1e-2) -> torch.Tensor:
    """A fixed L2 penalty on every weight (biases too), making the training losses strictly
    convex in the weights of a linear model."""
    return strength * sum(p.square().sum() for p in net.parameters())


def newton(loss_fn, params, *, steps: int = 2) -> None:
    """Newton steps on the dense Hessian of a small, strictly convex ``loss_fn()``: from near the
    minimum they take the gradient to round-off, where L-BFGS stalls (at a gradient of about
    1e-9, once the float64 loss stops changing)."""
    for _ in range(steps):
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss_fn(), params,
                                                                  create_graph=True)])
        eye = torch.eye(g.numel(), dtype=g.dtype)
        rows = torch.autograd.grad(g, params, eye, is_grads_batched=True, retain_graph=True)
        hessian = torch.cat([r.reshape(g.numel(), -1) for r in rows], dim=1)
        step = torch.linalg.solve(hessian, g.detach())
        with torch.no_grad():
            for p, dp in zip(params, step.split([p.numel() for p in params])):
                p -= dp.reshape(p.shape)


def fit(loss_fn, params) -> None:
    """Minimise a small, strictly convex ``loss_fn()`` to machine precision: L-BFGS, then Newton."""
    params = list(params)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        return loss

    opt.step(closure)
    newton(loss_fn, params)


def assert_finite_nonzero(grads, expected_nonzero=None) -> None:
    expected_nonzero = range(len(grads)) if expected_nonzero is None else expected_nonzero
    for g in grads:
        assert torch.isfinite(g).all()
    for k in expected_nonzero:
        assert grads[k].abs().max() > 0, f"hypergradient {k} is zero"


def assert_matches_finite_difference(hparam, train_loss, val_loss, weights, *, eps=1e-4):
    """The implicit hypergradient of ``hparam`` (exact inverse Hessian) against a central finite
    difference of the validation loss at re-optimised weights, on its largest component.

    ``train_loss`` must be strictly convex in ``weights`` and deterministic.
    """
    fit(train_loss, weights)
    (grad,) = hypergradient(val_loss(), train_loss(), weights, [hparam], solver=Exact())
    index = tuple(int(i) for i in torch.unravel_index(grad.abs().argmax(), grad.shape))
    optimum = [w.detach().clone() for w in weights]
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            hparam[index] += sign * eps
            for w, w0 in zip(weights, optimum):
                w.copy_(w0)
        newton(train_loss, weights)  # the minimum moved by O(eps): Newton alone converges
        with torch.no_grad():
            values.append(float(val_loss()))
            hparam[index] -= sign * eps
    with torch.no_grad():
        for w, w0 in zip(weights, optimum):
            w.copy_(w0)
    finite_difference = (values[0] - values[1]) / (2 * eps)
    assert abs(finite_difference) > 1e-6
    assert float(grad[index]) == pytest.approx(finite_difference, rel=1e-6)


# --- WeightDecay -------------------------------------------------------------------------------


def mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(7), dtype=DT))
    return net


@pytest.mark.parametrize("mode", ["global", "per_layer", "per_weight"])
def test_weight_decay_penalty_matches_hand_computation(mode):
    net = mlp()
    decay = WeightDecay(net, mode=mode, init=0.5)
    w1, w2 = net[0].weight, net[2].weight
    assert decay.names == ("0.weight", "2.weight")
    expected = 0.5 * (w1.square().sum() + w2.square().sum()) / 2
    torch.testing.assert_close(decay(net), expected)

    with torch.no_grad():
        if mode == "global":
            decay.log_decays[0].fill_(math.log(3.0))
            expected = 3.0 * (w1.square().sum() + w2.square().sum()) / 2
        elif mode == "per_layer":
            decay.log_decays[0].fill_(math.log(2.0))
            decay.log_decays[1].fill_(math.log(5.0))
            expected = (2.0 * w1.square().sum() + 5.0 * w2.square().sum()) / 2
        else:
            d1 = torch.rand(w1.shape, generator=gen(), dtype=DT) + 0.1
            d2 = torch.rand(w2.shape, generator=gen(1), dtype=DT) + 0.1
            decay.log_decays[0].copy_(d1.log())
            decay.log_decays[1].copy_(d2.log())
            expected = ((d1 * w1**2).sum() + (d2 * w2**2).sum()) / 2
    torch.testing.assert_close(decay(net), expected)
    # The same penalty from a name -> tensor mapping (the functional_call form).
    torch.testing.assert_close(decay(dict(net.named_parameters())), expected)


def test_weight_decay_sizes_biases_and_summaries():
    net = mlp()
    sizes = {"global": 1, "per_layer": 2, "per_weight": 12 + 8}
    for mode, size in sizes.items():
        decay = WeightDecay(net, mode=mode)
        assert decay.num_hyperparameters == size
        values = decay.decays()
        assert list(values) == ["0.weight", "2.weight"]
        assert not any(v.requires_grad for v in values.values())
        torch.testing.assert_close(values["2.weight"].mean(), torch.tensor(1e-4, dtype=DT))
    assert WeightDecay(net, mode="per_weight").decays()["0.weight"].shape == (4, 3)
    with_biases = WeightDecay(net, mode="per_weight", include_biases=True)
    assert with_biases.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert with_biases.num_hyperparameters == 12 + 4 + 8 + 2


def test_weight_decay_skips_hyperparameters_and_is_not_registered_twice():
    net = nn.Sequential(nn.Linear(3, 4), ConcreteDropout((4,)), nn.Linear(4, 2))
    decay = WeightDecay(net, mode="per_layer")
    assert decay.names == ("0.weight", "2.weight")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.decay = decay

    weights, hparams = split_parameters(Model())
    assert {id(p) for p in weights} == {id(p) for p in net.parameters() if type(p) is nn.Parameter}
    assert len(weights) == 4
    assert {id(p) for p in hparams} == {id(net[1].logit)} | {id(p) for p in decay.log_decays}
    assert all(isinstance(p, HyperParameter) for p in hparams)


def test_weight_decay_errors():
    net = mlp()
    with pytest.raises(ValueError, match="mode"):
        WeightDecay(net, mode="per_unit")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="init"):
            WeightDecay(net, init=bad)
    with pytest.raises(ValueError, match="init"):
        WeightDecay(net, init="1e-4")
    with pytest.raises(TypeError, match="module"):
        WeightDecay(torch.zeros(3))
    with pytest.raises(ValueError, match="include_biases"):
        WeightDecay(nn.BatchNorm1d(3))
    decay = WeightDecay(net)
    other = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).to(DT)
    with pytest.raises(ValueError, match="0.weight"):
        decay(other)
    with pytest.raises(ValueError, match="has no parameter"):
        decay(nn.Sequential(other))
    with pytest.raises(TypeError, match="module"):
        decay([net[0].weight])


def test_weight_decay_hypergradient():
    """Logistic regression with a decay per weight (biases included): strictly convex, so the
    re-optimised validation loss is a smooth function of each log decay."""
    X, y = classification(n=40, d=4, classes=2, seed=3)
    Xv, yv = classification(n=30, d=4, classes=2, seed=4)
    y, yv = y.to(DT), yv.to(DT)
    net = linear(4, 1)
    decay = WeightDecay(net, mode="per_weight", init=0.05, include_biases=True)

    def train_loss():
        return F.binary_cross_entropy_with_logits(net(X).squeeze(-1), y) + decay(net)

    def val_loss():
        return F.binary_cross_entropy_with_logits(net(Xv).squeeze(-1), yv)

    weights, hparams = split_parameters(nn.ModuleList([net, decay]))
    assert hparams == list(decay.log_decays)
    fit(train_loss, weights)
    grads = hypergradient(
        val_loss(), train_loss(), weights, hparams, solver=ConjugateGradient(steps=10, tol=1e-14)
    )
    assert_finite_nonzero(grads)
    assert_matches_finite_difference(decay.log_decays[0], train_loss, val_loss, weights)


# --- DistilledData -----------------------------------------------------------------------------


def test_distilled_data_shapes_and_labels():
    distilled = DistilledData(2, 3, (1, 4, 4), generator=gen())
    images, targets = distilled()
    assert images.shape == (6, 1, 4, 4)
    assert isinstance(images, HyperParameter)
    assert targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert targets.dtype == torch.long and not isinstance(targets, nn.Parameter)
    assert distilled.label_logits is None
    # Same generator seed, same images; the images are what the loss sees.
    torch.testing.assert_close(DistilledData(2, 3, (1, 4, 4), generator=gen()).images, images)
    logits = nn.Flatten()(images) @ torch.ones(16, 3)
    F.cross_entropy(logits, targets)  # usable as is

    soft = DistilledData(2, 3, 5, learn_labels=True)
    images, targets = soft()
    assert images.shape == (6, 5)
    assert targets.shape == (6, 3) and targets.is_floating_point()
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(targets[torch.arange(6), soft.labels], torch.full((6,), 0.9))
    torch.testing.assert_close(targets[0, 1], torch.tensor(0.05))
    # cross_entropy with probability targets: the hard-label loss is recovered at one-hot targets.
    hard = F.one_hot(soft.labels, 3).to(images.dtype)
    out = torch.randn(6, 3, generator=gen())
    torch.testing.assert_close(F.cross_entropy(out, hard), F.cross_entropy(out, soft.labels))
    F.cross_entropy(out, targets).backward()
    assert soft.label_logits.grad.abs().max() > 0


def test_distilled_data_init_and_errors():
    init = torch.arange(12, dtype=DT).reshape(4, 3)
    distilled = DistilledData(2, 2, (3,), init=init)
    assert distilled.images.dtype == DT
    torch.testing.assert_close(distilled.images.detach(), init)
    assert distilled.images.data_ptr() != init.data_ptr()
    with pytest.raises(ValueError, match="init must have shape"):
        DistilledData(2, 3, (3,), init=init)
    with pytest.raises(TypeError, match="init"):
        DistilledData(2, 2, (3,), init=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_per_class"):
        DistilledData(0, 3, (3,))
    with pytest.raises(ValueError, match="num_classes"):
        DistilledData(1, 1, (3,))
    with pytest.raises(TypeError, match="num_classes"):
        DistilledData(1, 2.0, (3,))
    with pytest.raises(ValueError, match="shape"):
        DistilledData(1, 2, (3, 0))


def test_distilled_data_hypergradient():
    Xv, yv = classification(n=40, d=5, classes=3, seed=5)
    distilled = DistilledData(2, 3, (5,), learn_labels=True, generator=gen(2)).to(DT)
    net = linear(5, 3)

    def train_loss():
        images, targets = distilled()
        return F.cross_entropy(net(images), targets) + ridge(net)

    def val_loss():
        return F.cross_entropy(net(Xv), yv)

    weights, _ = split_parameters(net)
    fit(train_loss, weights)
    hparams = [distilled.images, distilled.label_logits]
    grads = hypergradient(val_loss(), train_loss(), weights, hparams,
                          solver=Neumann(steps=5, alpha=0.1))
    assert_finite_nonzero(grads)
    assert grads[0].shape == distilled.images.shape
    for hparam in hparams:
        assert_matches_finite_difference(hparam, train_loss, val_loss, weights)


# --- AugmentationNet ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8, 28, 32])
def test_augmentation_is_identity_at_init_and_keeps_shape(size):
    channels = 3 if size == 32 else 1
    augment = AugmentationNet(channels, hidden=4, depth=2, generator=gen())
    x = torch.randn(2, channels, size, size, generator=gen(1))
    out = augment(x)
    assert out.shape == x.shape
    assert torch.equal(out, x)
    with torch.no_grad():
        augment.head.weight.normal_(generator=gen(2))
    out = augment(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)


def test_augmentation_noise_generator_and_state_dict():
    augment = AugmentationNet(1, hidden=4, depth=1, generator=gen())
    with torch.no_grad():
        augment.head.weight.normal_(generator=gen(2))
    x = torch.randn(3, 1, 8, 8, generator=gen(1))
    a, b = augment(x), augment(x)
    assert not torch.allclose(a, b)  # fresh noise each call
    noise = torch.randn(3, 1, 8, 8, generator=gen(3))
    torch.testing.assert_close(augment(x, noise=noise), augment(x, noise=noise))

    # Weights are all hyperparameters and survive state_dict, deepcopy and .to(float64).
    params = list(augment.parameters())
    assert params and all(isinstance(p, HyperParameter) for p in params)
    other = AugmentationNet(1, hidden=4, depth=1, generator=gen(9))
    other.load_state_dict(augment.state_dict())
    assert all(isinstance(p, HyperParameter) for p in other.parameters())
    torch.testing.assert_close(other(x, noise=noise), augment(x, noise=noise))
    twin = copy.deepcopy(augment).to(DT)
    assert all(isinstance(p, HyperParameter) and p.dtype == DT for p in twin.parameters())
    assert twin(x.to(DT), noise=noise.to(DT)).dtype == DT

    plain = AugmentationNet(1, hidden=2, depth=1, noise=False)
    assert plain.stem.in_channels == 1
    with pytest.raises(ValueError, match="noise"):
        plain(x, noise=noise)
    with pytest.raises(ValueError, match="noise must have shape"):
        augment(x, noise=noise[:, :, :4])
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(batch, 1"):
        augment(x[:, 0])
    for name, kwargs in [("channels", {"channels": 0}), ("hidden", {"hidden": 0}),
                         ("depth", {"depth": -1})]:
        with pytest.raises(ValueError, match=name):
            AugmentationNet(**{"channels": 1, **kwargs})


def test_as_hyperparameters_converts_in_place():
    layer = nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    assert as_hyperparameters(layer) is layer
    assert isinstance(layer.weight, HyperParameter)
    assert type(layer.bias) is nn.Parameter  # frozen tensors stay as they are
    assert layer(torch.ones(1, 3)).shape == (1, 2)
    with pytest.raises(TypeError, match="module"):
        as_hyperparameters(layer.weight)


def test_augmentation_hypergradient():
    g = gen(4)
    x = torch.randn(16, 1, 5, 5, generator=g, dtype=DT)
    y = torch.randint(0, 3, (16,), generator=g)
    xv = torch.randn(16, 1, 5, 5, generator=g, dtype=DT)
    yv = torch.randint(0, 3, (16,), generator=g)
    noise = torch.randn(16, 1, 5, 5, generator=g, dtype=DT)  # fixed: a deterministic loss
    augment = AugmentationNet(1, hidden=3, depth=1, generator=gen(5)).to(DT)
    net = nn.Sequential(nn.Flatten(), linear(25, 3))

    def train_loss():
        return F.cross_entropy(net(augment(x, noise=noise)), y) + ridge(net)

    def val_loss():
        return F.cross_entropy(net(xv), yv)

    weights, hparams = split_parameters(nn.ModuleDict({"net": net, "augment": augment}))
    assert {id(p) for p in hparams} == {id(p) for p in augment.parameters()}
    assert {id(p) for p in weights} == {id(p) for p in net.parameters()}
    fit(train_loss, weights)
    grads = hypergradient(val_loss(), train_loss(), weights, hparams,
                          solver=Neumann(steps=5, alpha=0.1))
    # At initialisation only the zero-initialised last layer feels the validation loss.
    head = [k for k, p in enumerate(hparams) if p is augment.head.weight]
    assert_finite_nonzero(grads, expected_nonzero=head)
    assert_matches_finite_difference(augment.head.weight, train_loss, val_loss, weights)


# --- ConcreteDropout ---------------------------------------------------------------------------


def test_dropout_is_identity_in_eval_mode():
    drop = ConcreteDropout((4,), init=0.5).eval()
    x = torch.randn(3, 4)
    assert drop(x) is x
    assert drop.drop_connect(x) is x


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_dropout_preserves_expectation_and_drops_at_its_rate(rate):
    n = 200_000
    drop = ConcreteDropout(init=rate, temperature=0.1, generator=gen()).to(DT)
    out = drop(torch.ones(n, dtype=DT))
    # Inverted scaling: the mean activation is kept (the relaxation's bias is ~0.1% here).
    assert float(out.detach().mean()) == pytest.approx(1.0, abs=0.01)
    # P(relaxed drop > 1/2) is exactly the rate: count units scaled below half their value.
    dropped = (out * (1 - rate) < 0.5).to(DT).mean()
    assert float(dropped) == pytest.approx(rate, abs=4 * math.sqrt(rate * (1 - rate) / n) + 1e-3)


def test_dropout_rate_per_unit_and_per_channel():
    rates = torch.tensor([0.1, 0.5, 0.8], dtype=DT)
    drop = ConcreteDropout((3,), generator=gen()).to(DT)
    with torch.no_grad():
        drop.logit.copy_(torch.logit(rates))
    torch.testing.assert_close(drop.rate, rates)
    out = drop(torch.ones(50_000, 3, dtype=DT))
    torch.testing.assert_close((out * (1 - rates) < 0.5).to(DT).mean(0), rates, atol=0.02, rtol=0)

    channel = ConcreteDropout((3,), init=0.5, mode="channel", generator=gen()).to(DT)
    out = channel(torch.ones(20, 3, 4, 5, dtype=DT))
    assert out.shape == (20, 3, 4, 5)
    flat = out.flatten(2)
    assert torch.equal(flat, flat[..., :1].expand_as(flat))  # one mask per example and channel
    with pytest.raises(ValueError, match="channel"):
        channel(torch.ones(2, 4, 5))


def test_dropout_rate_gets_a_gradient_and_generator_reproduces():
    x = torch.randn(8, 4, generator=gen(1), dtype=DT)
    drop = ConcreteDropout((4,), init=0.2, generator=gen()).to(DT)
    (grad,) = torch.autograd.grad(drop(x).square().sum(), drop.logit)
    assert torch.isfinite(grad).all() and grad.abs().min() > 0
    again = ConcreteDropout((4,), init=0.2, generator=gen()).to(DT)
    torch.testing.assert_close(again(x), ConcreteDropout((4,), init=0.2, generator=gen()).to(DT)(x))

    weight = torch.randn(4, 6, generator=gen(2), dtype=DT)
    connect = ConcreteDropout(weight.shape, init=0.3, generator=gen()).to(DT)
    dropped = connect.drop_connect(weight)
    assert dropped.shape == weight.shape
    (grad,) = torch.autograd.grad(dropped.square().sum(), connect.logit)
    assert grad.shape == weight.shape and torch.isfinite(grad).all()


def test_dropout_shared_dims_share_one_mask_entry():
    # Variational dropout: (time, batch, units), one mask per sequence and unit for all steps.
    drop = ConcreteDropout((5,), init=0.5, generator=gen()).to(DT)
    out = drop(torch.ones(7, 3, 5, dtype=DT), shared_dims=(0,))
    assert torch.equal(out, out[:1].expand_as(out))
    assert not torch.equal(out[0, 0], out[0, 1])  # sequences still get their own masks
    # Whole words: a rate per word on an embedding matrix seen as (features, words).
    words = ConcreteDropout((6,), init=0.5, generator=gen()).to(DT)
    out = words(torch.ones(4, 6, dtype=DT), shared_dims=(-2,))
    assert torch.equal(out, out[:1].expand_as(out))
    scalar = ConcreteDropout(init=0.3, generator=gen()).to(DT)
    out = scalar(torch.ones(40_000, 3, dtype=DT), shared_dims=(1,))
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert float((out[:, 0] * 0.7 < 0.5).to(DT).mean()) == pytest.approx(0.3, abs=0.015)
    eval_x = torch.ones(2, 5, dtype=DT)
    assert drop.eval()(eval_x, shared_dims=(0,)) is eval_x
    with pytest.raises(ValueError, match="shared_dims"):
        drop.train()(torch.ones(7, 3, 5, dtype=DT), shared_dims=(2,))  # the rate's own dim
    with pytest.raises(ValueError, match="shared_dims"):
        drop(torch.ones(7, 3, 5, dtype=DT), shared_dims=(3,))
    with pytest.raises(ValueError, match="shared_dims"):
        drop(torch.ones(7, 3, 5, dtype=DT), shared_dims=0)
    with pytest.raises(ValueError, match="shared_dims"):
        ConcreteDropout(mode="channel")(torch.ones(2, 3, 4), shared_dims=(0,))


def test_dropout_errors():
    for bad in (0.0, 1.0, -0.1, 1.5, "0.1"):
        with pytest.raises(ValueError, match="init"):
            ConcreteDropout(init=bad)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            ConcreteDropout(temperature=bad)
    with pytest.raises(ValueError, match="mode"):
        ConcreteDropout(mode="weight")
    with pytest.raises(ValueError, match="shape"):
        ConcreteDropout((3, 0))
    with pytest.raises(ValueError, match="shape"):
        ConcreteDropout((3, 4), mode="channel")
    with pytest.raises(ValueError, match="rate's shape"):
        ConcreteDropout((4,))(torch.ones(2, 5))
    with pytest.raises(ValueError, match="rate's shape"):
        ConcreteDropout((4, 6)).drop_connect(torch.ones(6, 4))
    with pytest.raises(TypeError, match="x must"):
        ConcreteDropout()([1.0])


@pytest.mark.parametrize("form", ["unit", "connect"])
def test_dropout_hypergradient(form):
    """Dropout on the inputs of a logistic regression (or DropConnect on its weights), with the
    generator re-seeded so that every call draws the same mask: the training loss is then
    deterministic and strictly convex in the weights. The validation loss sees no dropout."""
    X, y = classification(n=40, d=5, classes=3, seed=6)
    Xv, yv = classification(n=30, d=5, classes=3, seed=7)
    net = linear(5, 3)
    shape = (5,) if form == "unit" else net.weight.shape
    g = gen()
    drop = ConcreteDropout(shape, init=0.2, generator=g).to(DT)

    def train_loss():
        g.manual_seed(0)
        if form == "unit":
            out = net(drop(X))
        else:
            out = F.linear(X, drop.drop_connect(net.weight), net.bias)
        return F.cross_entropy(out, y) + ridge(net)

    def val_loss():
        return F.cross_entropy(net(Xv), yv)

    weights, hparams = split_parameters(nn.ModuleList([net, drop]))
    assert hparams == [drop.logit]
    fit(train_loss, weights)
    grads = hypergradient(val_loss(), train_loss(), weights, hparams,
                          solver=Neumann(steps=5, alpha=0.1))
    assert_finite_nonzero(grads)
    assert_matches_finite_difference(drop.logit, train_loss, val_loss, weights)


# --- LossWeights -------------------------------------------------------------------------------


def test_loss_weights_weight_the_right_examples():
    lw = LossWeights(6, init=2.0)
    torch.testing.assert_close(lw.weights, torch.full((6,), 2.0))
    with torch.no_grad():
        lw.log_weights.copy_(torch.arange(6.0).log1p())  # weight of example i is i + 1
    idx = torch.tensor([4, 1, 1])
    torch.testing.assert_close(lw(idx), torch.tensor([5.0, 2.0, 2.0]))
    assert lw(idx.reshape(3, 1)).shape == (3, 1)

    losses = torch.tensor([1.0, 2.0, 3.0])
    loss = (lw(idx) * losses).mean()
    torch.testing.assert_close(loss, torch.tensor((5.0 + 4.0 + 6.0) / 3))
    loss.backward()
    touched = lw.log_weights.grad != 0
    assert touched.tolist() == [False, True, False, False, True, False]
    # d loss / d log w_1 = (w_1 * 2 + w_1 * 3) / 3, both uses of example 1 add up.
    torch.testing.assert_close(lw.log_weights.grad[1], torch.tensor(2.0 * 5.0 / 3))


def test_loss_weights_errors():
    for bad in (0, -3, 2.5):
        with pytest.raises((ValueError, TypeError), match="num_examples"):
            LossWeights(bad)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="init"):
            LossWeights(3, init=bad)
    lw = LossWeights(3)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\]"):
        lw(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="indices"):
        lw(torch.tensor([-1]))
    with pytest.raises(TypeError, match="indices"):
        lw(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="indices"):
        lw([0, 1])


def test_loss_weights_hypergradient():
    X, y = classification(n=24, d=4, classes=3, seed=8)
    Xv, yv = classification(n=30, d=4, classes=3, seed=9)
    net = linear(4, 3)
    lw = LossWeights(24).to(DT)
    idx = torch.arange(24)

    def train_loss():
        losses = F.cross_entropy(net(X), y, reduction="none")
        return (lw(idx) * losses).mean() + ridge(net)

    def val_loss():
        return F.cross_entropy(net(Xv), yv)

    weights, _ = split_parameters(net)
    fit(train_loss, weights)
    grads = hypergradient(val_loss(), train_loss(), weights, [lw.log_weights],
                          solver=Neumann(steps=5, alpha=0.1))
    assert_finite_nonzero(grads)
    assert grads[0].shape == (24,)
    assert_matches_finite_difference(lw.log_weights, train_loss, val_loss, weights)


# --- all families ------------------------------------------------------------------------------


FAMILIES = {
    "weight_decay": lambda: WeightDecay(nn.Linear(3, 2), mode="per_layer"),
    "distilled": lambda: DistilledData(1, 2, (3,), learn_labels=True),
    "augmentation": lambda: AugmentationNet(1, hidden=2, depth=1),
    "dropout": lambda: ConcreteDropout((3,)),
    "loss_weights": lambda: LossWeights(5),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_tunable_tensor_is_a_hyperparameter(name):
    family = FAMILIES[name]()
    params = list(family.parameters())
    assert params
    weights, hparams = split_parameters(nn.ModuleDict({"family": family}))
    assert weights == [] and len(hparams) == len(params)
    converted = family.to(torch.float64)
    assert all(isinstance(p, HyperParameter) and p.dtype == torch.float64
               for p in converted.parameters())
    twin = copy.deepcopy(converted)
    assert all(isinstance(p, HyperParameter) for p in twin.parameters())
    twin.load_state_dict(converted.state_dict())
    assert all(isinstance(p, HyperParameter) for p in twin.parameters())
