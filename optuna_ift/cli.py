"""The ``optuna-ift`` command: one subcommand per job, each a thin call into ``experiments``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _compare_inverse(args: argparse.Namespace) -> dict:
    from optuna_ift.experiments import compare_inverse

    return compare_inverse(max_steps=args.max_steps, n_draws=args.draws,
                           log10_decay_range=tuple(args.log10_decay_range), seed=args.seed,
                           out=args.out, show_progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-ift",
        description="Gradient-based hyperparameter optimization by implicit differentiation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "compare-inverse",
        help="Fig. 3: inverse-Hessian approximations against the exact hypergradient",
        description="Compare Neumann, conjugate gradient and identity hypergradients with the "
        "exact one on a linear model with a weight decay per weight (diabetes data).",
    )
    p.add_argument("--out", default="runs/compare-inverse", help="folder for results.json and PNGs")
    p.add_argument("--max-steps", type=_positive_int, default=50, help="largest step count")
    p.add_argument("--draws", type=_positive_int, default=10, help="random decay settings")
    p.add_argument("--log10-decay-range", type=float, nargs=2, default=(-2.0, 0.0),
                   metavar=("LOW", "HIGH"), help="decays are drawn as 10**U(LOW, HIGH)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_compare_inverse)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    results = args.run(args)
    summary = {k: v for k, v in results.items() if not isinstance(v, (list, dict))}
    json.dump(summary, sys.stdout, indent=2)
    print(f"\nresults and figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
