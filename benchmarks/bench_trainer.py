"""Joint training (Algorithm 1) against plain training of the same model, in one process.

Part 1, the cost of tuning: an MLP ``784-hidden-10`` (and a small CNN) with a weight decay per
weight (one hyperparameter per weight and bias), batch 128, trained

* plainly: Adam steps on ``CE + decay penalty`` with the decays fixed, by the same
  :class:`optuna_ift.HyperTrainer` in weights-only mode (``hyper_optimizer=None``);
* jointly: :class:`optuna_ift.HyperTrainer` with ``inner_steps = N`` (default 10) and each
  solver of ``--solvers`` (default: ``Neumann(steps=5)`` and the trainer's default), the same
  Adam steps plus one hyper step every N of them;
* by hand: the plain Adam steps in a hand-written PyTorch loop, to show what the trainer's own
  loop costs (weights-only trainer / hand loop).

Both run interleaved in rounds (joint, plain, joint, plain, ...; the order alternates) and the
median time per weight step is compared: ``joint / plain``. Peak tensor memory of one block of
``N`` weight steps (+ the hyper step for the joint run) is measured as in
``bench_hypergradient.py`` (CUDA: ``max_memory_allocated`` above what was allocated before;
CPU: the profiler's allocation events replayed), and reported both alone ("added") and on top
of the tensors the run keeps between steps (model, optimizer states, the data in memory).

Part 2, scale: the same joint training (the trainer's default solver) on a wider MLP with at
least ``--million`` million hyperparameters, reporting hyper steps and weight steps per second.

Part 3, data from a ``DataLoader`` (with ``--data-root``, a folder holding ``MNIST/raw``):
MNIST read from its files, each image read from disk and transformed in ``num_workers``
worker processes (default 2), batches of 128. The same MLP is trained jointly
and plainly from that loader, and jointly and plainly from a ``TensorBatches`` over the same
images already transformed in memory, all interleaved: joint / plain from the loader, and the
loader against ``TensorBatches`` at the same batch size (the price of reading and
transforming on the fly; the trainer itself does the same work for both).

Part 4, outcome (what a cheaper solver costs in results): the demo's objective on digits
(an MLP with a decay per weight) for four fixed trial configurations and a few seeds, run with
each solver of ``--solvers``: mean final validation loss and test accuracy of the same trials.

Run ``python benchmarks/bench_trainer.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optuna_ift import ConjugateGradient, Identity, Neumann
from optuna_ift.hypergrad import Nystrom, WarmConjugateGradient, WarmNeumann
from optuna_ift.hyperparams import WeightDecay
from optuna_ift.trainer import DEFAULT_SOLVER, HyperTrainer, resolve_device

sys.path.insert(0, str(Path(__file__).parent))
from bench_hypergradient import peak_memory, synchronize  # noqa: E402


class DecayedMLP(nn.Module):
    """``kind="mlp"``: 784-hidden-10; ``kind="cnn"``: two 3x3 conv layers of ``hidden`` and
    ``2 hidden`` channels with pooling, on 28x28 images; a decay per weight either way."""

    def __init__(self, hidden: int, *, init: float, kind: str = "mlp") -> None:
        super().__init__()
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        else:
            self.net = nn.Sequential(
                nn.Unflatten(1, (1, 28, 28)),
                nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(hidden, 2 * hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(2 * hidden * 49, 10),
            )
        self.decay = WeightDecay(self.net, mode="per_weight", init=init, include_biases=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y) + model.decay(model.net)


def val_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def mixture(n: int, generator: torch.Generator, device: torch.device):
    """Ten Gaussian classes in 784 dimensions (the timing does not depend on the data)."""
    means = torch.randn(10, 784, generator=generator) * 0.5
    y = torch.randint(10, (n,), generator=generator)
    x = means[y] + torch.randn(n, 784, generator=generator)
    return x.to(device), y.to(device)


SOLVERS = {"identity": lambda: Identity(),
           "neumann": lambda k: Neumann(steps=k, alpha="auto"),
           "cg": lambda k: ConjugateGradient(steps=k),
           "warm-neumann": lambda k: WarmNeumann(steps=k),
           "warm-cg": lambda k: WarmConjugateGradient(steps=k),
           "nystrom": lambda k, every=10: Nystrom(rank=k, refresh_every=every)}


def solver_options(spec: str) -> dict:
    """``HyperTrainer`` options of a solver spec: ``default`` (the trainer's own defaults),
    ``identity`` (no HVP: the floor of a hyper step's cost), ``neumann:5``,
    ``warm-neumann:1``, ``warm-cg:2``, ``nystrom:20:10`` (rank, refresh), each optionally
    followed by ``@rows``, the ``hessian_batch_size``."""
    name, _, rows = spec.partition("@")
    options: dict = {} if not rows else {"hessian_batch_size": int(rows)}
    if name != "default":
        kind, *numbers = name.split(":")
        if kind not in SOLVERS or (not numbers and kind != "identity"):
            raise SystemExit(f"--solvers: unknown spec {spec!r}; e.g. default, neumann:5, "
                             f"warm-neumann:1@32, nystrom:20:10 (kinds {sorted(SOLVERS)})")
        options["solver"] = SOLVERS[kind](*map(int, numbers))
    return options


def make_joint(hidden: int, args, device, generator, kind: str = "mlp",
               spec: str = "default") -> HyperTrainer:
    torch.manual_seed(args.seed)
    model = DecayedMLP(hidden, init=1e-4, kind=kind)
    return HyperTrainer(
        model, train_loss=train_loss, val_loss=val_loss,
        train_data=mixture(4096, generator, device), val_data=mixture(1024, generator, device),
        batch_size=args.batch, inner_steps=args.inner,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        hyper_optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-2),
        device=device, progress=False, seed=args.seed, **solver_options(spec),
    )


def make_plain(hidden: int, args, device, generator, kind: str = "mlp") -> HyperTrainer:
    """The same model, data and Adam steps with the decays fixed: the weights-only trainer."""
    torch.manual_seed(args.seed)
    model = DecayedMLP(hidden, init=1e-4, kind=kind)
    return HyperTrainer(
        model, train_loss=train_loss, val_loss=val_loss,
        train_data=mixture(4096, generator, device), batch_size=args.batch,
        inner_steps=args.inner, weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        hyper_optimizer=None, device=device, progress=False, seed=args.seed,
    )


class HandLoop:
    """The plain Adam steps written by hand: what a PyTorch user's own loop costs."""

    def __init__(self, hidden: int, args, device, generator, kind: str = "mlp") -> None:
        torch.manual_seed(args.seed)
        self.model = DecayedMLP(hidden, init=1e-4, kind=kind).to(device)
        self.x, self.y = mixture(4096, generator, device)
        self.batch = args.batch
        self.generator = torch.Generator().manual_seed(args.seed)
        self.weights = list(self.model.net.parameters())
        self.optimizer = torch.optim.Adam(self.weights, lr=1e-3)
        self.order, self.position = torch.randperm(len(self.y), generator=self.generator), 0

    def steps(self, count: int) -> None:
        for _ in range(count):
            if self.position + self.batch > len(self.y):
                self.order = torch.randperm(len(self.y), generator=self.generator)
                self.position = 0
            index = self.order[self.position:self.position + self.batch].to(self.x.device)
            self.position += self.batch
            loss = train_loss(self.model, (self.x[index], self.y[index]))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=self.weights)
            self.optimizer.step()


def rounds_of(trainer: HyperTrainer, hyper_steps: int):
    """``run()`` that trains ``trainer`` ``hyper_steps`` more (hyper) steps."""
    return lambda: trainer.fit(trainer.hyper_step + hyper_steps)


def one_block(trainer: HyperTrainer):
    """``run()`` that trains one more block (N weight steps and the hyper step, if any)."""
    def run():
        trainer.fit(trainer.hyper_step + 1)
        return ()
    return run


def interleave(runs: dict, *, rounds: int, weight_steps: int, device) -> dict[str, list[float]]:
    """Seconds per weight step of each ``run()`` (each doing ``weight_steps`` weight steps),
    run round-robin ``rounds`` times with the order rotating every round."""
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            runs[name]()
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / weight_steps)
    return seconds


