"""xNES: exponential natural evolution strategies (a full-covariance Gaussian, natural gradients).

References: T. Glasmachers, T. Schaul, Y. Sun, D. Wierstra & J. Schmidhuber, "Exponential Natural
Evolution Strategies", GECCO 2010; D. Wierstra, T. Schaul, T. Glasmachers, Y. Sun, J. Peters &
J. Schmidhuber, "Natural Evolution Strategies", JMLR 15, 2014 (the xNES pseudocode and its
default parameters).

The search distribution is ``N(μ, σ² B Bᵀ)`` with the factor ``A = σ B`` split into a step size
``σ`` and a shape ``B`` of determinant one. With ``d = num_dims`` and ``λ = population_size``,
one generation in the local coordinates ``s`` (where the distribution is ``N(0, I)``) is::

    s_k ~ N(0, I),    x_k = μ + σ B s_k                                       (k = 1..λ)
    G_δ = Σ_k u_k s_k,    G_M = Σ_k u_k (s_k s_kᵀ - I)
    G_σ = tr(G_M) / d,    G_B = G_M - G_σ I                                  (trace-free part)
    μ ← μ + η_μ σ B G_δ,    σ ← σ exp(η_σ/2 · G_σ),    B ← B expm(η_B/2 · G_B)

``G_δ`` and ``G_M`` are the natural gradient of the expected utility with respect to the mean and
the log of the factor, taken in local coordinates, so the update is invariant to linear maps of
the search space; the matrix exponential keeps ``B`` invertible with ``det B = 1`` (``G_B`` has
trace zero). ``u_k`` is the utility of member ``k``'s rank, as in :mod:`esjax.strategies.snes`
(``max(0, ln(λ/2 + 1) - ln r)`` normalised, minus ``1/λ``; tied members share their ranks' mean,
NaN/±inf fitness ranks worst). Defaults: ``η_μ = 1``,
``η_σ = η_B = 3 (3 + ln d) / (5 d^{3/2})``, ``λ = 4 + ⌊3 ln d⌋``.

Sharded decomposition. Member ``k`` is ``μ + σ B s_k`` with ``s_k`` row ``k`` of
:func:`esjax.prng.member_normals`. The update needs only ``Σ u_k s_k`` (``(d,)``),
``Σ u_k s_k s_kᵀ`` (``(d, d)``) and ``Σ u_k``, sums over members in which each ``s_k`` is
recovered from ``x_k`` as ``B⁻¹ (x_k - μ) / σ``; a sharded run exchanges the fitness and these
sums, never the population. (``Σ u_k`` is zero for a full generation, but not where a member
whose row was not finite got weight zero.)

Cost. Sampling and recovering ``s_k`` are O(λ d²); the matrix exponential and the solve are
O(d³) per generation and the state holds the ``(d, d)`` matrix ``B``, so xNES suits ``d`` up to
a few hundred (:func:`esjax.snes` is the O(d) separable variant).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg
from flax import struct

from esjax.base import (
    Capabilities,
    Decomposition,
    Strategy,
    StrategyState,
    check_int,
    make_strategy,
)
from esjax.prng import member_normals
from esjax.strategies.snes import clip_sigma, default_population_size, rank_utilities, utilities


def default_learning_rate(num_dims: int) -> float:
    """``η_σ = η_B = 3 (3 + ln d) / (5 d^{3/2})``, xNES's default (Wierstra et al. 2014)."""
    return 3 * (3 + math.log(num_dims)) / (5 * num_dims**1.5)


