"""The Strategy tuple, the fields every strategy state shares, and argument checks.

A strategy is a :class:`Strategy`: a NamedTuple of pure functions built by a factory such as
:func:`esjax.openai_es`. Its state is a ``flax.struct`` dataclass (a pytree) deriving from
:class:`StrategyState`, so it can be jitted, vmapped, scanned over and checkpointed.

The loop a user writes is::

    state = es.init(key, x0)                      # x0: flat vector or any pytree
    population, state = es.ask(key, state)        # (population_size, num_dims)
    state = es.tell(state, population, fitness)   # fitness: (population_size,), minimised

Every strategy minimises. To maximise a reward, pass ``-reward``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from esjax.flatten import FlatSpec

PyTree = Any


@struct.dataclass
class StrategyState:
    """Fields shared by every strategy state.

    Attributes:
      best_solution: ``(num_dims,)`` best member evaluated so far (flat).
      best_fitness: scalar, its fitness (``+inf`` until a finite fitness is seen).
      generation: scalar int32, number of completed ``tell`` calls.
      spec: static description of ``x0``'s pytree structure, used by :meth:`unravel`.
    """

    best_solution: jax.Array
    best_fitness: jax.Array
    generation: jax.Array
    spec: FlatSpec = struct.field(pytree_node=False)

    def unravel(self, vector: jax.Array) -> PyTree:
        """Map a flat ``(num_dims,)`` vector back to a pytree shaped like ``x0``."""
        return self.spec.unflatten(vector)

    @property
    def best_params(self) -> PyTree:
        """The best solution shaped like ``x0`` (e.g. Flax params)."""
        return self.spec.unflatten(self.best_solution)

    @property
    def num_dims(self) -> int:
        return self.spec.num_dims


class Strategy(NamedTuple):
    """A gradient-free optimiser as a tuple of pure functions.

    Attributes:
      name: registry name, e.g. ``"openai_es"``.
      population_size: number of members ``ask`` returns.
      default_params: the numeric hyperparameters (a ``flax.struct`` dataclass). Pass a modified
        copy to ``init`` to vmap over hyperparameters, e.g.
        ``es.init(key, x0, es.default_params.replace(sigma=s))``.
      init: ``(key, x0, params=None) -> state``.
      ask: ``(key, state) -> (population, state)``; population is ``(population_size, num_dims)``.
      tell: ``(state, population, fitness) -> state``; fitness ``(population_size,)`` is minimised.
      info: ``state -> dict`` of scalar diagnostics (sigma, acceptance rate, ...), cheap to log.
    """

    name: str
    population_size: int
    default_params: Any
    init: Callable[..., StrategyState]
    ask: Callable[[jax.Array, StrategyState], tuple[jax.Array, StrategyState]]
    tell: Callable[[StrategyState, jax.Array, jax.Array], StrategyState]
    info: Callable[[StrategyState], dict]

    def unravel(self, vector: jax.Array, state: StrategyState) -> PyTree:
        """Map a flat vector back to a pytree shaped like the ``x0`` that built ``state``."""
        return state.unravel(vector)


def init_best(mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Initial ``(best_solution, best_fitness)``: ``x0`` with fitness ``+inf`` (nothing seen)."""
    return mean, jnp.array(jnp.inf, dtype=mean.dtype)


def update_best(state: StrategyState, population: jax.Array, fitness: jax.Array) -> dict:
    """Best-ever solution/fitness after seeing ``population`` with ``fitness``.

    Non-finite fitness never becomes the best. Returns a dict to pass to ``state.replace``.
    """
    safe = jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)
    index = jnp.argmin(safe)
    improved = safe[index] < state.best_fitness
    return {
        "best_solution": jnp.where(improved, population[index], state.best_solution),
        "best_fitness": jnp.where(improved, safe[index], state.best_fitness).astype(
            state.best_fitness.dtype
        ),
    }


def params_to_arrays(params: Any, dtype: Any) -> Any:
    """Turn a params dataclass's numeric leaves into arrays of ``dtype`` (stable state dtypes)."""
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), params)


def check_fitness(fitness: jax.Array, population_size: int, name: str = "fitness") -> jax.Array:
    """Check at trace time that ``fitness`` has shape ``(population_size,)`` and a float dtype."""
    fitness = jnp.asarray(fitness)
    if fitness.shape != (population_size,):
        raise ValueError(
            f"{name} must have shape (population_size,) = ({population_size},), got {fitness.shape}"
        )
    if jnp.issubdtype(fitness.dtype, jnp.complexfloating) or fitness.dtype == jnp.bool_:
        raise TypeError(f"{name} must be real (float or int), got dtype {fitness.dtype}")
    if not jnp.issubdtype(fitness.dtype, jnp.floating):
        fitness = fitness.astype(jnp.result_type(float))
    return fitness


def check_population(population: jax.Array, population_size: int, num_dims: int) -> None:
    """Check at trace time that ``population`` is ``(population_size, num_dims)``."""
    if population.shape != (population_size, num_dims):
        raise ValueError(
            f"population must have shape (population_size, num_dims) = "
            f"({population_size}, {num_dims}), got {population.shape}"
        )


def _is_concrete_number(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    if isinstance(value, numbers.Number):
        return True
    try:
        return jnp.ndim(value) == 0
    except TypeError:
        return False


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` if a concrete ``value`` lies outside the range.

    Traced values (under jit/vmap) are not checked: they are validated where they are built.
    """
    if not _is_concrete_number(value):
        return
    value = float(value)
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = f"{'[' if low_inclusive else '('}{lo}, {hi}{']' if high_inclusive else ')'}"
    # +-inf only passes where the range itself is unbounded on that side *and* says so:
    # an infinite sigma or temperature is never a meaningful setting.
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value < low if low_inclusive else value <= low
    if high is not None:
        bad |= value > high if high_inclusive else value >= high
    if bad:
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Check that ``value`` is a Python/NumPy integer in ``[low, high]`` and return it as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    check_range(name, value, low, high)
    return int(value)


def check_params(params: Any, checks: dict[str, tuple]) -> None:
    """Apply :func:`check_range` to the named fields of a params dataclass.

    ``checks`` maps field name to ``(low, high)`` or ``(low, high, low_inclusive, high_inclusive)``.
    """
    for field, bounds in checks.items():
        low, high, *inclusive = bounds
        low_inc, high_inc = inclusive if inclusive else (True, True)
        check_range(
            field,
            getattr(params, field),
            low,
            high,
            low_inclusive=low_inc,
            high_inclusive=high_inc,
        )
