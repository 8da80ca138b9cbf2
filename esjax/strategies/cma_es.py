"""CMA-ES: the covariance matrix adaptation evolution strategy, as in Hansen's tutorial.

References: N. Hansen, "The CMA Evolution Strategy: A Tutorial", 2016, arXiv:1604.00772 (the
update, the default parameters of its Table 1, the termination criteria of its Appendix B.3 and
the lazy eigendecomposition of its Appendix B.2); N. Hansen, "Benchmarking a BI-Population
CMA-ES on the BBOB-2009 Function Testbed", GECCO 2009 (the stagnation criterion).

Notation (equation numbers of the tutorial). ``n = num_dims``, ``λ = population_size``,
``μ = num_parents``, ``m`` the mean, ``σ`` the step size, ``C = B D² Bᵀ`` the covariance with its
cached eigenvectors ``B`` and axis lengths ``D``. One generation::

    z_k ~ N(0, I),   y_k = B D Bᵀ z_k,   x_k = m + σ y_k                       (38-40)
    ⟨y⟩_w = Σ_{i≤μ} w_i y_{i:λ},      y_{i:λ} = (x_{i:λ} - m) / σ, ranked by f  (41)
    m  ← m + c_m σ ⟨y⟩_w                                                       (42)
    p_σ ← (1 - c_σ) p_σ + √(c_σ (2 - c_σ) μ_eff) C^{-1/2} ⟨y⟩_w                (43)
    σ  ← σ exp(c_σ / d_σ (‖p_σ‖ / E‖N(0, I)‖ - 1))                             (44)
    p_c ← (1 - c_c) p_c + h_σ √(c_c (2 - c_c) μ_eff) ⟨y⟩_w                     (45)
    w°_i = w_i if w_i ≥ 0 else w_i n / ‖C^{-1/2} y_{i:λ}‖²                     (46)
    C  ← (1 + c_1 δ(h_σ) - c_1 - c_μ Σ_j w_j) C + c_1 p_c p_cᵀ
           + c_μ Σ_{i≤λ} w°_i y_{i:λ} y_{i:λ}ᵀ                                  (47)

``h_σ = 1`` iff ``‖p_σ‖ / √(1 - (1 - c_σ)^{2(g+1)}) < (1.4 + 2/(n+1)) E‖N(0, I)‖`` (it stalls
the rank-one update while σ grows fast) and ``δ(h_σ) = (1 - h_σ) c_c (2 - c_c)`` makes up for the
variance that the stall loses. ``E‖N(0, I)‖ ≈ √n (1 - 1/(4n) + 1/(21n²))``. The defaults are
Table 1's: ``λ = 4 + ⌊3 ln n⌋`` (48), log-rank weights (49), ``c_σ, d_σ`` (55), ``c_c`` (56),
``c_1`` (57), ``c_μ`` (58), ``c_m = 1`` (54). With ``active=True`` the ``λ - μ`` worst members
get negative weights (50-53), which actively shrinks the variance in bad directions (faster on
ill-conditioned problems); otherwise their weights are zero.

Lazy eigendecomposition. Sampling and ``C^{-1/2}`` need ``B, D``; computing them is O(n³) while
the rest of a generation is O(λ n²). As in pycma, ``tell`` refreshes them (with ``lax.cond``)
only when ``1 / (10 n (c_1 + c_μ))`` generations have passed since the last refresh, which is
every generation for small ``n`` and roughly every ``n / (10 μ_eff)`` generations for large
``n``; in between, ``ask`` samples and ``tell`` whitens with the cached ``B, D``. Under ``vmap``
(e.g. over seeds) ``lax.cond`` becomes a select that runs both branches, so vmapped runs pay for
the decomposition every generation. ``eigen_interval=k`` forces a refresh every ``k`` generations
and ``eigen_interval=1`` refreshes every generation; the interval is a hyperparameter leaf, so
intervals can be compared within one compiled program.

Numerical guards. Eigenvalues below ``λ_max · eps`` (the precision ``eigh`` resolves) are lifted
by adding a multiple of the identity to ``C`` (which keeps ``B``), so ``D`` stays positive and the
condition of ``C`` stays below ``1 / eps``: ~4.5e15 in float64, ~8.4e6 in float32.
``σ`` is clipped to ``sigma_bounds``. NaN or ±inf fitness ranks worst and gets weight zero: it
moves neither the mean nor the paths nor ``C``; the positive weights of the remaining parents are
renormalised and ``μ_eff`` in (43, 45) is that of the weights actually used. A generation with no
finite fitness leaves the distribution unchanged.

Randomness. Member ``i`` is sampled from ``fold_in(key, i)`` of the key given to ``ask``, a
function of ``(key, i)`` alone, so a sharded population reproduces a single-device one.

Termination signals (``es.info``): ``stop_tolx`` (all ``σ √C_ii`` and ``σ |p_c|`` below
``tolx``, default ``1e-12 σ0``), ``stop_tolfun`` (the best fitness of the last
``10 + ⌈30 n / λ⌉`` generations and all of this generation's lie within ``tolfun``),
``stop_condition`` (``cond(C) > max_condition``; only reachable in float64, see above),
``stop_stagnation`` (over a window of ``120 + ⌈30 n / λ⌉`` generations, the median of both the
best and the median fitness of its last 30% is no better than of its first 30%; Hansen 2009 lets
the window grow to 20% of the run, here it stays at that minimum), ``stop_no_effect`` (adding
0.1 standard deviations along a principal axis, or 0.2 along a coordinate, leaves ``m`` unchanged)
and ``stop``, their union. :func:`esjax.restarts.ipop` restarts on ``stop``.

Memory. The state holds ``C`` and ``B``: ``2 n² · itemsize`` bytes. Dimensions for which that
exceeds ``max_covariance_bytes`` are refused with an error pointing to :func:`esjax.sep_cma_es`
(diagonal covariance, O(n) memory) and :func:`esjax.openai_es`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esjax import shaping
from esjax.base import (
    Strategy,
    StrategyState,
    check_fitness,
    check_int,
    check_params,
    check_population,
    check_range,
    init_best,
    params_to_arrays,
    update_best,
)
from esjax.flatten import flatten_x0

LEARNING_RATES = ("c_sigma", "d_sigma", "c_c", "c_1", "c_mu")


@struct.dataclass
class CMAESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    ``None`` means Table 1's default for the dimension of ``x0``, filled in by ``init`` (see
    :func:`default_hyperparameters`).

    Attributes:
      sigma: initial step size ``σ0`` (> 0), about a quarter of the range where the optimum is.
      sigma_min, sigma_max: ``σ`` is clipped to ``[sigma_min, sigma_max]``.
      c_sigma: cumulation rate ``c_σ`` of the step-size path ``p_σ``, in (0, 1].
      d_sigma: step-size damping ``d_σ`` (> 0).
      c_c: cumulation rate ``c_c`` of the rank-one path ``p_c``, in (0, 1].
      c_1: rank-one learning rate ``c_1``, in [0, 1].
      c_mu: rank-μ learning rate ``c_μ``, in [0, 1].
      c_m: mean learning rate ``c_m`` (> 0).
      tolx: ``stop_tolx`` threshold (default ``1e-12 σ0``).
      tolfun: ``stop_tolfun`` threshold (>= 0).
      max_condition: ``stop_condition`` threshold on ``cond(C)``.
      eigen_interval: generations between eigendecompositions (> 0; values <= 1 mean every
        generation). Default pycma's ``1 / (10 n (c_1 + c_μ))``. A state leaf, so runs with
        different intervals can share one compiled (even vmapped) program.
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
    eigen_interval: float | jax.Array | None = None


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


@struct.dataclass
class CMAESState(StrategyState):
    """CMA-ES state.

    Attributes:
      mean: ``(n,)`` the mean ``m``.
      sigma: scalar step size ``σ``.
      covariance: ``(n, n)`` ``C``.
      eigenvectors: ``(n, n)`` cached ``B`` (columns), from the last decomposition.
      axis_lengths: ``(n,)`` cached ``D`` (square roots of ``C``'s eigenvalues).
      path_sigma: ``(n,)`` the conjugate evolution path ``p_σ``.
      path_c: ``(n,)`` the evolution path ``p_c``.
      weights: ``(λ,)`` recombination weights ``w_i``, best rank first (negative when active).
      eigen_generation: generation of the last decomposition.
      best_history: ``(L,)`` best fitness of each of the last ``L`` generations, newest last
        (entries older than the run are zeros; the tests that read them wait until they are
        filled). Non-finite fitness is recorded as the largest finite float.
      median_history: ``(L,)`` median fitness of each of the last ``L`` generations.
      fitness_max: largest fitness of the last generation.
      params: the hyperparameters, with every ``None`` resolved.
    """

    mean: jax.Array
    sigma: jax.Array
    covariance: jax.Array
    eigenvectors: jax.Array
    axis_lengths: jax.Array
    path_sigma: jax.Array
    path_c: jax.Array
    weights: jax.Array
    eigen_generation: jax.Array
    best_history: jax.Array
    median_history: jax.Array
    fitness_max: jax.Array
    params: CMAESParams


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


def check_covariance_memory(
    num_dims: int, itemsize: int, max_covariance_bytes: float, matrices: int = 2
) -> None:
    """Refuse a dimension whose ``n × n`` matrices would exceed ``max_covariance_bytes``."""
    needed = matrices * num_dims**2 * itemsize
    if needed > max_covariance_bytes:
        raise ValueError(
            f"cma_es with num_dims={num_dims} needs {needed / 1e9:.3g} GB for its {matrices} "
            f"n×n matrices (covariance and eigenvectors), over max_covariance_bytes="
            f"{max_covariance_bytes:.3g}. Use esjax.sep_cma_es (diagonal covariance, O(n) "
            f"memory) or esjax.openai_es for large models, or raise max_covariance_bytes."
        )


def sample_standard_normal(
    key: jax.Array, indices: jax.Array, num_dims: int, dtype=jnp.float32
) -> jax.Array:
    """``(k, num_dims)`` standard normals; row ``j`` comes from ``fold_in(key, indices[j])``."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (num_dims,), dtype))(
        indices
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


def next_state(state, population: jax.Array, fitness: jax.Array, any_finite, updated: dict):
    """The state after ``tell`` for CMA-ES and sep-CMA-ES: the distribution fields ``updated``
    (kept as they were when no fitness is finite: no information), the fitness histories the
    termination signals read, the generation count and the best-ever member."""
    updated = {
        name: jnp.where(any_finite, value, getattr(state, name)) for name, value in updated.items()
    }
    best, median, worst = generation_statistics(fitness)
    return state.replace(
        generation=state.generation + 1,
        best_history=push_history(state.best_history, best),
        median_history=push_history(state.median_history, median),
        fitness_max=worst.astype(state.fitness_max.dtype),
        **updated,
        **update_best(state, population, fitness),
    )


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


def check_cma_params(params) -> None:
    """Range-check the concrete, non-``None`` fields of a params dataclass (ValueError)."""
    given = {name: bounds for name, bounds in PARAM_RANGES.items() if hasattr(params, name)}
    check_params(
        params, {name: b for name, b in given.items() if getattr(params, name) is not None}
    )


def _decompose(covariance: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``C = B D² Bᵀ``, lifting eigenvalues below ``λ_max · eps`` by a multiple of ``I``."""
    dtype = covariance.dtype
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    # eigh resolves eigenvalues only down to ~eps · λ_max; smaller ones (possibly negative from
    # rounding) would make C^{-1/2} amplify rounding noise, so lift them and keep C consistent.
    floor = jnp.maximum(eigenvalues[-1], jnp.finfo(dtype).tiny) * jnp.finfo(dtype).eps
    shift = jnp.maximum(floor - eigenvalues[0], 0.0)
    covariance = covariance + shift * jnp.eye(covariance.shape[0], dtype=dtype)
    eigenvalues = jnp.maximum(eigenvalues + shift, jnp.finfo(dtype).tiny)
    return covariance, eigenvectors, jnp.sqrt(eigenvalues)


def _resolve_params(params: CMAESParams, defaults: dict[str, float], num_dims: int) -> CMAESParams:
    filled = {name: defaults[name] for name in LEARNING_RATES if getattr(params, name) is None}
    if params.tolx is None:
        filled["tolx"] = 1e-12 * jnp.asarray(params.sigma)  # TolX = 1e-12 σ0 (Appendix B.3)
    params = params.replace(**filled)
    if params.eigen_interval is None:
        # pycma's lazy gap; c_1 + c_μ = 0 means C never changes, so (practically) never decompose.
        rate = 10 * num_dims * (jnp.asarray(params.c_1) + jnp.asarray(params.c_mu))
        safe_rate = jnp.where(rate > 0, rate, 1.0)
        params = params.replace(eigen_interval=jnp.where(rate > 0, 1 / safe_rate, 2.0**31))
    return params


def cma_es(
    population_size: int | None = None,
    sigma: float = 1.0,
    num_dims: int | None = None,
    num_parents: int | None = None,
    active: bool = False,
    sigma_bounds: tuple[float, float] = (1e-20, 1e20),
    eigen_interval: int | None = None,
    max_covariance_bytes: float = 2e9,
) -> Strategy:
    """Build CMA-ES (Hansen 2016, arXiv:1604.00772).

    Args:
      population_size: ``λ`` (>= 2). Default ``4 + ⌊3 ln n⌋`` (eq. 48), which needs
        ``num_dims``: the population size is static (it fixes array shapes), so it must be known
        when the strategy is built, before ``x0`` is seen.
      sigma: initial step size ``σ0`` (> 0), about a quarter of the range of plausible optima.
      num_dims: the dimension ``n`` of ``x0``. Needed when ``population_size`` is None; when
        given, ``init`` checks ``x0`` against it and the memory limit is enforced here.
      num_parents: ``μ``, the members with positive weights, in [1, λ]. Default ``⌊λ/2⌋``.
      active: negative weights for the worst ``λ - μ`` members (active CMA, eqs. 46, 50-53).
      sigma_bounds: ``(sigma_min, sigma_max)`` clip for ``σ``, ``0 <= min < max``.
      eigen_interval: generations between eigendecompositions (>= 1). None: pycma's lazy rule
        ``1 / (10 n (c_1 + c_μ))`` (every generation for small ``n``); 1: every generation.
      max_covariance_bytes: refuse dimensions whose ``C`` and ``B`` (``2 n² · itemsize`` bytes)
        exceed this (default 2e9); use :func:`esjax.sep_cma_es` or :func:`esjax.openai_es` then.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises; ``es.info`` reports ``sigma``, the condition
      of ``C`` and the termination signals described in the module docstring.

    Example:
      >>> es = cma_es(num_dims=10, sigma=2.0)          # λ = 10
      >>> state = es.init(jax.random.key(0), 3 * jnp.ones(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
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
    if not isinstance(active, bool):
        raise ValueError(f"active must be True or False, got {active!r}")
    if eigen_interval is not None:
        eigen_interval = check_int("eigen_interval", eigen_interval, 1)
    check_range("max_covariance_bytes", max_covariance_bytes, 0.0, None, low_inclusive=False)
    sigma_min, sigma_max = check_sigma_bounds(sigma_bounds)
    default_params = CMAESParams(
        sigma=sigma, sigma_min=sigma_min, sigma_max=sigma_max, eigen_interval=eigen_interval
    )
    check_cma_params(default_params)
    if num_dims is not None:
        itemsize = jnp.dtype(jnp.result_type(float)).itemsize
        check_covariance_memory(num_dims, itemsize, max_covariance_bytes)
    preliminary = preliminary_weights(population_size, num_parents)

    def init(key: jax.Array, x0, params: CMAESParams | None = None) -> CMAESState:
        del key  # the initial state is deterministic
        params = default_params if params is None else params
        check_cma_params(params)
        mean, spec = flatten_x0(x0)
        n, dtype = spec.num_dims, mean.dtype
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} entries but the strategy was built with num_dims={num_dims}"
            )
        check_covariance_memory(n, jnp.dtype(dtype).itemsize, max_covariance_bytes)
        defaults = default_hyperparameters(n, population_size, num_parents)
        params = params_to_arrays(_resolve_params(params, defaults, n), dtype)
        best_solution, best_fitness = init_best(mean)
        length = history_length(n, population_size)
        return CMAESState(
            best_solution=best_solution,
            best_fitness=best_fitness,
            generation=jnp.array(0, jnp.int32),
            spec=spec,
            mean=mean,
            sigma=params.sigma,
            covariance=jnp.eye(n, dtype=dtype),
            eigenvectors=jnp.eye(n, dtype=dtype),
            axis_lengths=jnp.ones(n, dtype),
            path_sigma=jnp.zeros(n, dtype),
            path_c=jnp.zeros(n, dtype),
            weights=recombination_weights(preliminary, n, params.c_1, params.c_mu, active, dtype),
            eigen_generation=jnp.array(0, jnp.int32),
            best_history=jnp.zeros(length, dtype),
            median_history=jnp.zeros(length, dtype),
            fitness_max=jnp.array(0, dtype),
            params=params,
        )

    def ask(key: jax.Array, state: CMAESState) -> tuple[jax.Array, CMAESState]:
        z = sample_standard_normal(
            key, jnp.arange(population_size), state.num_dims, state.mean.dtype
        )
        # eq. 39 with C^{1/2} = B D Bᵀ instead of B D: the same N(0, C), but a continuous
        # function of C, whereas B is fixed only up to signs and rotations within (nearly)
        # equal eigenvalues, which differ between backends and between jit and eager runs.
        y = ((z @ state.eigenvectors) * state.axis_lengths) @ state.eigenvectors.T
        return state.mean + state.sigma * y, state  # eq. 40

    def tell(state: CMAESState, population: jax.Array, fitness: jax.Array) -> CMAESState:
        fitness = check_fitness(fitness, population_size)
        check_population(population, population_size, state.num_dims)
        params, n = state.params, state.num_dims
        order, weights, mu_eff, any_finite = rank_members(state.weights, fitness)
        steps = (population[order] - state.mean) / state.sigma  # y_{i:λ}
        step = jnp.where(weights > 0, weights, 0.0) @ steps  # eq. 41
        mean = state.mean + params.c_m * state.sigma * step  # eq. 42
        basis, lengths = state.eigenvectors, state.axis_lengths

        # C^{-1/2} y = B D^{-1} Bᵀ y with the cached B, D that sampled this generation.
        whitened = basis @ ((basis.T @ step) / lengths)
        path_sigma, sigma, h_sigma = step_size_update(
            state.path_sigma, whitened, mu_eff, state.sigma, params, state.generation, n
        )
        c_c, c_1, c_mu = params.c_c, params.c_1, params.c_mu
        path_c = (1 - c_c) * state.path_c + h_sigma * jnp.sqrt(
            c_c * (2 - c_c) * mu_eff
        ) * step  # eq. 45
        whitened_sq_norms = jnp.sum(jnp.square((steps @ basis) / lengths), axis=1)
        tiny = jnp.finfo(steps.dtype).tiny
        weights_circ = jnp.where(
            weights >= 0, weights, weights * n / jnp.maximum(whitened_sq_norms, tiny)
        )  # eq. 46
        delta_h = (1 - h_sigma) * c_c * (2 - c_c)
        covariance = (
            (1 + c_1 * delta_h - c_1 - c_mu * jnp.sum(weights)) * state.covariance
            + c_1 * jnp.outer(path_c, path_c)
            + c_mu * (steps.T * weights_circ) @ steps
        )  # eq. 47
        covariance = (covariance + covariance.T) / 2  # keep rounding from breaking symmetry
        covariance, basis, lengths, eigen_generation = _maybe_decompose(state, covariance, params)

        updated = {
            "mean": mean,
            "sigma": sigma,
            "covariance": covariance,
            "eigenvectors": basis,
            "axis_lengths": lengths,
            "path_sigma": path_sigma,
            "path_c": path_c,
            "eigen_generation": eigen_generation,
        }
        return next_state(state, population, fitness, any_finite, updated)

    def _maybe_decompose(state, covariance, params):
        next_generation = state.generation + 1
        elapsed = (next_generation - state.eigen_generation).astype(covariance.dtype)
        due = elapsed >= params.eigen_interval
        covariance, basis, lengths = jax.lax.cond(
            due,
            _decompose,
            lambda c: (c, state.eigenvectors, state.axis_lengths),
            covariance,
        )
        return covariance, basis, lengths, jnp.where(due, next_generation, state.eigen_generation)

    def info(state: CMAESState) -> dict:
        lengths = state.axis_lengths
        condition = jnp.square(jnp.max(lengths) / jnp.min(lengths))
        axis = state.generation % state.num_dims
        axis_step = 0.1 * state.sigma * lengths[axis] * state.eigenvectors[:, axis]
        return cma_info(
            state,
            population_size,
            coordinate_stds=jnp.sqrt(jnp.diagonal(state.covariance)),
            axis_step=axis_step,
            condition=condition,
        )

    return Strategy(
        name="cma_es",
        population_size=population_size,
        default_params=default_params,
        init=init,
        ask=ask,
        tell=tell,
        info=info,
    )


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
