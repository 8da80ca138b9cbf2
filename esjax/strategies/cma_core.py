"""What CMA-ES and sep-CMA-ES share: Table 1's defaults, weights, ranking, the step-size update,
the fitness histories and the termination signals.

Reference: N. Hansen, "The CMA Evolution Strategy: A Tutorial", 2016, arXiv:1604.00772 (equation
numbers below); N. Hansen, "Benchmarking a BI-Population CMA-ES on the BBOB-2009 Function
Testbed", GECCO 2009 (the stagnation criterion). :mod:`esjax.strategies.cma_es` documents the
notation and the termination signals.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from esjax import shaping
from esjax.base import check_int

LEARNING_RATES = ("c_sigma", "d_sigma", "c_c", "c_1", "c_mu")


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "sigma_min": (0.0, None),
    "sigma_max": (0.0, None, False, True),
    "c_sigma": (0.0, 1.0, False, True),
    "d_sigma": (0.0, None, False, True),
    "c_c": (0.0, 1.0, False, True),
    "c_1": (0.0, 1.0),
    "c_mu": (0.0, 1.0),
    "c_m": (0.0, None, False, True),
    "tolx": (0.0, None),
    "tolfun": (0.0, None),
    "max_condition": (1.0, None),
    "eigen_interval": (0.0, None, False, True),
}


def default_population_size(num_dims: int) -> int:
    """``λ = 4 + ⌊3 ln n⌋`` (Hansen 2016, eq. 48)."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def preliminary_weights(population_size: int, num_parents: int) -> np.ndarray:
    """Preliminary weights ``w'_i`` for ranks ``i = 1..λ``, positive exactly for ``i ≤ μ``.

    Eq. 49: ``w'_i = ln((λ+1)/2) - ln i``. For ``μ > λ/2`` the positive part uses ``ln(μ + 1/2)``
    instead (as pycma does) so all ``μ`` parents keep a positive weight; for ``μ < ⌊λ/2⌋`` ranks
    ``μ < i < (λ+1)/2`` get zero.
    """
    ranks = np.arange(1, population_size + 1, dtype=np.float64)
    head = math.log(max((population_size + 1) / 2, num_parents + 0.5))
    positive = head - np.log(ranks)
    negative = np.minimum(math.log((population_size + 1) / 2) - np.log(ranks), 0.0)
    return np.where(ranks <= num_parents, positive, negative)


def effective_parents(weights: np.ndarray) -> float:
    """``μ_eff = (Σ w_i)² / Σ w_i²`` over the positive weights (Table 1)."""
    positive = weights[weights > 0]
    return float(positive.sum() ** 2 / np.square(positive).sum())


def default_hyperparameters(
    num_dims: int, population_size: int | None = None, num_parents: int | None = None
) -> dict[str, float]:
    """Table 1's ``c_σ, d_σ, c_c, c_1, c_μ`` for dimension ``n`` (Hansen 2016, eqs. 55-58).

    Returns a dict of floats keyed like :class:`CMAESParams` (plus ``mu_eff``).
    """
    n = num_dims
    population_size = population_size or default_population_size(n)
    num_parents = num_parents or population_size // 2
    mu_eff = effective_parents(preliminary_weights(population_size, num_parents))
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)  # eq. 55
    d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma  # eq. 55
    c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)  # eq. 56
    alpha_cov = 2.0
    c_1 = alpha_cov / ((n + 1.3) ** 2 + mu_eff)  # eq. 57
    # eq. 58 as in the 2016 tutorial; pycma adds 1/4 to the numerator (a slightly larger c_μ).
    c_mu = min(
        1 - c_1,
        alpha_cov * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + alpha_cov * mu_eff / 2),
    )
    return {
        "c_sigma": c_sigma,
        "d_sigma": d_sigma,
        "c_c": c_c,
        "c_1": c_1,
        "c_mu": c_mu,
        "mu_eff": mu_eff,
    }


def recombination_weights(
    preliminary: np.ndarray, num_dims: int, c_1, c_mu, active: bool, dtype
) -> jax.Array:
    """Final weights ``w_i`` (eq. 53): positives sum to one; negatives scaled by eqs. 50-52.

    ``c_1, c_μ`` may be traced (vmapped hyperparameters), so this is written in ``jnp``.
    """
    positive = np.where(preliminary > 0, preliminary, 0.0)
    negative = np.where(preliminary < 0, preliminary, 0.0)
    weights = jnp.asarray(positive / positive.sum(), dtype)
    if not active or not negative.any():
        return weights
    mu_eff = effective_parents(preliminary)
    mu_eff_minus = float(negative.sum() ** 2 / np.square(negative).sum())
    c_1 = jnp.asarray(c_1, dtype)
    c_mu = jnp.maximum(jnp.asarray(c_mu, dtype), jnp.finfo(dtype).tiny)  # c_μ = 0: α's → inf
    alpha_mu = 1 + c_1 / c_mu  # eq. 50
    alpha_mu_eff = 1 + 2 * mu_eff_minus / (mu_eff + 2)  # eq. 51
    alpha_posdef = (1 - c_1 - c_mu) / (num_dims * c_mu)  # eq. 52
    scale = jnp.minimum(jnp.minimum(alpha_mu, alpha_mu_eff), alpha_posdef)
    return weights + scale * jnp.asarray(negative / -negative.sum(), dtype)  # eq. 53


