"""Generations per second of a sharded population on 1, 2, 4 and 8 devices.

Each row is a strategy on a problem; each column a device count: ``unsharded`` is the plain
``esjax.run`` path, ``k dev`` the same generation sharded with ``esjax.distributed`` over the
first ``k`` devices. Every cell compiles once (not timed), then reports the best of
``--repeats`` timed ``lax.scan`` calls of ``--generations`` generations.

On a machine without accelerators the devices are simulated CPU devices
(``jax_num_cpu_devices``) that share the host's cores, so the CPU numbers
measure the overhead of sharding, not a speed-up; run it on a multi-GPU host (or under
``esjax launch`` on several) for scaling numbers.

    python benchmarks/distributed.py                   # 1/2/4/8 devices, small grid
    python benchmarks/distributed.py --devices 4

Writes ``benchmarks/results/distributed-<platform>-<device>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from common import best_seconds, environment, write_result

import esjax
from esjax import distributed
from esjax.loop import make_generation, scan_generations

POPULATION_SIZE = 256
MLP_SAMPLES, MLP_INPUTS, MLP_HIDDEN = 512, 8, 32


def mlp_problem(key: jax.Array) -> tuple[Callable, dict]:
    """Regression with a 2-hidden-layer tanh MLP (1,377 weights): evaluation-dominated."""
    data_key, teacher_key, init_key = jax.random.split(key, 3)
    inputs = jax.random.normal(data_key, (MLP_SAMPLES, MLP_INPUTS))
    targets = jnp.sin(inputs @ jax.random.normal(teacher_key, (MLP_INPUTS,)))
    sizes = [MLP_INPUTS, MLP_HIDDEN, MLP_HIDDEN, 1]
    keys = jax.random.split(init_key, len(sizes) - 1)
    x0 = {
        f"layer{i}": {
            "w": jax.random.normal(k, (fan_in, fan_out)) / jnp.sqrt(fan_in),
            "b": jnp.zeros(fan_out),
        }
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
    }

    def loss(params):
        hidden = inputs
        for i in range(len(sizes) - 1):
            hidden = hidden @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
            if i < len(sizes) - 2:
                hidden = jnp.tanh(hidden)
        return jnp.mean(jnp.square(hidden[:, 0] - targets))

    return loss, x0


def rastrigin_problem(key: jax.Array, num_dims: int = 1_000) -> tuple[Callable, jax.Array]:
    """Rastrigin in 1,000 dimensions: cheap evaluation, so sampling and the update dominate."""
    del key
    return esjax.problems.rastrigin, jnp.full((num_dims,), 2.0)


PROBLEMS = {"mlp": mlp_problem, "rastrigin": rastrigin_problem}


def strategies() -> list[tuple[str, esjax.Strategy, bool]]:
    """``(label, strategy, reduce_locally)`` rows; registered strategies beyond OpenAI-ES join."""
    openai = esjax.openai_es(population_size=POPULATION_SIZE, sigma=0.05, learning_rate=0.01)
    rows = [("openai_es (psum)", openai, True), ("openai_es (generic)", openai, False)]
    for name in ("sep_cma_es", "pso", "simulated_annealing"):
        if name in esjax.STRATEGIES:
            rows.append((name, esjax.STRATEGIES[name](population_size=POPULATION_SIZE), True))
    return rows


def time_generation(generation: Callable, state, generations: int, repeats: int) -> float:
    """Generations per second: compile once, then the best of ``repeats`` scans."""
    scanned = jax.jit(scan_generations(generation, jax.random.key(1), generations))
    compiled = scanned.lower(state).compile()
    best = best_seconds({"scan": lambda _: compiled(state)}, repeats)["scan"]
    return generations / best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="largest device count")
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="JSON path (default: results/...)")
    args = parser.parse_args(argv)
    # Simulated CPU devices; must be set before JAX creates its CPU backend (no effect on GPUs).
    jax.config.update("jax_num_cpu_devices", args.devices)
    counts = [k for k in (1, 2, 4, 8, 16, 32) if k <= min(args.devices, jax.device_count())]
    device = jax.devices()[0]
    # Other work on the host skews every column; recorded so readers can judge the numbers.
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    rows = []
    print(
        f"{'strategy':>22} {'problem':>10} {'dims':>6} | "
        + " ".join(f"{c:>9}" for c in ["unsharded", *(f"{k} dev" for k in counts)])
        + "   (generations/s)"
    )
    for problem_name, build_problem in PROBLEMS.items():
        fitness_fn, x0 = build_problem(jax.random.key(0))
        for label, es, reduce_locally in strategies():
            state = es.init(jax.random.key(0), x0)
            row = {
                "strategy": label,
                "problem": problem_name,
                "population_size": es.population_size,
                "num_dims": state.num_dims,
                "unsharded": time_generation(
                    make_generation(es, fitness_fn), state, args.generations, args.repeats
                ),
            }
            for k in counts:
                mesh = distributed.make_mesh(k)
                generation = distributed.make_sharded_generation(
                    es, fitness_fn, mesh, reduce_locally=reduce_locally
                )
                row[f"devices_{k}"] = time_generation(
                    generation, distributed.replicate(state, mesh), args.generations, args.repeats
                )
            rows.append(row)
            print(
                f"{label:>22} {problem_name:>10} {state.num_dims:>6} | "
                + " ".join(
                    f"{row[c]:9.1f}" for c in ["unsharded", *(f"devices_{k}" for k in counts)]
                ),
                flush=True,
            )

    simulated = device.platform == "cpu"
    result = {
        **environment("distributed"),
        "host_load_average_at_start": load_at_start,
        "note": (
            f"{jax.device_count()} simulated CPU devices (jax_num_cpu_devices) "
            f"sharing {os.cpu_count()} cores: measures sharding overhead, not a speed-up"
            if simulated
            else "real devices"
        ),
        "generations": args.generations,
        "repeats": args.repeats,
        "unit": "generations per second",
        "rows": rows,
    }
    write_result(result, "distributed", args.output)
    return result


if __name__ == "__main__":
    main()
