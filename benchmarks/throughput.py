"""Time per generation of ask → sphere → tell inside a jitted ``lax.scan``: esjax vs evosax.

Both libraries run in the same process on the same device, after a warm-up (compile) call; each
row reports the minimum over ``--repeats`` timed calls of ``--generations`` generations, the two
libraries' calls interleaved, so the esjax/evosax ratio is a like-for-like measurement. Memory is
the working set XLA assigns to each compiled loop. evosax rows are skipped cleanly when evosax
(the ``bench`` extra) is not installed.

    python benchmarks/throughput.py                 # the small CPU grid
    python benchmarks/throughput.py --grid gpu      # the full grid (issue targets are GPU)

Writes ``benchmarks/results/throughput-<platform>-<device>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from common import best_seconds, environment, write_result

import esjax
from esjax.strategies.cma_es import default_population_size

# esjax options under which a strategy runs the same update as evosax's strategy of that name,
# where its default differs (a grid row may name one as a fourth element).
SAME_AS_EVOSAX = {
    # evosax 0.3's PSO: global best, the classic inertia-weight update, one (r1, r2) per particle,
    # and its default constants.
    "pso": {
        "topology": "global",
        "update": "classic",
        "coefficients": "per_particle",
        "inertia": 0.75,
        "cognitive": 1.5,
        "social": 2.0,
    },
}

# (strategy, population_size or None for the strategy's default, num_dims[, esjax options])
GRIDS = {
    "cpu": [
        ("openai_es", 256, 1_000),
        ("openai_es", 1024, 10_000),
        ("cma_es", None, 100),
        ("cma_es", None, 400),
        ("cma_es", None, 1_000),
        ("sep_cma_es", 256, 10_000),
        ("simulated_annealing", 256, 10_000),
        ("pso", 256, 10_000),
        ("pso", 256, 10_000, SAME_AS_EVOSAX["pso"]),
    ],
    # CMA-ES where evosax's eigendecomposition every generation dominates (~3.5 s on 2 cores):
    # python benchmarks/throughput.py --grid cpu-large --generations 30 --repeats 1
    "cpu-large": [("cma_es", None, 4_000)],
    "gpu": [
        ("openai_es", 4096, 100_000),
        ("openai_es", 256, 1_000_000),
        ("cma_es", None, 1_000),
        ("cma_es", None, 4_000),
        ("sep_cma_es", 4096, 100_000),
        ("simulated_annealing", 4096, 100_000),
        ("pso", 4096, 100_000),
        ("pso", 4096, 100_000, SAME_AS_EVOSAX["pso"]),
    ],
}

SIGMA = 0.05
LEARNING_RATE = 0.01

# Where the two libraries' strategies of the same name are different algorithms, the row says so.
NOTES = {
    "pso": (
        "Different algorithms. evosax 0.3's PSO is the classic global-best inertia-weight update "
        "with one pair of uniforms (r1, r2) per particle, shared by all dimensions: 2 random "
        "numbers per particle per generation. esjax's default is SPSO-2011 (ring topology, "
        "per-dimension U1, U2 and a uniform point in a hypersphere around the centre of "
        "gravity): 3d + 1 random numbers per particle (30,001 at d = 10,000), and drawing them "
        "(Threefry blocks and an inverse error function per coordinate) dominates the cost of a "
        "generation. The next row runs evosax's update rule in esjax."
    ),
    "pso (same as evosax)": (
        "The update rule and constants of evosax 0.3's PSO: esjax.pso(topology='global', "
        "update='classic', coefficients='per_particle', inertia=0.75, cognitive=1.5, "
        "social=2.0). What still differs: evosax starts from a swarm the caller passes with zero "
        "velocities (esjax draws both in a box) and replaces a personal best on a tie."
    ),
}


def esjax_loop(
    name: str, population_size: int, num_dims: int, options: dict | None = None
) -> Callable | None:
    """``(key, generations) -> best`` for esjax's strategy (built with ``options``), or None if
    it is not registered."""
    if name not in esjax.STRATEGIES:
        return None
    factory = esjax.STRATEGIES[name]
    kwargs = {"population_size": population_size, **(options or {})}
    if name == "openai_es":
        kwargs.update(sigma=SIGMA, optimizer=optax.adam(LEARNING_RATE))
    elif name in ("cma_es", "sep_cma_es"):
        kwargs.update(sigma=SIGMA)
    es = factory(**kwargs)
    x0 = jnp.full((num_dims,), 0.5)

    def loop(key, generations):
        state = es.init(key, x0)

        def body(state, generation):
            population, state = es.ask(jax.random.fold_in(key, generation), state)
            return es.tell(state, population, esjax.problems.sphere(population)), None

        state, _ = jax.lax.scan(body, state, jnp.arange(generations))
        return state.best_fitness

    return loop


EVOSAX_NAMES = {
    "openai_es": "Open_ES",
    "cma_es": "CMA_ES",
    "sep_cma_es": "Sep_CMA_ES",
    "simulated_annealing": "SimulatedAnnealing",
    "pso": "PSO",
}


def evosax_loop(name: str, population_size: int, num_dims: int) -> Callable | None:
    """The same loop with evosax 0.3's strategy of the same name, or None if unavailable."""
    if importlib.util.find_spec("evosax") is None or name not in EVOSAX_NAMES:
        return None
    from evosax import algorithms

    cls = getattr(algorithms, EVOSAX_NAMES[name])
    x0 = jnp.full((num_dims,), 0.5)
    if name == "openai_es":
        es = cls(
            population_size=population_size,
            solution=x0,
            optimizer=optax.adam(LEARNING_RATE),
            std_schedule=optax.constant_schedule(SIGMA),
        )
    else:
        es = cls(population_size=population_size, solution=x0)
    params = es.default_params
    if name in ("cma_es", "sep_cma_es") and hasattr(params, "std_init"):
        params = params.replace(std_init=SIGMA)

    def loop(key, generations):
        if name == "pso":  # evosax's population-based init takes an evaluated swarm
            swarm = x0 + jax.random.normal(key, (population_size, num_dims))
            state = es.init(key, swarm, esjax.problems.sphere(swarm), params)
        else:
            state = es.init(key, x0, params)

        def body(state, generation):
            k = jax.random.fold_in(key, generation)
            population, state = es.ask(k, state, params)
            fitness = esjax.problems.sphere(population)
            state, _ = es.tell(k, population, fitness, state, params)
            return state, None

        state, _ = jax.lax.scan(body, state, jnp.arange(generations))
        return state.best_fitness

    return loop


