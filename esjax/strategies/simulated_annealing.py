"""Simulated annealing: a population of independent Metropolis chains under a cooling schedule.

References: Kirkpatrick, Gelatt & Vecchi, "Optimization by Simulated Annealing", Science 220,
1983 (Metropolis acceptance with a decreasing temperature); Geman & Geman, "Stochastic
Relaxation, Gibbs Distributions, and the Bayesian Restoration of Images", IEEE TPAMI 6, 1984
(the logarithmic schedule); Andrieu & Thoms, "A tutorial on adaptive MCMC", Statistics and
Computing 18, 2008 (the Robbins-Monro step-size adaptation); Roberts, Gelman & Gilks, "Weak
convergence and optimal scaling of random walk Metropolis algorithms", Ann. Appl. Probab. 7, 1997
(the 0.234 target acceptance rate).

The population is ``n = population_size`` chains run side by side; generation ``k`` makes one
Gaussian proposal per chain ``i``::

    y_i = x_i + σ_i ε_i,          ε_i ~ N(0, I)

and ``tell`` accepts it with the Metropolis probability at temperature ``T_k``::

    accept_i  ⇔  u_i < exp(-(f(y_i) - f(x_i)) / T_k),     u_i ~ U(0, 1]

(tested as ``T_k log u_i < -Δf`` so that ``T = 0`` is greedy descent without a division). The
temperature follows one of the schedules (``T0 = initial_temperature``, ``r = cooling_rate``)::

    exponential   T_k = T0 exp(-r k)
    linear        T_k = T0 max(1 - r k, 0)
    logarithmic   T_k = T0 / (1 + r ln(1 + k))        (Boltzmann / Geman & Geman)
    callable      T_k = cooling_schedule(k, T0)

floored at ``min_temperature``; a lower ``r`` cools more slowly. Each chain's step size adapts in
log space towards ``target_acceptance`` ``α*`` with rate ``η = step_size_adaptation``::

    log σ_i ← log σ_i + η (a_i - α*),     a_i ∈ {0, 1} chain i's acceptance

clipped to ``[min_step_size, max_step_size]``. Re-annealing: when the best-ever fitness has not
improved for ``reheat_patience`` generations (0: never), the schedule restarts at ``k = 0`` and
every step size returns to ``step_size``.

Starting the chains. ``init`` needs no evaluated point: every chain starts at ``x0`` with the
worst fitness (stored as the largest finite float, so the state stays finite), so the first
``ask`` returns ``x0 + σ ε_i`` and the first ``tell`` accepts every finite proposal — the chains'
starting points are their first (evaluated) proposals. Chains still at the worst fitness are left
out of the step-size adaptation, since accepting against it says nothing about the step size.
Non-finite proposals (NaN, ±inf) are always rejected.

Randomness. Chain ``i``'s proposal noise and its acceptance draw ``u_i`` both come from row ``i``
of one :func:`esjax.prng.random_bits` draw under the key given to ``ask`` (a function of the key,
``i`` and the dimension alone, drawn for the whole population at once); ``ask`` stores the ``n``
draws ``u_i`` in the state for ``tell``, which therefore needs no key of its own (and the state
holds no PRNG key).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from esjax import shaping
from esjax.base import (
    Capabilities,
    Strategy,
    StrategyState,
    check_int,
    check_params,
    check_range,
    make_strategy,
)
from esjax.prng import float_bits_type, normal_from_bits, random_bits, uniform_from_bits

COOLING_SCHEDULES = ("exponential", "linear", "logarithmic")

CoolingSchedule = Callable[[jax.Array, jax.Array], jax.Array]


@struct.dataclass
class SimulatedAnnealingParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over). Their defaults are
    :func:`simulated_annealing`'s arguments: start from ``es.default_params``.

    Attributes:
      initial_temperature: ``T0`` (>= 0), in units of the fitness.
      cooling_rate: ``r`` of the built-in schedules (>= 0; 0 keeps ``T = T0``).
      min_temperature: floor of the temperature (>= 0).
      step_size: initial proposal standard deviation ``σ`` of every chain (> 0).
      target_acceptance: acceptance rate ``α*`` the step sizes adapt towards, in (0, 1).
      step_size_adaptation: rate ``η`` of the log-step-size update (>= 0; 0: fixed step).
      min_step_size, max_step_size: range of the adapted step sizes (> 0).
      reheat_patience: generations without a new best before re-annealing (>= 0; 0: never).
    """

    initial_temperature: float | jax.Array
    cooling_rate: float | jax.Array
    min_temperature: float | jax.Array
    step_size: float | jax.Array
    target_acceptance: float | jax.Array
    step_size_adaptation: float | jax.Array
    min_step_size: float | jax.Array
    max_step_size: float | jax.Array
    reheat_patience: float | jax.Array


