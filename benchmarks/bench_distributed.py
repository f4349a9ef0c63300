"""Data-parallel joint training: throughput of 1 and N processes, and the share of a step
spent communicating, measured in one run.

The model is the MLP of ``bench_trainer.py`` (784-hidden-10, a weight decay per weight) on a
Gaussian mixture, global batch ``--batch``, ``N = --inner`` weight steps per hyper step and
``Neumann(steps=--neumann)``. It is trained in one process, then in ``--nproc`` processes of a
``torch.distributed`` group (gloo on the CPU, NCCL with ``--device cuda``: one GPU a process),
each on its share of the same global batch. For each it prints weight steps and hyper steps
per second, and for the group the share of the wall time spent in the all-reduces of the
gradients and of the hypergradient products (timed around each collective, after a device
synchronisation, so it includes the wait for the slowest process).

On a machine with fewer cores than processes x threads the processes compete for the cores
and the speed-up is below one; the communication share is the number to read there.

Run ``python benchmarks/bench_distributed.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import DecayedMLP, mixture, train_loss, val_loss  # noqa: E402

from optuna_ift import Neumann  # noqa: E402
from optuna_ift.trainer import HyperTrainer  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, device: torch.device) -> dict:
    """Joint training of the MLP; seconds per weight step and per hyper step."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    trainer = HyperTrainer(
        DecayedMLP(args.hidden, init=1e-4), train_loss=train_loss, val_loss=val_loss,
        train_data=mixture(8192, generator, device), val_data=mixture(2048, generator, device),
        batch_size=args.batch, solver=Neumann(steps=args.neumann, alpha="auto"),
        inner_steps=args.inner, weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        hyper_optimizer=lambda p: torch.optim.RMSprop(p, lr=1e-2), device=device,
        progress=False, seed=args.seed)
    trainer.fit(2)  # warm-up
    spent = {"seconds": 0.0}
    group = trainer.group
    if group is not None:  # time every collective of the trainer
        mean = group.mean

        def timed(tensors):
            synchronize(device)
            start = time.perf_counter()
            out = mean(tensors)
            synchronize(device)
            spent["seconds"] += time.perf_counter() - start
            return out

        group.mean = timed
        trainer.hyper.reduce = timed
    synchronize(device)
    start = time.perf_counter()
    trainer.fit(2 + args.hyper_steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "weight_steps_per_s": args.hyper_steps * args.inner / seconds,
            "hyper_steps_per_s": args.hyper_steps / seconds,
            "communication_share": spent["seconds"] / seconds,
            "skipped": trainer.history.skipped}


def _worker(rank: int, args, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=args.nproc)
    try:
        torch.set_num_threads(max(1, args.threads // args.nproc))
        device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
        result = measure(args, device)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--neumann", type=int, default=5)
    parser.add_argument("--hyper-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads in all, shared by the processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    torch.set_num_threads(args.threads)
    one = measure(args, device)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(f".bench_distributed_{os.getpid()}.json")
    try:
        mp.start_processes(_worker, args=(args, port, str(out)), nprocs=args.nproc, join=True,
                           start_method="spawn")
        group = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    print(f"MLP 784-{args.hidden}-10, a decay per weight, global batch {args.batch}, "
          f"N={args.inner}, Neumann i={args.neumann}, {args.device}, {args.threads} threads")
    print(f"{'processes':>9} {'weight steps/s':>15} {'hyper steps/s':>14} {'comm share':>11}")
    for n, r in ((1, one), (args.nproc, group)):
        print(f"{n:>9} {r['weight_steps_per_s']:>15.1f} {r['hyper_steps_per_s']:>14.2f} "
              f"{r['communication_share']:>11.1%}")
    print(f"speed-up of {args.nproc} processes: "
          f"{group['weight_steps_per_s'] / one['weight_steps_per_s']:.2f}x")
    results = {"one": one, "group": group, "nproc": args.nproc, "device": args.device}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
