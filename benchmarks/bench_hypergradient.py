"""Cost, memory and correctness of ``optuna_ift.hypergradient`` against torchopt.

The problem is an MLP 784-256-10 (ReLU) with one log weight decay per weight (a hyperparameter
tensor shaped like every weight and bias), trained near a minimum of its training loss::

    L_T(w, lambda) = CE(train batch) + sum(exp(lambda) * w**2) / 2,   L_V(w) = CE(val batch)

The same two functional loss functions (a tuple of weights in, a scalar out) serve every method:

* ours:     ``hypergradient(L_V, L_T, w, lambda, solver=Neumann(i, alpha) | ConjugateGradient(i))``
* torchopt: ``torchopt.diff.implicit.custom_root`` with the optimality function ``dL_T/dw``
            (``torch.func.grad``) and ``solve_inv(ns=True, maxiter=i, alpha)`` /
            ``solve_cg(maxiter=i, rtol=0, atol=0)``;
* unrolled: ``unrolled_hypergradient`` (memory section only).

Sections:

1. work and agreement: one call of every method through solvers wrapped to count Hessian-vector
   products (HVPs), and the relative difference between our hypergradient and torchopt's.
2. cost: the time of one hypergradient (both forward passes included) in units of one training
   gradient ("GE": forward + ``torch.autograd.grad`` of ``L_T`` wrt the weights), for each ``i``;
   a least-squares line ``cost = slope * i + intercept``; ours / torchopt time ratios. Methods
   run in one process, interleaved round-robin in every repeat (the order rotates from repeat to
   repeat), after warm-up rounds; the median of the repeats is reported. On CUDA the clock is
   read after ``torch.cuda.synchronize``.
3. memory: peak memory of ours (Neumann) and of unrolled differentiation against ``i`` (see
   :func:`peak_memory` for how it is measured on the CPU).

4. along a trajectory of joint training (``--trajectory-only`` runs it alone): every solver and
   mode, stateful ones keeping their state, computes the hypergradient at each hyper step;
   amortised cost in GE and cosine to the cold Neumann(10) / Neumann(20) hypergradients.

Conventions (checked in section 1, see also benchmarks/README.md):

* torchopt's ``linalg.ns(matvec, b, maxiter=i, alpha=a)`` returns ``a * sum_{j=0..i} (I - a A)^j b``
  with ``i`` matrix-vector products: exactly our ``Neumann(steps=i, alpha=a)`` (the two agree to
  the last bit). Its *matrix* form ``linalg.ns_inv`` sums only ``j = 0..i-1``, and with
  ``alpha=None`` it uses ``alpha = 1``; neither matters here.
* torchopt's ``linalg.cg`` starts with ``r0 = b - A(x0)``, one product more than ours even at
  ``x0 = 0``: ``maxiter=i`` costs ``i + 1`` HVPs, ours ``i``; both run exactly ``i`` CG
  iterations here (``tol=0`` / ``rtol=atol=0``: no early stop), as long as CG meets no negative
  curvature (ours stops there, torchopt's goes on): the run checks this and says so.

Run ``python benchmarks/bench_hypergradient.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from optuna_ift import (
    ConjugateGradient,
    Identity,
    Neumann,
    NeumannDivergenceWarning,
    NonPositiveCurvatureWarning,
    hypergradient,
    power_iteration,
    unrolled_hypergradient,
)
from optuna_ift.hypergrad import (
    Nystrom,
    WarmConjugateGradient,
    WarmNeumann,
    functional_hypergradient,
    train_gradient_hvp,
)

try:
    with warnings.catch_warnings():  # its import of functorch warns about deprecations
        warnings.simplefilter("ignore")
        import torchopt
except ImportError:  # the benchmark still runs ours without it
    torchopt = None

Tensors = tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------


class Problem:
    """An MLP ``d_in - hidden - classes`` on a fixed-seed Gaussian mixture, written functionally.

    Weights are the tuple ``(W1, b1, W2, b2)``; hyperparameters one log decay tensor per weight.
    All randomness comes from one ``torch.Generator``; global RNG state is never touched. The
    problem is built and pretrained on the CPU in float64, then cast with :meth:`to`, so every
    device and dtype measures the same weights.
    """

    def __init__(
        self,
        *,
        seed: int,
        d_in: int = 784,
        hidden: int = 256,
        classes: int = 10,
        batch: int = 512,
        log_decay: float = math.log(1e-2),
    ) -> None:
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        # Gaussian mixture: one mean per class, unit noise.
        means = randn(classes, d_in) * (2.0 / math.sqrt(d_in)) * 3.0

        def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(classes, (n,), generator=gen)
            x = means[y] + randn(n, d_in)
            return x, y

        self.sample = sample  # more data from the same mixture (the trajectory section)
        self.x_train, self.y_train = sample(batch)
        self.x_val, self.y_val = sample(batch)
        init = (
            randn(d_in, hidden) * math.sqrt(2.0 / d_in),
            torch.zeros(hidden, dtype=torch.float64),
            randn(hidden, classes) * math.sqrt(1.0 / hidden),
            torch.zeros(classes, dtype=torch.float64),
        )
        self.weights: Tensors = tuple(w.requires_grad_() for w in init)
        self.hparams: Tensors = tuple(
            torch.full_like(w, log_decay).requires_grad_() for w in self.weights
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> Problem:
        """Move the data, weights and hyperparameters (as new leaves)."""
        self.x_train = self.x_train.to(device, dtype)
        self.x_val = self.x_val.to(device, dtype)
        self.y_train, self.y_val = self.y_train.to(device), self.y_val.to(device)
        self.weights = tuple(w.detach().to(device, dtype).requires_grad_() for w in self.weights)
        self.hparams = tuple(h.detach().to(device, dtype).requires_grad_() for h in self.hparams)
        return self

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (*self.weights, *self.hparams, self.x_train, self.y_train, self.x_val, self.y_val)

    @staticmethod
    def logits(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = weights
        return torch.relu(x @ w1 + b1) @ w2 + b2

    def train_loss(self, weights: Sequence[torch.Tensor], hparams: Sequence[torch.Tensor],
                   rows: int | None = None):
        """The training loss on the batch, or on its first ``rows`` examples."""
        x, y = self.x_train[:rows], self.y_train[:rows]
        ce = F.cross_entropy(self.logits(weights, x), y)
        decay = sum((h.exp() * w * w).sum() for w, h in zip(weights, hparams))
        return ce + decay / 2

    def val_loss(self, weights: Sequence[torch.Tensor], hparams: Sequence[torch.Tensor]):
        del hparams  # no direct dependence: the hypergradient is all response
        return F.cross_entropy(self.logits(weights, self.x_val), self.y_val)

    def pretrain(self, adam_steps: int, lbfgs_steps: int, lr: float) -> dict[str, float]:
        """Adam then L-BFGS on the training loss, so the weights are near its minimum.

        Near a minimum is the premise of the implicit function theorem, and it matters here in
        practice: after Adam alone the Hessian still has directions of negative curvature that
        make conjugate gradient stop early (and then do less work than torchopt's). With ReLU
        the loss is not smooth and L-BFGS stalls at a gradient norm of about 1e-3; some
        negative curvature remains (see :meth:`cg_positive_steps`).
        """
        weights = [w.detach().clone().requires_grad_() for w in self.weights]
        hparams = [h.detach() for h in self.hparams]
        opt = torch.optim.Adam(weights, lr=lr)
        for _ in range(adam_steps):
            opt.zero_grad(set_to_none=True)
            self.train_loss(weights, hparams).backward()
            opt.step()
        if lbfgs_steps > 0:
            lbfgs = torch.optim.LBFGS(weights, lr=1.0, max_iter=lbfgs_steps, history_size=20,
                                      tolerance_grad=1e-12, tolerance_change=0.0,
                                      line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                lbfgs.zero_grad(set_to_none=True)
                loss = self.train_loss(weights, hparams)
                loss.backward()
                return loss

            lbfgs.step(closure)
        self.weights = tuple(w.detach().requires_grad_() for w in weights)
        loss = self.train_loss(self.weights, self.hparams)
        grad = torch.autograd.grad(loss, self.weights)
        with torch.no_grad():
            acc_t = (self.logits(self.weights, self.x_train).argmax(1) == self.y_train).float()
            acc_v = (self.logits(self.weights, self.x_val).argmax(1) == self.y_val).float()
        return {
            "train_loss": float(loss.detach()),
            "val_loss": float(self.val_loss(self.weights, self.hparams).detach()),
            "train_grad_norm": _norm(grad),
            "train_acc": float(acc_t.mean()),
            "val_acc": float(acc_v.mean()),
        }

    def largest_eigenvalue(self, iters: int, seed: int) -> float:
        """Power-iteration estimate of the largest Hessian eigenvalue, from a random start."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        _, hvp = train_gradient_hvp(self.train_loss(self.weights, self.hparams), self.weights)
        start = tuple(
            torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.device, w.dtype)
            for w in self.weights
        )
        return float(power_iteration(hvp, start, steps=iters))

    def cg_positive_steps(self, limit: int) -> int:
        """How many conjugate-gradient steps on ``H x = dL_V/dw`` meet positive curvature.

        The same recurrence as ours and torchopt's CG (from zero). A ReLU network's Hessian is
        indefinite, so CG eventually meets ``p'Hp <= 0``; ours then stops (with a warning) while
        torchopt's goes on, and the two would not do the same work. Returns ``limit`` if all
        ``limit`` steps were fine.
        """
        w, h = self.weights, self.hparams
        _, hvp = train_gradient_hvp(self.train_loss(w, h), w)
        r = p = torch.autograd.grad(self.val_loss(w, h), w)
        rr = sum((x * x).sum() for x in r)
        for k in range(limit):
            hp = hvp(p)
            curvature = sum((x * y).sum() for x, y in zip(p, hp))
            if not float(curvature) > 0:
                return k
            step = rr / curvature
            r = tuple(x - step * y for x, y in zip(r, hp))
            rr_new = sum((x * x).sum() for x in r)
            p = tuple(x + (rr_new / rr) * y for x, y in zip(r, p))
            rr = rr_new
        return limit


