"""OpenAI-ES: natural evolution strategies with a fixed isotropic search distribution.

Reference: Salimans, Ho, Chen, Sidor & Sutskever, "Evolution Strategies as a Scalable Alternative
to Reinforcement Learning", 2017, arXiv:1703.03864.

Each generation samples ``n = population_size`` members around the mean ``θ``::

    x_i = θ + σ ε_i,        ε_i ~ N(0, I)           (antithetic: ε_{i + n/2} = -ε_i)

and estimates the gradient of the Gaussian-smoothed objective ``E[f(θ + σ ε)]`` as::

    g = 1 / (n σ) Σ_i u_i ε_i,     u = centered_ranks(f + λ ||x||²)

where ``λ`` is ``weight_decay``. ``g`` is handed to an optax optimizer (default Adam), which
*descends* it, so the strategy minimises ``f``. ``σ`` decays geometrically to ``sigma_limit``.

Noise and memory. Member ``i``'s noise is row ``i mod n/2`` of
:func:`esjax.prng.member_normals` under the generation's key (negated for the mirrored half), a
function of ``(key, i)`` alone. No noise is stored: the update recovers ``ε_i = (x_i - θ) / σ``
from the members, so the only ``(population_size, num_dims)`` array alive in a generation is the
population itself, and the state holds O(num_dims) memory (mean, optimizer moments, best).

The strategy declares its sharded decomposition (:class:`esjax.base.Decomposition`): members
from ``(key, i)``, weights from the whole generation's fitness (and ``‖x_i‖²`` for weight decay),
the one sum ``Σ_i u_i (x_i - θ)``, and the optimizer step from that sum. A sharded run therefore
moves only fitness values and one ``(num_dims,)`` sum between devices (Salimans et al.'s
shared-seed idea).

Noise table. With ``noise=esjax.prng.NoiseTable(...)`` member ``i``'s ``ε_i`` is a slice of that
shared Gaussian table at an offset drawn from ``(key, i)`` (Salimans et al.'s noise table, read
from memory instead of computed); the default ``noise=None`` draws Threefry normals as above.
When the generation's ``n/2`` antithetic rows fit the table as one block (``n/2 · num_dims <=
size``), they are consecutive, disjoint slices from one start drawn from the key (the table's
block layout): ``ask`` reads them with one contiguous slice, the sharded ``sample`` member by
member, and both give the same rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
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
from esjax.prng import NoiseTable, member_normals

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


def weighted_deviation_sum(
    weights: jax.Array, members: jax.Array, mean: jax.Array, num_chunks: int = 8
) -> jax.Array:
    """``Σ_i w_i (x_i - θ)``, one block of ``⌈n / num_chunks⌉`` members at a time.

    Forming all the deviations ``x_i - θ`` at once would hold a second population-sized array;
    a block at a time the working set is the population plus ``1/num_chunks`` of it, and each
    block is one matrix-vector product. Subtracting ``θ`` before the product (not ``Σ w_i θ``
    after it) keeps the precision of ``σ ε_i`` when ``|θ| >> σ``; the block sums are added in
    float32 or wider and rounded to the result's dtype once.

    A member of weight exactly zero adds nothing even when its row holds inf or NaN (its
    deviation is taken as zero, fused into the subtraction), so the strategies that sum with
    this function declare ``needs_finite_rows=False`` and ``tell`` skips the masked copy.
    """
    dtype = jnp.result_type(weights, members, mean)
    n = members.shape[0]
    rows = -(-n // num_chunks)
    wide = jnp.promote_types(dtype, jnp.float32)

    def block_sum(first, count):
        block = jax.lax.dynamic_slice_in_dim(members, first, count)
        block_weights = jax.lax.dynamic_slice_in_dim(weights, first, count)
        deviations = jnp.where((block_weights != 0)[:, None], block - mean, jnp.zeros((), dtype))
        return jnp.matmul(block_weights, deviations, preferred_element_type=wide)

    if rows >= n:  # one member (or one chunk)
        return block_sum(0, n).astype(dtype)
    blocks = n // rows

    # Zeros shaped like a member, so the sum has the members' type (device-varying inside
    # shard_map), not the mean's.
    start = jnp.zeros_like(members[0], dtype=wide)
    total = jax.lax.fori_loop(0, blocks, lambda i, t: t + block_sum(i * rows, rows), start)
    if blocks * rows < n:  # the last n - blocks * rows members
        total = total + block_sum(blocks * rows, n - blocks * rows)
    return total.astype(dtype)


def distinct_rows(population_size: int, antithetic: bool) -> int:
    """The noise rows a generation draws: ``n/2`` mirrored pairs, or ``n`` (a table's block)."""
    return population_size // 2 if antithetic else population_size


def perturbations(
    key: jax.Array,
    indices: jax.Array,
    num_dims: int,
    population_size: int,
    antithetic: bool,
    dtype=jnp.float32,
    table: NoiseTable | None = None,
) -> jax.Array:
    """Standard-normal noise ``ε_i`` for the members ``indices`` (a function of ``(key, i)``).

    Args:
      key: the generation's key (as passed to ``ask``).
      indices: ``(k,)`` int member indices in ``[0, population_size)``.
      table: read the noise from this :class:`~esjax.prng.NoiseTable` instead of generating it.

    Returns:
      ``(k, num_dims)`` noise; with ``antithetic``, members ``i`` and ``i + n/2`` are mirrored.
    """
    half = population_size // 2
    if antithetic:
        base, sign = indices % half, jnp.where(indices < half, 1.0, -1.0)
    else:
        base, sign = indices, jnp.ones(indices.shape)
    rows = distinct_rows(population_size, antithetic)  # the table's block layout
    noise = member_normals(key, base, num_dims, dtype, table, rows)
    return sign.astype(dtype)[:, None] * noise


def check_estimator_arguments(
    population_size: int,
    learning_rate: float | None,
    optimizer: optax.GradientTransformation | None,
    antithetic: bool,
    fitness_shaping: str,
    noise: NoiseTable | None,
) -> tuple[int, optax.GradientTransformation]:
    """The argument checks OpenAI-ES and the strategies built on its estimator share (low-rank
    ES); returns the checked population size and the optimizer (Adam by default)."""
    population_size = check_int("population_size", population_size, 2)
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic must be True or False, got {antithetic!r}")
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
    if noise is not None and not isinstance(noise, NoiseTable):
        raise TypeError(
            f"noise must be None or an esjax.prng.NoiseTable, got {type(noise).__name__}"
        )
    if optimizer is None:
        optimizer = optax.adam(0.01 if learning_rate is None else learning_rate)
    return population_size, optimizer


def shaped_fitness(fitness: jax.Array, fitness_shaping: str, dtype) -> jax.Array:
    """Fitness (NaN made +inf by :func:`esjax.shaping.sanitize` already, penalties added) shaped
    into the estimator's weights ``u_i``: centred ranks, z-scores, or raw values with the
    non-finite ones set to the worst finite value (0 when none is finite)."""
    if fitness_shaping == "centered_ranks":
        shaped = shaping.centered_ranks(fitness)
    elif fitness_shaping == "z_score":
        shaped = shaping.z_score(fitness)
    else:
        finite = jnp.isfinite(fitness)
        worst = jnp.max(jnp.where(finite, fitness, -jnp.inf))
        shaped = jnp.where(finite, fitness, jnp.where(jnp.isfinite(worst), worst, 0.0))
    return shaped.astype(dtype)


def estimator_step(optimizer: optax.GradientTransformation, population_size: int):
    """The update ``apply(state, weighted_sum, fitness)`` OpenAI-ES and the strategies built on
    its estimator share (low-rank ES): the gradient estimate
    ``g = 1/(nσ) Σ u_i ε_i = Σ u_i (x_i - θ) / (nσ²)`` from the weighted sum, one optimizer
    step on the mean, and ``σ ← max(σ · sigma_decay, sigma_limit)``. The state needs ``mean``,
    ``sigma``, ``opt_state`` and ``params.sigma_decay`` / ``params.sigma_limit``."""

    def apply(state, weighted_sum: jax.Array, fitness: jax.Array):
        del fitness  # the weights already hold it
        grad = weighted_sum / (population_size * state.sigma**2)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.mean)
        sigma = jnp.maximum(state.sigma * state.params.sigma_decay, state.params.sigma_limit)
        return state.replace(
            mean=optax.apply_updates(state.mean, updates),
            sigma=sigma.astype(state.sigma.dtype),
            opt_state=opt_state,
        )

    return apply


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
    noise: NoiseTable | None = None,
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
      noise: ``None`` (default) generates each member's normals from ``(key, i)``; an
        :class:`esjax.prng.NoiseTable` reads them as slices of that shared table (faster where
        drawing normals dominates a generation; see the table for its memory and overlap).

    Returns:
      A :class:`~esjax.base.Strategy` that minimises.

    Example:
      >>> es = openai_es(population_size=64, sigma=0.1, learning_rate=0.05)
      >>> state = es.init(jax.random.key(0), jnp.ones(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size, optimizer = check_estimator_arguments(
        population_size, learning_rate, optimizer, antithetic, fitness_shaping, noise
    )
    table = noise

    def init(key: jax.Array, mean: jax.Array, params: OpenAIESParams) -> dict:
        del key  # the initial state is deterministic
        return {"mean": mean, "sigma": params.sigma, "opt_state": optimizer.init(mean)}

    def sample(key: jax.Array, state: OpenAIESState, indices: jax.Array) -> jax.Array:
        noise = perturbations(
            key, indices, state.num_dims, population_size, antithetic, state.mean.dtype, table
        )
        return state.mean + state.sigma * noise

    def ask(key: jax.Array, state: OpenAIESState) -> tuple[jax.Array, OpenAIESState]:
        rows = distinct_rows(population_size, antithetic)
        if table is not None and table.fits(rows, state.num_dims):
            # The draw as one contiguous block of the table (the rows sample() gives members
            # 0 … rows - 1). Mirrored by broadcasting against the signs (+1, -1) and folding
            # the leading axis: a concatenation would keep XLA from fusing the read.
            noise = table.block(key, rows, state.num_dims, state.mean.dtype)
            if antithetic:
                signs = jnp.array([1.0, -1.0], noise.dtype)[:, None, None]
                noise = (signs * noise[None]).reshape(population_size, state.num_dims)
            return state.mean + state.sigma * noise, state
        if not antithetic or table is not None:
            # A table slice is read, not computed: reading each mirrored pair's slice twice is
            # cheaper than concatenating (XLA's CPU backend fuses a gather into a
            # concatenation as a slow element-wise loop: 5x slower at 1,024 x 10k).
            return sample(key, state, jnp.arange(population_size)), state
        # Each mirrored pair's noise drawn once: the rows sample() gives members i and i + n/2.
        half = population_size // 2
        noise = perturbations(
            key, jnp.arange(half), state.num_dims, population_size, True, state.mean.dtype, table
        )
        return state.mean + state.sigma * jnp.concatenate([noise, -noise]), state

    def squared_norms(state: OpenAIESState, members: jax.Array) -> jax.Array:
        return jnp.sum(jnp.square(members), axis=-1)

    def weights(state: OpenAIESState, fitness: jax.Array, norms: jax.Array) -> jax.Array:
        penalised = shaping.sanitize(fitness) + state.params.weight_decay * norms
        return shaped_fitness(penalised, fitness_shaping, state.mean.dtype)

    def statistics(state: OpenAIESState, members: jax.Array, weights: jax.Array) -> jax.Array:
        # Σ u_i (x_i - θ) = σ Σ u_i ε_i, a block of members at a time: no stored noise.
        return weighted_deviation_sum(weights, members, state.mean)

    apply = estimator_step(optimizer, population_size)

    return make_strategy(
        name="openai_es",
        population_size=population_size,
        default_params=OpenAIESParams(
            sigma=sigma, sigma_decay=sigma_decay, sigma_limit=sigma_limit, weight_decay=weight_decay
        ),
        param_checks=PARAM_RANGES,
        state_type=OpenAIESState,
        init=init,
        ask=ask,
        info=lambda state: {"sigma": state.sigma},
        capabilities=Capabilities(
            decomposition=Decomposition(
                sample, weights, statistics, apply, squared_norms, needs_finite_rows=False
            )
        ),
    )


__all__ = [
    "check_estimator_arguments",
    "distinct_rows",
    "estimator_step",
    "shaped_fitness",
    "OpenAIESParams",
    "OpenAIESState",
    "openai_es",
    "perturbations",
    "weighted_deviation_sum",
]
