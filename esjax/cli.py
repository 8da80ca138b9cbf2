"""Command line: ``esjax run CONFIG.yaml``."""

from __future__ import annotations

import argparse
import sys

from esjax.experiments.config import load_config
from esjax.experiments.runner import run_experiment


def _run(args: argparse.Namespace) -> int:
    config = load_config(
        args.config,
        overrides={"generations": args.generations, "seed": args.seed, "name": args.name},
    )
    summary = run_experiment(config, progress=not args.quiet, output_dir=args.output_dir)
    at_mean = summary.get("mean_fitness")
    print(
        f"{summary['name']}: {summary['strategy']} on {summary['problem']} "
        f"(num_dims={summary['num_dims']}, population={summary['population_size']})\n"
        f"  generations {summary['generations']}, evaluations {summary['evaluations']}, "
        f"best fitness {summary['best_fitness']:.6g}"
        + ("" if at_mean is None else f", fitness at the mean {at_mean:.6g}")
        + f", {summary['seconds_including_compile']:.1f} s\n"
        f"  wrote {summary['run_dir']}/metrics.csv and summary.json"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esjax", description="Gradient-free training in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run one experiment from a YAML config")
    run_parser.add_argument("config", help="path to a YAML config (see configs/)")
    run_parser.add_argument("--output-dir", default=None, help="parent folder for results")
    run_parser.add_argument("--generations", type=int, default=None, help="override the budget")
    run_parser.add_argument("--seed", type=int, default=None, help="override the seed")
    run_parser.add_argument("--name", default=None, help="override the run name")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    run_parser.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"esjax: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