def resident_bytes(model: nn.Module, optimizers, data) -> int:
    """Bytes of the tensors a training run keeps between steps: the model's parameters and
    buffers, the optimizers' states and the data sets held in memory (each storage once)."""
    tensors = list(model.parameters()) + list(model.buffers()) + list(data)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def cost_of_tuning(args, device, kind: str, hidden: int, spec: str = "default") -> dict:
    joint = make_joint(hidden, args, device, torch.Generator().manual_seed(args.seed), kind,
                       spec)
    plain = make_plain(hidden, args, device, torch.Generator().manual_seed(args.seed), kind)
    hand = HandLoop(hidden, args, device, torch.Generator().manual_seed(args.seed), kind)
    block = args.inner  # weight steps per hyper step
    per_round = args.hyper_steps_per_round
    joint.fit(2)  # warm-up: the first eigenvalue estimate and allocations
    plain.fit(2)
    hand.steps(2 * block)
    seconds = interleave({"joint": rounds_of(joint, per_round),
                          "plain": rounds_of(plain, per_round),
                          "hand": lambda: hand.steps(per_round * block)},
                         rounds=args.rounds, weight_steps=per_round * block, device=device)
    ms = {name: statistics.median(s) * 1e3 for name, s in seconds.items()}

    def hand_block():
        hand.steps(block)
        return ()

    memory = {"joint": peak_memory(one_block(joint), device),
              "plain": peak_memory(one_block(plain), device),
              "hand": peak_memory(hand_block, device)}
    resident = {
        "joint": resident_bytes(joint.model, [joint.weight_optimizer, joint.hyper_optimizer],
                                joint.train_data.tensors + joint.val_data.tensors),
        "plain": resident_bytes(plain.model, [plain.weight_optimizer],
                                plain.train_data.tensors),
        "hand": resident_bytes(hand.model, [hand.optimizer], (hand.x, hand.y)),
    }
    total = {k: memory[k] + resident[k] for k in memory}
    return {
        "model": kind, "hidden": hidden, "weights": sum(w.numel() for w in joint.weights),
        "hyperparameters": sum(h.numel() for h in joint.hyperparameters),
        "inner_steps": block, "solver": spec, "solver_repr": repr(joint.solver),
        "hessian_batch_size": joint.hessian_batch_size,
        "joint_ms_per_weight_step": ms["joint"], "plain_ms_per_weight_step": ms["plain"],
        "hand_ms_per_weight_step": ms["hand"],
        "time_ratio": ms["joint"] / ms["plain"],
        "trainer_overhead_ratio": ms["plain"] / ms["hand"],
        "joint_peak_bytes": memory["joint"], "plain_peak_bytes": memory["plain"],
        "hand_peak_bytes": memory["hand"],
        "added_memory_ratio": memory["joint"] / memory["plain"],
        "joint_resident_bytes": resident["joint"], "plain_resident_bytes": resident["plain"],
        "joint_total_bytes": total["joint"], "plain_total_bytes": total["plain"],
        "hand_total_bytes": total["hand"],
        "memory_ratio": total["joint"] / total["plain"],
        "skipped": joint.history.skipped,
        "samples_ms": {name: [t * 1e3 for t in s] for name, s in seconds.items()},
    }


