"""OpenAI-ES: natural evolution strategies with a fixed isotropic search distribution.

Reference: Salimans, Ho, Chen, Sidor & Sutskever, "Evolution Strategies as a Scalable Alternative
to Reinforcement Learning", 2017, arXiv:1703.03864.

Each generation samples ``n = population_size`` members around the mean ``θ``::

    x_i = θ + σ ε_i,        ε_i ~ N(0, I)           (antithetic: ε_{i + n/2} = -ε_i)

and estimates the gradient of the Gaussian-smoothed objective ``E[f(θ + σ ε)]`` as::

    g = 1 / (n σ) Σ_i u_i ε_i,     u = centered_ranks(f + λ ||x||²)

where ``λ`` is ``weight_decay``. ``g`` is handed to an optax optimizer (default Adam), which
*descends* it, so the strategy minimises ``f``. ``σ`` decays geometrically to ``sigma_limit``.

Noise and memory. Member ``i``'s noise is row ``i mod n/2`` of an
:func:`esjax.prng.standard_normal` draw under the generation's key (negated for the mirrored
half), a function of ``(key, i)`` alone: any device can regenerate exactly its own members,
which is what makes a sharded run reproduce a single-device one. No noise is stored:
``tell`` recovers ``ε_i = (x_i - θ) / σ`` from the population it is given, so the only
``(population_size, num_dims)`` array alive in a generation is the population itself, and the
state holds O(num_dims) memory (mean, optimizer moments, best solution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
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
from esjax.prng import standard_normal

FITNESS_SHAPINGS = ("centered_ranks", "z_score", "raw")


@struct.dataclass
class OpenAIESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    Attributes:
      sigma: initial noise standard deviation ``σ`` (> 0).
      sigma_decay: multiplicative decay of ``σ`` per generation, in (0, 1].
      sigma_limit: floor for ``σ`` (>= 0).
      weight_decay: L2 coefficient ``λ`` added to the fitness before shaping (>= 0).
    """

    sigma: float | jax.Array = 0.05
    sigma_decay: float | jax.Array = 1.0
    sigma_limit: float | jax.Array = 0.0
    weight_decay: float | jax.Array = 0.0


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "sigma_decay": (0.0, 1.0, False, True),
    "sigma_limit": (0.0, None),
    "weight_decay": (0.0, None),
}


@struct.dataclass
class OpenAIESState(StrategyState):
    """OpenAI-ES state: search mean, current σ, optimizer state and hyperparameters."""

    mean: jax.Array
    sigma: jax.Array
    opt_state: optax.OptState
    params: OpenAIESParams


class OpenAIESUpdate(NamedTuple):
    """The two halves of ``tell``, shared with the sharded generation of :mod:`esjax.distributed`.

    A sharded run never assembles the population: each device holds its own members, so it needs
    ``tell`` split at the one reduction over members, ``Σ_i u_i (x_i - θ)``.

    Attributes:
      antithetic: whether members ``i`` and ``i + n/2`` are mirrored (see :func:`perturbations`).
      weights: ``(state, fitness, squared_norms) -> u``, the ``(population_size,)`` shaped weights
        from the raw fitness and ``||x_i||²`` (the weight-decay term).
      apply_gradient: ``(state, weighted_sum) -> state`` with ``weighted_sum = Σ_i u_i (x_i - θ)``;
        steps the mean, σ, optimizer state and generation (the best-so-far is left to the caller).
    """

    antithetic: bool
    weights: Callable[[OpenAIESState, jax.Array, jax.Array], jax.Array]
    apply_gradient: Callable[[OpenAIESState, jax.Array], OpenAIESState]


