"""Command line: ``esjax run``, ``esjax compare``, ``esjax sweep`` and ``esjax launch``."""

from __future__ import annotations

import argparse
import sys

from esjax.experiments.config import load_config
from esjax.experiments.runner import run_experiment


def _run(args: argparse.Namespace) -> int:
    mesh = None
    if args.distributed or args.shard:
        from esjax import distributed

        if args.distributed:  # before any other JAX call
            try:
                distributed.initialize()
            except (ValueError, RuntimeError) as error:
                raise ValueError(
                    f"--distributed could not join a multi-process run ({error}); start the "
                    "processes with `esjax launch -n N -- esjax run ... --distributed`, under "
                    "SLURM/a TPU pod, or set ESJAX_COORDINATOR_ADDRESS, ESJAX_NUM_PROCESSES and "
                    "ESJAX_PROCESS_ID"
                ) from error
        mesh = distributed.make_mesh()
    config = load_config(
        args.config,
        overrides={
            "generations": args.generations,
            "seed": args.seed,
            "name": args.name,
            "checkpoint_every": args.checkpoint_every,
        },
    )
    summary = run_experiment(
        config,
        progress=not args.quiet,
        output_dir=args.output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        mesh=mesh,
        stop=not args.no_stop,
    )
    if not summary["writer"]:
        return 0  # another process of a multi-process run writes and reports
    extras = [
        f"{label} {summary[key]:.6g}"
        for key, label in (
            ("mean_fitness", "fitness at the mean"),
            ("test_accuracy", "test accuracy"),
        )
        if isinstance(summary.get(key), int | float)
    ]
    best = summary["best_fitness"]
    print(
        f"{summary['name']}: {summary['strategy']} on {summary['problem']} "
        f"(num_dims={summary['num_dims']}, population={summary['population_size']})\n"
        f"  generations {summary['generations']} ({summary['stop_reason']}), evaluations "
        f"{summary['evaluations']}, best fitness {'none finite' if best is None else f'{best:.6g}'}"
        + "".join(f", {extra}" for extra in extras)
        + f", {summary['seconds_including_compile']:.1f} s\n"
        f"  wrote {summary['run_dir']}/metrics.csv, summary.json and solution.msgpack"
    )
    if summary["stop_reason"].startswith("no finite fitness"):
        print(f"esjax: error: {summary['name']} stopped: {summary['stop_reason']}", file=sys.stderr)
        return 3
    return 0


