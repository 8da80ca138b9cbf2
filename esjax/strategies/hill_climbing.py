"""Hill climbing: a (1+λ)-ES with the 1/5th success rule and random restarts.

References: Rechenberg, "Evolutionsstrategie: Optimierung technischer Systeme nach Prinzipien der
biologischen Evolution", Frommann-Holzboog, 1973 (the (1+1)-ES and the 1/5th success rule);
Kern, Müller, Hansen, Büche, Ocenasek & Koumoutsakos, "Learning probability distributions in
continuous evolutionary algorithms – a comparative review", Natural Computing 3, 2004 (the rule
in its exponential form: σ multiplied by exp(1/3) on success and by exp(-1/12) otherwise);
Igel, Suttorp & Hansen, "A computational efficient covariance matrix update and a (1+1)-CMA for
evolution strategies", GECCO 2006 (the same rule written with a success rate and a damping).

One climber ``x`` with fitness ``f(x)`` and step size ``σ``. Each generation samples
``λ = population_size`` offspring and keeps the best one if it is at least as good (elitist,
"plus" selection)::

    y_i = x + σ ε_i,   ε_i ~ N(0, I)
    x  ← y_best        if f(y_best) <= f(x)

The step size follows the success rule in its rate form: with ``p_s`` the fraction of the
generation's offspring (those with a finite fitness) that are at least as good as ``x``,
``p_t = target_success`` (default 1/5) and damping ``d`` (default ``1 + n/2``)::

    σ ← σ · exp( (p_s - p_t) / (d (1 - p_t)) )

A success rate above ``p_t`` means the steps are too short to matter (nearly every step of a
small enough σ is a success on a smooth function), one below means they overshoot. For
``λ = 1`` and ``d = 3`` this is exactly the classic factor rule of Kern et al. (2004): ``σ``
times ``exp(1/3)`` after a success and ``exp(-1/12)`` after a failure, which balance at a
success probability of 1/5 (Rechenberg's rule). ``σ`` is clipped to ``[sigma_min, sigma_max]``.

Random restarts. A local climber converges to the nearest basin. After ``restart_patience``
(default ``10 + ⌈30 n / λ⌉``) consecutive generations in which ``f(x)`` fell by no more than
``tolfun`` (0: never restart), the climber jumps: the next generation's offspring are drawn
around a new random start — uniform in the box when ``lower_bound``/``upper_bound`` are given,
else ``x0 + σ0 ε`` — with ``σ = σ0``, and the best of them becomes the climber whatever its
fitness. The reported solution is the best point ever evaluated (``best_solution``), so a
restart never loses it.

Sharded decomposition. Member ``i`` is a function of ``(key, i)`` (and the state) alone: the
restart start point is drawn from the same key by every device. The update needs the fitness of
all members (for ``p_s``) and one row, the best offspring, written as a sum with a one-hot
weight, so a sharded run moves fitness values and one ``(num_dims,)`` sum.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from esjax import shaping
from esjax.base import (
    Capabilities,
    Decomposition,
    Strategy,
    StrategyState,
    check_int,
    check_range,
    make_strategy,
)
from esjax.bounds import bounds_like, check_bounds
from esjax.prng import member_normals, member_uniforms
from esjax.strategies.cma_core import check_sigma_bounds


@struct.dataclass
class HillClimbingParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over). Their defaults are
    :func:`hill_climbing`'s arguments: start from ``es.default_params``.

    Attributes:
      sigma: initial (and post-restart) step size ``σ0`` (> 0).
      target_success: target success rate ``p_t`` of the step-size rule, in (0, 1).
      damping: ``d`` of the step-size rule (> 0); None: ``1 + n/2`` (filled in by ``init``).
      restart_patience: stagnating generations before a restart (>= 0; 0: never restart);
        None: ``10 + ⌈30 n / λ⌉`` (filled in by ``init``).
      tolfun: a generation stagnates when ``f(x)`` falls by no more than this (>= 0).
      sigma_min, sigma_max: clip range of ``σ``.
    """

    sigma: float | jax.Array
    target_success: float | jax.Array
    damping: float | jax.Array | None
    restart_patience: float | jax.Array | None
    tolfun: float | jax.Array
    sigma_min: float | jax.Array
    sigma_max: float | jax.Array


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "target_success": (0.0, 1.0, False, False),
    "damping": (0.0, None, False, True),
    "restart_patience": (0.0, None),
    "tolfun": (0.0, None),
    "sigma_min": (0.0, None),
    "sigma_max": (0.0, None, False, True),
}


