"""Differential evolution: DE/rand/1/bin and DE/best/1/bin with deferred (generational) updating.

References: Storn & Price, "Differential Evolution - A Simple and Efficient Heuristic for Global
Optimization over Continuous Spaces", Journal of Global Optimization 11, 1997 (mutation,
binomial crossover, one-to-one selection); Das & Suganthan, "Differential Evolution: A Survey of
the State-of-the-Art", IEEE TEVC 15, 2011 (dither: a scale factor drawn per generation). Bounds
handling, initialisation and the dither range follow ``scipy.optimize.differential_evolution``
with ``updating="deferred"``, the reference the tests compare against.

The population is ``N = population_size`` vectors ``x_1..x_N`` with fitness ``f_i``. Each
generation builds one trial ``u_i`` per member (all from the same generation, so the ``N``
trials are evaluated together) from distinct random indices ``r0, r1, r2 ≠ i``::

    rand/1:   v_i = x_r0 + F (x_r1 - x_r2)
    best/1:   v_i = x_best + F (x_r0 - x_r1)
    u_i,j  =  v_i,j  if U_i,j < CR or j = j_rand,i,  else x_i,j        (binomial crossover)

with ``F`` the mutation (scale) factor, ``CR`` the crossover rate and ``j_rand`` one coordinate
drawn per member, so that every trial differs from its target in at least one coordinate.
``mutation=(F_min, F_max)`` dithers: ``F ~ U(F_min, F_max)`` is drawn once per generation and
shared by all members (scipy's default ``(0.5, 1)``). Selection is one-to-one: ``x_i ← u_i`` if
``f(u_i) <= f_i``; a trial whose fitness is non-finite (NaN: no information) never replaces its
target.

Bounds (``lower_bound``/``upper_bound``, optional). The initial population is a Latin hypercube
in the box (``init="latinhypercube"``: each coordinate's ``N`` values fall one in each of ``N``
equal strata, in an independent random order per coordinate; scipy's default) or uniform in it
(``init="random"``). A trial coordinate outside the box is redrawn uniformly in the box, as scipy
does. Without bounds the initial box is ``x0 ± init_spread`` and trials are never confined.

Ask and tell. ``init`` draws the initial population; the first ``ask`` returns it and the first
``tell`` sets its fitness (non-finite fitness is stored as the largest finite float, so any finite
trial replaces such a member). Every later ``ask`` returns the trials.

Randomness. Member ``i``'s trial uses ``2 n + 4`` uniforms, row ``i`` of
:func:`esjax.prng.member_uniforms` under the key given to ``ask`` (three for the indices ``r0,
r1, r2``, one for ``j_rand``, ``n`` for the crossover and ``n`` for redrawing out-of-bounds
coordinates); the dithered ``F`` comes from a key split off the same one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esjax.base import (
    Capabilities,
    Strategy,
    StrategyState,
    check_int,
    check_params,
    check_range,
    make_strategy,
)
from esjax.bounds import bounds_like, check_bounds
from esjax.prng import member_uniforms

VARIANTS = ("rand1bin", "best1bin")
INITS = ("latinhypercube", "random")
NUM_INDEX_DRAWS = 3  # r0, r1, r2 (best/1 uses the first two)


@struct.dataclass
class DifferentialEvolutionParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over). Their defaults are
    :func:`differential_evolution`'s arguments: start from ``es.default_params``.

    Attributes:
      mutation_min, mutation_max: the range ``[F_min, F_max]`` of the scale factor ``F``
        (``0 <= F_min <= F_max <= 2``; equal: no dither).
      recombination: crossover rate ``CR``, in [0, 1].
      init_spread: half-width of the initial box around ``x0`` when no bounds are given (> 0).
    """

    mutation_min: float | jax.Array
    mutation_max: float | jax.Array
    recombination: float | jax.Array
    init_spread: float | jax.Array


PARAM_RANGES = {
    "mutation_min": (0.0, 2.0),
    "mutation_max": (0.0, 2.0),
    "recombination": (0.0, 1.0),
    "init_spread": (0.0, None, False, True),
}


@struct.dataclass
class DifferentialEvolutionState(StrategyState):
    """Population state.

    Attributes:
      population: ``(population_size, num_dims)`` the current members ``x_i`` (before the first
        ``tell``: the initial population, not yet evaluated).
      fitness: ``(population_size,)`` their fitness (the largest finite float before the first
        ``tell`` and for non-finite values).
      mutation_factor: scalar, the ``F`` used by the last ``ask``.
      acceptance_rate: scalar, fraction of trials that replaced their target in the last
        ``tell``.
    """

    population: jax.Array
    fitness: jax.Array
    mutation_factor: jax.Array
    acceptance_rate: jax.Array
    params: DifferentialEvolutionParams


