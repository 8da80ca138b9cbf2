"""CMA-ES defaults against pycma's defaults: evaluations to f < 1e-8, active and passive.

pycma 4.x runs active CMA unless told otherwise; esjax 0.2 does too. This script measures,
per function and seed, the evaluations each needs from the same x0 and σ0 with its default
population size, and prints the median ratio esjax / pycma for esjax's default (active) and for
``active=False``. Functions: a rotated ellipsoid (d = 20, condition 1e6) and a discus (d = 15,
``1e6 x_1² + Σ_{i>1} x_i²``), where active CMA matters most.

    python benchmarks/cma_defaults.py [--seeds 5] [--output PATH]
"""

from __future__ import annotations

import argparse
import time

import cma
import jax
import jax.numpy as jnp
import numpy as np
from common import environment, write_result

import esjax
from esjax.problems import make_problem, random_rotation

TARGET = 1e-8
SIGMA0 = 1.0


def discus(x):
    return 1e6 * x[..., 0] ** 2 + jnp.sum(x[..., 1:] ** 2, axis=-1)


def problems():
    rotation = np.asarray(random_rotation(jax.random.key(7), 20), np.float64)
    ellipsoid = make_problem("ellipsoid", 20, key=jax.random.key(7), rotate=True).fitness
    scales = 1e6 ** (np.arange(20) / 19)
    return {
        "rotated_ellipsoid_d20": (
            ellipsoid,
            lambda x: float(np.sum(scales * (rotation @ x) ** 2)),
            20,
        ),
        "discus_d15": (discus, lambda x: float(1e6 * x[0] ** 2 + np.sum(x[1:] ** 2)), 15),
    }


def esjax_evaluations(fitness, num_dims, active, seeds, generations):
    es = esjax.cma_es(num_dims=num_dims, sigma=SIGMA0, active=active)

    def one(key):
        state = es.init(key, jnp.ones(num_dims))
        _, metrics = esjax.evolve(es, fitness, key, state, generations)
        hit = metrics["best_fitness"] < TARGET
        return jnp.where(jnp.any(hit), jnp.argmax(hit) + 1, -1)

    keys = jax.random.split(jax.random.key(0), seeds)
    hits = np.asarray(jax.jit(jax.vmap(one))(keys))
    return np.where(hits > 0, hits * es.population_size, np.inf)


def pycma_evaluations(function, num_dims, seeds):
    counts = []
    for seed in range(1, seeds + 1):
        options = {"ftarget": TARGET, "seed": seed, "verbose": -9}
        es = cma.CMAEvolutionStrategy(np.ones(num_dims), SIGMA0, options)
        while not es.stop():
            population = es.ask()
            es.tell(population, [function(x) for x in population])
        counts.append(es.countevals if es.best.f < TARGET else np.inf)
    return np.array(counts, dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--generations", type=int, default=6000)
    parser.add_argument("--output", default=None, help="JSON path (default: results/...)")
    args = parser.parse_args()
    rows = []
    started = time.time()
    for name, (fitness, numpy_fitness, num_dims) in problems().items():
        theirs = pycma_evaluations(numpy_fitness, num_dims, args.seeds)
        row = {"problem": name, "pycma_default": np.median(theirs).item()}
        for label, active in (("esjax_default_active", True), ("esjax_passive", False)):
            ours = esjax_evaluations(fitness, num_dims, active, args.seeds, args.generations)
            row[label] = np.median(ours).item()
            row[f"{label}_ratio"] = row[label] / row["pycma_default"]
        rows.append(row)
    print(
        "| problem | pycma default | esjax default (active) | ratio | esjax active=False | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['problem']} | {row['pycma_default']:,.0f} | "
            f"{row['esjax_default_active']:,.0f} | {row['esjax_default_active_ratio']:.2f} | "
            f"{row['esjax_passive']:,.0f} | {row['esjax_passive_ratio']:.2f} |"
        )
    result = {
        **environment("cma_defaults"),
        "seeds": args.seeds,
        "target": TARGET,
        "sigma0": SIGMA0,
        "rows": rows,
        "seconds": time.time() - started,
    }
    write_result(result, "cma_defaults", args.output)


if __name__ == "__main__":
    main()
