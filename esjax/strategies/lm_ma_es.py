"""LM-MA-ES: the limited-memory matrix adaptation evolution strategy, O(m n) time and memory.

Reference: Loshchilov, Glasmachers & Beyer, "Large Scale Black-box Optimization by
Limited-Memory Matrix Adaptation", IEEE Transactions on Evolutionary Computation 23(2), 2019,
arXiv:1705.06693 (Algorithm 1, the LM-MA-ES). It simplifies MA-ES (Beyer & Sendhoff,
"Simplify your covariance matrix adaptation evolution strategy", IEEE TEVC 21(5), 2017), which
replaces CMA-ES's covariance matrix by a transformation matrix, to ``m`` direction vectors.

Notation: ``n`` dimensions, ``λ = population_size`` (default ``4 + ⌊3 ln n⌋``), ``μ = ⌊λ/2⌋``,
weights ``w_i ∝ ln(μ + 1/2) - ln i`` for the ``μ`` best (summing to one), ``μ_w = 1 / Σ w_i²``,
mean ``y``, step size ``σ``, path ``p_σ`` and direction vectors ``M_1..M_m``
(``m = memory_size``, default ``4 + ⌊3 ln n⌋``), all zero at ``t = 0``. Generation ``t``::

    z_k ~ N(0, I);  d_k = z_k;
    d_k ← (1 - c_d,j) d_k + c_d,j M_j (M_jᵀ d_k)   for j = 1 .. min(t, m)       (sampling)
    x_k = y + σ d_k
    y ← y + σ Σ_i w_i d_{i:λ}                                                   (mean)
    p_σ ← (1 - c_σ) p_σ + √(μ_w c_σ (2 - c_σ)) Σ_i w_i z_{i:λ}                  (path)
    M_j ← (1 - c_c,j) M_j + √(μ_w c_c,j (2 - c_c,j)) Σ_i w_i z_{i:λ}   (all j)   (directions)
    σ ← σ exp( (c_σ / d_σ) (‖p_σ‖² / n - 1) )                                   (step size)

with ``c_σ = 2λ/n``, ``c_d,j = 1 / (1.5^(j-1) n)``, ``c_c,j = λ / (4^(j-1) n)`` and ``d_σ = 2``
(the paper's factor ``c_σ / 2``). The direction vectors are paths of the selected steps with
learning rates spread over a factor ``4^(m-1)``: ``M_1`` remembers the last few generations,
``M_m`` a long history; sampling stretches ``z`` along each of them.

Guards (the paper's constants assume ``λ ≪ n``; NaN and ``σ → ∞`` are what happens otherwise):

* ``c_σ`` and every ``c_c,j`` are capped at 1 and ``c_d,j`` at 1/2. ``2λ/n`` exceeds 1 once
  ``λ > n/2`` (e.g. ``n = 4``, ``λ = 8``): above 2, ``√(c (2 - c))`` is NaN and ``|1 - c| > 1``
  makes the path grow geometrically, so ``σ → ∞``; a cap at 1 keeps a path that forgets
  instantly but is well defined. The constants are computed in Python floats: ``4^(j-1)`` as a
  32-bit integer overflows to 0 at ``j = 17`` (``n >= 77``), an infinite learning rate and NaN
  directions (the bug fixed in evosax PR #95).
* ``σ`` is clipped to ``sigma_bounds``; a generation without any finite fitness, or whose update
  is not finite, leaves the state unchanged.

Sharded decomposition. Member ``k`` is ``y + σ T z_k`` with ``z_k`` from
:func:`esjax.prng.member_normals` of ``(key, k)`` and ``T`` the product of the ``min(t, m)``
factors ``A_j = (1 - c_d,j) I + c_d,j M_j M_jᵀ`` — a linear map fixed by the state. The update
needs the two sums ``Σ w_i d_i`` and ``Σ w_i z_i``; since ``d_i = T z_i``, the second is
``T⁻¹`` of the first, and each factor is inverted in O(n) by Sherman-Morrison::

    A_j⁻¹ v = ( v - c_d,j M_j (M_jᵀ v) / ((1 - c_d,j) + c_d,j ‖M_j‖²) ) / (1 - c_d,j)

So the one sum over members is ``Σ w_i (x_i - y)`` (a ``(n,)`` vector), no ``z`` is stored, the
state is O(m n), and a sharded run moves fitness values and that one sum. The inverse is exact
up to rounding amplified by the factors' condition ``1 + c_d,j ‖M_j‖² / (1 - c_d,j)``; measured
on a 50-D ellipsoid (condition 1e6, 2,000 generations, float64) ``c_d,j ‖M_j‖²`` stayed near 1
and the recovered ``Σ w_i z_i`` matched the directly summed one to 1e-15 relative.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
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
from esjax.strategies.cma_core import (
    check_population_size,
    check_sigma_bounds,
    default_population_size,
    rank_members,
)
from esjax.strategies.openai_es import weighted_deviation_sum

# The paper's step-size damping (its factor c_σ / 2).
D_SIGMA = 2.0
# Caps on the learning rates (see the module docstring, "Guards").
MAX_PATH_RATE = 1.0
MAX_DIRECTION_RATE = 0.5


@struct.dataclass
class LMMAESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    ``None`` means the default for the dimension of ``x0``, filled in by ``init`` (see
    :func:`lm_ma_es_defaults`).

    Attributes:
      sigma: initial step size ``σ0`` (> 0).
      sigma_min, sigma_max: clip range of ``σ``.
      c_sigma: path learning rate ``c_σ`` in (0, 1].
      d_sigma: step-size damping ``d_σ`` (> 0).
      c_c: ``(m,)`` direction-vector learning rates ``c_c,j`` in (0, 1].
      c_d: ``(m,)`` sampling rates ``c_d,j`` in (0, 1); their length is the memory size ``m``.
    """

    sigma: float | jax.Array
    sigma_min: float | jax.Array
    sigma_max: float | jax.Array
    c_sigma: float | jax.Array | None
    d_sigma: float | jax.Array
    c_c: jax.Array | None
    c_d: jax.Array | None


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "sigma_min": (0.0, None),
    "sigma_max": (0.0, None, False, True),
    "c_sigma": (0.0, 1.0, False, True),
    "d_sigma": (0.0, None, False, True),
}