PARAM_RANGES = {
    "initial_temperature": (0.0, None),
    "cooling_rate": (0.0, None),
    "min_temperature": (0.0, None),
    "step_size": (0.0, None, False, True),
    "target_acceptance": (0.0, 1.0, False, False),
    "step_size_adaptation": (0.0, None),
    "min_step_size": (0.0, None, False, True),
    "max_step_size": (0.0, None, False, True),
    "reheat_patience": (0.0, None),
}


@struct.dataclass
class SimulatedAnnealingState(StrategyState):
    """Chains, temperature, step sizes and hyperparameters.

    Attributes:
      positions: ``(population_size, num_dims)`` each chain's current point ``x_i``.
      fitness: ``(population_size,)`` its fitness (the largest finite float until a proposal
        is accepted).
      step_size: ``(population_size,)`` each chain's proposal standard deviation ``σ_i``.
      temperature: scalar ``T_k`` used by the next ``tell``.
      anneal_step: scalar int32 ``k``, generations since the last (re)start of the schedule.
      stagnation: scalar int32, generations since the best-ever fitness last improved.
      num_reheats: scalar int32, re-annealings so far.
      acceptance_draws: ``(population_size,)`` the ``u_i`` drawn by the last ``ask``.
      acceptance_rate: scalar, fraction of chains that accepted in the last ``tell``.
    """

    positions: jax.Array
    fitness: jax.Array
    step_size: jax.Array
    temperature: jax.Array
    anneal_step: jax.Array
    stagnation: jax.Array
    num_reheats: jax.Array
    acceptance_draws: jax.Array
    acceptance_rate: jax.Array
    params: SimulatedAnnealingParams


def scheduled_temperature(
    cooling_schedule: str | CoolingSchedule,
    anneal_step: jax.Array,
    params: SimulatedAnnealingParams,
) -> jax.Array:
    """``T_k`` of ``cooling_schedule`` at step ``k = anneal_step``, floored at min_temperature."""
    k = jnp.asarray(anneal_step, jnp.result_type(params.initial_temperature))
    t0, rate = params.initial_temperature, params.cooling_rate
    if callable(cooling_schedule):
        temperature = cooling_schedule(k, t0)
    elif cooling_schedule == "exponential":
        temperature = t0 * jnp.exp(-rate * k)
    elif cooling_schedule == "linear":
        temperature = t0 * jnp.maximum(1.0 - rate * k, 0.0)
    else:
        temperature = t0 / (1.0 + rate * jnp.log1p(k))
    temperature = jnp.asarray(temperature, t0.dtype)
    return jnp.maximum(temperature, params.min_temperature)


