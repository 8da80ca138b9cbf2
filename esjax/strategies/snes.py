"""SNES: separable natural evolution strategies (a diagonal Gaussian, natural gradients).

Reference: T. Schaul, T. Glasmachers & J. Schmidhuber, "High Dimensions and Heavy Tails for
Natural Evolution Strategies", GECCO 2011 (SNES, its utilities and default parameters).
D. Wierstra, T. Schaul, T. Glasmachers, Y. Sun, J. Peters & J. Schmidhuber, "Natural Evolution
Strategies", JMLR 15, 2014, describe the same algorithm and defaults.

The search distribution is ``N(μ, diag(σ²))``. With ``d = num_dims`` and ``λ = population_size``,
one generation is::

    s_k ~ N(0, I),    x_k = μ + σ ⊙ s_k                                      (k = 1..λ)
    ∇_μ = Σ_k u_k s_k,    ∇_σ = Σ_k u_k (s_k² - 1)                            (per coordinate)
    μ ← μ + η_μ σ ⊙ ∇_μ,    σ ← σ ⊙ exp(η_σ / 2 · ∇_σ)

where ``u_k`` is the utility of member ``k``'s rank ``r`` (1 = lowest fitness), the fitness
shaping of the paper::

    u(r) = max(0, ln(λ/2 + 1) - ln r) / Σ_j max(0, ln(λ/2 + 1) - ln j)  -  1/λ

(positive for the better half, summing to zero). Defaults: ``η_μ = 1``,
``η_σ = (3 + ln d) / (5 √d)``, ``λ = 4 + ⌊3 ln d⌋``. Members with tied fitness share the mean of
their ranks' utilities, so a flat landscape moves nothing (and NaN/±inf fitness, which ranks
worst, shares the worst utilities).

Sharded decomposition. Member ``k`` is ``μ + σ ⊙ s_k`` with ``s_k`` row ``k`` of
:func:`esjax.prng.member_normals`, and both natural gradients are sums over members of the
utility times a statistic of ``s_k = (x_k - μ) / σ``, so a sharded run exchanges the fitness and
two ``(num_dims,)`` sums, never the population. The update is O(λ d) time and the state O(d).
``σ`` is kept within ``[tiny, √max]`` of its float type, so a run converged for thousands of
generations cannot underflow it to zero.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esjax import shaping
from esjax.base import (
    Capabilities,
    Decomposition,
    Strategy,
    StrategyState,
    check_int,
    make_strategy,
)
from esjax.prng import member_normals
from esjax.strategies.pgpe import member_sums


def default_population_size(num_dims: int) -> int:
    """``λ = 4 + ⌊3 ln d⌋``, the NES default (Schaul et al. 2011; Wierstra et al. 2014)."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def default_sigma_learning_rate(num_dims: int) -> float:
    """``η_σ = (3 + ln d) / (5 √d)``, SNES's default (Schaul et al. 2011)."""
    return (3 + math.log(num_dims)) / (5 * math.sqrt(num_dims))


def utilities(population_size: int) -> np.ndarray:
    """NES utilities by rank (best first): ``max(0, ln(λ/2+1) - ln r)`` normalised, ``- 1/λ``."""
    ranks = np.arange(1, population_size + 1, dtype=np.float64)
    raw = np.maximum(0.0, math.log(population_size / 2 + 1) - np.log(ranks))
    return raw / raw.sum() - 1 / population_size


def rank_utilities(fitness: jax.Array, by_rank: jax.Array) -> jax.Array:
    """Each member's utility: ``by_rank`` (best first) at its fitness rank, lower fitness better.

    Tied members (equal fitness; every non-finite value counts as ``+inf``, the worst) share the
    mean of the utilities of the ranks they occupy; an untied member gets its rank's utility
    exactly.
    """
    fitness = shaping.sanitize(fitness)
    ordered = jnp.sort(fitness)
    first = jnp.searchsorted(ordered, fitness, side="left")
    stop = jnp.searchsorted(ordered, fitness, side="right")
    cumulative = jnp.concatenate([jnp.zeros(1, by_rank.dtype), jnp.cumsum(by_rank)])
    shared = (cumulative[stop] - cumulative[first]) / (stop - first).astype(by_rank.dtype)
    return jnp.where(stop - first == 1, by_rank[first], shared)


def clip_sigma(sigma: jax.Array) -> jax.Array:
    """``σ`` kept normal and with a finite square: within ``[tiny, √max]`` of its dtype."""
    info = jnp.finfo(sigma.dtype)
    return jnp.clip(sigma, info.tiny, jnp.sqrt(info.max))


