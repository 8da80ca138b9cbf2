"""Random search: independent samples around ``x0`` or uniform in a box — the honest floor.

References: Brooks, "A Discussion of Random Methods for Seeking Maxima", Operations Research 6,
1958 (pure random search); Bergstra & Bengio, "Random Search for Hyper-Parameter Optimization",
JMLR 13, 2012 (why it is the baseline every other method must beat).

Every generation draws ``n = population_size`` members from a fixed distribution that never
adapts::

    x_i = x0 + σ ε_i,                    ε_i ~ N(0, I)        (no bounds)
    x_i = lower + (upper - lower) ⊙ u_i,  u_i ~ U[0, 1)^d      (lower_bound/upper_bound given)

and the strategy reports the best member seen so far (``best_solution``, tracked by
:func:`esjax.base.make_strategy`); nothing else is learnt. A strategy that cannot beat this at
the same number of evaluations has learnt nothing from its fitness values, so the tests compare
CMA-ES and OpenAI-ES against it.

Sharded decomposition. Member ``i`` is a function of ``(key, i)`` alone
(:func:`esjax.prng.member_normals` / :func:`~esjax.prng.member_uniforms`) and the update keeps
nothing but the best member, which :mod:`esjax.distributed` rebuilds from ``(key, i)``; the one
"sum over members" is the count of finite evaluations (a scalar). A sharded run therefore moves
only fitness values between devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from esjax.base import (
    Capabilities,
    Decomposition,
    Strategy,
    StrategyState,
    check_int,
    make_strategy,
)
from esjax.bounds import bounds_like, check_bounds
from esjax.prng import member_normals, member_uniforms


@struct.dataclass
class RandomSearchParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    Attributes:
      sigma: standard deviation ``σ`` of the Gaussian around ``x0`` (> 0; unused with bounds).
    """

    sigma: float | jax.Array


PARAM_RANGES = {"sigma": (0.0, None, False, True)}


@struct.dataclass
class RandomSearchState(StrategyState):
    """Random-search state: the fixed centre ``x0`` and the hyperparameters.

    Attributes:
      center: ``(num_dims,)`` the flat ``x0`` the Gaussian samples are centred on.
      finite_fraction: share of the last generation's members with a finite fitness.
    """

    center: jax.Array
    finite_fraction: jax.Array
    params: RandomSearchParams


def random_search(
    population_size: int,
    sigma: float = 1.0,
    lower_bound: float | list[float] | None = None,
    upper_bound: float | list[float] | None = None,
) -> Strategy:
    """Build random search: Gaussian samples around ``x0``, or uniform samples in a box.

    Args:
      population_size: samples per generation (>= 1).
      sigma: standard deviation of the Gaussian around ``x0`` (> 0), used without bounds.
      lower_bound: lower box bound, a scalar or a ``num_dims`` list (with ``upper_bound``, or
        neither; finite, ``lower < upper``).
      upper_bound: upper box bound, likewise. With bounds every member is uniform in the box
        and ``x0`` only fixes the dimension and pytree structure.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises and reports ``best_solution``.

    Example:
      >>> es = random_search(population_size=64, lower_bound=-5.12, upper_bound=5.12)
      >>> state = es.init(jax.random.key(0), jnp.zeros(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, esjax.problems.rastrigin(population))
      >>> state.best_solution  # the best sample so far
    """
    population_size = check_int("population_size", population_size, 1)
    bounds = check_bounds(lower_bound, upper_bound)

    def init(key: jax.Array, mean: jax.Array, params: RandomSearchParams) -> dict:
        del key  # nothing random before the first ask
        if bounds is not None:
            bounds_like(bounds, mean)  # a wrong-length bound fails at init, naming it
        return {"center": mean, "finite_fraction": jnp.zeros((), mean.dtype)}

    def sample(key: jax.Array, state: RandomSearchState, indices: jax.Array) -> jax.Array:
        dtype = state.center.dtype
        if bounds is None:
            noise = member_normals(key, indices, state.num_dims, dtype)
            return state.center + state.params.sigma * noise
        lower, upper = bounds_like(bounds, state.center)
        uniform = member_uniforms(key, indices, state.num_dims, dtype)
        # u < 1, but lower + (upper - lower) u can round up to upper: keep members in the box.
        return jnp.clip(lower + (upper - lower) * uniform, lower, upper)

    def weights(state: RandomSearchState, fitness: jax.Array, scalars: None) -> jax.Array:
        # Nothing is learnt from the fitness; the weight only counts the finite evaluations.
        return jnp.isfinite(fitness).astype(state.center.dtype)

    def statistics(state: RandomSearchState, members: jax.Array, weights: jax.Array) -> jax.Array:
        return jnp.sum(weights)

    def apply(state: RandomSearchState, finite: jax.Array, fitness: jax.Array) -> RandomSearchState:
        return state.replace(finite_fraction=(finite / population_size).astype(finite.dtype))

    return make_strategy(
        name="random_search",
        population_size=population_size,
        default_params=RandomSearchParams(sigma=sigma),
        param_checks=PARAM_RANGES,
        state_type=RandomSearchState,
        init=init,
        info=lambda state: {"finite_fraction": state.finite_fraction},
        capabilities=Capabilities(
            solution="best_solution",
            bounds=bounds,
            # statistics reads the weights alone, never a row
            decomposition=Decomposition(
                sample, weights, statistics, apply, needs_finite_rows=False
            ),
        ),
    )


__all__ = [
    "PARAM_RANGES",
    "RandomSearchParams",
    "RandomSearchState",
    "random_search",
]