def _launch(args: argparse.Namespace) -> int:
    from esjax.distributed import exit_code, launch

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise ValueError("launch needs a command after --, e.g. esjax launch -n 2 -- python a.py")
    try:
        results = launch(command, args.num_processes, port=args.port, timeout_s=args.timeout)
    except TimeoutError as error:
        print(f"esjax: error: {error}", file=sys.stderr)
        return 124
    return exit_code(results)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("esjax")
    except PackageNotFoundError:  # run from a source tree without installing
        from esjax import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esjax", description="Gradient-free training in JAX.")
    parser.add_argument("--version", action="version", version=f"esjax {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run one experiment from a YAML config")
    run_parser.add_argument("config", help="path to a YAML config (see configs/)")
    run_parser.add_argument("--output-dir", default=None, help="parent folder for results")
    run_parser.add_argument("--generations", type=int, default=None, help="override the budget")
    run_parser.add_argument("--seed", type=int, default=None, help="override the seed")
    run_parser.add_argument("--name", default=None, help="override the run name")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    run_parser.add_argument(
        "--checkpoint-every", type=int, default=None, help="save a checkpoint every K generations"
    )
    run_parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run folder's checkpoint (bit-identical to an uninterrupted run)",
    )
    run_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's outputs in the run folder (refused otherwise)",
    )
    run_parser.add_argument(
        "--no-stop",
        action="store_true",
        help="run every generation: ignore the strategy's termination signal and the "
        "no-finite-fitness stop (max_nonfinite_generations)",
    )
    run_parser.add_argument(
        "--shard",
        action="store_true",
        help="shard the population over every device (esjax.distributed.make_mesh())",
    )
    run_parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run first (jax.distributed: the ESJAX_* variables `esjax "
        "launch` sets, SLURM or a TPU pod), then shard over every process's devices; process 0 "
        "writes the outputs",
    )
    run_parser.set_defaults(handler=_run)
    launch_parser = commands.add_parser(
        "launch",
        help="run a command as N processes of one jax.distributed run on 127.0.0.1",
        description="Run COMMAND as N local processes of one jax.distributed run (for testing "
        "multi-host code); the command calls esjax.distributed.initialize() to join.",
    )
    launch_parser.add_argument("-n", "--num-processes", type=int, required=True)
    launch_parser.add_argument("--port", type=int, default=None, help="coordinator port")
    launch_parser.add_argument(
        "--timeout", type=float, default=None, help="kill every process after this many seconds"
    )
    launch_parser.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    launch_parser.set_defaults(handler=_launch)
    compare_parser = commands.add_parser(
        "compare",
        help="compare methods on one model and data set (task/model config) or on one "
        "problem (a problem config: gradient-free strategies only)",
    )
    compare_parser.add_argument("config", help="path to a comparison config (see configs/)")
    compare_parser.add_argument("--output-dir", default=None, help="parent folder for results")
    compare_parser.add_argument(
        "--steps", type=int, default=None, help="override every method's generations/steps"
    )
    compare_parser.add_argument(
        "--methods", default=None, help="comma-separated labels of the methods to run"
    )
    compare_parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint each method every K steps (at evaluation boundaries)",
    )
    compare_parser.add_argument(
        "--resume",
        action="store_true",
        help="skip finished methods and continue the interrupted one from its checkpoint",
    )
    compare_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier comparison's outputs in the run folder (refused otherwise)",
    )
    compare_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    compare_parser.set_defaults(handler=_compare)
    from esjax.experiments.sweep import add_sweep_command

    add_sweep_command(commands)
    return parser


def _compare(args: argparse.Namespace) -> int:
    from esjax.experiments.compare import load_comparison, run_comparison
    from esjax.experiments.outputs import read_yaml
    from esjax.experiments.problem_compare import is_problem_comparison
    from esjax.experiments.report import summary_table

    methods = args.methods.split(",") if args.methods else None
    # What every comparison run takes from the command line, whatever its kind.
    running = {
        "output_dir": args.output_dir,
        "progress": not args.quiet,
        "checkpoint_every": args.checkpoint_every,
        "resume": args.resume,
        "overwrite": args.overwrite,
    }
    if is_problem_comparison(read_yaml(args.config)):
        return _compare_problem(args, methods, running)
    config = load_comparison(args.config, steps=args.steps, methods=methods)
    result = run_comparison(config, **running)
    if result["methods"]:
        print(summary_table(result["methods"], config.target_accuracy))
    run_dir = result["run_dir"]
    outputs = "scaling.md, scaling.png" if result["scaling"] else "comparison.md, plots"
    print(f"wrote {run_dir}/ ({outputs}, per-method metrics.csv, summary.json)")
    return 0


def _compare_problem(args: argparse.Namespace, methods: list[str] | None, running: dict) -> int:
    """``esjax compare`` of a config with a ``problem`` section."""
    from esjax.experiments.problem_compare import (
        load_problem_comparison,
        problem_table,
        run_problem_comparison,
    )

    config = load_problem_comparison(args.config, steps=args.steps, methods=methods)
    result = run_problem_comparison(config, **running)
    print(problem_table(result["methods"], config.target_fitness))
    print(
        f"wrote {result['run_dir']}/ (comparison.md, fitness.png, summary.json, per-method "
        "summary.json and per-seed metrics.csv, solution.msgpack)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, OverflowError) as error:
        # Bad configs, arguments and file-system faults (missing, read-only, full disk) are one
        # line, not a traceback; anything else is a bug and keeps its traceback.
        print(f"esjax: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "build_parser",
    "main",
]
