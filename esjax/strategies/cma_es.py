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

Randomness. Member ``i``'s normals are :func:`esjax.prng.member_normals` of the key given to
``ask`` and ``i``, a function of ``(key, i)`` alone.

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

import jax
import jax.numpy as jnp
from flax import struct

from esjax.base import (
    Capabilities,
    Strategy,
    StrategyState,
    check_int,
    check_range,
    make_strategy,
)
from esjax.prng import member_normals
from esjax.strategies.cma_core import (
    PARAM_RANGES,
    check_population_size,
    check_sigma_bounds,
    cma_info,
    default_hyperparameters,
    default_population_size,
    fitness_histories,
    history_length,
    preliminary_weights,
    rank_members,
    recombination_weights,
    resolve_learning_rates,
    step_size_update,
    tolfun_window,
)


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
    params = resolve_learning_rates(params, defaults)
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
    active: bool = True,
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
        On by default, as in pycma 4.x; ``False`` gives the original (μ/μ_w, λ) update.
      sigma_bounds: ``(sigma_min, sigma_max)`` clip for ``σ``, ``0 <= min < max``.
      eigen_interval: generations between eigendecompositions (>= 1). None: pycma's lazy rule
        ``1 / (10 n (c_1 + c_μ))`` (every generation for small ``n``); 1: every generation.
      max_covariance_bytes: refuse dimensions whose ``C`` and ``B`` (``2 n² · itemsize`` bytes)
        exceed this (default 2e9); use :func:`esjax.sep_cma_es` or :func:`esjax.openai_es` then.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises; ``es.info`` reports ``sigma``, the condition
      of ``C`` and the termination signals described in the module docstring, and the strategy
      declares ``stop`` as its termination signal.

    Example:
      >>> es = cma_es(num_dims=10, sigma=2.0)          # λ = 10
      >>> state = es.init(jax.random.key(0), 3 * jnp.ones(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size, num_parents, num_dims = check_population_size(
        population_size, num_parents, num_dims
    )
    if not isinstance(active, bool):
        raise ValueError(f"active must be True or False, got {active!r}")
    if eigen_interval is not None:
        eigen_interval = check_int("eigen_interval", eigen_interval, 1)
    check_range("max_covariance_bytes", max_covariance_bytes, 0.0, None, low_inclusive=False)
    sigma_min, sigma_max = check_sigma_bounds(sigma_bounds)
    if num_dims is not None:
        itemsize = jnp.dtype(jnp.result_type(float)).itemsize
        check_covariance_memory(num_dims, itemsize, max_covariance_bytes)
    preliminary = preliminary_weights(population_size, num_parents)

    def resolve(params: CMAESParams, n: int) -> CMAESParams:
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} entries but the strategy was built with num_dims={num_dims}"
            )
        check_covariance_memory(n, jnp.dtype(jnp.result_type(float)).itemsize, max_covariance_bytes)
        return _resolve_params(params, default_hyperparameters(n, population_size, num_parents), n)

    def init(key: jax.Array, mean: jax.Array, params: CMAESParams) -> dict:
        del key  # the initial state is deterministic
        n, dtype = mean.shape[0], mean.dtype
        length = history_length(n, population_size)
        return {
            "mean": mean,
            "sigma": params.sigma,
            "covariance": jnp.eye(n, dtype=dtype),
            "eigenvectors": jnp.eye(n, dtype=dtype),
            "axis_lengths": jnp.ones(n, dtype),
            "path_sigma": jnp.zeros(n, dtype),
            "path_c": jnp.zeros(n, dtype),
            "weights": recombination_weights(
                preliminary, n, params.c_1, params.c_mu, active, dtype
            ),
            "eigen_generation": jnp.array(0, jnp.int32),
            "best_history": jnp.zeros(length, dtype),
            "median_history": jnp.zeros(length, dtype),
            "fitness_max": jnp.array(0, dtype),
        }

    def ask(key: jax.Array, state: CMAESState) -> tuple[jax.Array, CMAESState]:
        z = member_normals(key, jnp.arange(population_size), state.num_dims, state.mean.dtype)
        # eq. 39 with C^{1/2} = B D Bᵀ instead of B D: the same N(0, C), but a continuous
        # function of C, whereas B is fixed only up to signs and rotations within (nearly)
        # equal eigenvalues, which differ between backends and between jit and eager runs.
        y = ((z @ state.eigenvectors) * state.axis_lengths) @ state.eigenvectors.T
        return state.mean + state.sigma * y, state  # eq. 40

    def update(state: CMAESState, population: jax.Array, fitness: jax.Array) -> CMAESState:
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
        return state.replace(**fitness_histories(state, fitness, any_finite, updated))

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

    return make_strategy(
        name="cma_es",
        population_size=population_size,
        default_params=CMAESParams(
            sigma=sigma, sigma_min=sigma_min, sigma_max=sigma_max, eigen_interval=eigen_interval
        ),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=CMAESState,
        init=init,
        ask=ask,
        update=update,
        info=info,
        capabilities=Capabilities(termination=lambda state: info(state)["stop"]),
    )


__all__ = [
    "CMAESParams",
    "CMAESState",
    "check_covariance_memory",
    "cma_es",
    "default_hyperparameters",
    "default_population_size",
    "tolfun_window",
]