def expected_norm(num_dims: int) -> float:
    """``E‖N(0, I_n)‖ ≈ √n (1 - 1/(4n) + 1/(21n²))``."""
    n = num_dims
    return math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))


def history_length(num_dims: int, population_size: int) -> int:
    """Stagnation window ``120 + ⌈30 n / λ⌉`` generations, at most 20000 (Hansen 2009)."""
    return min(20_000, 120 + math.ceil(30 * num_dims / population_size))


def tolfun_window(num_dims: int, population_size: int) -> int:
    """TolFun looks back ``10 + ⌈30 n / λ⌉`` generations (Hansen 2016, Appendix B.3)."""
    return min(
        history_length(num_dims, population_size), 10 + math.ceil(30 * num_dims / population_size)
    )


def rank_members(
    weights: jax.Array, fitness: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Rank members (NaN/inf last) and mask non-finite ones out of the weights.

    Returns:
      ``order`` (``(λ,)`` member indices, best first), ``used`` (weights by rank with non-finite
      members at zero and the positive ones renormalised to sum to one), ``mu_eff`` of the used
      positive weights, and ``any_finite``.
    """
    order = jnp.argsort(shaping.sanitize(fitness), stable=True)
    finite = jnp.isfinite(fitness)[order]
    used = jnp.where(finite, weights, 0.0)
    positive = jnp.where(used > 0, used, 0.0)
    total = jnp.sum(positive)
    safe_total = jnp.where(total > 0, total, 1.0)
    used = jnp.where(used > 0, used / safe_total, used)
    positive = positive / safe_total
    mu_eff = 1 / jnp.maximum(jnp.sum(jnp.square(positive)), jnp.finfo(weights.dtype).tiny)
    return order, used, mu_eff, jnp.any(finite)


def step_size_update(
    path_sigma: jax.Array, whitened_step: jax.Array, mu_eff, sigma, params, generation, num_dims
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eqs. 43-44 and the ``h_σ`` test: returns ``(p_σ, σ, h_σ)``."""
    c_sigma, d_sigma = params.c_sigma, params.d_sigma
    path_sigma = (1 - c_sigma) * path_sigma + jnp.sqrt(
        c_sigma * (2 - c_sigma) * mu_eff
    ) * whitened_step  # eq. 43
    norm = jnp.linalg.norm(path_sigma)
    chi_n = expected_norm(num_dims)
    sigma = sigma * jnp.exp(c_sigma / d_sigma * (norm / chi_n - 1))  # eq. 44
    sigma = jnp.clip(sigma, params.sigma_min, params.sigma_max)
    # 1 - (1 - c_σ)^{2(g+1)}: the variance p_σ would have after g+1 updates from zero.
    variance = 1 - (1 - c_sigma) ** (2 * (generation + 1).astype(sigma.dtype))
    h_sigma = norm / jnp.sqrt(variance) < (1.4 + 2 / (num_dims + 1)) * chi_n
    return path_sigma, sigma, h_sigma.astype(sigma.dtype)


def push_history(history: jax.Array, value: jax.Array) -> jax.Array:
    """Drop the oldest entry of ``history`` and append ``value`` (newest last)."""
    return jnp.concatenate([history[1:], value[None].astype(history.dtype)])


def sorted_median(values: jax.Array) -> jax.Array:
    """Median of a 1-D array via one sort (``jnp.median``'s quantile machinery compiles slower)."""
    ordered = jnp.sort(values)
    size = values.shape[0]
    return ordered[(size - 1) // 2] / 2 + ordered[size // 2] / 2  # halves: no overflow at max


def generation_statistics(fitness: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Best, median and largest fitness of one generation.

    Non-finite fitness counts as the largest finite float, which is as bad as +inf for the
    termination tests while keeping the state finite.
    """
    worst = jnp.finfo(fitness.dtype).max
    safe = jnp.where(jnp.isfinite(fitness), fitness, worst)
    return jnp.min(safe), sorted_median(safe), jnp.max(safe)


def cma_info(
    state,
    population_size: int,
    *,
    coordinate_stds: jax.Array,
    axis_step: jax.Array,
    condition: jax.Array,
) -> dict[str, jax.Array]:
    """``es.info`` of CMA-ES and sep-CMA-ES: ``σ``, the condition number and the restart/
    termination flags (Hansen 2016, Appendix B.3; stagnation: Hansen 2009).

    Args:
      state: a CMA-ES or sep-CMA-ES state (its generation, σ, ``p_c``, mean, fitness histories
        and params are read).
      population_size: ``λ`` (sets the tolfun window).
      coordinate_stds: ``(n,)`` ``√C_ii`` (without ``σ``).
      axis_step: ``(n,)`` ``0.1 σ D_i B_i`` for this generation's principal axis ``i = g mod n``.
      condition: the covariance's condition number.
    """
    generation, sigma, mean, params = state.generation, state.sigma, state.mean, state.params
    path_c, best_history, median_history = state.path_c, state.best_history, state.median_history
    tolfun_generations = tolfun_window(state.num_dims, population_size)
    window = best_history.shape[0]
    tolx = jnp.all(sigma * coordinate_stds < params.tolx) & jnp.all(
        sigma * jnp.abs(path_c) < params.tolx
    )
    recent = best_history[-tolfun_generations:]
    fitness_range = jnp.maximum(jnp.max(recent), state.fitness_max) - jnp.min(recent)
    tolfun = (generation >= tolfun_generations) & (fitness_range < params.tolfun)
    part = math.ceil(0.3 * window)

    def no_better(history):
        return sorted_median(history[-part:]) >= sorted_median(history[:part])

    stagnation = (generation >= window) & no_better(best_history) & no_better(median_history)
    no_effect = jnp.all(mean + axis_step == mean) | jnp.any(
        mean + 0.2 * sigma * coordinate_stds == mean
    )
    stop_condition = condition > params.max_condition
    return {
        "sigma": sigma,
        "condition": condition,
        "stop_tolx": tolx,
        "stop_tolfun": tolfun,
        "stop_condition": stop_condition,
        "stop_stagnation": stagnation,
        "stop_no_effect": no_effect,
        "stop": tolx | tolfun | stop_condition | stagnation | no_effect,
    }


def check_population_size(
    population_size: int | None, num_parents: int | None, num_dims: int | None
) -> tuple[int, int, int | None]:
    """Checked ``(λ, μ, n)``: ``λ`` defaults to eq. 48 (which needs ``num_dims``), ``μ`` to
    ``⌊λ/2⌋``; ``n`` stays None when not given."""
    if num_dims is not None:
        num_dims = check_int("num_dims", num_dims, 1)
    if population_size is None:
        if num_dims is None:
            raise ValueError(
                "population_size is None, so the default 4 + floor(3 ln n) needs num_dims: "
                "pass population_size=... or num_dims=..."
            )
        population_size = default_population_size(num_dims)
    population_size = check_int("population_size", population_size, 2)
    num_parents = population_size // 2 if num_parents is None else num_parents
    num_parents = check_int("num_parents", num_parents, 1, population_size)
    return population_size, num_parents, num_dims


def check_sigma_bounds(sigma_bounds) -> tuple[float, float]:
    """Validate ``(sigma_min, sigma_max)`` and return it as floats (ValueError naming it)."""
    try:
        low, high = (float(bound) for bound in sigma_bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"sigma_bounds must be a pair (sigma_min, sigma_max), got {sigma_bounds!r}"
        ) from None
    if not 0 <= low < high:
        raise ValueError(
            f"sigma_bounds must satisfy 0 <= sigma_min < sigma_max, got {sigma_bounds}"
        )
    return low, high


def fitness_histories(state, fitness: jax.Array, any_finite, updated: dict) -> dict:
    """The fields a CMA-type update writes: the distribution fields ``updated`` (kept as they
    were when no fitness is finite: no information) and the fitness histories the termination
    signals read. Returns a dict for ``state.replace``."""
    updated = {
        name: jnp.where(any_finite, value, getattr(state, name)) for name, value in updated.items()
    }
    best, median, worst = generation_statistics(fitness)
    return {
        "best_history": push_history(state.best_history, best),
        "median_history": push_history(state.median_history, median),
        "fitness_max": worst.astype(state.fitness_max.dtype),
        **updated,
    }


def resolve_learning_rates(params, defaults: dict[str, float]):
    """``params`` with every ``None`` learning rate set from ``defaults`` and ``tolx`` to
    ``1e-12 σ0`` (Appendix B.3)."""
    filled = {name: defaults[name] for name in LEARNING_RATES if getattr(params, name) is None}
    if params.tolx is None:
        filled["tolx"] = 1e-12 * jnp.asarray(params.sigma)
    return params.replace(**filled)


__all__ = [
    "LEARNING_RATES",
    "PARAM_RANGES",
    "check_population_size",
    "check_sigma_bounds",
    "cma_info",
    "default_hyperparameters",
    "default_population_size",
    "effective_parents",
    "expected_norm",
    "fitness_histories",
    "generation_statistics",
    "history_length",
    "preliminary_weights",
    "push_history",
    "rank_members",
    "recombination_weights",
    "resolve_learning_rates",
    "sorted_median",
    "step_size_update",
    "tolfun_window",
]