def distinct_indices(draws: jax.Array, member: jax.Array, population_size: int) -> jax.Array:
    """Three distinct indices in ``[0, N)``, none equal to ``member``, from three uniforms.

    ``draws`` is ``(..., 3)`` in ``[0, 1)`` and ``member`` ``(...)``. Index ``k`` is drawn
    uniformly among the ``N - 1 - k`` values still free and mapped past the ones taken (an
    ordered sample without replacement, uniform over all ordered triples).
    """
    picked = []
    taken = [member]
    for k in range(NUM_INDEX_DRAWS):
        free = population_size - 1 - k
        index = jnp.minimum(jnp.floor(draws[..., k] * free).astype(jnp.int32), free - 1)
        # Skipping the taken values in ascending order maps 0..free-1 onto the free values.
        for value in _sorted(taken):
            index = index + (index >= value)
        picked.append(index)
        taken.append(index)
    return jnp.stack(picked, axis=-1)


def _sorted(values: list[jax.Array]) -> list[jax.Array]:
    """The elementwise sort of a short list of integer arrays (a sorting network of min/max)."""
    values = list(values)
    for i in range(len(values)):
        for j in range(len(values) - 1 - i):
            low = jnp.minimum(values[j], values[j + 1])
            high = jnp.maximum(values[j], values[j + 1])
            values[j], values[j + 1] = low, high
    return values


def latin_hypercube(key: jax.Array, population_size: int, num_dims: int, dtype) -> jax.Array:
    """``(N, n)`` points in ``[0, 1)^n``: each coordinate's values fall one per stratum
    ``[k/N, (k+1)/N)``, the strata in an independent random order per coordinate."""
    offset_key, order_key = jax.random.split(key)
    offsets = jax.random.uniform(offset_key, (population_size, num_dims), dtype)
    strata = jnp.arange(population_size, dtype=dtype)[:, None]
    samples = (strata + offsets) / population_size
    # An independent random permutation per column: argsort of iid uniforms.
    order = jnp.argsort(jax.random.uniform(order_key, (population_size, num_dims)), axis=0)
    return jnp.take_along_axis(samples, order, axis=0)


