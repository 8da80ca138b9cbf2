"""BIPOP against IPOP (both with esjax.cma_es) on the multimodal BBOB functions, same budget.

References: N. Hansen, "Benchmarking a BI-Population CMA-ES on the BBOB-2009 Function Testbed",
GECCO 2009 workshop (BIPOP, and the protocol: ``x0`` uniform in ``[-4, 4]^D``, ``σ0 = 2``,
target ``f - f_opt < 1e-8``); A. Auger & N. Hansen, CEC 2005 (IPOP); the functions are
:mod:`esjax.problems.bbob` (equal to COCO's ``bbob`` suite).

For each function and instance, IPOP and BIPOP run from the same keys (seeds) with the same
budget (``--budget`` × D evaluations per run). A run is solved when its best value is within
``--target`` of ``f_opt``. Reported per function: solved runs of each driver, and the expected
running time ``ERT = (evaluations of all runs, solved or not) / solved runs`` (Hansen et al.'s
measure; infinite when nothing is solved).

Everything runs in float64 (BBOB's ``f_opt`` reach 1000, and float32 cannot resolve 1e-8 next
to that). Compiling a restart program (one per population size, and BIPOP draws its small
populations at random) costs far more than running it on these cheap functions, so the BBOB
fitness is passed as a ``jax.tree_util.Partial`` (instance data as program inputs) and XLA's
persistent compilation cache is switched on: a population size compiled for one instance or
driver is reused by the others.

    python benchmarks/bbob_restarts.py                  # d=10, f15-f24, 2 instances x 2 seeds
    python benchmarks/bbob_restarts.py --functions 15,16 --instances 1 --seeds 1   # a quick look

Writes ``benchmarks/results/bbob_restarts-<platform>-<device>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
from common import environment, write_result

from esjax.problems.bbob import NAMES, bbob_function
from esjax.restarts import bipop, ipop

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def ints(text: str) -> list[int]:
    """``"15-17,20"`` -> ``[15, 16, 17, 20]``."""
    found = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        found.extend(range(int(low), int(high or low) + 1))
    return found


def run_driver(driver, problem, keys, budget: int, target: float) -> dict:
    """One driver on one problem for every key: per-run outcomes and the schedule it used."""
    n = problem.num_dims

    def draw_x0(key):
        return jax.random.uniform(key, (n,), jnp.float64, minval=-4.0, maxval=4.0)

    start = time.perf_counter()
    result = driver(
        problem.fitness,
        keys,
        draw_x0,
        sigma=2.0,
        max_evaluations=budget,
        target_fitness=problem.f_opt + target,
        compiler_options=FAST_COMPILE,
    )
    seconds = time.perf_counter() - start
    runs = {
        "solved": [bool(h >= 0) for h in result.evaluations_to_target],
        "evaluations_to_target": [int(h) for h in result.evaluations_to_target],
        "evaluations": [int(e) for e in result.evaluations],
        "best_minus_f_opt": [float(f) - problem.f_opt for f in result.best_fitness],
        "restarts": [int(r) for r in result.num_restarts],
        "seconds": seconds,
    }
    if hasattr(result, "stages"):
        runs["schedules"] = [
            [(s.regime, s.population_size, round(s.sigma, 4), s.evaluations) for s in schedule]
            for schedule in result.stages
        ]
    else:
        runs["population_sizes"] = list(result.population_sizes)
    return runs


def ert(runs: list[dict]) -> float:
    """Expected running time: all evaluations spent (to the target when solved) per success."""
    spent, successes = 0, 0
    for outcome in runs:
        columns = (outcome["solved"], outcome["evaluations_to_target"], outcome["evaluations"])
        for solved, hit, used in zip(*columns, strict=True):
            spent += hit if solved else used
            successes += solved
    return spent / successes if successes else float("inf")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=10)
    parser.add_argument("--functions", default="15-24", help="e.g. 15-24 or 15,21")
    parser.add_argument("--instances", default="1-2", help="COCO instances, e.g. 1-2")
    parser.add_argument("--seeds", type=int, default=2, help="runs per instance")
    parser.add_argument("--budget", type=float, default=1e4, help="evaluations per run, x D")
    parser.add_argument("--target", type=float, default=1e-8, help="solved: f - f_opt < this")
    parser.add_argument("--cache-dir", default=None, help="XLA compilation cache (default: tmp)")
    parser.add_argument("--output", default=None, help="JSON path (default: results/...)")
    args = parser.parse_args(argv)

    cache = args.cache_dir or tempfile.mkdtemp(prefix="esjax-bbob-xla-")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    budget = int(args.budget * args.dims)
    functions, instances = ints(args.functions), ints(args.instances)
    load_average = os.getloadavg()[0]
    rows = []
    print(
        f"d={args.dims}, budget {budget} evaluations per run, target f - f_opt < {args.target}, "
        f"{len(instances)} instances x {args.seeds} seeds"
    )
    print(f"{'function':>32} | {'IPOP solved':>11} {'ERT':>9} | {'BIPOP solved':>12} {'ERT':>9}")
    with jax.enable_x64(True):
        for function_id in functions:
            outcomes = {"ipop": [], "bipop": []}
            for instance in instances:
                problem = bbob_function(function_id, args.dims, instance)
                keys = jax.random.split(jax.random.key(instance), args.seeds)
                for name, driver in (("ipop", ipop), ("bipop", bipop)):
                    runs = run_driver(driver, problem, keys, budget, args.target)
                    outcomes[name].append({"instance": instance, **runs})
            row = {"function": function_id, "name": NAMES[function_id]}
            for name, runs in outcomes.items():
                row[name] = {
                    "solved": int(sum(sum(r["solved"]) for r in runs)),
                    "runs": int(sum(len(r["solved"]) for r in runs)),
                    "ert": ert(runs),
                    "seconds": float(sum(r["seconds"] for r in runs)),
                    "per_instance": runs,
                }
            rows.append(row)
            i, b = row["ipop"], row["bipop"]
            label = f"f{function_id} {NAMES[function_id]}"
            print(
                f"{label:>32} | "
                f"{i['solved']:>5}/{i['runs']:<5} {i['ert']:>9.3g} | "
                f"{b['solved']:>6}/{b['runs']:<5} {b['ert']:>9.3g}",
                flush=True,
            )
    totals = {name: int(sum(row[name]["solved"] for row in rows)) for name in ("ipop", "bipop")}
    print(f"{'total solved':>32} | {totals['ipop']:>11} {'':>9} | {totals['bipop']:>12}")
    result = {
        **environment("bbob_restarts"),
        "load_average_at_start": load_average,
        "num_dims": args.dims,
        "budget_per_run": budget,
        "target": args.target,
        "instances": instances,
        "seeds_per_instance": args.seeds,
        "x0": "uniform in [-4, 4]^D",
        "sigma0": 2.0,
        "solved_total": totals,
        "functions": rows,
    }
    write_result(result, "bbob_restarts", args.output)
    return result


if __name__ == "__main__":
    main()
