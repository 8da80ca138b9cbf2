"""Driving a strategy: population evaluation, the jitted ``step`` and the scanned ``run``.

``step(es, fitness_fn)`` builds one generation, ask → evaluate → tell, as a jitted
``(key, state) -> (state, metrics)``; ``run`` repeats it with ``lax.scan`` in chunks so a
progress bar (or a checkpoint callback) can see the run between chunks.

``fitness_fn`` scores **one** member, given in the shape of ``x0`` (a flat vector or the Flax
params pytree), and returns a scalar to minimise; the loop vmaps it over the population, or maps
it in chunks of ``batch_size`` members (``lax.map``) to cap memory. With
``fitness_takes_key=True`` it is called as ``fitness_fn(member, key)`` with one key per
generation shared by all members (common random numbers: the same minibatch or episode seeds for
everyone, which is what makes ranking members meaningful).

Generation ``g`` of ``run`` uses ``fold_in(key, g)``, so a run resumed from a checkpoint at
generation ``g`` continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esjax.base import Strategy, StrategyState, check_int
from esjax.flatten import FlatSpec

FitnessFn = Callable[..., jax.Array]


def evaluate_population(
    fitness_fn: FitnessFn,
    population: jax.Array,
    spec: FlatSpec,
    *,
    key: jax.Array | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """Evaluate every row of ``population`` (``(population_size, num_dims)``).

    Each row is unflattened to the shape of ``x0`` before ``fitness_fn`` sees it. With
    ``batch_size`` the population is evaluated ``batch_size`` rows at a time, which caps the
    activation memory of large models at the cost of less parallelism.

    Returns:
      ``(population_size, ...)``: whatever ``fitness_fn`` returns, stacked (scalars → a vector).
    """

    def one(member: jax.Array) -> jax.Array:
        solution = spec.unflatten(member)
        return fitness_fn(solution) if key is None else fitness_fn(solution, key)

    if batch_size is None or batch_size >= population.shape[0]:
        return jax.vmap(one)(population)
    return jax.lax.map(one, population, batch_size=batch_size)


def generation_metrics(es: Strategy, state: StrategyState, fitness: jax.Array) -> dict:
    """Small per-generation diagnostics: scalars only, never parameter-sized arrays."""
    metrics = {"generation": state.generation, "best_fitness": state.best_fitness}
    if fitness.ndim == 1:
        finite = jnp.isfinite(fitness)
        count = jnp.sum(finite)
        metrics.update(
            fitness_min=jnp.min(jnp.where(finite, fitness, jnp.inf)),
            fitness_mean=jnp.sum(jnp.where(finite, fitness, 0.0)) / jnp.maximum(count, 1),
            fitness_max=jnp.max(jnp.where(finite, fitness, -jnp.inf)),
            num_nonfinite=fitness.shape[0] - count,
        )
    metrics.update(es.info(state))
    return metrics


def make_generation(
    es: Strategy,
    fitness_fn: FitnessFn,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    evaluate: Callable[..., jax.Array] | None = None,
) -> Callable[[jax.Array, StrategyState], tuple[StrategyState, dict]]:
    """The un-jitted generation ``(key, state) -> (state, metrics)`` used by ``step`` and ``run``.

    ``evaluate`` replaces :func:`evaluate_population` (same signature); the distributed module
    passes a sharded evaluator here.
    """
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    evaluate = evaluate_population if evaluate is None else evaluate

    def generation(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        ask_key, eval_key = jax.random.split(key)
        population, state = es.ask(ask_key, state)
        fitness = evaluate(
            fitness_fn,
            population,
            state.spec,
            key=eval_key if fitness_takes_key else None,
            batch_size=batch_size,
        )
        state = es.tell(state, population, fitness)
        return state, generation_metrics(es, state, fitness)

    return generation


def step(
    es: Strategy,
    fitness_fn: FitnessFn,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    jit: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[jax.Array, StrategyState], tuple[StrategyState, dict]]:
    """A compiled generation: ``step(key, state) -> (state, metrics)``.

    Args:
      es: the strategy.
      fitness_fn: scores one member (shaped like ``x0``); minimised.
      batch_size: evaluate the population this many members at a time (``lax.map``).
      fitness_takes_key: call ``fitness_fn(member, key)`` with a per-generation key.
      jit: compile with ``jax.jit`` (turn off to debug with prints).
      mesh: a 1-D ``jax.sharding.Mesh`` (``esjax.distributed.make_mesh()``) to shard the
        population over its devices; results match the unsharded step to float32 rounding.

    Example:
      >>> step_fn = esjax.step(es, esjax.problems.sphere)
      >>> state, metrics = step_fn(jax.random.key(1), state)
    """
    if mesh is not None:
        from esjax import distributed  # imports this module

        return distributed.sharded_step(
            es,
            fitness_fn,
            mesh,
            batch_size=batch_size,
            fitness_takes_key=fitness_takes_key,
            jit=jit,
        )
    generation = make_generation(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key
    )
    return jax.jit(generation) if jit else generation


def scan_generations(generation: Callable, key: jax.Array, num_generations: int) -> Callable:
    """``state -> (state, stacked metrics)`` running ``num_generations`` via ``lax.scan``.

    Generation ``g`` gets ``fold_in(key, g)``, so the split into chunks never changes results.
    """

    def body(state, _):
        return generation(jax.random.fold_in(key, state.generation), state)

    def scanned(state):
        return jax.lax.scan(body, state, None, length=num_generations)

    return scanned


def _progress_bar(total: int, enabled: bool, description: str | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=True, file=sys.stderr, dynamic_ncols=True)


def run(
    es: Strategy,
    fitness_fn: FitnessFn,
    key: jax.Array,
    state: StrategyState,
    num_generations: int,
    *,
    log_every: int | None = None,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    progress: bool = True,
    description: str | None = None,
    callback: Callable[[StrategyState, dict], Any] | None = None,
    generation_fn: Callable | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[StrategyState, dict[str, np.ndarray]]:
    """Run ``num_generations`` generations in jitted ``lax.scan`` chunks.

    Args:
      es, fitness_fn, batch_size, fitness_takes_key: as in :func:`step`.
      key: the run's key; generation ``g`` uses ``fold_in(key, g)``.
      state: the initial (or resumed) state.
      num_generations: generations to run from ``state`` (>= 0).
      log_every: generations per scanned chunk (default: ~20 chunks in total). The progress bar,
        ``callback`` and early stopping act between chunks.
      progress: show a tqdm bar (terminal or notebook); ``False`` for silence.
      callback: ``callback(state, chunk_metrics)`` after each chunk; return ``True`` to stop early
        (e.g. a restart criterion) — useful for checkpointing too.
      generation_fn: a prebuilt ``(key, state) -> (state, metrics)`` (e.g. a sharded one from
        ``esjax.distributed``) instead of building one from ``es`` and ``fitness_fn``.
      mesh: a 1-D ``jax.sharding.Mesh`` (``esjax.distributed.make_mesh()``) to shard the
        population over its devices (and processes); ``state`` is replicated on it.

    Returns:
      ``(state, metrics)`` where ``metrics`` maps names to NumPy arrays of length
      generations-run (scalars per generation).
    """
    num_generations = check_int("num_generations", num_generations, 0)
    if mesh is not None:
        from esjax import distributed  # imports this module

        state = distributed.replicate(state, mesh)
        generation_fn = generation_fn or distributed.make_sharded_generation(
            es, fitness_fn, mesh, batch_size=batch_size, fitness_takes_key=fitness_takes_key
        )
    if log_every is None:
        log_every = max(1, -(-num_generations // 20))
    log_every = check_int("log_every", log_every, 1)
    generation = generation_fn or make_generation(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key
    )
    compiled: dict[int, Callable] = {}
    history: list[dict] = []
    bar = _progress_bar(num_generations, progress, description or es.name)
    done = 0
    try:
        while done < num_generations:
            length = min(log_every, num_generations - done)
            if length not in compiled:
                compiled[length] = jax.jit(scan_generations(generation, key, length))
            state, chunk = compiled[length](state)
            chunk = jax.device_get(chunk)
            history.append(chunk)
            done += length
            if bar is not None:
                bar.update(length)
                bar.set_postfix(best=f"{float(state.best_fitness):.4g}")
            if callback is not None and callback(state, chunk):
                break
    finally:
        if bar is not None:
            bar.close()
    if not history:
        return state, {}
    metrics = {name: np.concatenate([np.asarray(c[name]) for c in history]) for name in history[0]}
    return state, metrics