def chain_draws(
    key: jax.Array, num_chains: int, num_dims: int, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Every chain's proposal noise ``ε`` ``(num_chains, num_dims)`` and acceptance draw
    ``u ∈ (0, 1]`` ``(num_chains,)``; chain ``i``'s come from row ``i`` of one bits draw.

    The normals come from :func:`esjax.prng.normal_from_bits`.
    """
    uint, _, _ = float_bits_type(dtype)
    bits = random_bits(key, (num_chains, num_dims + 1), uint)
    # 1 - U[0, 1) lies in (0, 1], so log u stays finite.
    return normal_from_bits(bits[:, :-1], dtype), 1.0 - uniform_from_bits(bits[:, -1], dtype)


def simulated_annealing(
    population_size: int,
    initial_temperature: float = 1.0,
    cooling_schedule: str | CoolingSchedule = "exponential",
    cooling_rate: float = 0.01,
    min_temperature: float = 0.0,
    step_size: float = 0.1,
    target_acceptance: float = 0.234,
    step_size_adaptation: float = 0.02,
    min_step_size: float = 1e-10,
    max_step_size: float = 1e6,
    reheat_patience: int = 0,
) -> Strategy:
    """Build population-parallel simulated annealing (independent Metropolis chains).

    Args:
      population_size: number of chains ``n`` (>= 1); each makes one proposal per generation.
      initial_temperature: ``T0`` (>= 0), on the scale of fitness differences worth accepting.
      cooling_schedule: ``"exponential"``, ``"linear"``, ``"logarithmic"`` or a callable
        ``(k, T0) -> T_k`` of jax scalars (traced; ``cooling_rate`` is then unused).
      cooling_rate: ``r`` in the schedules above (>= 0); lower cools more slowly.
      min_temperature: floor of ``T_k`` (>= 0).
      step_size: initial proposal standard deviation ``σ`` (> 0).
      target_acceptance: ``α*`` in (0, 1); 0.234 is optimal for random-walk Metropolis in many
        dimensions (Roberts et al. 1997), about 0.44 in one.
      step_size_adaptation: ``η`` (>= 0); 0 keeps every ``σ_i = step_size``. The small default
        lets ``σ`` follow the temperature slowly: on 2-D rastrigin ``η = 0.1`` shrank ``σ`` to the
        local scale as soon as the chains cooled, ending the jumps between basins, and halved the
        global-basin success of single chains (about 0.5 to 0.25 with ``η = 0.01``).
      min_step_size: lower end of the adapted ``σ_i`` (> 0).
      max_step_size: upper end of the adapted ``σ_i`` (>= min_step_size).
      reheat_patience: restart the schedule after this many generations without a new best-ever
        fitness (>= 0; 0 disables re-annealing).

    Returns:
      A :class:`~esjax.base.Strategy` that minimises.

    Example:
      >>> es = simulated_annealing(population_size=16, initial_temperature=10.0, step_size=0.5)
      >>> state = es.init(jax.random.key(0), jnp.full(2, 3.0))
      >>> proposals, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, proposals, esjax.problems.rastrigin(proposals))
    """
    population_size = check_int("population_size", population_size, 1)
    if not callable(cooling_schedule) and cooling_schedule not in COOLING_SCHEDULES:
        raise ValueError(
            f"cooling_schedule must be one of {COOLING_SCHEDULES} or a callable (k, T0) -> T, "
            f"got {cooling_schedule!r}"
        )

    def init(key: jax.Array, mean: jax.Array, params: SimulatedAnnealingParams) -> dict:
        del key  # every chain starts at x0; the first ask spreads them out
        zero = jnp.array(0, jnp.int32)
        return {
            "positions": jnp.broadcast_to(mean, (population_size, mean.shape[0])),
            "fitness": jnp.full((population_size,), jnp.finfo(mean.dtype).max, mean.dtype),
            "step_size": jnp.full((population_size,), params.step_size, mean.dtype),
            "temperature": scheduled_temperature(cooling_schedule, zero, params),
            "anneal_step": zero,
            "stagnation": zero,
            "num_reheats": zero,
            "acceptance_draws": jnp.ones((population_size,), mean.dtype),
            "acceptance_rate": jnp.zeros((), mean.dtype),
        }

    def ask(
        key: jax.Array, state: SimulatedAnnealingState
    ) -> tuple[jax.Array, SimulatedAnnealingState]:
        noise, draws = chain_draws(key, population_size, state.num_dims, state.positions.dtype)
        proposals = state.positions + state.step_size[:, None] * noise
        return proposals, state.replace(acceptance_draws=draws)

    def update(
        state: SimulatedAnnealingState, population: jax.Array, fitness: jax.Array
    ) -> SimulatedAnnealingState:
        params = state.params
        proposed = shaping.sanitize(fitness).astype(state.fitness.dtype)
        # Metropolis: u < exp(-Δ/T) ⇔ T log u < -Δ. Never divides by T, so T = 0 is greedy; a
        # finite proposal always beats a chain that has none yet, and a non-finite one (NaN: no
        # information) never wins.
        downhill = proposed <= state.fitness
        uphill = state.temperature * jnp.log(state.acceptance_draws) < state.fitness - proposed
        accepted = jnp.isfinite(proposed) & (downhill | uphill)
        positions = jnp.where(accepted[:, None], population, state.positions)
        chain_fitness = jnp.where(accepted, proposed, state.fitness)

        # Robbins-Monro in log σ; chains without an accepted point learn nothing about σ.
        informative = state.fitness < jnp.finfo(state.fitness.dtype).max
        signal = jnp.where(
            informative, accepted.astype(proposed.dtype) - params.target_acceptance, 0
        )
        step_size = jnp.clip(
            state.step_size * jnp.exp(params.step_size_adaptation * signal),
            params.min_step_size,
            params.max_step_size,
        )

        # Whether this generation improves the best-ever fitness (make_strategy records the new
        # best after this update; `state` still holds the previous one).
        improved = jnp.min(proposed) < state.best_fitness
        stagnation = jnp.where(improved, 0, state.stagnation + 1)
        reheat = (params.reheat_patience > 0) & (stagnation >= params.reheat_patience)
        anneal_step = jnp.where(reheat, 0, state.anneal_step + 1)
        return state.replace(
            positions=positions,
            fitness=chain_fitness,
            step_size=jnp.where(reheat, params.step_size, step_size).astype(step_size.dtype),
            temperature=scheduled_temperature(cooling_schedule, anneal_step, params),
            anneal_step=anneal_step.astype(jnp.int32),
            stagnation=jnp.where(reheat, 0, stagnation).astype(jnp.int32),
            num_reheats=state.num_reheats + reheat.astype(jnp.int32),
            acceptance_rate=jnp.mean(accepted.astype(proposed.dtype)),
        )

    def info(state: SimulatedAnnealingState) -> dict:
        return {
            "temperature": state.temperature,
            "acceptance_rate": state.acceptance_rate,
            "step_size": jnp.mean(state.step_size),
            "num_reheats": state.num_reheats,
        }

    return make_strategy(
        name="simulated_annealing",
        population_size=population_size,
        default_params=SimulatedAnnealingParams(
            initial_temperature=initial_temperature,
            cooling_rate=cooling_rate,
            min_temperature=min_temperature,
            step_size=step_size,
            target_acceptance=target_acceptance,
            step_size_adaptation=step_size_adaptation,
            min_step_size=min_step_size,
            max_step_size=max_step_size,
            reheat_patience=reheat_patience,
        ),
        param_checks=_check,
        state_type=SimulatedAnnealingState,
        init=init,
        ask=ask,
        update=update,
        info=info,
        capabilities=Capabilities(solution="best_solution"),
    )


def _check(params: SimulatedAnnealingParams) -> None:
    """The ranges of PARAM_RANGES and ``min_step_size <= max_step_size``."""
    check_params(params, PARAM_RANGES)
    check_range(
        "max_step_size", params.max_step_size, _concrete_or_none(params.min_step_size), None
    )


def _concrete_or_none(value) -> float | None:
    # A traced (vmapped) min_step_size cannot be compared at trace time: skip the order check.
    try:
        return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


__all__ = [
    "COOLING_SCHEDULES",
    "PARAM_RANGES",
    "CoolingSchedule",
    "SimulatedAnnealingParams",
    "SimulatedAnnealingState",
    "chain_draws",
    "scheduled_temperature",
    "simulated_annealing",
]