def weighted_deviation_sum(
    weights: jax.Array, members: jax.Array, mean: jax.Array, num_chunks: int = 8
) -> jax.Array:
    """``Σ_i w_i (x_i - θ)``, one block of ``⌈n / num_chunks⌉`` members at a time.

    Forming all the deviations ``x_i - θ`` at once would hold a second population-sized array;
    a block at a time the working set is the population plus ``1/num_chunks`` of it, and each
    block is one matrix-vector product. Subtracting ``θ`` before the product (not ``Σ w_i θ``
    after it) keeps the precision of ``σ ε_i`` when ``|θ| >> σ``; the block sums are added in
    float32 or wider and rounded to the result's dtype once.
    """
    dtype = jnp.result_type(weights, members, mean)
    n = members.shape[0]
    rows = -(-n // num_chunks)
    if rows >= n:  # one member (or one chunk)
        return weights @ (members - mean)
    blocks = n // rows
    wide = jnp.promote_types(dtype, jnp.float32)

    def block_sum(first, count):
        block = jax.lax.dynamic_slice_in_dim(members, first, count)
        block_weights = jax.lax.dynamic_slice_in_dim(weights, first, count)
        return jnp.matmul(block_weights, block - mean, preferred_element_type=wide)

    # Zeros shaped like a member, so the sum has the members' type (device-varying inside
    # shard_map), not the mean's.
    start = jnp.zeros_like(members[0], dtype=wide)
    total = jax.lax.fori_loop(0, blocks, lambda i, t: t + block_sum(i * rows, rows), start)
    if blocks * rows < n:  # the last n - blocks * rows members
        total = total + block_sum(blocks * rows, n - blocks * rows)
    return total.astype(dtype)


def update_rule(es: Strategy) -> OpenAIESUpdate | None:
    """The :class:`OpenAIESUpdate` of a strategy built by :func:`openai_es` (``None`` otherwise)."""
    return getattr(es.tell, "update_rule", None)


def perturbations(
    key: jax.Array,
    indices: jax.Array,
    num_dims: int,
    population_size: int,
    antithetic: bool,
    dtype=jnp.float32,
) -> jax.Array:
    """Standard-normal noise ``ε_i`` for the members ``indices`` (a function of ``(key, i)``).

    Args:
      key: the generation's key (as passed to ``ask``).
      indices: ``(k,)`` int member indices in ``[0, population_size)``.

    Returns:
      ``(k, num_dims)`` noise; with ``antithetic``, members ``i`` and ``i + n/2`` are mirrored.
    """
    half = population_size // 2
    if antithetic:
        base, sign = indices % half, jnp.where(indices < half, 1.0, -1.0)
    else:
        base, sign = indices, jnp.ones(indices.shape)
    noise = standard_normal(key, (indices.shape[0], num_dims), dtype, rows=base)
    return sign.astype(dtype)[:, None] * noise


def openai_es(
    population_size: int,
    sigma: float = 0.05,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    sigma_decay: float = 1.0,
    sigma_limit: float = 0.0,
    weight_decay: float = 0.0,
    antithetic: bool = True,
    fitness_shaping: str = "centered_ranks",
) -> Strategy:
    """Build OpenAI-ES (Salimans et al. 2017).

    Args:
      population_size: members per generation (>= 2; even when ``antithetic``).
      sigma: initial noise scale ``σ`` (> 0). The default 0.05 suits neural-network weights.
      learning_rate: Adam learning rate when ``optimizer`` is not given (default 0.01).
      optimizer: any optax transformation; it receives the ES gradient estimate.
        To vmap over its learning rate, wrap it with ``optax.inject_hyperparams``.
      sigma_decay: ``σ ← max(σ · sigma_decay, sigma_limit)`` after each generation, in (0, 1].
      sigma_limit: floor for ``σ`` (>= 0).
      weight_decay: ``λ`` in the shaped fitness ``f + λ ||x||²`` (>= 0).
      antithetic: mirrored sampling ``ε_{i+n/2} = -ε_i`` (halves the noise variance of ``g``).
      fitness_shaping: ``"centered_ranks"`` (default), ``"z_score"`` or ``"raw"``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises.

    Example:
      >>> es = openai_es(population_size=64, sigma=0.1, learning_rate=0.05)
      >>> state = es.init(jax.random.key(0), jnp.ones(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size = check_int("population_size", population_size, 2)
    if antithetic and population_size % 2:
        raise ValueError(
            f"population_size must be even when antithetic=True, got {population_size}"
        )
    if fitness_shaping not in FITNESS_SHAPINGS:
        raise ValueError(
            f"fitness_shaping must be one of {FITNESS_SHAPINGS}, got {fitness_shaping!r}"
        )
    if optimizer is not None and learning_rate is not None:
        raise ValueError("learning_rate is only used when optimizer is None; pass one of them")
    if learning_rate is not None:
        check_range("learning_rate", learning_rate, 0.0, None, low_inclusive=False)
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {type(optimizer).__name__}"
        )
    if optimizer is None:
        optimizer = optax.adam(0.01 if learning_rate is None else learning_rate)
    default_params = OpenAIESParams(
        sigma=sigma, sigma_decay=sigma_decay, sigma_limit=sigma_limit, weight_decay=weight_decay
    )
    check_params(default_params, PARAM_RANGES)

    def init(key: jax.Array, x0, params: OpenAIESParams | None = None) -> OpenAIESState:
        del key  # the initial state is deterministic
        params = default_params if params is None else params
        check_params(params, PARAM_RANGES)
        mean, spec = flatten_x0(x0)
        best_solution, best_fitness = init_best(mean)
        return OpenAIESState(
            best_solution=best_solution,
            best_fitness=best_fitness,
            generation=jnp.array(0, jnp.int32),
            spec=spec,
            mean=mean,
            sigma=jnp.asarray(params.sigma, mean.dtype),
            opt_state=optimizer.init(mean),
            params=params_to_arrays(params, mean.dtype),
        )

    def ask(key: jax.Array, state: OpenAIESState) -> tuple[jax.Array, OpenAIESState]:
        dtype = state.mean.dtype
        if antithetic:
            # Draw each mirrored pair's noise once: the same values perturbations() gives for
            # members i and i + n/2, at half the RNG cost.
            half = population_size // 2
            noise = perturbations(
                key, jnp.arange(half), state.num_dims, population_size, antithetic, dtype
            )
            noise = jnp.concatenate([noise, -noise])
        else:
            noise = perturbations(
                key, jnp.arange(population_size), state.num_dims, population_size, antithetic, dtype
            )
        return state.mean + state.sigma * noise, state

    def fitness_weights(
        state: OpenAIESState, fitness: jax.Array, squared_norms: jax.Array
    ) -> jax.Array:
        shaped = shaping.sanitize(fitness) + state.params.weight_decay * squared_norms
        if fitness_shaping == "centered_ranks":
            weights = shaping.centered_ranks(shaped)
        elif fitness_shaping == "z_score":
            weights = shaping.z_score(shaped)
        else:
            finite = jnp.isfinite(shaped)
            worst = jnp.max(jnp.where(finite, shaped, -jnp.inf))
            weights = jnp.where(finite, shaped, jnp.where(jnp.isfinite(worst), worst, 0.0))
        return weights.astype(state.mean.dtype)

    def apply_gradient(state: OpenAIESState, weighted_sum: jax.Array) -> OpenAIESState:
        # g = 1/(nσ) Σ u_i ε_i = Σ u_i (x_i - θ) / (nσ²).
        grad = weighted_sum / (population_size * state.sigma**2)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.mean)
        mean = optax.apply_updates(state.mean, updates)
        sigma = jnp.maximum(state.sigma * state.params.sigma_decay, state.params.sigma_limit)
        return state.replace(
            mean=mean,
            sigma=sigma.astype(state.sigma.dtype),
            opt_state=opt_state,
            generation=state.generation + 1,
        )

    def tell(state: OpenAIESState, population: jax.Array, fitness: jax.Array) -> OpenAIESState:
        fitness = check_fitness(fitness, population_size)
        check_population(population, population_size, state.num_dims)
        weights = fitness_weights(state, fitness, jnp.sum(jnp.square(population), axis=-1))
        # ε_i = (x_i - θ)/σ is recovered from the population, a block of members at a time: no
        # stored noise.
        told = apply_gradient(state, weighted_deviation_sum(weights, population, state.mean))
        return told.replace(**update_best(state, population, fitness))

    tell.update_rule = OpenAIESUpdate(antithetic, fitness_weights, apply_gradient)

    def info(state: OpenAIESState) -> dict:
        return {"sigma": state.sigma}

    return Strategy(
        name="openai_es",
        population_size=population_size,
        default_params=default_params,
        init=init,
        ask=ask,
        tell=tell,
        info=info,
    )