def time_loops(loops: dict[str, Callable], generations: int, repeats: int) -> dict[str, dict]:
    """Compile each loop and run it once (warm-up), then ``repeats`` rounds that run every loop
    in turn: the minimum per loop, in ms per generation.

    Interleaved (:func:`common.best_seconds`), a slow spell of a shared host falls on both
    libraries alike. Memory is XLA's buffer assignment for each compiled loop
    (``memory_analysis``, on every backend): the allocator's ``peak_bytes_in_use`` is a maximum
    over the whole process, so it cannot tell two loops of one process apart.
    """
    key = jax.random.key(0)
    compiled = {
        library: jax.jit(loop, static_argnums=1).lower(key, generations).compile()
        for library, loop in loops.items()
    }
    for run in compiled.values():
        jax.block_until_ready(run(key))
    best = best_seconds(
        {
            library: lambda repeat, run=run: run(jax.random.key(repeat + 1))
            for library, run in compiled.items()
        },
        repeats,
    )
    results = {}
    for library, run in compiled.items():
        memory = run.memory_analysis()
        results[library] = {
            "ms_per_generation": 1e3 * best[library] / generations,
            # The loop's working set: the strategy state and every temporary of a generation
            # (its arguments and outputs are a key and a scalar).
            "temp_bytes": None if memory is None else memory.temp_size_in_bytes,
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated strategy names")
    parser.add_argument(
        "--output", default=None, help="JSON path (default: results/throughput-...json)"
    )
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    grid_name = args.grid or ("cpu" if device.platform == "cpu" else "gpu")
    only = set(args.only.split(",")) if args.only else None

    load_average = os.getloadavg()[0]
    rows = []
    for name, population_size, num_dims, *options in GRIDS[grid_name]:
        if only and name not in only:
            continue
        options = options[0] if options else None
        label = f"{name} (same as evosax)" if options else name
        # None: CMA-ES's default λ = 4 + ⌊3 ln n⌋, which evosax uses too.
        population_size = population_size or default_population_size(num_dims)
        row = {"strategy": label, "population_size": population_size, "num_dims": num_dims}
        if options:
            row["esjax_options"] = options
        loops = {
            "esjax": esjax_loop(name, population_size, num_dims, options),
            "evosax": evosax_loop(name, population_size, num_dims),
        }
        timed = time_loops(
            {library: loop for library, loop in loops.items() if loop is not None},
            args.generations,
            args.repeats,
        )
        row.update({library: timed.get(library) for library in loops})
        if row["esjax"] and row["evosax"]:
            row["speedup"] = row["evosax"]["ms_per_generation"] / row["esjax"]["ms_per_generation"]
            if row["esjax"]["temp_bytes"] is not None and row["evosax"]["temp_bytes"]:
                row["memory_ratio"] = row["esjax"]["temp_bytes"] / row["evosax"]["temp_bytes"]
        if label in NOTES:
            row["note"] = NOTES[label]
        rows.append(row)
        _print_row(row)
        if "note" in row:
            print(f"{'':>24}note: {row['note'].split('. ')[0]} (see the JSON)", flush=True)

    result = {
        **environment("throughput"),
        # Other processes on the host inflate both libraries' times alike, but not exactly.
        "host_load_average_at_start": load_average,
        "grid": grid_name,
        "generations": args.generations,
        "repeats": args.repeats,
        "rows": rows,
    }
    # The default grid of each platform writes throughput-...json; another grid its own file.
    stem = "throughput" if grid_name in ("cpu", "gpu") else f"throughput-{grid_name}"
    write_result(result, stem, args.output)
    return result


def _print_row(row: dict) -> None:
    def ms(entry):
        return "      -" if not entry else f"{entry['ms_per_generation']:8.3f}"

    speedup = f"{row['speedup']:6.2f}x" if "speedup" in row else "     -"
    memory = row.get("memory_ratio")
    memory = "" if memory is None else f" | memory esjax/evosax {memory:5.2f}"
    print(
        f"{row['strategy']:>22} pop {row['population_size']:>6} dim {row['num_dims']:>8} | "
        f"esjax {ms(row['esjax'])} ms | evosax {ms(row['evosax'])} ms | evosax/esjax {speedup}"
        + memory,
        flush=True,
    )


if __name__ == "__main__":
    main()