# --------------------------------------------------------------------------------------------
# The methods: each is a zero-argument callable computing one hypergradient from scratch
# (forward passes of both losses included) and returning a tuple shaped like the hparams.
# --------------------------------------------------------------------------------------------


def ours(problem: Problem, solver) -> Callable[[], Tensors]:
    def run() -> Tensors:
        w, h = problem.weights, problem.hparams
        val = problem.val_loss(w, h)
        train = problem.train_loss(w, h)
        return hypergradient(val, train, w, h, solver=solver)

    return run


def with_torchopt(problem: Problem, solve) -> Callable[[], Tensors]:
    # The optimality condition F(w, lambda) = dL_T/dw (w, lambda) = 0; torchopt's documented idiom
    # is a functorch gradient of the inner objective.
    optimality = torch.func.grad(problem.train_loss, argnums=0)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def inner_solver(weights, hparams):
        return weights  # already (near) optimal: the inner solve is the pretraining

    def run() -> Tensors:
        h = problem.hparams
        w_star = inner_solver(problem.weights, h)
        val = problem.val_loss(w_star, h)
        return torch.autograd.grad(val, h)

    return run


class HVPCounter:
    """Wraps a solver ``solver(hvp, v)`` (ours or torchopt's) to count its HVP calls."""

    def __init__(self) -> None:
        self.calls = 0

    def solver(self, inner):
        def counted_solver(hvp, v):
            def counted_hvp(u):
                self.calls += 1
                return hvp(u)

            return inner(counted_hvp, v)

        return counted_solver


