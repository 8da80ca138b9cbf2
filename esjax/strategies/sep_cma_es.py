"""sep-CMA-ES: CMA-ES with a diagonal covariance, linear in time and memory per member.

Reference: R. Ros & N. Hansen, "A Simple Modification in CMA-ES Achieving Linear Time and Space
Complexity", PPSN 2008 (inria-00287367). The update is the CMA-ES update of N. Hansen, "The CMA
Evolution Strategy: A Tutorial", 2016, arXiv:1604.00772 (equation numbers below), restricted to
the diagonal: with ``c = diag(C)`` (``variances``), ``n = num_dims``, ``λ = population_size``::

    x_k = m + σ √c ⊙ z_k,   z_k ~ N(0, I)                                     (38-40)
    ⟨y⟩_w = Σ_{i≤μ} w_i y_{i:λ},   m ← m + c_m σ ⟨y⟩_w                          (41-42)
    p_σ ← (1 - c_σ) p_σ + √(c_σ (2 - c_σ) μ_eff) ⟨y⟩_w / √c                     (43)
    σ  ← σ exp(c_σ / d_σ (‖p_σ‖ / E‖N(0, I)‖ - 1))                              (44)
    p_c ← (1 - c_c) p_c + h_σ √(c_c (2 - c_c) μ_eff) ⟨y⟩_w                      (45)
    c  ← (1 + c_1 δ(h_σ) - c_1 - c_μ Σ w_j) c + c_1 p_c² + c_μ Σ_i w_i y_{i:λ}²  (47, diagonal)

Because only ``n`` variances are learned instead of ``n²/2`` covariances, Ros & Hansen raise the
learning rates by ``(n + 2) / 3``: ``c_1 ← c_1 (n + 2)/3`` and
``c_μ ← min(1 - c_1, c_μ (n + 2)/3)``, with ``c_1, c_μ`` from eqs. 57-58; ``c_σ, d_σ, c_c`` and
the weights are CMA-ES's (eqs. 49, 53, 55, 56). There is no eigendecomposition: an update is
O(λ n), the state O(n), which suits ``n`` in the 10⁴-10⁶ range where full CMA-ES's ``n × n``
matrices do not fit. The price: only axis-aligned scaling is learned, so rotated ill-conditioned
problems stay hard.

Everything else follows :mod:`esjax.strategies.cma_es`: NaN/inf fitness gets weight zero;
variances are kept above ``max(c) · eps²``; ``es.info`` reports the same termination signals.

Sharded decomposition. Member ``i`` is ``m + σ √c ⊙ z_i`` with ``z_i`` from
:func:`esjax.prng.member_normals` of ``(key, i)``, and the whole update needs only the ranks
(from the fitness) and two weighted sums over members, ``Σ w_i y_i`` and ``Σ w_i y_i²``, so a
sharded run exchanges fitness values and one ``(2, n)`` sum, never the population.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from esjax.base import Capabilities, Decomposition, Strategy, StrategyState, make_strategy
from esjax.prng import member_normals
from esjax.strategies.cma_core import (
    PARAM_RANGES,
    check_population_size,
    check_sigma_bounds,
    cma_info,
    default_hyperparameters,
    fitness_histories,
    history_length,
    preliminary_weights,
    rank_members,
    recombination_weights,
    resolve_learning_rates,
    step_size_update,
)


@struct.dataclass
class SepCMAESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    ``None`` means the default for the dimension of ``x0``, filled in by ``init`` (see
    :func:`sep_default_hyperparameters`). Fields mean what they mean in
    :class:`esjax.strategies.cma_es.CMAESParams`.
    """

    sigma: float | jax.Array = 1.0
    sigma_min: float | jax.Array = 1e-20
    sigma_max: float | jax.Array = 1e20
    c_sigma: float | jax.Array | None = None
    d_sigma: float | jax.Array | None = None
    c_c: float | jax.Array | None = None
    c_1: float | jax.Array | None = None
    c_mu: float | jax.Array | None = None
    c_m: float | jax.Array = 1.0
    tolx: float | jax.Array | None = None
    tolfun: float | jax.Array = 1e-12
    max_condition: float | jax.Array = 1e14


@struct.dataclass
class SepCMAESState(StrategyState):
    """sep-CMA-ES state: like :class:`~esjax.strategies.cma_es.CMAESState` with a diagonal ``C``.

    Attributes:
      variances: ``(n,)`` the diagonal ``c`` of ``C``.
    """

    mean: jax.Array
    sigma: jax.Array
    variances: jax.Array
    path_sigma: jax.Array
    path_c: jax.Array
    weights: jax.Array
    best_history: jax.Array
    median_history: jax.Array
    fitness_max: jax.Array
    params: SepCMAESParams


def sep_default_hyperparameters(
    num_dims: int, population_size: int | None = None, num_parents: int | None = None
) -> dict[str, float]:
    """CMA-ES's defaults with ``c_1, c_μ`` raised by ``(n + 2) / 3`` (Ros & Hansen 2008)."""
    defaults = default_hyperparameters(num_dims, population_size, num_parents)
    factor = (num_dims + 2) / 3
    c_1 = min(1.0, defaults["c_1"] * factor)
    c_mu = min(1.0 - c_1, defaults["c_mu"] * factor)
    return {**defaults, "c_1": c_1, "c_mu": c_mu}