def differential_evolution(
    population_size: int,
    variant: str = "rand1bin",
    mutation: float | tuple[float, float] = (0.5, 1.0),
    recombination: float = 0.7,
    lower_bound: float | list[float] | None = None,
    upper_bound: float | list[float] | None = None,
    init: str = "latinhypercube",
    init_spread: float = 1.0,
) -> Strategy:
    """Build differential evolution (Storn & Price 1997) with generational selection.

    Args:
      population_size: members ``N`` (>= 4 for ``rand1bin``, >= 3 for ``best1bin``: the
        distinct indices each trial needs). scipy's default is ``15 n``.
      variant: ``"rand1bin"`` (DE/rand/1/bin, the default) or ``"best1bin"`` (DE/best/1/bin:
        faster on unimodal problems, more prone to premature convergence).
      mutation: the scale factor ``F``: a number in [0, 2], or ``(F_min, F_max)`` to draw ``F``
        uniformly in that range once per generation (dither; default ``(0.5, 1.0)``, scipy's).
      recombination: the crossover rate ``CR`` in [0, 1] (default 0.7, scipy's).
      lower_bound: lower box bound, a scalar or a ``num_dims`` list (with ``upper_bound``, or
        neither). Within bounds the population starts in the box and out-of-box trial
        coordinates are redrawn uniformly in it.
      upper_bound: upper box bound, likewise.
      init: ``"latinhypercube"`` (default) or ``"random"`` initial population, in the box (or
        in ``x0 ± init_spread`` without bounds).
      init_spread: half-width of the initial box around ``x0`` without bounds (> 0).

    Returns:
      A :class:`~esjax.base.Strategy` that minimises and reports ``best_solution``.

    Example:
      >>> es = differential_evolution(population_size=75, lower_bound=-5.12, upper_bound=5.12)
      >>> state = es.init(jax.random.key(0), jnp.zeros(5))
      >>> population, state = es.ask(jax.random.key(1), state)   # the initial population
      >>> state = es.tell(state, population, esjax.problems.rastrigin(population))
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    minimum = NUM_INDEX_DRAWS + 1 if variant == "rand1bin" else NUM_INDEX_DRAWS
    population_size = check_int("population_size", population_size, minimum)
    mutation_min, mutation_max = _mutation_range(mutation)
    bounds = check_bounds(lower_bound, upper_bound)
    indices = jnp.arange(population_size)

    def init_fields(key: jax.Array, mean: jax.Array, params: DifferentialEvolutionParams) -> dict:
        if bounds is None:
            lower, upper = mean - params.init_spread, mean + params.init_spread
        else:
            lower, upper = bounds_like(bounds, mean)
        shape = (population_size, mean.shape[0])
        if init == "latinhypercube":
            unit = latin_hypercube(key, *shape, mean.dtype)
        else:
            unit = jax.random.uniform(key, shape, mean.dtype)
        # Clipped: lower + (upper - lower) u can round up to upper itself.
        population = jnp.clip(lower + (upper - lower) * unit, lower, upper)
        return {
            "population": population,
            "fitness": jnp.full((population_size,), jnp.finfo(mean.dtype).max, mean.dtype),
            "mutation_factor": jnp.zeros((), mean.dtype),
            "acceptance_rate": jnp.zeros((), mean.dtype),
        }

    def trials(key: jax.Array, state: DifferentialEvolutionState) -> tuple[jax.Array, jax.Array]:
        """Every member's trial ``u_i`` and the generation's ``F``."""
        params, x = state.params, state.population
        n, dtype = state.num_dims, x.dtype
        factor_key, member_key = jax.random.split(key)
        factor = params.mutation_min + (params.mutation_max - params.mutation_min) * (
            jax.random.uniform(factor_key, (), dtype)
        )
        draws = member_uniforms(member_key, indices, 2 * n + NUM_INDEX_DRAWS + 1, dtype)
        picked = distinct_indices(draws[:, :NUM_INDEX_DRAWS], indices, population_size)
        fill = jnp.minimum(jnp.floor(draws[:, NUM_INDEX_DRAWS] * n).astype(jnp.int32), n - 1)
        crossover_draws = draws[:, NUM_INDEX_DRAWS + 1 : NUM_INDEX_DRAWS + 1 + n]
        redraws = draws[:, NUM_INDEX_DRAWS + 1 + n :]
        if variant == "rand1bin":
            base, plus, minus = x[picked[:, 0]], x[picked[:, 1]], x[picked[:, 2]]
        else:
            base = x[jnp.argmin(state.fitness)][None, :]
            plus, minus = x[picked[:, 0]], x[picked[:, 1]]
        mutant = base + factor * (plus - minus)
        crossover = (crossover_draws < params.recombination) | (jnp.arange(n) == fill[:, None])
        trial = jnp.where(crossover, mutant, x)
        if bounds is not None:
            lower, upper = bounds_like(bounds, state.best_solution)
            outside = (trial < lower) | (trial > upper)
            redrawn = jnp.clip(lower + (upper - lower) * redraws, lower, upper)
            trial = jnp.where(outside, redrawn, trial)
        return trial, factor

    def ask(
        key: jax.Array, state: DifferentialEvolutionState
    ) -> tuple[jax.Array, DifferentialEvolutionState]:
        trial, factor = trials(key, state)
        first = state.generation == 0
        population = jnp.where(first, state.population, trial)
        return population, state.replace(
            mutation_factor=jnp.where(first, state.mutation_factor, factor)
        )

    def update(
        state: DifferentialEvolutionState, population: jax.Array, fitness: jax.Array
    ) -> DifferentialEvolutionState:
        dtype = state.fitness.dtype
        finite = jnp.isfinite(fitness)
        fitness = jnp.where(finite, fitness, jnp.finfo(dtype).max).astype(dtype)
        first = state.generation == 0
        # Generation 0 sets the initial members' fitness; later a finite trial replaces its
        # target when it is no worse (ties accepted, as in scipy: it lets DE cross plateaus).
        accepted = first | (finite & (fitness <= state.fitness))
        return state.replace(
            population=jnp.where(accepted[:, None], population, state.population),
            fitness=jnp.where(accepted, fitness, state.fitness),
            acceptance_rate=jnp.where(first, 0, jnp.mean(accepted.astype(dtype))).astype(dtype),
        )

    def info(state: DifferentialEvolutionState) -> dict:
        return {
            "mutation_factor": state.mutation_factor,
            "acceptance_rate": state.acceptance_rate,
            "fitness_spread": jnp.std(state.fitness),
        }

    return make_strategy(
        name="differential_evolution",
        population_size=population_size,
        default_params=DifferentialEvolutionParams(
            mutation_min=mutation_min,
            mutation_max=mutation_max,
            recombination=recombination,
            init_spread=init_spread,
        ),
        param_checks=_check,
        state_type=DifferentialEvolutionState,
        init=init_fields,
        ask=ask,
        update=update,
        info=info,
        capabilities=Capabilities(solution="best_solution", init_uses_key=True, bounds=bounds),
    )


def _mutation_range(mutation) -> tuple[float, float]:
    """``(F_min, F_max)`` from a number or a pair, each in [0, 2], ``F_min <= F_max``."""
    if isinstance(mutation, tuple | list):
        if len(mutation) != 2:
            raise ValueError(
                f"mutation must be a number or a pair (F_min, F_max), got {mutation!r}"
            )
        low, high = mutation
    else:
        low = high = mutation
    for value in (low, high):
        check_range("mutation", value, 0.0, 2.0)
    if _is_number(low) and _is_number(high) and float(low) > float(high):
        raise ValueError(f"mutation must be (F_min, F_max) with F_min <= F_max, got {mutation!r}")
    return low, high


def _is_number(value) -> bool:
    return not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0


def _check(params: DifferentialEvolutionParams) -> None:
    """The ranges of PARAM_RANGES and ``mutation_min <= mutation_max``."""
    check_params(params, PARAM_RANGES)
    if _is_number(params.mutation_min):
        check_range("mutation_max", params.mutation_max, float(params.mutation_min), 2.0)


__all__ = [
    "INITS",
    "PARAM_RANGES",
    "VARIANTS",
    "DifferentialEvolutionParams",
    "DifferentialEvolutionState",
    "differential_evolution",
    "distinct_indices",
    "latin_hypercube",
]