def train_gradient(problem: Problem) -> Callable[[], Tensors]:
    """The unit of cost: one forward and one backward pass of the training loss."""

    def run() -> Tensors:
        loss = problem.train_loss(problem.weights, problem.hparams)
        return torch.autograd.grad(loss, problem.weights)

    return run


def unrolled(problem: Problem, steps: int, lr: float) -> Callable[[], Tensors]:
    def run() -> Tensors:
        return unrolled_hypergradient(
            problem.train_loss, problem.val_loss, problem.weights, problem.hparams,
            steps=steps, lr=lr,
        )

    return run


# --------------------------------------------------------------------------------------------
# Along a trajectory: solvers that keep state, curvature on a sub-batch, other product modes
# --------------------------------------------------------------------------------------------


def trajectory_methods(problem: Problem, alpha: Callable[[], float], rows: int
                       ) -> dict[str, Callable[[], Tensors]]:
    """Every solver and mode of the trajectory section, as zero-argument callables computing
    one hypergradient at the problem's current weights and batch (forward passes included).

    A stateful solver's state lives in its callable, so it carries over from step to step; the
    warm Neumann solvers estimate their own ``alpha`` (``"auto"``: every 50 calls and after a
    divergence, as in the trainer), the cold ones use ``alpha()``, the step of the moment.
    """

    def tensor_api(make_solver, sub: int | None = None) -> Callable[[], Tensors]:
        def run() -> Tensors:
            w, h = problem.weights, problem.hparams
            curvature = None if sub is None else problem.train_loss(w, h, sub)
            return hypergradient(problem.val_loss(w, h), problem.train_loss(w, h), w, h,
                                 solver=make_solver(), curvature_loss=curvature)

        return run

    def warm(solver, sub: int | None = None) -> Callable[[], Tensors]:
        bound = solver.bind(solver.new_state())
        return tensor_api(lambda: bound, sub)

    def cold(steps: int) -> Callable[[], Neumann]:
        return lambda: Neumann(steps=steps, alpha=alpha())

    def functional(steps: int, hvp: str, mixed: str) -> Callable[[], Tensors]:
        def run() -> Tensors:
            return functional_hypergradient(problem.val_loss, problem.train_loss,
                                            problem.weights, problem.hparams,
                                            solver=Neumann(steps=steps, alpha=alpha()),
                                            hvp=hvp, mixed=mixed)

        return run

    methods: dict[str, Callable[[], Tensors]] = {}
    methods["identity"] = tensor_api(Identity)  # no HVP: the floor of cost and accuracy
    for i in (1, 2, 3, 5, 10):
        methods[f"neumann-{i}"] = tensor_api(cold(i))
    for i in (1, 2, 3):
        methods[f"warm-neumann-{i}"] = warm(WarmNeumann(steps=i))
    for i in (2, 3):
        methods[f"warm-cg-{i}"] = warm(WarmConjugateGradient(steps=i, tol=0.0))
    for rank, every in ((10, 10), (20, 10), (20, 5)):
        methods[f"nystrom-{rank}/{every}"] = warm(Nystrom(rank=rank, refresh_every=every))
    for rank, every in ((5, 10), (10, 10), (20, 20)):  # the sketch's HVPs one by one
        methods[f"nystrom-{rank}/{every} unbatched"] = warm(
            Nystrom(rank=rank, refresh_every=every, batched=False))
    methods[f"warm-neumann-1 curv{rows}"] = warm(WarmNeumann(steps=1), rows)
    methods[f"warm-neumann-2 curv{rows}"] = warm(WarmNeumann(steps=2), rows)
    methods[f"nystrom-20/10 curv{rows}"] = warm(Nystrom(rank=20, refresh_every=10), rows)
    methods["neumann-5 fwd-hvp"] = functional(5, "forward", "reverse")
    methods["neumann-5 fd-hvp"] = functional(5, "finite_difference", "reverse")
    methods["neumann-5 first-order"] = functional(5, "finite_difference", "finite_difference")
    return methods


