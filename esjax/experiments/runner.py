"""Run one experiment from a config and write ``metrics.csv`` and ``summary.json``."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import jax
import numpy as np

from esjax.experiments.config import ExperimentConfig, build_strategy, config_to_dict
from esjax.experiments.setup import build_problem
from esjax.loop import run


def write_metrics_csv(path: Path, metrics: dict[str, np.ndarray]) -> None:
    """One row per generation, one column per metric (``generation`` first)."""
    names = sorted(metrics, key=lambda name: name != "generation")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(np.asarray(metrics[n]).tolist() for n in names), strict=True):
            writer.writerow(row)


def run_experiment(
    config: ExperimentConfig, *, progress: bool = True, output_dir: str | Path | None = None
) -> dict:
    """Run ``config`` and write ``<output_dir>/<name>/{metrics.csv,summary.json}``.

    Keys: ``problem`` uses ``fold_in(seed_key, 0)``, ``init`` ``fold_in(seed_key, 1)`` and the
    generations ``fold_in(seed_key, 2)``, so every part is reproducible from ``seed`` alone.

    Returns:
      The summary dict written to ``summary.json``.
    """
    run_dir = Path(output_dir or config.output_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_key = jax.random.key(config.seed)
    problem = build_problem(config.problem, jax.random.fold_in(seed_key, 0))
    es = build_strategy(config.strategy)
    state = es.init(jax.random.fold_in(seed_key, 1), problem.x0)

    start = time.perf_counter()
    state, metrics = run(
        es,
        problem.fitness_fn,
        jax.random.fold_in(seed_key, 2),
        state,
        config.generations,
        log_every=config.log_every,
        batch_size=config.batch_size,
        fitness_takes_key=problem.fitness_takes_key,
        progress=progress,
        description=config.name,
    )
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start

    write_metrics_csv(run_dir / "metrics.csv", metrics)
    summary = {
        "name": config.name,
        "strategy": config.strategy["name"],
        "problem": config.problem["name"],
        "num_dims": state.num_dims,
        "population_size": es.population_size,
        "generations": int(state.generation),
        "evaluations": int(state.generation) * es.population_size,
        "best_fitness": float(state.best_fitness),
        "seconds_including_compile": seconds,
        "config": config_to_dict(config),
    }
    if hasattr(state, "mean"):
        mean_fitness = problem.fitness_fn(state.unravel(state.mean))
        summary["mean_fitness"] = float(mean_fitness)
    if problem.report is not None:
        summary.update(problem.report(state.best_solution))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["run_dir"] = str(run_dir)
    return summary
