"""Joint training of the LSTM language model against plain training of the same model.

The model is the ``optuna-ift lstm`` CPU default (2 layers of 200 units, tied embedding,
vocabulary 10,000, sequences of 35 tokens, batch 20, Adam with gradient clipping 0.25). It is
trained

* plainly: Adam steps on the training loss (dropout, DropConnect, AR, TAR) with the seven
  regularisers fixed, by the same trainer in weights-only mode;
* jointly, with the seven tuned ("ift-7") and with a rate per word, unit and hidden-to-hidden
  weight ("ift-many"): :class:`optuna_ift.HyperTrainer`, ``inner_steps = N`` (default 20) and
  ``Neumann(steps=i)`` (default 5).

All three run interleaved in rounds in one process (the order rotates) and the median
tokens per second of weight steps is compared. Peak tensor memory of one block of ``N`` weight
steps (+ the hyper step when joint) is measured as in ``bench_trainer.py``, alone ("added")
and on top of what the run keeps between steps (model, optimizer states, data).

Tokens are random ids unless ``--data-root`` names a Penn Treebank folder (its first 300,000
training tokens). Use real text when you can: on random tokens the Hessian is far from positive
definite, the Neumann series diverges often and each divergence costs an extra eigenvalue
estimate and a second series (``alpha_refreshes`` in the JSON output), which inflates the cost
of joint training. Run ``python benchmarks/bench_lstm.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from optuna_ift import Neumann
from optuna_ift.experiments import LSTMLanguageModel, lm_train_loss, lm_val_loss
from optuna_ift.trainer import HyperTrainer, resolve_device

sys.path.insert(0, str(Path(__file__).parent))
from bench_hypergradient import peak_memory, synchronize  # noqa: E402
from bench_trainer import resident_bytes  # noqa: E402


def load_tokens(args, device):
    if args.data_root:
        from optuna_ift.data import load_ptb

        corpus = load_ptb(args.data_root, max_train_tokens=300_000, device=device)
        return (corpus.sequences("train", args.seq_len), corpus.sequences("valid", args.seq_len),
                corpus.vocab_size)
    g = torch.Generator().manual_seed(args.seed)

    def sequences(n):
        stream = torch.randint(0, args.vocab, (n * args.seq_len + 1,), generator=g)
        return (stream[:-1].reshape(n, args.seq_len).to(device),
                stream[1:].reshape(n, args.seq_len).to(device))

    return sequences(2000), sequences(400), args.vocab


def make_model(variant: str, vocab: int, args, device) -> LSTMLanguageModel:
    torch.manual_seed(args.seed)
    return LSTMLanguageModel(vocab, hidden_size=args.hidden, num_layers=args.layers,
                             hyperparameters=variant).to(device)


def make_trainer(variant: str, vocab, train, val, args, device, *, tune: bool = True
                 ) -> HyperTrainer:
    """Joint training, or (``tune=False``) plain training of the same model with the
    regularisers frozen: the trainer in weights-only mode."""
    return HyperTrainer(
        make_model(variant, vocab, args, device), train_loss=lm_train_loss,
        val_loss=lm_val_loss, train_data=train, val_data=val, batch_size=args.batch,
        weight_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        hyper_optimizer=(lambda p: torch.optim.Adam(p, lr=1e-2)) if tune else None,
        solver=Neumann(steps=args.neumann, alpha="auto"), inner_steps=args.inner,
        clip_grad_norm=0.25, device=device, progress=False, seed=args.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--seq-len", type=int, default=35)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--inner", type=int, default=20, help="weight steps per hyper step (N)")
    parser.add_argument("--neumann", type=int, default=5, help="Neumann terms (i)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hyper-steps-per-round", type=int, default=2)
    parser.add_argument("--data-root", default=None, help="a Penn Treebank folder (optional)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    train, val, vocab = load_tokens(args, device)
    tokens_per_step = args.batch * args.seq_len

    plain = make_trainer("7", vocab, train, val, args, device, tune=False)
    joint = {v: make_trainer(v, vocab, train, val, args, device) for v in ("7", "many")}
    trainers = {"plain": plain, **joint}
    block = args.inner
    per_round = args.hyper_steps_per_round
    for trainer in trainers.values():
        trainer.fit(1)  # warm-up: first eigenvalue estimate, allocations

    def run(name: str) -> None:
        trainer = trainers[name]
        trainer.fit(trainer.hyper_step + per_round)

    names = ["plain", "7", "many"]
    seconds = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            synchronize(device)
            start = time.perf_counter()
            run(name)
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / (per_round * block))
    tokens_per_second = {n: tokens_per_step / statistics.median(s) for n, s in seconds.items()}

    def block_of(name):
        def go():
            trainers[name].fit(trainers[name].hyper_step + 1)
            return ()
        return go

    added = {name: peak_memory(block_of(name), device) for name in names}
    resident = {}
    for name, trainer in trainers.items():
        optimizers = [o for o in (trainer.weight_optimizer, trainer.hyper_optimizer) if o]
        data = trainer.train_data.tensors + (trainer.val_data.tensors if trainer.tunes else ())
        resident[name] = resident_bytes(trainer.model, optimizers, data)
    total = {n: added[n] + resident[n] for n in names}
    results = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "platform": platform.platform(), "hidden": args.hidden, "layers": args.layers,
        "vocab": vocab, "seq_len": args.seq_len, "batch": args.batch, "inner_steps": block,
        "neumann_steps": args.neumann,
        "hyperparameters": {n: sum(h.numel() for h in t.hyperparameters)
                            for n, t in joint.items()},
        "weights": sum(w.numel() for w in plain.weights),
        "tokens_per_second": tokens_per_second,
        "time_ratio": {n: tokens_per_second["plain"] / tokens_per_second[n] for n in joint},
        "added_peak_bytes": added, "resident_bytes": resident, "total_bytes": total,
        "memory_ratio": {n: total[n] / total["plain"] for n in joint},
        "skipped": {n: t.history.skipped for n, t in joint.items()},
        # Each refresh is an extra power iteration and a second series (see HyperTrainer).
        "alpha_refreshes": {n: t.alpha_refreshes for n, t in joint.items()},
        "hyper_steps": {n: t.hyper_step for n, t in joint.items()},
    }
    mib = 2**20
    print(f"LSTM LM {args.layers}x{args.hidden}, vocab {vocab}, batch {args.batch}x"
          f"{args.seq_len}, N={block}, i={args.neumann}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"alpha refreshes: {results['alpha_refreshes']} in {results['hyper_steps']} hyper steps")
    print(f"{'run':>10} {'hyperparams':>12} {'tokens/s':>10} {'time x':>7} {'peak MiB':>9} "
          f"{'memory x':>9}")
    for name in names:
        label = "plain" if name == "plain" else f"ift-{name}"
        hyper = 0 if name == "plain" else results["hyperparameters"][name]
        ratio = 1.0 if name == "plain" else results["time_ratio"][name]
        memory = 1.0 if name == "plain" else results["memory_ratio"][name]
        print(f"{label:>10} {hyper:>12,} {tokens_per_second[name]:>10.0f} {ratio:>7.2f} "
              f"{total[name] / mib:>9.1f} {memory:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