@struct.dataclass
class XNESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    ``None`` means the default for the dimension of ``x0``, filled in by ``init``.

    Attributes:
      sigma: initial step size ``σ`` (> 0); the initial covariance is ``σ² I``.
      mean_learning_rate: ``η_μ`` (> 0).
      sigma_learning_rate: ``η_σ`` (>= 0); default ``3 (3 + ln d) / (5 d^{3/2})``.
      shape_learning_rate: ``η_B`` (>= 0); default the same as ``η_σ``.
    """

    sigma: float | jax.Array
    mean_learning_rate: float | jax.Array
    sigma_learning_rate: float | jax.Array | None
    shape_learning_rate: float | jax.Array | None


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "mean_learning_rate": (0.0, None, False, True),
    "sigma_learning_rate": (0.0, None),
    "shape_learning_rate": (0.0, None),
}


@struct.dataclass
class XNESState(StrategyState):
    """xNES state.

    Attributes:
      mean: ``(d,)`` the mean ``μ``.
      sigma: scalar step size ``σ``.
      shape: ``(d, d)`` the normalised factor ``B`` (``det B = 1``); the covariance is
        ``σ² B Bᵀ``.
    """

    mean: jax.Array
    sigma: jax.Array
    shape: jax.Array
    params: XNESParams


def xnes(
    population_size: int | None = None,
    sigma: float = 1.0,
    num_dims: int | None = None,
    mean_learning_rate: float = 1.0,
    sigma_learning_rate: float | None = None,
    shape_learning_rate: float | None = None,
) -> Strategy:
    """Build xNES (Glasmachers et al. 2010; Wierstra et al. 2014).

    Args:
      population_size: ``λ`` (>= 2). Default ``4 + ⌊3 ln d⌋``, which needs ``num_dims`` (the
        population size is static).
      sigma: initial step size ``σ`` (> 0).
      num_dims: the dimension ``d`` of ``x0``; needed when ``population_size`` is None and then
        checked by ``init``.
      mean_learning_rate: ``η_μ`` (> 0), default 1.
      sigma_learning_rate: ``η_σ`` (>= 0), default ``3 (3 + ln d) / (5 d^{3/2})``.
      shape_learning_rate: ``η_B`` (>= 0), default as ``η_σ``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises, with a ``(d, d)`` state matrix and a
      sharded decomposition (members from ``(key, i)``, the update from a ``(d,)`` and a
      ``(d, d)`` sum).

    Example:
      >>> es = xnes(num_dims=10, sigma=1.0)                   # λ = 10
      >>> state = es.init(jax.random.key(0), jnp.ones(10))
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

    def resolve(params: XNESParams, n: int) -> XNESParams:
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} entries but the strategy was built with num_dims={num_dims}"
            )
        rate = default_learning_rate(n)
        if params.sigma_learning_rate is None:
            params = params.replace(sigma_learning_rate=rate)
        if params.shape_learning_rate is None:
            params = params.replace(shape_learning_rate=rate)
        return params

    def init(key: jax.Array, mean: jax.Array, params: XNESParams) -> dict:
        del key  # the initial state is deterministic
        return {
            "mean": mean,
            "sigma": params.sigma,
            "shape": jnp.eye(mean.shape[0], dtype=mean.dtype),
        }

    def sample(key: jax.Array, state: XNESState, indices: jax.Array) -> jax.Array:
        s = member_normals(key, indices, state.num_dims, state.mean.dtype)
        return state.mean + state.sigma * s @ state.shape.T  # rows μ + σ B s_k

    def weights(state: XNESState, fitness: jax.Array, scalars: None) -> jax.Array:
        return rank_utilities(fitness, jnp.asarray(by_rank, state.mean.dtype))

    def statistics(state: XNESState, members: jax.Array, weights: jax.Array) -> dict:
        # s_k = B⁻¹ (x_k - μ) / σ for all k by one LU solve (B is not orthogonal in general).
        s = jnp.linalg.solve(state.shape, ((members - state.mean) / state.sigma).T).T
        return {
            "gradient": weights @ s,
            "outer": (s.T * weights) @ s,
            "weight_sum": jnp.sum(weights),
        }

    def apply(state: XNESState, totals: dict, fitness: jax.Array) -> XNESState:
        params = state.params
        d = state.num_dims
        eye = jnp.eye(d, dtype=state.mean.dtype)
        outer = 0.5 * (totals["outer"] + totals["outer"].T)  # symmetric up to rounding anyway
        grad_m = outer - totals["weight_sum"] * eye
        grad_sigma = jnp.trace(grad_m) / d
        grad_b = grad_m - grad_sigma * eye
        mean = state.mean + params.mean_learning_rate * state.sigma * (
            state.shape @ totals["gradient"]
        )
        sigma = state.sigma * jnp.exp(0.5 * params.sigma_learning_rate * grad_sigma)
        shape = state.shape @ jax.scipy.linalg.expm(0.5 * params.shape_learning_rate * grad_b)
        return state.replace(mean=mean, sigma=clip_sigma(sigma), shape=shape)

    return make_strategy(
        name="xnes",
        population_size=population_size,
        default_params=XNESParams(
            sigma=sigma,
            mean_learning_rate=mean_learning_rate,
            sigma_learning_rate=sigma_learning_rate,
            shape_learning_rate=shape_learning_rate,
        ),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=XNESState,
        init=init,
        # O(1) diagnostics only: the condition of B would cost an O(d³) SVD every generation.
        info=lambda state: {"sigma": state.sigma},
        capabilities=Capabilities(decomposition=Decomposition(sample, weights, statistics, apply)),
    )


__all__ = ["XNESParams", "XNESState", "default_learning_rate", "xnes"]