@struct.dataclass
class LMMAESState(StrategyState):
    """LM-MA-ES state (O(m n)).

    Attributes:
      mean: ``(n,)`` the mean ``y``.
      sigma: step size ``σ``.
      path_sigma: ``(n,)`` the path ``p_σ``.
      directions: ``(m, n)`` the direction vectors ``M_j`` (rows).
    """

    mean: jax.Array
    sigma: jax.Array
    path_sigma: jax.Array
    directions: jax.Array
    params: LMMAESParams


def default_memory_size(num_dims: int) -> int:
    """``m = 4 + ⌊3 ln n⌋`` direction vectors (Loshchilov et al. 2019)."""
    return default_population_size(num_dims)


def lm_ma_es_defaults(num_dims: int, population_size: int, memory_size: int) -> dict:
    """The paper's ``c_σ = 2λ/n``, ``c_c,j = λ / (4^(j-1) n)``, ``c_d,j = 1 / (1.5^(j-1) n)``,
    capped as the module docstring explains, in float64 (no integer powers)."""
    j = np.arange(memory_size, dtype=np.float64)  # j - 1 for j = 1..m
    c_c = population_size / (np.power(4.0, j) * num_dims)
    c_d = 1.0 / (np.power(1.5, j) * num_dims)
    return {
        "c_sigma": min(2.0 * population_size / num_dims, MAX_PATH_RATE),
        "c_c": np.minimum(c_c, MAX_PATH_RATE),
        "c_d": np.minimum(c_d, MAX_DIRECTION_RATE),
    }


def paper_weights(population_size: int) -> np.ndarray:
    """``w_i = (ln(μ + 1/2) - ln i) / Σ_j (ln(μ + 1/2) - ln j)`` for ranks ``i <= μ = ⌊λ/2⌋``,
    zero below."""
    parents = population_size // 2
    ranks = np.arange(1, population_size + 1, dtype=np.float64)
    raw = np.where(ranks <= parents, math.log(parents + 0.5) - np.log(ranks), 0.0)
    return raw / raw.sum()


