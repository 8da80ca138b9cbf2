"""IPOP: restart CMA-ES with a doubled population whenever it stops, until a budget is spent.

Reference: A. Auger & N. Hansen, "A Restart CMA Evolution Strategy With Increasing Population
Size", IEEE CEC 2005. A larger population makes CMA-ES see the global structure of multimodal
functions (rastrigin, ...), so each restart multiplies ``λ`` by ``population_growth`` (2).

A restart is triggered by the strategy's own termination signal (``es.info(state)["stop"]``:
tolx, tolfun, condition, stagnation, no-effect; see :mod:`esjax.strategies.cma_es`). Because the
population size fixes array shapes, each restart is a new strategy and a new compiled program,
so the loop over restarts runs in Python; one restart (``init`` and every generation until its
stop) is a single jitted ``lax.while_loop``. The evaluation count is exactly
``Σ generations × λ`` up to each stop.

A batch of keys runs independent IPOP runs one after the other; the compiled program of each
population size is built once and reused by every run.

With :func:`esjax.run` instead, :func:`stop_callback` ends a run at the chunk where a signal
fires; re-``init`` a strategy with a larger ``population_size`` and call ``run`` again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esjax.base import Strategy, StrategyState, check_int, check_range
from esjax.flatten import FlatSpec, flatten_x0
from esjax.loop import make_generation
from esjax.strategies.cma_es import cma_es, default_population_size


@dataclasses.dataclass(frozen=True)
class IPOPResult:
    """What :func:`ipop` found. Arrays have a leading run axis when a batch of keys was given.

    Attributes:
      best_solution: ``(num_dims,)`` best member over all restarts (flat; ``spec.unflatten``).
      best_fitness: its fitness.
      evaluations: evaluations spent (``Σ generations × λ``).
      evaluations_to_target: evaluations when the best fitness first fell below
        ``target_fitness`` (-1 if it never did).
      num_restarts: restarts after the first run of the strategy.
      population_sizes: ``λ`` of each stage, first to last.
      stage_generations: per stage, the generations each batch member ran (0 if finished).
      spec: the structure of ``x0``.
    """

    best_solution: np.ndarray
    best_fitness: np.ndarray
    evaluations: np.ndarray
    evaluations_to_target: np.ndarray
    num_restarts: np.ndarray
    population_sizes: tuple[int, ...]
    stage_generations: tuple[np.ndarray, ...]
    spec: FlatSpec


def stop_callback(target_fitness: float | None = None) -> Callable[[StrategyState, dict], bool]:
    """A ``callback`` for :func:`esjax.run` that stops at the chunk where ``stop`` fired.

    Also stops once ``state.best_fitness < target_fitness`` when a target is given.
    """

    def callback(state: StrategyState, chunk_metrics: dict) -> bool:
        stopped = bool(np.any(chunk_metrics.get("stop", False)))
        if target_fitness is not None:
            stopped |= bool(state.best_fitness < target_fitness)
        return stopped

    return callback


def ipop(
    fitness_fn: Callable[..., jax.Array],
    key: jax.Array,
    x0: Any,
    *,
    sigma: float,
    max_evaluations: int,
    population_size: int | None = None,
    population_growth: int = 2,
    max_restarts: int = 9,
    target_fitness: float = -np.inf,
    strategy: Callable[..., Strategy] = cma_es,
    strategy_kwargs: dict | None = None,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    compiler_options: dict | None = None,
) -> IPOPResult:
    """Run IPOP-CMA-ES (Auger & Hansen 2005): restart with ``λ ← population_growth · λ``.

    Args:
      fitness_fn: scores one member shaped like ``x0``; minimised (as in :func:`esjax.run`).
      key: a PRNG key, or a batch of keys ``(k,)`` for ``k`` independent runs.
      x0: the initial solution (flat vector or pytree), or ``x0(key) -> solution`` to draw a new
        start for every restart (e.g. uniform in a box, as in Auger & Hansen).
      sigma: initial step size of every restart (> 0).
      max_evaluations: budget per run; a restart stops before the generation that would exceed it.
      population_size: ``λ`` of the first run; default ``4 + ⌊3 ln n⌋``.
      population_growth: factor on ``λ`` per restart (2 in IPOP).
      max_restarts: at most this many restarts after the first run.
      target_fitness: a run finishes once its best fitness is below this.
      strategy: factory called as ``strategy(population_size=λ, sigma=sigma, num_dims=n,
        **strategy_kwargs)``: :func:`esjax.cma_es` (default) or :func:`esjax.sep_cma_es`.
      batch_size, fitness_takes_key: as in :func:`esjax.run`.
      compiler_options: passed to ``jax.jit`` for each population size's program, e.g.
        ``{"xla_backend_optimization_level": 0}`` to trade run time for compile time when the
        fitness is cheap and compilation dominates.

    Returns:
      An :class:`IPOPResult`.

    Example:
      >>> result = ipop(esjax.problems.rastrigin, jax.random.key(0),
      ...               lambda k: jax.random.uniform(k, (10,), minval=-4, maxval=4),
      ...               sigma=2.0, max_evaluations=200_000, target_fitness=1e-5)
    """
    max_evaluations = check_int("max_evaluations", max_evaluations, 1)
    population_growth = check_int("population_growth", population_growth, 1)
    max_restarts = check_int("max_restarts", max_restarts, 0)
    check_range("sigma", sigma, 0.0, None, low_inclusive=False)
    draw_x0 = x0 if callable(x0) else (lambda _: x0)
    keys = jnp.asarray(key)
    single = keys.ndim == 0
    keys = keys[None] if single else keys
    _, spec = flatten_x0(draw_x0(keys[0]))
    population_size = population_size or default_population_size(spec.num_dims)
    strategy_kwargs = dict(strategy_kwargs or {})
    stages: dict[int, Callable] = {}

    def compiled_stage(size: int) -> Callable:
        if size not in stages:
            es = strategy(
                population_size=size, sigma=sigma, num_dims=spec.num_dims, **strategy_kwargs
            )
            stages[size] = jax.jit(
                _stage(
                    es,
                    fitness_fn,
                    draw_x0,
                    max_evaluations,
                    target_fitness,
                    batch_size,
                    fitness_takes_key,
                ),
                compiler_options=compiler_options,
            )
        return stages[size]

    results = []
    for run_key in keys:
        record = {
            "evaluations": jnp.array(0, jnp.int32),
            "best_fitness": jnp.array(jnp.inf, spec.dtype),
            "best_solution": jnp.zeros(spec.num_dims, spec.dtype),
            "to_target": jnp.array(-1, jnp.int32),
        }
        sizes, generations = [], []
        for stage in range(max_restarts + 1):
            size = population_size * population_growth**stage
            if int(record["to_target"]) >= 0 or int(record["evaluations"]) + size > max_evaluations:
                break
            record, stage_generations = compiled_stage(size)(
                jax.random.fold_in(run_key, stage), record
            )
            sizes.append(size)
            generations.append(int(stage_generations))
        results.append((jax.device_get(record), sizes, generations))

    num_stages = max(len(sizes) for _, sizes, _ in results)
    population_sizes = tuple(population_size * population_growth**s for s in range(num_stages))

    def gather(name):
        values = np.stack([np.asarray(record[name]) for record, _, _ in results])
        return values[0] if single else values

    def stage_column(s):
        values = np.array([g[s] if s < len(g) else 0 for _, _, g in results])
        return values[0] if single else values

    num_restarts = np.array([len(sizes) - 1 for _, sizes, _ in results])
    return IPOPResult(
        best_solution=gather("best_solution"),
        best_fitness=gather("best_fitness"),
        evaluations=gather("evaluations"),
        evaluations_to_target=gather("to_target"),
        num_restarts=num_restarts[0] if single else num_restarts,
        population_sizes=population_sizes,
        stage_generations=tuple(stage_column(s) for s in range(num_stages)),
        spec=spec,
    )


def _stage(
    es: Strategy,
    fitness_fn: Callable,
    draw_x0: Callable,
    max_evaluations: int,
    target_fitness: float,
    batch_size: int | None,
    fitness_takes_key: bool,
) -> Callable:
    """One restart, ``init`` to stop, as ``(stage_key, record) -> (record, generations)``."""
    generation = make_generation(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key
    )
    size = es.population_size

    def stopped(state, record):
        reached = record["best_fitness"] < target_fitness
        budget_spent = record["evaluations"] + size > max_evaluations
        return es.info(state)["stop"] | reached | budget_spent

    def run_stage(stage_key, record):
        x0_key, init_key, run_key = jax.random.split(stage_key, 3)
        state = es.init(init_key, draw_x0(x0_key))

        def body(carry):
            state, record = carry
            state, _ = generation(jax.random.fold_in(run_key, state.generation), state)
            evaluations = record["evaluations"] + size
            improved = state.best_fitness < record["best_fitness"]
            best_fitness = jnp.where(improved, state.best_fitness, record["best_fitness"])
            first_hit = (best_fitness < target_fitness) & (record["to_target"] < 0)
            return state, {
                "evaluations": evaluations,
                "best_fitness": best_fitness,
                "best_solution": jnp.where(improved, state.best_solution, record["best_solution"]),
                "to_target": jnp.where(first_hit, evaluations, record["to_target"]),
            }

        state, record = jax.lax.while_loop(lambda carry: ~stopped(*carry), body, (state, record))
        return record, state.generation

    return run_stage


__all__ = [
    "IPOPResult",
    "ipop",
    "stop_callback",
]