@struct.dataclass
class SNESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    ``None`` means the default for the dimension of ``x0``, filled in by ``init``.

    Attributes:
      sigma: initial standard deviation of every coordinate (> 0).
      mean_learning_rate: ``η_μ`` (> 0).
      sigma_learning_rate: ``η_σ`` (>= 0); default ``(3 + ln d) / (5 √d)``.
    """

    sigma: float | jax.Array
    mean_learning_rate: float | jax.Array
    sigma_learning_rate: float | jax.Array | None


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "mean_learning_rate": (0.0, None, False, True),
    "sigma_learning_rate": (0.0, None),
}


@struct.dataclass
class SNESState(StrategyState):
    """SNES state.

    Attributes:
      mean: ``(d,)`` the mean ``μ``.
      sigma: ``(d,)`` per-coordinate standard deviations ``σ``.
    """

    mean: jax.Array
    sigma: jax.Array
    params: SNESParams


def snes(
    population_size: int | None = None,
    sigma: float = 1.0,
    num_dims: int | None = None,
    mean_learning_rate: float = 1.0,
    sigma_learning_rate: float | None = None,
) -> Strategy:
    """Build SNES (Schaul, Glasmachers & Schmidhuber 2011): separable NES.

    Args:
      population_size: ``λ`` (>= 2). Default ``4 + ⌊3 ln d⌋``, which needs ``num_dims`` (the
        population size is static).
      sigma: initial standard deviation of every coordinate (> 0).
      num_dims: the dimension ``d`` of ``x0``; needed when ``population_size`` is None and then
        checked by ``init``.
      mean_learning_rate: ``η_μ`` (> 0), default 1.
      sigma_learning_rate: ``η_σ`` (>= 0), default ``(3 + ln d) / (5 √d)``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises, O(d) state, with a sharded decomposition
      (members from ``(key, i)``, the update from two ``(d,)`` sums).

    Example:
      >>> es = snes(num_dims=100, sigma=1.0)                  # λ = 17
      >>> state = es.init(jax.random.key(0), jnp.ones(100))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    if num_dims is not None:
        num_dims = check_int("num_dims", num_dims, 1)
    if population_size is None:
        if num_dims is None:
            raise ValueError("population_size=None needs num_dims (λ = 4 + ⌊3 ln d⌋)")
        population_size = default_population_size(num_dims)
    population_size = check_int("population_size", population_size, 2)
    by_rank = utilities(population_size)

    def resolve(params: SNESParams, n: int) -> SNESParams:
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} entries but the strategy was built with num_dims={num_dims}"
            )
        if params.sigma_learning_rate is None:
            return params.replace(sigma_learning_rate=default_sigma_learning_rate(n))
        return params

    def init(key: jax.Array, mean: jax.Array, params: SNESParams) -> dict:
        del key  # the initial state is deterministic
        return {
            "mean": mean,
            "sigma": jnp.full_like(mean, params.sigma),
        }

    def sample(key: jax.Array, state: SNESState, indices: jax.Array) -> jax.Array:
        s = member_normals(key, indices, state.num_dims, state.mean.dtype)
        return state.mean + state.sigma * s

    def weights(state: SNESState, fitness: jax.Array, scalars: None) -> jax.Array:
        return rank_utilities(fitness, jnp.asarray(by_rank, state.mean.dtype))

    def statistics(state: SNESState, members: jax.Array, weights: jax.Array) -> dict:
        def block_sums(block, block_weights):
            s = (block - state.mean) / state.sigma
            return {
                "mean": block_weights @ s,  # ∇_μ
                "sigma": block_weights @ (jnp.square(s) - 1),  # ∇_σ
            }

        return member_sums(block_sums, members, weights, fill=state.mean)

    def apply(state: SNESState, totals: dict, fitness: jax.Array) -> SNESState:
        params = state.params
        mean = state.mean + params.mean_learning_rate * state.sigma * totals["mean"]
        sigma = state.sigma * jnp.exp(0.5 * params.sigma_learning_rate * totals["sigma"])
        return state.replace(mean=mean, sigma=clip_sigma(sigma))

    def info(state: SNESState) -> dict:
        return {
            "sigma_mean": jnp.mean(state.sigma),
            "sigma_min": jnp.min(state.sigma),
            "sigma_max": jnp.max(state.sigma),
        }

    return make_strategy(
        name="snes",
        population_size=population_size,
        default_params=SNESParams(
            sigma=sigma,
            mean_learning_rate=mean_learning_rate,
            sigma_learning_rate=sigma_learning_rate,
        ),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=SNESState,
        init=init,
        info=info,
        capabilities=Capabilities(
            decomposition=Decomposition(sample, weights, statistics, apply, needs_finite_rows=False)
        ),
    )


__all__ = [
    "SNESParams",
    "SNESState",
    "clip_sigma",
    "default_population_size",
    "default_sigma_learning_rate",
    "rank_utilities",
    "snes",
    "utilities",
]