def _cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    return dot / max(_norm(a) * _norm(b), 1e-300)


def trajectory(problem: Problem, args: argparse.Namespace, device: torch.device) -> dict:
    """Joint training with every method computing the hypergradient at every hyper step.

    Between hyper steps ``--inner`` Adam steps on fresh mini-batches of the mixture; each hyper
    step draws a new training batch, every method computes its hypergradient there (timed, in a
    rotating order, in units of one training gradient), and the hyperparameters follow the cold
    Neumann(20) hypergradient (RMSprop), so all methods see one trajectory. Accuracy: cosine to
    the cold Neumann(10) and Neumann(20) hypergradients at the same step. The cold series use
    ``alpha = 1 / lambda_max`` estimated afresh at every step (untimed).
    """
    batch = problem.x_train.shape[0]
    pool_x, pool_y = problem.sample(args.trajectory_pool)
    dtype = problem.x_train.dtype
    pool_x, pool_y = pool_x.to(device, dtype), pool_y.to(device)
    cursor = [0]

    def next_batch() -> None:
        start = cursor[0] % (pool_x.shape[0] - batch + 1)
        cursor[0] = start + batch
        problem.x_train, problem.y_train = pool_x[start:start + batch], pool_y[start:start + batch]

    rows = max(1, batch // args.curvature_fraction)
    alpha = [1.0]
    methods = trajectory_methods(problem, lambda: alpha[0], rows)
    names = list(methods)
    weight_opt = torch.optim.Adam(problem.weights, lr=args.trajectory_lr)
    hyper_opt = torch.optim.RMSprop(problem.hparams, lr=args.trajectory_hyper_lr)
    grad = train_gradient(problem)
    times: dict[str, list[float]] = {n: [] for n in names}
    cos10: dict[str, list[float]] = {n: [] for n in names}
    cos20: dict[str, list[float]] = {n: [] for n in names}
    grad_times: list[float] = []
    caught: dict[str, dict[str, int]] = {}
    total = args.trajectory_warmup + args.trajectory_steps
    for step in range(total):
        for _ in range(args.inner):
            next_batch()
            weight_opt.zero_grad(set_to_none=True)
            problem.train_loss(problem.weights, problem.hparams).backward(
                inputs=list(problem.weights))
            weight_opt.step()
        next_batch()
        # The step of the cold series (and the references): 1 / lambda_max at this batch, by
        # 20 power steps (not timed: the trainer estimates it only every 50 hyper steps).
        alpha[0] = 1.0 / problem.largest_eigenvalue(iters=20, seed=args.seed + step)
        with count_warnings(caught.setdefault("neumann-20 (reference)", {})):
            ref20 = ours(problem, Neumann(steps=20, alpha=alpha[0]))()
        results: dict[str, Tensors] = {}
        shift = step % len(names)
        for name in ["grad", *names[shift:], *names[:shift]]:
            fn = grad if name == "grad" else methods[name]
            gc.collect()
            with count_warnings(caught.setdefault(name, {})):
                synchronize(device)
                start = time.perf_counter()
                out = fn()
                synchronize(device)
                elapsed = time.perf_counter() - start
            if name == "grad":
                if step >= args.trajectory_warmup:
                    grad_times.append(elapsed)
                continue
            results[name] = out
            if step >= args.trajectory_warmup:
                times[name].append(elapsed)
        if step >= args.trajectory_warmup:
            for name in names:
                cos10[name].append(_cosine(results[name], results["neumann-10"]))
                cos20[name].append(_cosine(results[name], ref20))
        for h, g in zip(problem.hparams, ref20):
            h.grad = g
        hyper_opt.step()
    unit = statistics.median(grad_times)
    rows_out = {}
    for name in names:
        rows_out[name] = {
            "ge_amortised": statistics.fmean(times[name]) / unit,
            "ge_median": statistics.median(times[name]) / unit,
            "cos_neumann10_mean": statistics.fmean(cos10[name]),
            "cos_neumann10_min": min(cos10[name]),
            "cos_neumann20_mean": statistics.fmean(cos20[name]),
            "cos_neumann20_min": min(cos20[name]),
        }
    print(f"\nAlong a trajectory: {args.trajectory_steps} hyper steps (after "
          f"{args.trajectory_warmup} untimed), {args.inner} Adam steps between them on fresh "
          f"batches of {batch}; curvature sub-batch 'curv{rows}' = {rows} rows. Cost = mean "
          f"time of a hyper step (refreshes included) / one training gradient "
          f"({unit * 1e3:.2f} ms); accuracy = cosine to the cold Neumann(10) / Neumann(20) "
          f"hypergradient of the same step (mean, min).")
    print(f"{'method':<26} {'GE amortised':>12} {'median':>7} {'cos N10 mean':>12} {'min':>7} "
          f"{'cos N20 mean':>12} {'min':>7}")
    for name in sorted(names, key=lambda n: rows_out[n]["ge_amortised"]):
        r = rows_out[name]
        print(f"{name:<26} {r['ge_amortised']:>12.2f} {r['ge_median']:>7.2f} "
              f"{r['cos_neumann10_mean']:>12.4f} {r['cos_neumann10_min']:>7.4f} "
              f"{r['cos_neumann20_mean']:>12.4f} {r['cos_neumann20_min']:>7.4f}")
    warned = {name: counts for name, counts in caught.items() if counts}
    print("warnings: " + ("; ".join(f"{name}: {_solver_warning_line(counts)}"
                                     for name, counts in warned.items()) or "none"))
    return {"methods": rows_out, "grad_seconds": unit, "curvature_rows": rows,
            "warnings": warned}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    methods: dict[str, Callable[[], Tensors]], device: torch.device, *, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of every method, interleaved: each repeat runs every method once."""
    names = list(methods)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        gc.collect()
        shift = r % len(names)  # rotate the order so no method always runs first or last
        for name in names[shift:] + names[:shift]:
            fn = methods[name]
            synchronize(device)
            start = time.perf_counter()
            out = fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            del out
            if r >= warmup:
                samples[name].append(elapsed)
    return samples


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop chatter on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], Tensors], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated while ``fn`` runs, above what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
    ``torch.cuda.memory_allocated`` just before the call.

    CPU: there is no CPU counterpart of ``max_memory_allocated``, and peak RSS is blurred by the
    allocator (glibc keeps freed heap) and dominated by the interpreter and libraries. Instead the
    call runs under ``torch.profiler`` with ``profile_memory=True``, which makes PyTorch's CPU
    allocator report every allocation and free (pointer and size) to the profiler. We replay
    those events in time order: add every allocation made inside the call, subtract the frees of
    those same pointers (frees of tensors that existed before the call are ignored, so the number
    is the peak of memory *added* by the call), and keep the maximum. This counts exactly the
    bytes of tensor storage (activations, autograd graphs, solver vectors, temporaries), the same
    quantity ``max_memory_allocated`` tracks on CUDA (up to its 512-byte rounding). The CPU
    autograd engine runs on the calling thread, which the profiler follows.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)

    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    allocation = torch._C._profiler._EventType.Allocation
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields))
    if not events:
        raise RuntimeError("torch.profiler recorded no CPU allocation: cannot measure memory")
    events.sort(key=lambda e: e[0])
    live: dict[int, int] = {}
    current = peak = 0
    for _, ev in events:
        if ev.alloc_size > 0:
            live[ev.ptr] = ev.alloc_size
            current += ev.alloc_size
            peak = max(peak, current)
        elif ev.ptr in live:
            current -= live.pop(ev.ptr)
    return peak


def _norm(a: Sequence[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.cat([x.detach().reshape(-1) for x in a])))


def relative_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    fa = torch.cat([x.reshape(-1) for x in a]).double()
    fb = torch.cat([x.reshape(-1) for x in b]).double()
    return float(torch.linalg.vector_norm(fa - fb) / torch.linalg.vector_norm(fb).clamp_min(1e-300))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return float("nan"), my
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


@contextlib.contextmanager
def count_warnings(counter: dict[str, int]):
    """Record the solvers' warnings, counting them by class, instead of printing them.

    torchopt 0.7 calls ``functorch.vjp``, which raises a FutureWarning on every call with
    torch >= 2; those are ignored (not recorded, which would cost time inside the timed region).
    Anything else is shown as usual.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", FutureWarning)
        yield
    quiet = (NeumannDivergenceWarning, NonPositiveCurvatureWarning)
    for w in caught:
        name = w.category.__name__
        counter[name] = counter.get(name, 0) + 1
        if not issubclass(w.category, quiet):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _solver_warning_line(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counter.items()) or "none"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto",
                   help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=81, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20],
                   help="solver steps i (HVPs) for the cost and agreement sections")
    p.add_argument("--memory-steps", type=int, nargs="+", default=[1, 10, 100],
                   help="i for the memory section (Neumann steps / unrolled SGD steps)")
    p.add_argument("--alpha", type=float, default=5.0,
                   help="Neumann step alpha, the same for ours and torchopt (needs "
                        "alpha * lambda_max < 2; the run prints lambda_max)")
    p.add_argument("--unrolled-lr", type=float, default=1e-3,
                   help="SGD learning rate of unrolled_hypergradient")
    p.add_argument("--decay", type=float, default=1e-2, help="initial weight decay exp(lambda)")
    p.add_argument("--adam-steps", type=int, default=300, help="Adam steps before measuring")
    p.add_argument("--lbfgs-steps", type=int, default=200,
                   help="then at most this many L-BFGS iterations")
    p.add_argument("--pretrain-lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=2,
                   help="data, initialisation and pretraining seed (2: CG meets positive "
                        "curvature for its first 26 steps, see Problem.cg_positive_steps)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--no-torchopt", action="store_true", help="skip torchopt")
    p.add_argument("--no-memory", action="store_true", help="skip the memory section")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler tables of ours and torchopt, Neumann at the "
                        "middle --steps value")
    p.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    p.add_argument("--trajectory-steps", type=int, default=20,
                   help="hyper steps of the trajectory section (0: skip it)")
    p.add_argument("--trajectory-only", action="store_true",
                   help="run only the trajectory section")
    p.add_argument("--trajectory-warmup", type=int, default=2, help="untimed hyper steps first")
    p.add_argument("--trajectory-pool", type=int, default=8192,
                   help="training examples the trajectory draws its batches from")
    p.add_argument("--inner", type=int, default=10, help="Adam steps between hyper steps")
    p.add_argument("--trajectory-lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--trajectory-hyper-lr", type=float, default=1e-2,
                   help="RMSprop learning rate of the hyperparameters")
    p.add_argument("--curvature-fraction", type=int, default=4,
                   help="the curvature sub-batch is 1 / this of the batch")
    args = p.parse_args(argv)
    if min(args.steps) < 1 or min(args.memory_steps) < 1:
        p.error("--steps and --memory-steps must be >= 1")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if not args.decay > 0:
        p.error("--decay must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, args.dtype)
    use_torchopt = torchopt is not None and not args.no_torchopt
    if torchopt is None and not args.no_torchopt:
        print("torchopt is not installed: its columns are skipped (pip install torchopt)")
    steps = sorted(set(args.steps))
    report: dict = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "config": dict(vars(args)),
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchopt": getattr(torchopt, "__version__", None),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else (platform.processor() or platform.machine()),
            "cpu_count": os.cpu_count(),
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
        },
    }
    wall = time.perf_counter()
    solver_warnings: dict[str, int] = {}

    # -- problem ---------------------------------------------------------------------------
    problem = Problem(seed=args.seed, log_decay=math.log(args.decay))
    fit = problem.pretrain(args.adam_steps, args.lbfgs_steps, args.pretrain_lr)
    problem.to(device, dtype)
    top = problem.largest_eigenvalue(iters=30, seed=args.seed + 1)
    cg_limit = max(steps) + 10
    cg_ok = problem.cg_positive_steps(cg_limit)
    resident = sum(t.numel() * t.element_size() for t in problem.tensors())
    report["problem"] = {**fit, "lambda_max": top, "alpha_times_lambda_max": args.alpha * top,
                         "cg_positive_curvature_steps": cg_ok, "resident_bytes": resident}
    n_w = sum(w.numel() for w in problem.weights)
    print(f"device {device} ({report['env']['device_name']}), {args.dtype}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"torchopt {report['env']['torchopt']}")
    print(f"MLP 784-256-10, batch 512 + 512, {n_w} weights, {n_w} hyperparameters, decay "
          f"{args.decay:g}; after {args.adam_steps} Adam + <={args.lbfgs_steps} L-BFGS steps: "
          f"train loss {fit['train_loss']:.4f} (|grad| {fit['train_grad_norm']:.1e}), "
          f"val loss {fit['val_loss']:.4f}, accuracy {fit['train_acc']:.3f}/{fit['val_acc']:.3f}")
    print(f"Largest Hessian eigenvalue (power iteration) {top:.4g}: alpha = {args.alpha:g}, "
          f"alpha * lambda_max = {args.alpha * top:.3g}"
          + (" < 2" if args.alpha * top < 2 else "  (>= 2: the Neumann series may diverge!)"))
    if cg_ok >= max(steps):
        print(f"CG on H x = dL_V/dw meets positive curvature for its first "
              f"{cg_ok if cg_ok < cg_limit else f'{cg_limit} (or more)'} steps, "
              f">= the largest i = {max(steps)}: ours and torchopt's CG do the same iterations")
    else:
        print(f"WARNING: CG on H x = dL_V/dw meets non-positive curvature at step {cg_ok + 1}: "
              f"ours stops there, torchopt's goes on, so CG with i > {cg_ok} is not the same "
              "work (try another --seed)")

    targets: dict[str, bool] = {}
    if not args.trajectory_only:
        targets = fixed_point_sections(problem, args, device, steps, use_torchopt, report,
                                       solver_warnings, resident)
    if args.trajectory_steps > 0:  # last: it moves the weights and hyperparameters
        report["trajectory"] = trajectory(problem, args, device)

    report["solver_warnings"] = dict(solver_warnings)
    report["targets"] = targets
    report["wall_s"] = time.perf_counter() - wall
    print("\nwarnings, all sections: " + _solver_warning_line(solver_warnings))
    print(f"total wall time {report['wall_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    return report



def fixed_point_sections(problem: Problem, args: argparse.Namespace, device: torch.device,
                         steps: list[int], use_torchopt: bool, report: dict,
                         solver_warnings: dict[str, int], resident: int) -> dict[str, bool]:
    """Sections 1-3 at the pretrained weights: agreement, cost, memory; returns the targets."""
    # -- methods ---------------------------------------------------------------------------
    methods: dict[str, Callable[[], Tensors]] = {"grad": train_gradient(problem)}
    for i in steps:
        methods[f"ours-neumann-{i}"] = ours(problem, Neumann(steps=i, alpha=args.alpha))
        methods[f"ours-cg-{i}"] = ours(problem, ConjugateGradient(steps=i, tol=0.0))
        if use_torchopt:
            ls = torchopt.linear_solve
            methods[f"torchopt-neumann-{i}"] = with_torchopt(
                problem, ls.solve_inv(ns=True, maxiter=i, alpha=args.alpha))
            methods[f"torchopt-cg-{i}"] = with_torchopt(
                problem, ls.solve_cg(maxiter=i, rtol=0.0, atol=0.0))

    # -- agreement and work done (also a first warm-up) ----------------------------------
    # Runs every method once, through solvers wrapped to count the Hessian-vector products
    # (the timed methods are not wrapped).
    agreement: dict[str, dict[str, float]] = {}
    for kind in ("neumann", "cg"):
        for i in steps:
            entry: dict[str, float] = {}
            caught: dict[str, int] = {}
            counter = HVPCounter()
            solver = Neumann(steps=i, alpha=args.alpha) if kind == "neumann" else \
                ConjugateGradient(steps=i, tol=0.0)
            with count_warnings(caught):
                a = ours(problem, counter.solver(solver))()
            entry["hvps_ours"] = counter.calls
            entry["norm_ours"] = _norm(a)
            if use_torchopt:
                counter = HVPCounter()
                ls = torchopt.linear_solve
                solve = ls.solve_inv(ns=True, maxiter=i, alpha=args.alpha) if kind == "neumann" \
                    else ls.solve_cg(maxiter=i, rtol=0.0, atol=0.0)
                with count_warnings(caught):
                    b = with_torchopt(problem, counter.solver(solve))()
                entry["hvps_torchopt"] = counter.calls
                entry["rel_diff"] = relative_difference(a, b)
            entry["warnings"] = sum(caught.values())
            for k, v in caught.items():
                solver_warnings[k] = solver_warnings.get(k, 0) + v
            agreement[f"{kind}-{i}"] = entry
            with count_warnings(solver_warnings):  # warm the timed callables too
                methods[f"ours-{kind}-{i}"]()
                if use_torchopt:
                    methods[f"torchopt-{kind}-{i}"]()
    report["agreement"] = agreement
    print("\nWork and agreement, one call each: Hessian-vector products done, and "
          "|ours - torchopt| / |torchopt|")
    print(f"{'solver':>8} {'i':>4} {'ours HVPs':>10}"
          + (f" {'torchopt HVPs':>14} {'rel. difference':>16}" if use_torchopt else "")
          + f" {'warnings':>9}")
    for kind in ("neumann", "cg"):
        for i in steps:
            e = agreement[f"{kind}-{i}"]
            print(f"{kind:>8} {i:>4} {e['hvps_ours']:>10}"
                  + (f" {e['hvps_torchopt']:>14} {e['rel_diff']:>16.1e}" if use_torchopt else "")
                  + f" {e['warnings']:>9}")

    # -- timing ----------------------------------------------------------------------------
    with count_warnings(solver_warnings):
        samples = time_round_robin(methods, device, warmup=args.warmup, repeats=args.repeats)
    median = {name: statistics.median(s) for name, s in samples.items()}
    unit = median["grad"]
    cost = {name: t / unit for name, t in median.items()}
    report["timing"] = {
        "unit_gradient_ms": unit * 1e3,
        "median_ms": {k: v * 1e3 for k, v in median.items()},
        "gradient_evaluations": cost,
        "samples_ms": {k: [x * 1e3 for x in v] for k, v in samples.items()},
    }
    print(f"\nTime per hypergradient, both forward passes included (median of {args.repeats} "
          f"interleaved rounds after {args.warmup} warm-up rounds).")
    print(f"GE = gradient evaluations; 1 GE = one forward + backward of the training loss = "
          f"{unit * 1e3:.3f} ms")
    header = f"{'solver':>8} {'i':>4} {'ours ms':>9} {'ours GE':>8}"
    if use_torchopt:
        header += f" {'torchopt ms':>12} {'torchopt GE':>12} {'ours/torchopt':>14}"
    print(header)
    ratios: dict[str, float] = {}
    for kind in ("neumann", "cg"):
        for i in steps:
            o = f"ours-{kind}-{i}"
            line = f"{kind:>8} {i:>4} {median[o] * 1e3:>9.2f} {cost[o]:>8.2f}"
            if use_torchopt:
                t = f"torchopt-{kind}-{i}"
                ratios[f"{kind}-{i}"] = median[o] / median[t]
                line += (f" {median[t] * 1e3:>12.2f} {cost[t]:>12.2f}"
                         f" {ratios[f'{kind}-{i}']:>14.3f}")
            print(line)
    report["timing"]["ours_over_torchopt"] = ratios

    fits: dict[str, dict[str, float]] = {}
    print("Least-squares fit over i: cost in GE = slope * i + intercept")
    for who in ("ours", "torchopt") if use_torchopt else ("ours",):
        for kind in ("neumann", "cg"):
            slope, intercept = fit_line(steps, [cost[f"{who}-{kind}-{i}"] for i in steps])
            fits[f"{who}-{kind}"] = {"slope": slope, "intercept": intercept}
            print(f"  {who:>8} {kind:>7}: slope {slope:.3f}, intercept {intercept:.2f}")
    report["timing"]["fit"] = fits

    targets: dict[str, bool] = {}
    print("Targets:")
    for kind in ("neumann", "cg"):
        ok = all(cost[f"ours-{kind}-{i}"] <= 0.8 * i + 2 for i in steps)
        targets[f"ours {kind} cost <= 0.8 i + 2 GE"] = ok
        per_i = ", ".join(f"i={i}: {cost[f'ours-{kind}-{i}']:.2f} vs {0.8 * i + 2:.1f}"
                          for i in steps)
        print(f"  ours {kind:>7} cost <= 0.8 i + 2 GE: {'HOLDS' if ok else 'FAILS'} ({per_i})")
    if use_torchopt and 10 in steps:
        for kind in ("neumann", "cg"):
            ok = ratios[f"{kind}-10"] <= 0.7
            targets[f"ours {kind} <= 0.7x torchopt at i=10"] = ok
            print(f"  ours {kind:>7} <= 0.7x torchopt at i=10: {'HOLDS' if ok else 'FAILS'} "
                  f"(ratio {ratios[f'{kind}-10']:.3f})")

    # -- memory ----------------------------------------------------------------------------
    if not args.no_memory:
        mem_steps = sorted(set(args.memory_steps))
        memory: dict[str, dict[int, int]] = {"ours-neumann": {}, "unrolled": {}}
        theorem2: dict[int, float] = {}
        with count_warnings(solver_warnings):
            for i in mem_steps:
                fn = ours(problem, Neumann(steps=i, alpha=args.alpha))
                fn()  # warm: lazy initialisation must not count
                memory["ours-neumann"][i] = peak_memory(fn, device)
                memory["unrolled"][i] = peak_memory(unrolled(problem, i, args.unrolled_lr), device)
                # Theorem 2 of the paper: i unrolled SGD steps from an optimum = Neumann(i - 1)
                # with alpha = lr. A check of the unrolled baseline (approximate: the weights
                # are only near the optimum).
                theorem2[i] = relative_difference(
                    unrolled(problem, i, args.unrolled_lr)(),
                    ours(problem, Neumann(steps=i - 1, alpha=args.unrolled_lr))())
            grad_peak = peak_memory(train_gradient(problem), device)
        lo, hi = mem_steps[0], mem_steps[-1]
        added_ratio = {k: v[hi] / v[lo] for k, v in memory.items()}
        total_ratio = {k: (v[hi] + resident) / (v[lo] + resident) for k, v in memory.items()}
        target_key = f"ours Neumann peak memory i={hi} / i={lo} within 5%"
        targets[target_key] = abs(added_ratio["ours-neumann"] - 1) <= 0.05
        report["memory"] = {
            "method": "torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "torch.profiler profile_memory allocation replay",
            "added_peak_bytes": {k: {str(i): b for i, b in v.items()} for k, v in memory.items()},
            "resident_bytes": resident,
            "gradient_added_peak_bytes": grad_peak,
            "ratio_added": added_ratio,
            "ratio_with_resident": total_ratio,
            "unrolled_lr": args.unrolled_lr,
            "theorem2_rel_diff_unrolled_vs_neumann": {str(k): v for k, v in theorem2.items()},
        }
        mib = 2.0**20
        print(f"\nPeak memory, MiB ({report['memory']['method']}): 'added' = peak above the "
              f"memory live before the call; the weights, hyperparameters and data add "
              f"{resident / mib:.2f} MiB for the total. One training gradient adds "
              f"{grad_peak / mib:.2f} MiB.")
        print(f"{'i':>5} {'ours Neumann(i) added':>22} {'total':>7} {'unrolled(i) added':>18} "
              f"{'total':>8} {'unrolled(i) vs Neumann(i-1)':>28}")
        for i in mem_steps:
            o, u = memory["ours-neumann"][i], memory["unrolled"][i]
            print(f"{i:>5} {o / mib:>22.2f} {(o + resident) / mib:>7.2f} {u / mib:>18.2f} "
                  f"{(u + resident) / mib:>8.2f} {theorem2[i]:>28.1e}")
        print(f"ratio i={hi} / i={lo}: ours {added_ratio['ours-neumann']:.3f} added, "
              f"{total_ratio['ours-neumann']:.3f} total; unrolled {added_ratio['unrolled']:.1f} "
              f"added, {total_ratio['unrolled']:.1f} total")
        if len(mem_steps) > 2:
            mid = mem_steps[1]
            print(f"ratio i={hi} / i={mid}: ours "
                  f"{memory['ours-neumann'][hi] / memory['ours-neumann'][mid]:.3f} added")
        print(f"  target {target_key} (added): "
              f"{'HOLDS' if targets[target_key] else 'FAILS'}")

    if args.profile:
        report["profile"] = profile_tables(problem, methods, steps[len(steps) // 2], use_torchopt)
    return targets


def profile_tables(problem, methods, i, use_torchopt) -> dict[str, str]:
    """torch.profiler tables (self time per operator) of ours and torchopt, Neumann(i)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if problem.weights[0].is_cuda:
        activities.append(ProfilerActivity.CUDA)
    tables = {}
    names = [f"ours-neumann-{i}"] + ([f"torchopt-neumann-{i}"] if use_torchopt else [])
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            methods[name]()
            with _quiet_stderr(), profile(activities=activities) as prof:
                for _ in range(5):
                    methods[name]()
                synchronize(problem.weights[0].device)
        sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=15)
        tables[name] = table
        print(f"\nProfile of {name} (5 calls):\n{table}")
    return tables


if __name__ == "__main__":
    main()