def transform(
    vectors: jax.Array, directions: jax.Array, c_d: jax.Array, generation: jax.Array
) -> jax.Array:
    """``d = A_m' ⋯ A_1 z`` for ``(k, n)`` rows ``z``, ``m' = min(t, m)``: the sampling step.

    The factor of direction ``j`` (0-based) is active once ``j < t = generation``, as in the
    paper's ``for j = 1 .. min(t, m)``.
    """

    def factor(d, step):
        direction, rate, index = step
        rate = jnp.where(index < generation, rate, jnp.zeros((), rate.dtype))
        return (1 - rate) * d + rate * (d @ direction)[:, None] * direction, None

    steps = (directions, c_d, jnp.arange(c_d.shape[0]))
    return jax.lax.scan(factor, vectors, steps)[0]


def inverse_transform(
    vector: jax.Array, directions: jax.Array, c_d: jax.Array, generation: jax.Array
) -> jax.Array:
    """``z = A_1⁻¹ ⋯ A_m'⁻¹ d`` for one ``(n,)`` vector: each factor by Sherman-Morrison."""

    def inverse_factor(v, step):
        direction, rate, index = step
        rate = jnp.where(index < generation, rate, jnp.zeros((), rate.dtype))
        keep = 1 - rate  # >= 1/2: c_d is capped at 1/2
        scale = rate / (keep + rate * jnp.dot(direction, direction))
        return (v - scale * jnp.dot(direction, v) * direction) / keep, None

    steps = (directions, c_d, jnp.arange(c_d.shape[0]))
    return jax.lax.scan(inverse_factor, vector, steps, reverse=True)[0]


