"""The public entry points that drive a strategy: ``step``, ``evolve`` and ``run``.

* :func:`step` compiles one generation, ask → evaluate → tell: ``(key, state) -> (state,
  metrics)``.
* :func:`evolve` is a **pure** whole run: exactly ``num_generations`` generations in one
  ``lax.scan``, jittable and vmappable (``jax.vmap(lambda k, s: esjax.evolve(es, f, k, s, 100))``
  is a seed sweep in one program).
* :func:`run` is the **Python driver** built on the same scan: it runs it in chunks so a
  progress bar, a callback (checkpoints, early stopping) and the strategy's termination signal
  can act between chunks. It cannot be vmapped or jitted; use :func:`evolve` for that.

``fitness_fn`` scores **one** member, given in the shape of ``x0`` (a flat vector or the Flax
params pytree), and returns a scalar to minimise (EKI: a residual vector); it is vmapped over the
population, or mapped ``batch_size`` members at a time (``lax.map``) to cap memory. With
``fitness_takes_key=True`` it is called as ``fitness_fn(member, key)`` with one key per
generation shared by all members (common random numbers: the same minibatch or episode seeds for
everyone, which is what makes ranking members meaningful).

Generation ``g`` uses ``fold_in(key, g)``, so a run resumed from a checkpoint at generation ``g``
continues exactly as the uninterrupted run would have, whatever the chunking.

Each takes ``mesh=`` (a 1-D mesh from :func:`esjax.distributed.make_mesh`) to shard the
population over its devices: one door for sharding. Low-rank ES
(:func:`esjax.low_rank_es`) on an :func:`esjax.nn.dataset_fitness` is evaluated by the fused
population forward of :mod:`esjax.lowrank` (shared ``x W`` plus per-member low-rank terms; no
member weights), on one device or a mesh; ``batch_size`` is then members per fused chunk.

A strategy that declares its termination signal (CMA-ES, sep-CMA-ES, Nelder-Mead, ...) is
frozen from the generation after the signal: in :func:`evolve` later generations leave the
state unchanged and are flagged ``terminated`` in the metrics; :func:`run` ends at the
generation the signal came on, whatever ``log_every`` is (``stop_on_termination=False`` runs
on).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from esjax import distributed, lowrank
from esjax.base import Strategy, StrategyState, check_int, check_key
from esjax.loop import Chunks, FitnessFn, Generation, run_chunks, scan_generations


def generation_for(
    es: Strategy,
    fitness_fn: FitnessFn,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> Generation:
    """The un-jitted generation ``(key, state) -> (state, metrics)`` for one device or a mesh."""
    if not isinstance(es, Strategy):
        raise TypeError(f"es must be an esjax Strategy (e.g. esjax.openai_es(...)), got {es!r}")
    if not callable(fitness_fn):
        raise TypeError(f"fitness_fn must be callable, got {type(fitness_fn).__name__}")
    # The loop's generation, sharded with a mesh; for low-rank ES on a dataset fitness, the
    # fused population forward (no member weights).
    return lowrank.make_generation(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key, mesh=mesh
    )


def step(
    es: Strategy,
    fitness_fn: FitnessFn,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    jit: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> Generation:
    """A compiled generation: ``step(key, state) -> (state, metrics)``.

    Args:
      es: the strategy.
      fitness_fn: scores one member (shaped like ``x0``); minimised.
      batch_size: evaluate the population this many members at a time (``lax.map``).
      fitness_takes_key: call ``fitness_fn(member, key)`` with a per-generation key.
      jit: compile with ``jax.jit`` (turn off to debug with prints).
      mesh: a 1-D ``jax.sharding.Mesh`` (``esjax.distributed.make_mesh()``) to shard the
        population over its devices; results match the unsharded step to float32 rounding.
        ``key`` and ``state`` are replicated on it first (a no-op when they already are).

    Example:
      >>> step_fn = esjax.step(es, esjax.problems.sphere)
      >>> state, metrics = step_fn(jax.random.key(1), state)
    """
    generation = generation_for(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key, mesh=mesh
    )
    compiled = jax.jit(generation) if jit else generation
    if mesh is None:
        return compiled

    def sharded(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        return compiled(distributed.replicate(key, mesh), distributed.replicate(state, mesh))

    return sharded


def evolve(
    es: Strategy,
    fitness_fn: FitnessFn,
    key: jax.Array,
    state: StrategyState,
    num_generations: int,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[StrategyState, dict[str, jax.Array]]:
    """A pure whole run: exactly ``num_generations`` generations in one ``lax.scan``.

    Jittable and vmappable (over keys, states, or hyperparameters held in the state), so a seed
    sweep is one program::

        states = jax.vmap(lambda k: es.init(k, x0))(keys)
        final, metrics = jax.vmap(lambda k, s: esjax.evolve(es, f, k, s, 100))(keys, states)

    After the strategy's termination signal the remaining generations leave the state unchanged
    and are flagged ``terminated`` in the metrics. ``vmap`` together with ``mesh`` is not
    supported; with ``mesh`` the state should be replicated on it
    (:func:`esjax.distributed.replicate`).

    Args:
      es: the strategy.
      fitness_fn: scores one member (shaped like ``x0``); minimised.
      batch_size: evaluate the population this many members at a time (``lax.map``).
      fitness_takes_key: call ``fitness_fn(member, key)`` with a per-generation key.
      mesh: a 1-D mesh to shard the population over (as in :func:`step`).
      key: the run's key; generation ``g`` uses ``fold_in(key, g)``.
      state: the initial (or resumed) state.
      num_generations: generations to run (a Python int >= 0, static).

    Returns:
      ``(state, metrics)``: ``metrics`` maps names to ``(num_generations,)`` arrays.
    """
    num_generations = check_int("num_generations", num_generations, 0)
    key = check_key(key)
    generation = generation_for(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key, mesh=mesh
    )
    return scan_generations(generation, key, num_generations)(state)


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
    mesh: jax.sharding.Mesh | None = None,
    generation_fn: Generation | None = None,
    stop_on_termination: bool = True,
) -> tuple[StrategyState, dict[str, np.ndarray]]:
    """Run up to ``num_generations`` generations in jitted ``lax.scan`` chunks (Python driver).

    The same generations as :func:`evolve`, run a chunk at a time so that the progress bar, the
    callback and the strategy's termination signal act between chunks. Not jittable or
    vmappable: for that, use :func:`evolve`.

    Args:
      es: the strategy.
      fitness_fn: scores one member (shaped like ``x0``); minimised.
      batch_size: evaluate the population this many members at a time (``lax.map``).
      fitness_takes_key: call ``fitness_fn(member, key)`` with a per-generation key.
      key: the run's key; generation ``g`` uses ``fold_in(key, g)``.
      state: the initial (or resumed) state.
      num_generations: generations to run from ``state`` (>= 0).
      log_every: generations per scanned chunk (default: ~20 chunks in total).
      progress: show a tqdm bar (terminal or notebook); ``False`` for silence.
      description: the bar's label (default: the strategy's name).
      callback: ``callback(state, chunk_metrics)`` after each chunk; return ``True`` to stop
        there (e.g. a restart criterion) — useful for checkpointing too — or an int ``g``
        within the chunk to end the run at generation ``g`` exactly: the chunk is rerun from
        its start to ``g`` (the same generations, since generation ``g`` uses
        ``fold_in(key, g)``) and the callback is called once more with that shorter chunk,
        whose return value is then ignored.
      mesh: a 1-D ``jax.sharding.Mesh`` (``esjax.distributed.make_mesh()``) to shard the
        population over its devices (and processes); ``state`` is replicated on it.
      generation_fn: deprecated (goes in 0.3): a prebuilt generation to run instead of the one
        built from ``es`` and ``fitness_fn``; pass ``mesh=`` for sharded runs.
      stop_on_termination: end the run at the generation the strategy's termination signal
        comes on (default). ``False`` ignores the signal: every generation updates the state.

    Returns:
      ``(state, metrics)`` where ``metrics`` maps names to NumPy arrays of length
      generations-run (scalars per generation: ``generation``, ``best_fitness``,
      ``fitness_mean``/``fitness_min``/``fitness_max`` for scalar fitness, ``num_nonfinite``,
      ``terminated`` for a strategy that declares termination, and the strategy's ``info``).
      When the strategy's termination signal comes on, the run ends at that generation whatever
      ``log_every`` is: the returned state and metrics are those of a run of exactly that many
      generations (the chunk's frozen generations after the signal are dropped). It also ends
      when ``callback`` returns True or a generation.
    """
    num_generations = check_int("num_generations", num_generations, 0)
    key = check_key(key)
    if log_every is None:
        log_every = max(1, -(-num_generations // 20))
    log_every = check_int("log_every", log_every, 1)
    if not isinstance(stop_on_termination, bool):
        raise TypeError(f"stop_on_termination must be True or False, got {stop_on_termination!r}")
    if not stop_on_termination:
        es = ignoring_termination(es)
    if generation_fn is None:
        generation = generation_for(
            es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key, mesh=mesh
        )
    else:
        warnings.warn(
            "run(generation_fn=...) is deprecated and goes in 0.3; use run(..., mesh=mesh) for "
            "sharded runs",
            DeprecationWarning,
            stacklevel=2,
        )
        generation = generation_fn
    if mesh is not None:
        state = distributed.replicate(state, mesh)
    chunks = Chunks(generation, key)
    history: list[dict] = []

    def after(start, state, chunk, length, seconds):
        first = int(start.generation)
        stopped = _signal_row(chunk)
        if stopped is not None:
            # Rows from `stopped` on ran with the signal on: the state is frozen there.
            chunk = {name: values[:stopped] for name, values in chunk.items()}
        length = int(state.generation) - first
        wanted = None if callback is None else callback(state, chunk)
        if _is_generation(wanted):
            if not first <= int(wanted) <= first + length:
                raise ValueError(
                    f"callback returned generation {int(wanted)}, outside the chunk it was "
                    f"given (generations {first} to {first + length})"
                )
            if int(wanted) < first + length:
                length = int(wanted) - first
                state, chunk, _ = chunks(start, length)
                callback(state, chunk)
        history.append(chunk)
        stop = stopped is not None or _is_generation(wanted) or bool(wanted)
        return state, length, stop or bool(es.terminated(state))

    state, _ = run_chunks(
        chunks,
        state,
        num_generations,
        log_every,
        after,
        progress=progress,
        description=description or es.name,
        postfix=lambda state: {"best": f"{float(state.best_fitness):.4g}"},
    )
    if not history:
        return state, {}
    metrics = {name: np.concatenate([np.asarray(c[name]) for c in history]) for name in history[0]}
    return state, metrics


def ignoring_termination(es: Strategy) -> Strategy:
    """``es`` with its termination signal removed: drivers then never stop or freeze it."""
    return es._replace(capabilities=es.capabilities._replace(termination=None))


def _signal_row(chunk: dict) -> int | None:
    """The first row of a chunk that ran with the termination signal on (None if none)."""
    flags = chunk.get("terminated")
    if flags is None:
        return None
    on = np.flatnonzero(np.asarray(flags))
    return int(on[0]) if on.size else None


def _is_generation(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


__all__ = ["evolve", "generation_for", "ignoring_termination", "run", "step"]
