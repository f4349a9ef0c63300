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

1. cost: the time of one hypergradient (both forward passes included) in units of one training
   gradient (forward + ``torch.autograd.grad`` of ``L_T`` wrt the weights), for each ``i``; a
   least-squares line ``cost = slope * i + intercept``; ours / torchopt time ratios. Methods run
   in one process, interleaved round-robin in every repeat (the order rotates from repeat to
   repeat), after warm-up; the median of the repeats is reported.
2. agreement: relative difference between our hypergradient and torchopt's, same ``i``.
3. memory: peak memory of ours (Neumann) and of unrolled differentiation against ``i``.

Conventions (checked in section 2, see also benchmarks/README.md):

* torchopt's ``linalg.ns(matvec, b, maxiter=i, alpha=a)`` returns ``a * sum_{j=0..i} (I - a A)^j b``
  with ``i`` matrix-vector products: exactly our ``Neumann(steps=i, alpha=a)``. (Its *matrix*
  form ``linalg.ns_inv`` sums only ``j = 0..i-1``; it is not used by ``solve_inv(ns=True)``.)
* torchopt's ``linalg.cg`` starts with ``r0 = b - A(x0)``, one product more than ours even at
  ``x0 = 0``: ``maxiter=i`` costs ``i + 1`` Hessian-vector products, ours ``i``; both run
  exactly ``i`` CG iterations here (``tol=0`` / ``rtol=atol=0``: no early stop).

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
    Neumann,
    NeumannDivergenceWarning,
    NonPositiveCurvatureWarning,
    hypergradient,
    power_iteration,
    unrolled_hypergradient,
)
from optuna_ift.hypergrad import train_gradient_hvp