def outcome(args, specs: list[str]) -> dict:
    """What each solver buys in the demo's setting: the demo's objective (an MLP on digits
    with a decay per weight, Adam on the log-decays) for four fixed (lr, width, inner_steps)
    configurations and ``--outcome-seeds`` seeds of the split; the final validation loss (the
    study's value) and the test accuracy of every trial, the same trials for every solver."""
    import tempfile

    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from optuna_ift.data import load_dataset
    from optuna_ift.experiments.demo import make_objective

    configs = [dict(lr=3e-3, width=64, inner_steps=5), dict(lr=1e-2, width=128, inner_steps=10),
               dict(lr=2e-2, width=32, inner_steps=2), dict(lr=5e-3, width=96, inner_steps=8)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict = {}
    for spec in specs:
        solver = solver_options(spec).get("solver") or DEFAULT_SOLVER
        values, tests, seconds = [], [], []
        for seed in range(args.outcome_seeds):
            data = load_dataset("digits", seed=seed)
            with tempfile.TemporaryDirectory() as folder:
                objective = make_objective(
                    data=data, artifact_store=FileSystemArtifactStore(folder),
                    hyper_steps=60, checkpoint_every=None, solver=solver, seed=seed,
                    device="cpu", init_decay=1e-3)  # a fixed start: the configs are fixed
                study = optuna.create_study()
                for config in configs:
                    study.enqueue_trial(config)
                start = time.perf_counter()
                study.optimize(objective, n_trials=len(configs))
                seconds.append(time.perf_counter() - start)
            values += [t.value for t in study.trials]
            tests += [t.user_attrs["ift:final_test_metric"] for t in study.trials]
        results[spec] = {"solver": repr(solver), "val_loss": values, "test_accuracy": tests,
                         "val_loss_mean": statistics.fmean(values),
                         "test_accuracy_mean": statistics.fmean(tests),
                         "seconds": sum(seconds)}
    first = specs[0]
    for spec in specs:
        r = results[spec]
        wins = sum(a < b for a, b in zip(r["val_loss"], results[first]["val_loss"]))
        r[f"val_loss_lower_than_{first}"] = wins
    return results


def scale(args, device) -> dict:
    # weights = 784 h + h + 10 h + 10; one hyperparameter per weight and bias.
    hidden = math.ceil((args.million * 1e6 - 10) / 795)
    generator = torch.Generator().manual_seed(args.seed)
    trainer = make_joint(hidden, args, device, generator)
    trainer.fit(1)
    synchronize(device)
    start = time.perf_counter()
    trainer.fit(1 + args.scale_hyper_steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    first, last = trainer.history.hyper_steps[1], trainer.history.hyper_steps[-1]
    return {
        "hidden": hidden,
        "hyperparameters": sum(h.numel() for h in trainer.hyperparameters),
        "weights": sum(w.numel() for w in trainer.weights),
        "hyper_steps": args.scale_hyper_steps, "seconds": seconds,
        "hyper_steps_per_second": args.scale_hyper_steps / seconds,
        "weight_steps_per_second": args.scale_hyper_steps * args.inner / seconds,
        "val_loss_first": first["val_loss"], "val_loss_last": last["val_loss"],
        "skipped": trainer.history.skipped,
    }


class IdxImages(torch.utils.data.Dataset):
    """MNIST images read one at a time from the unpacked IDX file on disk (a memory map), each
    scaled, normalised and flattened when it is read: the per-example work of a real
    pipeline."""

    def __init__(self, raw: Path, split: str, folder: Path) -> None:
        paths = {}
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            name = f"{split}-{kind}"
            target = folder / name
            if not target.exists():
                with gzip.open(raw / f"{name}.gz", "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            paths[kind] = (target, header)
        path, header = paths["labels-idx1-ubyte"]
        self.labels = np.memmap(path, dtype=np.uint8, mode="r", offset=header)
        path, header = paths["images-idx3-ubyte"]
        self.images = np.memmap(path, dtype=np.uint8, mode="r", offset=header).reshape(
            len(self.labels), 28, 28)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[index], dtype=np.float32))
        return ((image / 255 - 0.1307) / 0.3081).flatten(), torch.tensor(int(self.labels[index]))


def mnist_loaders(args, device) -> dict:
    """Part 3: joint and plain training from a DataLoader over MNIST's files against the
    same from TensorBatches over the same images in memory."""
    from torch.utils.data import DataLoader

    folder = tempfile.TemporaryDirectory(prefix="bench_trainer_")
    train_set = IdxImages(Path(args.data_root) / "MNIST" / "raw", "train", Path(folder.name))
    val_set = IdxImages(Path(args.data_root) / "MNIST" / "raw", "t10k", Path(folder.name))

    def loader(dataset, seed: int) -> DataLoader:
        return DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                          num_workers=args.workers, persistent_workers=args.workers > 0,
                          pin_memory=device.type == "cuda",
                          generator=torch.Generator().manual_seed(seed))

    def in_memory(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(dataset.images)).float().flatten(1)
        y = torch.from_numpy(np.array(dataset.labels)).long()
        return ((x / 255 - 0.1307) / 0.3081).to(device), y.to(device)

    def indexed(dataset, seed: int) -> DataLoader:
        """A DataLoader over the in-memory tensors that indexes a whole batch at once: no
        per-example work, so only the trainer's handling of a loader is measured."""
        tensors = torch.utils.data.TensorDataset(*in_memory(dataset))
        sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(
            tensors, generator=torch.Generator().manual_seed(seed)), args.batch, drop_last=True)
        return DataLoader(tensors, sampler=sampler, batch_size=None)

    def trainer(source: str, tune: bool) -> HyperTrainer:
        torch.manual_seed(args.seed)
        model = DecayedMLP(args.hidden, init=1e-4)
        if source == "loader":
            train, val = loader(train_set, args.seed), loader(val_set, args.seed + 1)
        elif source == "indexed":
            train, val = indexed(train_set, args.seed), indexed(val_set, args.seed + 1)
        else:
            train, val = in_memory(train_set), in_memory(val_set)
        return HyperTrainer(
            model, train_loss=train_loss, val_loss=val_loss, train_data=train, val_data=val,
            batch_size=args.batch, inner_steps=args.inner,
            weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
            hyper_optimizer=(lambda p: torch.optim.RMSprop(p, lr=1e-2)) if tune else None,
            device=device, progress=False, seed=args.seed,
            **solver_options(args.solvers.split(",")[-1]))

    trainers = {f"{kind}_{source}": trainer(source, kind == "joint")
                for source in ("loader", "indexed", "tensors") for kind in ("joint", "plain")}
    for t in trainers.values():
        t.fit(2)  # warm-up: workers started, first eigenvalue estimate
    per_round = args.hyper_steps_per_round
    seconds = interleave({name: rounds_of(t, per_round) for name, t in trainers.items()},
                         rounds=args.rounds, weight_steps=per_round * args.inner, device=device)
    ms = {name: statistics.median(s) * 1e3 for name, s in seconds.items()}
    skipped = trainers["joint_loader"].history.skipped
    trainers.clear()  # the loaders' worker processes end with them
    folder.cleanup()
    return {
        "workers": args.workers, "batch": args.batch, "hidden": args.hidden,
        "train_examples": len(train_set), "ms_per_weight_step": ms,
        "joint_over_plain_loader": ms["joint_loader"] / ms["plain_loader"],
        "joint_over_plain_tensors": ms["joint_tensors"] / ms["plain_tensors"],
        "loader_over_tensors_joint": ms["joint_loader"] / ms["joint_tensors"],
        "loader_over_tensors_plain": ms["plain_loader"] / ms["plain_tensors"],
        "indexed_over_tensors_joint": ms["joint_indexed"] / ms["joint_tensors"],
        "indexed_over_tensors_plain": ms["plain_indexed"] / ms["plain_tensors"],
        "skipped": skipped,
        "samples_ms": {name: [t * 1e3 for t in s] for name, s in seconds.items()},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16, help="CNN width")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--inner", type=int, default=10, help="N, weight steps per hyper step")
    parser.add_argument("--solvers", default="neumann:5,default",
                        help="comma-separated solver specs of the joint run, each measured "
                             "against the plain run: default (HyperTrainer's defaults), "
                             "neumann:5, warm-neumann:1, warm-cg:2, nystrom:20:10, each "
                             "optionally with @rows (hessian_batch_size)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--hyper-steps-per-round", type=int, default=10)
    parser.add_argument("--million", type=float, default=1.0,
                        help="millions of hyperparameters for the scale part")
    parser.add_argument("--scale-hyper-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", help="a folder holding MNIST/raw (the .gz files): adds "
                        "the DataLoader part")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--parts", default="cost,scale,loader,outcome",
                        help="comma-separated parts to run")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--outcome-seeds", type=int, default=3,
                        help="seeds of the outcome part (4 demo trials each per solver)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    print(f"device {device} ({platform.machine()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")

    parts = set(args.parts.split(","))
    results: dict = {"command": " ".join(sys.argv), "device": str(device)}
    models = (("mlp", args.hidden), ("cnn", args.channels)) if "cost" in parts else ()
    if models:
        results["cost"] = []
    specs = [spec for spec in args.solvers.split(",") if spec]
    for spec in specs:
        solver_options(spec)  # a bad spec fails before anything runs
    for (kind, hidden), spec in ((m, spec) for m in models for spec in specs):
        cost = cost_of_tuning(args, device, kind, hidden, spec)
        results["cost"].append(cost)
        name = f"MLP 784-{hidden}-10" if kind == "mlp" else f"CNN {hidden}-{2 * hidden} channels"
        goal = 1.3 if kind == "mlp" else 1.5
        print(f"\n{name}, batch {args.batch}, {cost['weights']} weights, "
              f"{cost['hyperparameters']} hyperparameters (a decay per weight); "
              f"N = {cost['inner_steps']}, solver {spec}: {cost['solver_repr']}, "
              f"hessian_batch_size {cost['hessian_batch_size']}")
        print(f"  time per weight step: joint {cost['joint_ms_per_weight_step']:.3f} ms, plain "
              f"{cost['plain_ms_per_weight_step']:.3f} ms -> ratio {cost['time_ratio']:.2f} "
              f"(goal <= {goal}: {'HOLDS' if cost['time_ratio'] <= goal else 'FAILS'})")
        print(f"  the trainer's own loop: weights-only trainer "
              f"{cost['plain_ms_per_weight_step']:.3f} ms, hand-written loop "
              f"{cost['hand_ms_per_weight_step']:.3f} ms -> ratio "
              f"{cost['trainer_overhead_ratio']:.3f}")
        print(f"  peak tensor memory added by a block of steps: joint "
              f"{cost['joint_peak_bytes'] / 2**20:.2f} MiB, plain "
              f"{cost['plain_peak_bytes'] / 2**20:.2f} MiB -> ratio "
              f"{cost['added_memory_ratio']:.2f}")
        print(f"  peak of all tensors (model, optimizer states and data included, as "
              f"max_memory_allocated counts them): joint {cost['joint_total_bytes'] / 2**20:.2f} "
              f"MiB, plain {cost['plain_total_bytes'] / 2**20:.2f} MiB -> ratio "
              f"{cost['memory_ratio']:.2f} "
              f"(target <= 1.5: {'HOLDS' if cost['memory_ratio'] <= 1.5 else 'FAILS'})")

    if "scale" in parts:
        big = results["scale"] = scale(args, device)
        print(f"\nScale: MLP 784-{big['hidden']}-10, {big['hyperparameters']:,} hyperparameters "
              f"tuned jointly with {big['weights']:,} weights")
        print(f"  {big['hyper_steps_per_second']:.2f} hyper steps/s, "
              f"{big['weight_steps_per_second']:.1f} weight steps/s; validation loss "
              f"{big['val_loss_first']:.4f} -> {big['val_loss_last']:.4f} over "
              f"{big['hyper_steps']} hyper steps, {big['skipped']} skipped")

    root = Path(args.data_root) if args.data_root else None
    if "loader" in parts and (root is None or not (root / "MNIST" / "raw").is_dir()):
        print(f"\nDataLoader part skipped: no MNIST/raw under --data-root {root}")
    elif "loader" in parts:
        fed = results["loader"] = mnist_loaders(args, device)
        ms = fed["ms_per_weight_step"]
        print(f"\nMNIST from its files through DataLoader(num_workers={fed['workers']}), batch "
              f"{fed['batch']}, MLP 784-{fed['hidden']}-10 with a decay per weight")
        print(f"  ms per weight step: joint {ms['joint_loader']:.3f} / plain "
              f"{ms['plain_loader']:.3f} from the loader -> ratio "
              f"{fed['joint_over_plain_loader']:.2f}; from TensorBatches joint "
              f"{ms['joint_tensors']:.3f} / plain {ms['plain_tensors']:.3f} -> ratio "
              f"{fed['joint_over_plain_tensors']:.2f}")
        for kind in ("joint", "plain"):
            ratio = fed[f"indexed_over_tensors_{kind}"]
            print(f"  {kind}: the trainer's DataLoader path / TensorBatches (the same tensors, "
                  f"batches indexed at once) = {ratio:.3f} (overhead {100 * (ratio - 1):+.1f} %,"
                  f" aim <= 5 %: {'HOLDS' if ratio <= 1.05 else 'FAILS'})")
            ratio = fed[f"loader_over_tensors_{kind}"]
            print(f"  {kind}: reading and transforming each image in {fed['workers']} workers / "
                  f"TensorBatches = {ratio:.3f} (the input pipeline's cost on this machine)")
    if "outcome" in parts:
        out = results["outcome"] = outcome(args, specs)
        n = 4 * args.outcome_seeds
        print(f"\nOutcome in the demo's setting (digits, decay per weight, 60 hyper steps; the "
              f"same {n} trials for every solver): mean final validation loss and test accuracy")
        for spec, r in out.items():
            print(f"  {spec:<22} val loss {r['val_loss_mean']:.4f}  test accuracy "
                  f"{r['test_accuracy_mean']:.4f}  lower val loss than {specs[0]} in "
                  f"{r[f'val_loss_lower_than_{specs[0]}']}/{n}  ({r['seconds']:.0f} s)")
    results["wall_s"] = time.perf_counter() - started
    print(f"\ntotal wall time {results['wall_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
