"""Generations: population evaluation, one ask → evaluate → tell generation, and scans of them.

This module knows generations and evaluators, nothing about devices: :mod:`esjax.distributed`
builds sharded generations on top of it, and the public entry points ``esjax.step``,
``esjax.evolve`` and ``esjax.run`` (:mod:`esjax.driver`) pick one or the other.

It also holds the one chunked driver every loop runs: :class:`Chunks` (the compiled
``lax.scan`` chunks of a step function) and :func:`run_chunks` (the loop over them, with a
progress bar and a hook after every chunk). ``esjax.run`` (per-generation rows, callbacks,
termination) and the comparisons' timed runs (:func:`esjax.baselines.timed_run`: evaluation rows,
training-only wall-clock, checkpoints) are both that loop with their own hook.

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
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from esjax.base import Strategy, StrategyState, check_int
from esjax.flatten import FlatSpec

Generation = Callable[[jax.Array, StrategyState], tuple[StrategyState, dict]]

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


def generation_metrics(es: Strategy, state: StrategyState, fitness: jax.Array | None) -> dict:
    """Small per-generation diagnostics: scalars only, never parameter-sized arrays.

    ``fitness=None`` gives only the state's own entries (generation, best, ``es.info``).
    """
    metrics = {"generation": state.generation, "best_fitness": state.best_fitness}
    if fitness is not None and fitness.ndim == 1:
        finite = jnp.isfinite(fitness)
        count = jnp.sum(finite)
        # A generation without one finite fitness has no statistics: NaN, never a number.
        none = jnp.where(count > 0, 0.0, jnp.nan).astype(fitness.dtype)
        metrics.update(
            fitness_min=jnp.min(jnp.where(finite, fitness, jnp.inf)) + none,
            fitness_mean=jnp.sum(jnp.where(finite, fitness, 0.0)) / jnp.maximum(count, 1) + none,
            fitness_max=jnp.max(jnp.where(finite, fitness, -jnp.inf)) + none,
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

    return halting(es, generation)


def halting(es: Strategy, generation: Generation) -> Generation:
    """``generation`` that leaves the state unchanged once the strategy's termination signal is
    on, flagging that in the metrics (``terminated``); strategies that declare no termination
    signal are returned as they are.

    The generation still runs (a scan has a fixed length); only its result is discarded.
    """
    if es.capabilities.termination is None:
        return generation

    def halted(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        stopped = es.terminated(state)
        told, metrics = generation(key, state)
        state = jax.tree_util.tree_map(lambda old, new: jnp.where(stopped, old, new), state, told)
        metrics = {**metrics, **generation_metrics(es, state, None), "terminated": stopped}
        return state, metrics

    return halted


def scan_steps(
    step_fn: Callable, key: jax.Array, length: int, counter: Callable | None = None
) -> Callable:
    """``state -> (state, stacked metrics)`` running ``length`` steps of ``step_fn`` via
    ``lax.scan``: the one chunk every driver runs (``esjax.run``, ``esjax run``, and
    ``esjax compare``'s timed runs of strategies and optax trainers alike).

    ``step_fn(key, state) -> (state, metrics)``; step ``t`` gets ``fold_in(key, t)`` where ``t``
    is ``counter(state)`` (default ``state.generation``; a gradient trainer counts
    ``state.step``), so the split into chunks never changes results.
    """
    counter = (lambda state: state.generation) if counter is None else counter

    def body(state, _):
        return step_fn(jax.random.fold_in(key, counter(state)), state)

    def scanned(state):
        return jax.lax.scan(body, state, None, length=length)

    return scanned


def scan_generations(generation: Generation, key: jax.Array, num_generations: int) -> Callable:
    """``state -> (state, stacked metrics)`` running ``num_generations`` via ``lax.scan``
    (:func:`scan_steps` of a generation).

    Generation ``g`` gets ``fold_in(key, g)``, so the split into chunks never changes results.
    """
    return scan_steps(generation, key, num_generations)


class Chunks:
    """Scanned chunks of one step function, compiled once per length: what every driver runs.

    ``chunks(state, length) -> (state, metrics, seconds)`` runs ``length`` steps of
    :func:`scan_steps` from ``state`` with the run's ``key`` (an argument of the compiled
    program, so runs of the same step function with other keys reuse it), waits for the result
    and returns the stacked per-step metrics on the host (``None`` with ``metrics=False``, which
    lets XLA drop them) and the seconds it ran, compilation excluded.

    Args:
      step_fn: ``(key, state) -> (state, metrics)``: a generation or an optax step.
      key: the run's key; step ``t`` gets ``fold_in(key, counter(state))``.
      counter: ``state -> steps done`` (default ``state.generation``).
      metrics: return the per-step metrics (``esjax.run``) or only the state (timed runs).
      ahead_of_time: compile each length with ``jax.jit(...).lower(...).compile()`` before its
        first run, so compile time is measured apart (:attr:`compile_seconds`) and never lands in
        a chunk's seconds; otherwise ``jax.jit`` compiles on first call (and again if the
        state's sharding changes, which a mesh run may do after its first chunk).
      cache: a dict to keep compiled chunks in (keyed by length) and take them from: share it
        between runs of the *same* ``step_fn`` from states of the same structure (the seeds of
        one method) to compile once.
    """

    def __init__(
        self,
        step_fn: Callable,
        key: jax.Array,
        *,
        counter: Callable | None = None,
        metrics: bool = True,
        ahead_of_time: bool = False,
        cache: dict | None = None,
    ):
        self.step_fn = step_fn
        self.key = key
        self.counter = counter  # None: scan_steps's default, state.generation
        self.metrics = metrics
        self.ahead_of_time = ahead_of_time
        self.cache = {} if cache is None else cache
        self.compile_seconds = 0.0  # what this object compiled (not what it found cached)

    def _program(self, length: int) -> Callable:
        def chunk(state, key):
            state, metrics = scan_steps(self.step_fn, key, length, self.counter)(state)
            return (state, metrics) if self.metrics else (state, None)

        return jax.jit(chunk)

    def compile(self, state: Any, length: int) -> Callable:
        """The compiled chunk of ``length`` steps (compiled now if it is not in the cache)."""
        if length not in self.cache:
            start = time.perf_counter()
            program = self._program(length)
            if self.ahead_of_time:
                program = program.lower(state, self.key).compile()
            self.cache[length] = program
            self.compile_seconds += time.perf_counter() - start
        return self.cache[length]

    def __call__(self, state: Any, length: int) -> tuple[Any, dict | None, float]:
        program = self.compile(state, length)
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(program(state, self.key))
        seconds = time.perf_counter() - start
        return state, None if metrics is None else jax.device_get(metrics), seconds


# after(start, state, metrics, length, seconds) -> (state, steps kept, stop)
AfterChunk = Callable[[Any, Any, Any, int, float], tuple[Any, int, bool]]


def run_chunks(
    chunks: Chunks,
    state: Any,
    num_steps: int,
    every: int,
    after: AfterChunk,
    *,
    progress: bool = False,
    description: str | None = None,
    initial: int = 0,
    postfix: Callable[[Any], dict] | None = None,
) -> tuple[Any, int]:
    """The chunked loop of every driver: ``esjax.run`` and the comparisons' timed runs.

    Runs ``num_steps`` steps from ``state`` in chunks of ``every`` (the last one shorter). After
    each chunk, ``after(start, state, metrics, length, seconds)`` (``start``: the chunk's first
    state) records what it needs (rows, checkpoints, a callback) and returns the state to go on
    from, the steps of the chunk it keeps (fewer when it cut the chunk short, e.g. at a
    termination signal) and whether to stop. A tqdm bar (``progress``; ``initial`` steps done
    before, ``postfix(state)`` shown) follows along.

    Returns:
      ``(state, steps run)``.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=initial + num_steps,
            initial=initial,
            desc=description,
            leave=True,
            file=sys.stderr,
            dynamic_ncols=True,
        )
    done = 0
    try:
        while done < num_steps:
            length = min(every, num_steps - done)
            start = state
            state, metrics, seconds = chunks(start, length)
            state, length, stop = after(start, state, metrics, length, seconds)
            done += length
            if bar is not None:
                bar.update(length)
                if postfix is not None:
                    bar.set_postfix(postfix(state))
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    return state, done


__all__ = [
    "AfterChunk",
    "Chunks",
    "FitnessFn",
    "Generation",
    "evaluate_population",
    "generation_metrics",
    "halting",
    "make_generation",
    "run_chunks",
    "scan_generations",
    "scan_steps",
]