try:
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
    All randomness comes from one ``torch.Generator``; global RNG state is never touched.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
        d_in: int = 784,
        hidden: int = 256,
        classes: int = 10,
        batch: int = 512,
        log_decay: float = math.log(1e-3),
    ) -> None:
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen, dtype=torch.float64)

        # Gaussian mixture: one mean per class, unit noise. Generated on the CPU in float64 so
        # the data do not depend on the device or dtype of the run.
        means = randn(classes, d_in) * (2.0 / math.sqrt(d_in)) * 3.0

        def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(classes, (n,), generator=gen)
            x = means[y] + randn(n, d_in)
            return x.to(device, dtype), y.to(device)

        self.x_train, self.y_train = sample(batch)
        self.x_val, self.y_val = sample(batch)
        init = (
            randn(d_in, hidden) * math.sqrt(2.0 / d_in),
            torch.zeros(hidden, dtype=torch.float64),
            randn(hidden, classes) * math.sqrt(1.0 / hidden),
            torch.zeros(classes, dtype=torch.float64),
        )
        self.weights: Tensors = tuple(w.to(device, dtype).requires_grad_() for w in init)
        self.hparams: Tensors = tuple(
            torch.full_like(w, log_decay).requires_grad_() for w in self.weights
        )

    @staticmethod
    def logits(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = weights
        return torch.relu(x @ w1 + b1) @ w2 + b2

    def train_loss(self, weights: Sequence[torch.Tensor], hparams: Sequence[torch.Tensor]):
        ce = F.cross_entropy(self.logits(weights, self.x_train), self.y_train)
        decay = sum((h.exp() * w * w).sum() for w, h in zip(weights, hparams))
        return ce + decay / 2

    def val_loss(self, weights: Sequence[torch.Tensor], hparams: Sequence[torch.Tensor]):
        del hparams  # no direct dependence: the hypergradient is all response
        return F.cross_entropy(self.logits(weights, self.x_val), self.y_val)

    def pretrain(self, steps: int, lr: float) -> dict[str, float]:
        """Adam on the training loss, so the weights are near its minimum (the IFT premise)."""
        weights = [w.detach().clone().requires_grad_() for w in self.weights]
        opt = torch.optim.Adam(weights, lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = self.train_loss(weights, [h.detach() for h in self.hparams])
            loss.backward()
            opt.step()
        self.weights = tuple(w.detach().requires_grad_() for w in weights)
        loss = self.train_loss(self.weights, self.hparams)
        grad = torch.autograd.grad(loss, self.weights)
        with torch.no_grad():
            acc_t = (self.logits(self.weights, self.x_train).argmax(1) == self.y_train).float()
            acc_v = (self.logits(self.weights, self.x_val).argmax(1) == self.y_val).float()
        return {
            "train_loss": float(loss),
            "val_loss": float(self.val_loss(self.weights, self.hparams)),
            "train_grad_norm": float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grad]))),
            "train_acc": float(acc_t.mean()),
            "val_acc": float(acc_v.mean()),
        }

    def spectrum(self, iters: int, seed: int) -> tuple[float, float]:
        """Estimates of the largest and smallest Hessian eigenvalues (power iteration).

        Largest: power iteration from a random start. Smallest: power iteration on
        ``lambda_max I - H``. Both are estimates (a few dozen HVPs), good enough to choose alpha.
        """
        gen = torch.Generator(device="cpu").manual_seed(seed)
        _, hvp = train_gradient_hvp(self.train_loss(self.weights, self.hparams), self.weights)
        start = tuple(
            torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.device, w.dtype)
            for w in self.weights
        )
        top = float(power_iteration(hvp, start, steps=iters))

        def shifted(v: Tensors) -> Tensors:
            return tuple(top * x - hx for x, hx in zip(v, hvp(v)))

        bottom = top - float(power_iteration(shifted, start, steps=iters))
        return top, bottom


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

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    memory allocated before the call.

    CPU: there is no CPU counterpart of ``max_memory_allocated``, and peak RSS is blurred by the
    allocator (glibc keeps freed heap, the interpreter and libraries dominate). Instead the call
    runs under ``torch.profiler`` with ``profile_memory=True``, which makes PyTorch's CPU
    allocator report every allocation and free (pointer and size) to the profiler. We replay
    those events: add every allocation made inside the call, subtract frees of those same
    pointers (frees of tensors that existed before the call are ignored, so the number is the
    peak of memory *added* by the call), and keep the maximum. This counts exactly the bytes of
    tensor storage (activations, autograd graphs, solver vectors), on every thread the profiler
    follows (the CPU autograd engine runs on the calling thread).
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
    """Record (not print) solver warnings, counting them by class name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        name = w.category.__name__
        counter[name] = counter.get(name, 0) + 1
        if not issubclass(w.category, (NeumannDivergenceWarning, NonPositiveCurvatureWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20],
                   help="solver steps i (HVPs) for the cost and agreement sections")
    p.add_argument("--memory-steps", type=int, nargs="+", default=[1, 10, 100],
                   help="i for the memory section (Neumann steps / unrolled SGD steps)")
    p.add_argument("--alpha", type=float, default=10.0,
                   help="Neumann step alpha, the same for ours and torchopt (needs "
                        "alpha * lambda_max < 2; the run prints lambda_max)")
    p.add_argument("--unrolled-lr", type=float, default=1e-3, help="SGD lr of unrolled_hypergradient")
    p.add_argument("--pretrain-steps", type=int, default=300, help="Adam steps before measuring")
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--no-torchopt", action="store_true", help="skip torchopt")
    p.add_argument("--no-memory", action="store_true", help="skip the memory section")
    p.add_argument("--profile", action="store_true",
                   help="also print a torch.profiler table of ours and torchopt, Neumann at the "
                        "middle --steps value")
    p.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    args = p.parse_args(argv)
    if min(args.steps) < 1 or min(args.memory_steps) < 1:
        p.error("--steps and --memory-steps must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
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
        "config": {k: v for k, v in vars(args).items()},
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchopt": getattr(torchopt, "__version__", None),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
        },
    }
    wall = time.perf_counter()

    # -- problem ---------------------------------------------------------------------------
    problem = Problem(device=device, dtype=dtype, seed=args.seed)
    fit = problem.pretrain(args.pretrain_steps, args.pretrain_lr)
    top, bottom = problem.spectrum(iters=30, seed=args.seed + 1)
    report["problem"] = {**fit, "lambda_max": top, "lambda_min_estimate": bottom,
                         "alpha_times_lambda_max": args.alpha * top}
    n_w = sum(w.numel() for w in problem.weights)
    print(f"device {device} ({report['env']['device_name']}), {args.dtype}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"torchopt {report['env']['torchopt']}")
    print(f"MLP 784-256-10, batch 512 + 512, {n_w} weights, {n_w} hyperparameters; after "
          f"{args.pretrain_steps} Adam steps: train loss {fit['train_loss']:.4f} "
          f"(|grad| {fit['train_grad_norm']:.2e}), val loss {fit['val_loss']:.4f}, "
          f"accuracy {fit['train_acc']:.3f}/{fit['val_acc']:.3f}")
    print(f"Hessian eigenvalue estimates: max {top:.4g}, min {bottom:.4g}; "
          f"alpha = {args.alpha:g}, alpha * lambda_max = {args.alpha * top:.3g}"
          + ("" if args.alpha * top < 2 else "  (>= 2: the Neumann series may diverge!)"))

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

    # -- agreement (also a warm-up) --------------------------------------------------------
    solver_warnings: dict[str, int] = {}
    agreement: dict[str, dict[str, float]] = {}
    results: dict[str, Tensors] = {}
    with count_warnings(solver_warnings):
        for name, fn in methods.items():
            if name != "grad":
                results[name] = fn()
    for kind in ("neumann", "cg"):
        for i in steps:
            a = results[f"ours-{kind}-{i}"]
            entry = {"norm": float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in a])))}
            if use_torchopt:
                entry["rel_diff_vs_torchopt"] = relative_difference(a, results[f"torchopt-{kind}-{i}"])
            agreement[f"{kind}-{i}"] = entry
    # Accuracy of the solves themselves, against a long CG run (for orientation only).
    with count_warnings(solver_warnings):
        reference = ours(problem, ConjugateGradient(steps=200, tol=1e-8))()
    for kind in ("neumann", "cg"):
        for i in steps:
            agreement[f"{kind}-{i}"]["rel_err_vs_cg200"] = relative_difference(
                results[f"ours-{kind}-{i}"], reference)
    report["agreement"] = agreement
    report["solver_warnings"] = dict(solver_warnings)
    del results

    print("\nAgreement: relative l2 difference of the hypergradients (|a - b| / |b|)")
    print(f"{'solver':>8} {'i':>4} {'ours vs torchopt':>17} {'ours vs CG(200)':>16}")
    for kind in ("neumann", "cg"):
        for i in steps:
            e = agreement[f"{kind}-{i}"]
            tor = f"{e['rel_diff_vs_torchopt']:.2e}" if use_torchopt else "-"
            print(f"{kind:>8} {i:>4} {tor:>17} {e['rel_err_vs_cg200']:>16.2e}")
    print("solver warnings during these runs: "
          + (", ".join(f"{k} x{v}" for k, v in solver_warnings.items()) or "none"))

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
    print(f"\nCost per hypergradient (median of {args.repeats}, after {args.warmup} warm-up "
          f"rounds, interleaved); 1 gradient evaluation = {unit * 1e3:.2f} ms")
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
    print("\nLeast-squares fit, cost in gradient evaluations = slope * i + intercept")
    for who in ("ours", "torchopt") if use_torchopt else ("ours",):
        for kind in ("neumann", "cg"):
            slope, intercept = fit_line(steps, [cost[f"{who}-{kind}-{i}"] for i in steps])
            fits[f"{who}-{kind}"] = {"slope": slope, "intercept": intercept}
            print(f"  {who:>8} {kind:>8}: slope {slope:.3f}, intercept {intercept:.2f}")
    report["timing"]["fit"] = fits

    targets: dict[str, bool] = {}
    for kind in ("neumann", "cg"):
        targets[f"cost<=0.8i+2 ours-{kind}"] = all(
            cost[f"ours-{kind}-{i}"] <= 0.8 * i + 2 for i in steps)
        if use_torchopt and 10 in steps:
            targets[f"ours<=0.7x torchopt at i=10 ({kind})"] = ratios[f"{kind}-10"] <= 0.7
    print("Targets:")
    for kind in ("neumann", "cg"):
        per_i = ", ".join(f"i={i}: {cost[f'ours-{kind}-{i}']:.2f} vs {0.8 * i + 2:.1f}"
                          for i in steps)
        ok = targets[f"cost<=0.8i+2 ours-{kind}"]
        print(f"  ours {kind:>7} cost <= 0.8 i + 2: {'HOLDS' if ok else 'FAILS'} ({per_i})")
    for kind in ("neumann", "cg"):
        key = f"ours<=0.7x torchopt at i=10 ({kind})"
        if key in targets:
            print(f"  ours {kind:>7} <= 0.7x torchopt at i=10: "
                  f"{'HOLDS' if targets[key] else 'FAILS'} (ratio {ratios[f'{kind}-10']:.3f})")

    # -- memory ----------------------------------------------------------------------------
    if not args.no_memory:
        mem_steps = sorted(set(args.memory_steps))
        memory: dict[str, dict[int, int]] = {"ours-neumann": {}, "unrolled": {}}
        with count_warnings(solver_warnings):
            for i in mem_steps:
                fn = ours(problem, Neumann(steps=i, alpha=args.alpha))
                fn()  # warm (lazy initialisation must not count)
                memory["ours-neumann"][i] = peak_memory(fn, device)
                memory["unrolled"][i] = peak_memory(unrolled(problem, i, args.unrolled_lr), device)
            grad_peak = peak_memory(train_gradient(problem), device)
        lo, hi = mem_steps[0], mem_steps[-1]
        mem_ratios = {k: v[hi] / v[lo] for k, v in memory.items()}
        report["memory"] = {
            "method": "torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "torch.profiler profile_memory allocation replay",
            "peak_bytes": {k: {str(i): b for i, b in v.items()} for k, v in memory.items()},
            "gradient_peak_bytes": grad_peak,
            f"ratio_{hi}_over_{lo}": mem_ratios,
            "unrolled_lr": args.unrolled_lr,
        }
        targets[f"memory ours i={hi}/i={lo} within 5%"] = abs(mem_ratios["ours-neumann"] - 1) <= 0.05
        mib = 2.0**20
        print(f"\nPeak memory above the weights and data, MiB ({report['memory']['method']}); "
              f"one training gradient: {grad_peak / mib:.2f} MiB")
        print(f"{'i':>5} {'ours Neumann(i)':>16} {'unrolled(steps=i)':>18}")
        for i in mem_steps:
            print(f"{i:>5} {memory['ours-neumann'][i] / mib:>16.2f} {memory['unrolled'][i] / mib:>18.2f}")
        print(f"ratio i={hi} / i={lo}: ours {mem_ratios['ours-neumann']:.3f} "
              f"(target within 5%: {'HOLDS' if targets[f'memory ours i={hi}/i={lo} within 5%'] else 'FAILS'}), "
              f"unrolled {mem_ratios['unrolled']:.1f}")

    if args.profile:
        report["profile"] = profile_tables(problem, methods, steps[len(steps) // 2], use_torchopt)

    report["solver_warnings"] = dict(solver_warnings)
    report["targets"] = targets
    report["wall_s"] = time.perf_counter() - wall
    print("\nsolver warnings (all sections): "
          + (", ".join(f"{k} x{v}" for k, v in solver_warnings.items()) or "none"))
    print(f"total wall time {report['wall_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    return report


def profile_tables(problem, methods, i, use_torchopt) -> dict[str, str]:
    """torch.profiler tables (self time per operator) of ours and torchopt, Neumann(i)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and problem.weights[0].is_cuda:
        activities.append(ProfilerActivity.CUDA)
    tables = {}
    names = [f"ours-neumann-{i}"] + ([f"torchopt-neumann-{i}"] if use_torchopt else [])
    for name in names:
        methods[name]()
        with _quiet_stderr(), profile(activities=activities) as prof:
            for _ in range(5):
                methods[name]()
        sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=15)
        tables[name] = table
        print(f"\nProfile of {name} (5 calls):\n{table}")
    return tables


if __name__ == "__main__":
    main()