def sep_cma_es(
    population_size: int | None = None,
    sigma: float = 1.0,
    num_dims: int | None = None,
    num_parents: int | None = None,
    sigma_bounds: tuple[float, float] = (1e-20, 1e20),
) -> Strategy:
    """Build sep-CMA-ES (Ros & Hansen 2008): CMA-ES with a diagonal covariance.

    Args:
      population_size: ``λ`` (>= 2). Default ``4 + ⌊3 ln n⌋``, which needs ``num_dims``
        (the population size is static).
      sigma: initial step size ``σ0`` (> 0).
      num_dims: the dimension ``n`` of ``x0``; needed when ``population_size`` is None and then
        checked by ``init``.
      num_parents: ``μ`` in [1, λ], default ``⌊λ/2⌋``.
      sigma_bounds: ``(sigma_min, sigma_max)`` clip for ``σ``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises, O(n) state, with a sharded decomposition
      (members from ``(key, i)``, the update from two weighted sums) and CMA-ES's termination
      signal.

    Example:
      >>> es = sep_cma_es(num_dims=100_000, sigma=0.05)     # λ = 38
      >>> state = es.init(jax.random.key(0), jnp.zeros(100_000))
    """
    population_size, num_parents, num_dims = check_population_size(
        population_size, num_parents, num_dims
    )
    sigma_min, sigma_max = check_sigma_bounds(sigma_bounds)
    preliminary = preliminary_weights(population_size, num_parents)

    def resolve(params: SepCMAESParams, n: int) -> SepCMAESParams:
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} entries but the strategy was built with num_dims={num_dims}"
            )
        return resolve_learning_rates(
            params, sep_default_hyperparameters(n, population_size, num_parents)
        )

    def init(key: jax.Array, mean: jax.Array, params: SepCMAESParams) -> dict:
        del key  # the initial state is deterministic
        n, dtype = mean.shape[0], mean.dtype
        length = history_length(n, population_size)
        return {
            "mean": mean,
            "sigma": params.sigma,
            "variances": jnp.ones(n, dtype),
            "path_sigma": jnp.zeros(n, dtype),
            "path_c": jnp.zeros(n, dtype),
            "weights": recombination_weights(preliminary, n, params.c_1, params.c_mu, False, dtype),
            "best_history": jnp.zeros(length, dtype),
            "median_history": jnp.zeros(length, dtype),
            "fitness_max": jnp.array(0, dtype),
        }

    def sample(key: jax.Array, state: SepCMAESState, indices: jax.Array) -> jax.Array:
        z = member_normals(key, indices, state.num_dims, state.mean.dtype)  # eq. 38
        return state.mean + state.sigma * jnp.sqrt(state.variances) * z  # eqs. 39-40

    def weights(state: SepCMAESState, fitness: jax.Array, scalars: None) -> jax.Array:
        """Each member's recombination weight (by its rank; zero for non-finite fitness)."""
        order, by_rank, _, _ = rank_members(state.weights, fitness)
        return jnp.zeros_like(by_rank).at[order].set(by_rank)

    def statistics(state: SepCMAESState, members: jax.Array, weights: jax.Array) -> dict:
        # y_i; a zero-weight row (possibly non-finite: needs_finite_rows=False) adds nothing.
        steps = (members - state.mean) / state.sigma
        steps = jnp.where((weights != 0)[:, None], steps, jnp.zeros((), steps.dtype))
        return {"step": weights @ steps, "squares": weights @ jnp.square(steps)}

    def apply(state: SepCMAESState, totals: dict, fitness: jax.Array) -> SepCMAESState:
        params = state.params
        _, by_rank, mu_eff, any_finite = rank_members(state.weights, fitness)
        step = totals["step"]  # ⟨y⟩_w, eq. 41 (all weights are >= 0 here)
        mean = state.mean + params.c_m * state.sigma * step  # eq. 42
        path_sigma, sigma, h_sigma = step_size_update(
            state.path_sigma,
            step / jnp.sqrt(state.variances),
            mu_eff,
            state.sigma,
            params,
            state.generation,
            state.num_dims,
        )
        c_c, c_1, c_mu = params.c_c, params.c_1, params.c_mu
        path_c = (1 - c_c) * state.path_c + h_sigma * jnp.sqrt(
            c_c * (2 - c_c) * mu_eff
        ) * step  # eq. 45
        delta_h = (1 - h_sigma) * c_c * (2 - c_c)
        variances = (
            (1 + c_1 * delta_h - c_1 - c_mu * jnp.sum(by_rank)) * state.variances
            + c_1 * jnp.square(path_c)
            + c_mu * totals["squares"]
        )  # eq. 47 on the diagonal
        eps = jnp.finfo(variances.dtype).eps
        variances = jnp.maximum(variances, jnp.max(variances) * eps**2)
        updated = {
            "mean": mean,
            "sigma": sigma,
            "variances": variances,
            "path_sigma": path_sigma,
            "path_c": path_c,
        }
        return state.replace(**fitness_histories(state, fitness, any_finite, updated))

    def info(state: SepCMAESState) -> dict:
        stds = jnp.sqrt(state.variances)
        condition = jnp.max(state.variances) / jnp.min(state.variances)
        axis = state.generation % state.num_dims
        axis_step = jnp.zeros_like(stds).at[axis].set(0.1 * state.sigma * stds[axis])
        return cma_info(
            state, population_size, coordinate_stds=stds, axis_step=axis_step, condition=condition
        )

    return make_strategy(
        name="sep_cma_es",
        population_size=population_size,
        default_params=SepCMAESParams(sigma=sigma, sigma_min=sigma_min, sigma_max=sigma_max),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=SepCMAESState,
        init=init,
        info=info,
        capabilities=Capabilities(
            termination=lambda state: info(state)["stop"],
            decomposition=Decomposition(
                sample, weights, statistics, apply, needs_finite_rows=False
            ),
        ),
    )


__all__ = ["SepCMAESParams", "SepCMAESState", "sep_cma_es", "sep_default_hyperparameters"]