@struct.dataclass
class HillClimbingState(StrategyState):
    """Climber state.

    Attributes:
      parent: ``(num_dims,)`` the climber ``x``.
      parent_fitness: its fitness (the largest finite float before the first finite one).
      sigma: step size ``σ``.
      origin: the flat ``x0`` (restarts without bounds start around it).
      stagnation: consecutive generations without an improvement larger than ``tolfun``.
      restart_pending: 1 when the next generation starts a new climb, else 0 (int32).
      num_restarts: restarts so far.
      success_rate: ``p_s`` of the last generation.
    """

    parent: jax.Array
    parent_fitness: jax.Array
    sigma: jax.Array
    origin: jax.Array
    stagnation: jax.Array
    restart_pending: jax.Array
    num_restarts: jax.Array
    success_rate: jax.Array
    params: HillClimbingParams


def hill_climbing(
    population_size: int,
    sigma: float = 1.0,
    target_success: float = 0.2,
    damping: float | None = None,
    restart_patience: int | None = None,
    tolfun: float = 1e-12,
    lower_bound: float | list[float] | None = None,
    upper_bound: float | list[float] | None = None,
    sigma_bounds: tuple[float, float] = (1e-20, 1e20),
) -> Strategy:
    """Build a (1+λ)-ES hill climber with the 1/5th success rule and random restarts.

    Args:
      population_size: offspring per generation ``λ`` (>= 1).
      sigma: initial step size ``σ0`` (> 0), also the step size after a restart.
      target_success: success rate ``p_t`` the step size steers towards, in (0, 1); 1/5 is
        Rechenberg's rule.
      damping: ``d`` (> 0); None: ``1 + n/2``. Larger is slower, steadier adaptation.
      restart_patience: restart after this many consecutive generations in which the climber's
        fitness fell by no more than ``tolfun`` (an integer >= 0; 0 disables restarts). None:
        ``10 + ⌈30 n / λ⌉``, the window CMA-ES's TolFun criterion looks back over (Hansen,
        "The CMA Evolution Strategy: A Tutorial", 2016, Appendix B.3). Long enough that a
        climber still making progress never restarts: at the target success rate 1/5 a
        generation fails with probability ``0.8^λ``, and that many failures in a row are
        vanishingly rare (``0.8^130`` for ``λ = 1``, ``n = 4``).
      tolfun: the improvement a generation must beat to reset the stagnation count (>= 0).
      lower_bound: lower box bound, a scalar or a ``num_dims`` list (with ``upper_bound``, or
        neither; finite, ``lower < upper``).
      upper_bound: upper box bound, likewise. Offspring are clipped into the box and
        restarts start uniformly inside it.
      sigma_bounds: ``(sigma_min, sigma_max)`` clip for ``σ``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises and reports ``best_solution``.

    Example:
      >>> es = hill_climbing(population_size=8, sigma=0.5)
      >>> state = es.init(jax.random.key(0), jnp.ones(4))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size = check_int("population_size", population_size, 1)
    if restart_patience is not None:
        # The range first, so that NaN is a ValueError like every other bad number.
        check_range("restart_patience", restart_patience, 0, None)
        restart_patience = check_int("restart_patience", restart_patience, 0)
    bounds = check_bounds(lower_bound, upper_bound)
    sigma_min, sigma_max = check_sigma_bounds(sigma_bounds)

    def resolve(params: HillClimbingParams, num_dims: int) -> HillClimbingParams:
        filled = {}
        if params.damping is None:
            filled["damping"] = 1.0 + num_dims / 2
        if params.restart_patience is None:
            filled["restart_patience"] = 10 + math.ceil(30 * num_dims / population_size)
        return params.replace(**filled)

    def init(key: jax.Array, mean: jax.Array, params: HillClimbingParams) -> dict:
        del key  # the first generation samples around x0 itself
        if bounds is not None:
            bounds_like(bounds, mean)  # a wrong-length bound fails at init, naming it
        zero = jnp.zeros((), jnp.int32)
        return {
            "parent": mean,
            # The largest finite float, not +inf: the state stays finite before evaluation, and
            # any finite offspring beats it.
            "parent_fitness": jnp.array(jnp.finfo(mean.dtype).max, mean.dtype),
            "sigma": params.sigma,
            "origin": mean,
            "stagnation": zero,
            "restart_pending": zero,
            "num_restarts": zero,
            "success_rate": jnp.zeros((), mean.dtype),
        }

    def sample(key: jax.Array, state: HillClimbingState, indices: jax.Array) -> jax.Array:
        dtype, num_dims = state.parent.dtype, state.num_dims
        restart_key, noise_key = jax.random.split(key)
        # The restart start point is row 0 of its own key: the same on every device.
        first = jnp.zeros((1,), jnp.int32)
        if bounds is None:
            noise = member_normals(restart_key, first, num_dims, dtype)[0]
            start = state.origin + state.params.sigma * noise
        else:
            lower, upper = bounds_like(bounds, state.parent)
            uniform = member_uniforms(restart_key, first, num_dims, dtype)[0]
            start = lower + (upper - lower) * uniform
        pending = state.restart_pending > 0
        center = jnp.where(pending, start, state.parent)
        step = jnp.where(pending, state.params.sigma, state.sigma)
        members = center + step * member_normals(noise_key, indices, num_dims, dtype)
        if bounds is not None:
            members = jnp.clip(members, lower, upper)
        return members

    def weights(state: HillClimbingState, fitness: jax.Array, scalars: None) -> jax.Array:
        """One-hot on the best offspring (all zero when no fitness is finite)."""
        safe = shaping.sanitize(fitness)
        best = jnp.argmin(safe)
        chosen = (jnp.arange(population_size) == best) & jnp.isfinite(safe[best])
        return chosen.astype(state.parent.dtype)

    def statistics(state: HillClimbingState, members: jax.Array, weights: jax.Array) -> jax.Array:
        # Σ_i w_i y_i with a one-hot w is the best offspring itself. HIGHEST precision: a
        # reduced-precision matmul (TF32 on GPUs) would round the row it should copy.
        # A zero-weight row (possibly non-finite: needs_finite_rows=False) adds nothing.
        members = jnp.where((weights != 0)[:, None], members, jnp.zeros((), members.dtype))
        return jnp.matmul(weights, members, precision=jax.lax.Precision.HIGHEST)

    def apply(
        state: HillClimbingState, best_row: jax.Array, fitness: jax.Array
    ) -> HillClimbingState:
        params = state.params
        dtype = state.parent_fitness.dtype
        safe = shaping.sanitize(fitness).astype(dtype)
        best = jnp.min(safe)
        finite = jnp.isfinite(safe)
        any_finite = jnp.any(finite)
        pending = state.restart_pending > 0
        # A climb without a finite fitness yet (the first generation, or the first after a
        # restart) has nothing to compare with: its best offspring is taken as it is.
        unset = pending | (state.parent_fitness >= jnp.finfo(dtype).max)
        accept = any_finite & (unset | (best <= state.parent_fitness))
        parent = jnp.where(accept, best_row, state.parent)
        parent_fitness = jnp.where(accept, best, state.parent_fitness)

        # Success rate over the members that carry information (NaN fitness counts for nothing).
        successes = jnp.sum(finite & (safe <= state.parent_fitness))
        success_rate = successes / jnp.maximum(jnp.sum(finite), 1)
        adapt = any_finite & ~unset
        exponent = (success_rate - params.target_success) / (
            params.damping * (1 - params.target_success)
        )
        adapted = jnp.clip(state.sigma * jnp.exp(exponent), params.sigma_min, params.sigma_max)
        # A new climb starts from σ0 (its first generation was sampled with σ0).
        sigma = jnp.where(adapt, adapted, jnp.where(pending, params.sigma, state.sigma))

        improved = accept & (unset | (best < state.parent_fitness - params.tolfun))
        stagnation = jnp.where(improved, 0, state.stagnation + 1)
        restart = (params.restart_patience > 0) & (stagnation >= params.restart_patience)
        # A pending restart whose generation had no finite fitness stays pending.
        still_pending = pending & ~accept
        return state.replace(
            parent=parent,
            parent_fitness=parent_fitness.astype(dtype),
            sigma=sigma.astype(state.sigma.dtype),
            stagnation=jnp.where(restart, 0, stagnation).astype(jnp.int32),
            restart_pending=(restart | still_pending).astype(jnp.int32),
            num_restarts=state.num_restarts + restart.astype(jnp.int32),
            success_rate=jnp.where(adapt, success_rate, state.success_rate).astype(dtype),
        )

    def info(state: HillClimbingState) -> dict:
        return {
            "sigma": state.sigma,
            "success_rate": state.success_rate,
            "num_restarts": state.num_restarts,
            "parent_fitness": state.parent_fitness,
        }

    return make_strategy(
        name="hill_climbing",
        population_size=population_size,
        default_params=HillClimbingParams(
            sigma=sigma,
            target_success=target_success,
            damping=damping,
            restart_patience=restart_patience,
            tolfun=tolfun,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
        ),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=HillClimbingState,
        init=init,
        info=info,
        capabilities=Capabilities(
            solution="best_solution",
            bounds=bounds,
            decomposition=Decomposition(
                sample, weights, statistics, apply, needs_finite_rows=False
            ),
        ),
    )


__all__ = ["PARAM_RANGES", "HillClimbingParams", "HillClimbingState", "hill_climbing"]