def lm_ma_es(
    population_size: int | None = None,
    sigma: float = 1.0,
    num_dims: int | None = None,
    memory_size: int | None = None,
    sigma_bounds: tuple[float, float] = (1e-20, 1e20),
) -> Strategy:
    """Build LM-MA-ES (Loshchilov, Glasmachers & Beyer 2019).

    Args:
      population_size: ``λ`` (>= 2). Default ``4 + ⌊3 ln n⌋``, which needs ``num_dims`` (the
        population size is static). The paper's constants assume ``λ ≪ n``; see the guards in
        the module docstring for what happens otherwise.
      sigma: initial step size ``σ0`` (> 0).
      num_dims: the dimension ``n`` of ``x0``; needed when ``population_size`` is None and then
        checked by ``init``.
      memory_size: the number of direction vectors ``m`` (>= 1); default ``4 + ⌊3 ln n⌋``.
      sigma_bounds: ``(sigma_min, sigma_max)`` clip for ``σ``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises, O(m n) state, with a sharded
      decomposition (members from ``(key, k)``, the update from one weighted sum).

    Example:
      >>> es = lm_ma_es(num_dims=1000, sigma=0.5)     # λ = m = 24
      >>> state = es.init(jax.random.key(0), jnp.ones(1000))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size, _, num_dims = check_population_size(population_size, None, num_dims)
    if memory_size is not None:
        memory_size = check_int("memory_size", memory_size, 1)
    sigma_min, sigma_max = check_sigma_bounds(sigma_bounds)
    weights_by_rank = paper_weights(population_size)

    def resolve(params: LMMAESParams, n: int) -> LMMAESParams:
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} entries but the strategy was built with num_dims={num_dims}"
            )
        m = default_memory_size(n) if memory_size is None else memory_size
        defaults = lm_ma_es_defaults(n, population_size, m)
        filled = {name: value for name, value in defaults.items() if getattr(params, name) is None}
        params = params.replace(**filled)
        _check_rates(params)
        return params

    def init(key: jax.Array, mean: jax.Array, params: LMMAESParams) -> dict:
        del key  # the initial state is deterministic
        n, dtype = mean.shape[0], mean.dtype
        return {
            "mean": mean,
            "sigma": params.sigma,
            "path_sigma": jnp.zeros(n, dtype),
            "directions": jnp.zeros((params.c_d.shape[0], n), dtype),
        }

    def sample(key: jax.Array, state: LMMAESState, indices: jax.Array) -> jax.Array:
        z = member_normals(key, indices, state.num_dims, state.mean.dtype)
        d = transform(z, state.directions, state.params.c_d, state.generation)
        return state.mean + state.sigma * d

    def weights(state: LMMAESState, fitness: jax.Array, scalars: None) -> jax.Array:
        """Each member's recombination weight (by rank; zero for non-finite fitness)."""
        order, by_rank, _, _ = rank_members(jnp.asarray(weights_by_rank, state.mean.dtype), fitness)
        return jnp.zeros_like(by_rank).at[order].set(by_rank)

    def statistics(state: LMMAESState, members: jax.Array, weights: jax.Array) -> jax.Array:
        # Σ_i w_i (x_i - y) = σ Σ_i w_i d_i: the one sum over members.
        return weighted_deviation_sum(weights, members, state.mean)

    def apply(state: LMMAESState, step: jax.Array, fitness: jax.Array) -> LMMAESState:
        params, n = state.params, state.num_dims
        dtype = state.mean.dtype
        _, _, mu_w, any_finite = rank_members(jnp.asarray(weights_by_rank, dtype), fitness)
        mean = state.mean + step  # y + σ Σ w_i d_i
        d_w = step / state.sigma
        z_w = inverse_transform(d_w, state.directions, params.c_d, state.generation)
        c_sigma = params.c_sigma
        path = (1 - c_sigma) * state.path_sigma + jnp.sqrt(mu_w * c_sigma * (2 - c_sigma)) * z_w
        c_c = params.c_c[:, None]
        directions = (1 - c_c) * state.directions + jnp.sqrt(mu_w * c_c * (2 - c_c)) * z_w
        sigma = state.sigma * jnp.exp(
            c_sigma / params.d_sigma * (jnp.sum(jnp.square(path)) / n - 1)
        )
        sigma = jnp.clip(sigma, params.sigma_min, params.sigma_max)
        updated = {
            "mean": mean,
            "sigma": sigma.astype(state.sigma.dtype),
            "path_sigma": path,
            "directions": directions,
        }
        ok = any_finite & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(value)) for value in updated.values()])
        )
        return state.replace(
            **{name: jnp.where(ok, value, getattr(state, name)) for name, value in updated.items()}
        )

    def info(state: LMMAESState) -> dict:
        return {
            "sigma": state.sigma,
            "path_norm": jnp.linalg.norm(state.path_sigma),
            "direction_norm": jnp.max(jnp.linalg.norm(state.directions, axis=1)),
        }

    return make_strategy(
        name="lm_ma_es",
        population_size=population_size,
        default_params=LMMAESParams(
            sigma=sigma,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            c_sigma=None,
            d_sigma=D_SIGMA,
            c_c=None,
            c_d=None,
        ),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=LMMAESState,
        init=init,
        info=info,
        capabilities=Capabilities(
            decomposition=Decomposition(sample, weights, statistics, apply, needs_finite_rows=False)
        ),
    )


def _check_rates(params: LMMAESParams) -> None:
    """The vector rates: ``c_c`` in (0, 1] and ``c_d`` in (0, 1/2] (when concrete), same length."""
    for name, high in (("c_c", MAX_PATH_RATE), ("c_d", MAX_DIRECTION_RATE)):
        value = getattr(params, name)
        if isinstance(value, jax.core.Tracer):
            continue
        array = np.asarray(value, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"{name} must be a 1-D array of memory_size rates, got {array.shape}")
        if not np.all((array > 0) & (array <= high)):
            raise ValueError(f"{name} must lie in (0, {high}] elementwise, got {array}")
    if np.shape(params.c_c) != np.shape(params.c_d):
        raise ValueError(
            f"c_c and c_d must have the same length (the memory size), got "
            f"{np.shape(params.c_c)} and {np.shape(params.c_d)}"
        )


__all__ = [
    "D_SIGMA",
    "PARAM_RANGES",
    "LMMAESParams",
    "LMMAESState",
    "default_memory_size",
    "inverse_transform",
    "lm_ma_es",
    "lm_ma_es_defaults",
    "paper_weights",
    "transform",
]
