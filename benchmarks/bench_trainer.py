"""Joint training (Algorithm 1) against plain training of the same model, in one process.

Part 1, the cost of tuning: an MLP ``784-hidden-10`` with a weight decay per weight (one
hyperparameter per weight and bias), batch 128, trained

* plainly: Adam steps on ``CE + decay penalty`` with the decays fixed;
* jointly: :class:`optuna_ift.HyperTrainer` with ``inner_steps = N`` (default 10) and
  ``Neumann(steps=i)`` (default 5), the same Adam steps plus one hyper step every N of them.

Both run interleaved in rounds (joint, plain, joint, plain, ...; the order alternates) and the
median time per weight step is compared: ``joint / plain``. Peak tensor memory of one block of
``N`` weight steps (+ the hyper step for the joint run) is measured as in
``bench_hypergradient.py`` (CUDA: ``max_memory_allocated`` above what was allocated before;
CPU: the profiler's allocation events replayed), and reported both alone ("added") and on top
of the tensors the run keeps between steps (model, optimizer states, the data in memory).

Part 2, scale: the same joint training on a wider MLP with at least ``--million`` million
hyperparameters, reporting hyper steps and weight steps per second.

Run ``python benchmarks/bench_trainer.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from optuna_ift import Neumann
from optuna_ift.hyperparams import WeightDecay
from optuna_ift.trainer import HyperTrainer, resolve_device

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


def make_joint(hidden: int, args, device, generator, kind: str = "mlp") -> HyperTrainer:
    torch.manual_seed(args.seed)
    model = DecayedMLP(hidden, init=1e-4, kind=kind)
    return HyperTrainer(
        model, train_loss=train_loss, val_loss=val_loss,
        train_data=mixture(4096, generator, device), val_data=mixture(1024, generator, device),
        batch_size=args.batch, solver=Neumann(steps=args.neumann, alpha="auto"),
        inner_steps=args.inner, weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        hyper_optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-2),
        device=device, progress=False, seed=args.seed,
    )


class Plain:
    """The same model, data and Adam steps, with the decays fixed: ordinary training."""

    def __init__(self, hidden: int, args, device, generator, kind: str = "mlp") -> None:
        torch.manual_seed(args.seed)
        self.model = DecayedMLP(hidden, init=1e-4, kind=kind).to(device)
        for p in self.model.decay.parameters():
            p.requires_grad_(False)
        self.x, self.y = mixture(4096, generator, device)
        self.batch = args.batch
        self.generator = torch.Generator().manual_seed(args.seed)
        self.optimizer = torch.optim.Adam(self.model.net.parameters(), lr=1e-3)

    def steps(self, count: int) -> None:
        for _ in range(count):
            index = torch.randint(len(self.y), (self.batch,), generator=self.generator)
            index = index.to(self.x.device)
            loss = train_loss(self.model, (self.x[index], self.y[index]))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def resident_bytes(model: nn.Module, optimizers, data) -> int:
    """Bytes of the tensors a training run keeps between steps: the model's parameters and
    buffers, the optimizers' states and the data sets held in memory (each storage once)."""
    tensors = list(model.parameters()) + list(model.buffers()) + list(data)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def cost_of_tuning(args, device, kind: str, hidden: int) -> dict:
    generator = torch.Generator().manual_seed(args.seed)
    joint = make_joint(hidden, args, device, generator, kind)
    plain = Plain(hidden, args, device, generator, kind)
    block = args.inner  # weight steps per hyper step
    hypers_per_round = args.hyper_steps_per_round
    joint.fit(2)  # warm-up: the first eigenvalue estimate and allocations
    plain.steps(2 * block)
    joint_times, plain_times = [], []
    for r in range(args.rounds):
        order = ("joint", "plain") if r % 2 == 0 else ("plain", "joint")
        for which in order:
            synchronize(device)
            start = time.perf_counter()
            if which == "joint":
                joint.fit(joint.hyper_step + hypers_per_round)
            else:
                plain.steps(hypers_per_round * block)
            synchronize(device)
            per_step = (time.perf_counter() - start) / (hypers_per_round * block)
            (joint_times if which == "joint" else plain_times).append(per_step)
    joint_ms = statistics.median(joint_times) * 1e3
    plain_ms = statistics.median(plain_times) * 1e3

    def joint_block():
        joint.fit(joint.hyper_step + 1)
        return ()

    def plain_block():
        plain.steps(block)
        return ()

    memory = {"joint": peak_memory(joint_block, device), "plain": peak_memory(plain_block, device)}
    resident = {
        "joint": resident_bytes(joint.model, [joint.weight_optimizer, joint.hyper_optimizer],
                                joint.train_data.tensors + joint.val_data.tensors),
        "plain": resident_bytes(plain.model, [plain.optimizer], (plain.x, plain.y)),
    }
    total = {k: memory[k] + resident[k] for k in memory}
    hyperparameters = sum(h.numel() for h in joint.hyperparameters)
    return {
        "model": kind, "hidden": hidden, "weights": sum(w.numel() for w in joint.weights),
        "hyperparameters": hyperparameters, "inner_steps": block, "neumann_steps": args.neumann,
        "joint_ms_per_weight_step": joint_ms, "plain_ms_per_weight_step": plain_ms,
        "time_ratio": joint_ms / plain_ms,
        "joint_peak_bytes": memory["joint"], "plain_peak_bytes": memory["plain"],
        "added_memory_ratio": memory["joint"] / memory["plain"],
        "joint_resident_bytes": resident["joint"], "plain_resident_bytes": resident["plain"],
        "joint_total_bytes": total["joint"], "plain_total_bytes": total["plain"],
        "memory_ratio": total["joint"] / total["plain"],
        "skipped": joint.history.skipped,
        "samples_joint_ms": [t * 1e3 for t in joint_times],
        "samples_plain_ms": [t * 1e3 for t in plain_times],
    }


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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16, help="CNN width")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--inner", type=int, default=10, help="N, weight steps per hyper step")
    parser.add_argument("--neumann", type=int, default=5, help="i, Neumann steps")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--hyper-steps-per-round", type=int, default=10)
    parser.add_argument("--million", type=float, default=1.0,
                        help="millions of hyperparameters for the scale part")
    parser.add_argument("--scale-hyper-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    print(f"device {device} ({platform.machine()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")

    costs = []
    for kind, hidden in (("mlp", args.hidden), ("cnn", args.channels)):
        cost = cost_of_tuning(args, device, kind, hidden)
        costs.append(cost)
        name = f"MLP 784-{hidden}-10" if kind == "mlp" else f"CNN {hidden}-{2 * hidden} channels"
        print(f"\n{name}, batch {args.batch}, {cost['weights']} weights, "
              f"{cost['hyperparameters']} hyperparameters (a decay per weight); "
              f"N = {cost['inner_steps']}, Neumann i = {cost['neumann_steps']}")
        print(f"  time per weight step: joint {cost['joint_ms_per_weight_step']:.3f} ms, plain "
              f"{cost['plain_ms_per_weight_step']:.3f} ms -> ratio {cost['time_ratio']:.2f} "
              f"(target <= 1.6: {'HOLDS' if cost['time_ratio'] <= 1.6 else 'FAILS'})")
        print(f"  peak tensor memory added by a block of steps: joint "
              f"{cost['joint_peak_bytes'] / 2**20:.2f} MiB, plain "
              f"{cost['plain_peak_bytes'] / 2**20:.2f} MiB -> ratio "
              f"{cost['added_memory_ratio']:.2f}")
        print(f"  peak of all tensors (model, optimizer states and data included, as "
              f"max_memory_allocated counts them): joint {cost['joint_total_bytes'] / 2**20:.2f} "
              f"MiB, plain {cost['plain_total_bytes'] / 2**20:.2f} MiB -> ratio "
              f"{cost['memory_ratio']:.2f} "
              f"(target <= 1.5: {'HOLDS' if cost['memory_ratio'] <= 1.5 else 'FAILS'})")

    big = scale(args, device)
    print(f"\nScale: MLP 784-{big['hidden']}-10, {big['hyperparameters']:,} hyperparameters "
          f"tuned jointly with {big['weights']:,} weights")
    print(f"  {big['hyper_steps_per_second']:.2f} hyper steps/s, "
          f"{big['weight_steps_per_second']:.1f} weight steps/s; validation loss "
          f"{big['val_loss_first']:.4f} -> {big['val_loss_last']:.4f} over "
          f"{big['hyper_steps']} hyper steps, {big['skipped']} skipped")
    results = {"command": " ".join(sys.argv), "device": str(device), "cost": costs,
               "scale": big, "wall_s": time.perf_counter() - started}
    print(f"\ntotal wall time {results['wall_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
