"""PGPE: policy gradients with parameter-based exploration, symmetric sampling and ClipUp.

References: F. Sehnke, C. Osendorfer, T. Rückstieß, A. Graves, J. Peters & J. Schmidhuber,
"Parameter-exploring policy gradients", Neural Networks 23(4), 2010 (the estimator, symmetric
sampling and the per-coordinate σ update); N. E. Toklu, P. Liskowski & R. K. Srivastava,
"ClipUp: A Simple and Powerful Optimizer for Distribution-based Policy Evolution", PPSN 2020,
arXiv:2008.02387 (the optimizer of the centre).

The search distribution is ``N(μ, diag(σ²))`` with one ``σ_j`` per coordinate. Symmetric
sampling draws ``p = n/2`` directions and evaluates both ends of each (``n = population_size``)::

    ε_j = σ ⊙ z_j,   z_j ~ N(0, I),      x_j⁺ = μ + ε_j,   x_j⁻ = μ - ε_j

With ``u`` the shaped fitness (lower is better) and ``b`` its mean over the generation (the
baseline), the symmetric-sampling gradients of the expected shaped fitness are (Sehnke et al.'s
symmetric sampling, with the likelihood gradients' ``1/σ²`` factors absorbed as there, which
makes them natural gradients up to a constant factor)::

    g_μ = 1/p Σ_j (u_j⁺ - u_j⁻)/2 · ε_j
    g_σ = 1/p Σ_j ((u_j⁺ + u_j⁻)/2 - b) · (ε_j² - σ²) / σ        (per coordinate)

The paper normalises rewards by the best one seen; here ``fitness_shaping`` picks centred ranks
(the default, as EvoJAX and evotorch run PGPE), z-scores or the raw fitness. The centre descends
``g_μ`` with ClipUp (default) or any optax optimizer; ``σ`` descends ``g_σ`` with rate
``sigma_learning_rate``, each coordinate's change clipped to ``sigma_max_change`` of its value::

    σ ← clip(σ - η_σ g_σ, (1 - c) σ, (1 + c) σ)

ClipUp (Toklu et al.) takes a step of fixed length ``α = center_learning_rate`` in
the gradient's direction, with heavy-ball momentum ``m`` and a speed limit ``v_max``::

    v ← m v + α g_μ / ‖g_μ‖,    v ← v · min(1, v_max / ‖v‖),    μ ← μ - v

Its authors advise ``v_max = 2 α`` (the default) and ``m = 0.9``. The default ``α = 0.1`` and
``σ = 0.1`` suit network weights of order one (``tests/test_pgpe.py`` trains a digits MLP).

Sharded decomposition. Member ``i < p`` is ``μ + σ ⊙ z_i`` and member ``i + p`` its mirror, with
``z_i`` row ``i`` of :func:`esjax.prng.member_normals` (as :func:`esjax.openai_es` draws it). Both
gradients are sums over members of one per-member weight ``w_i = u_i - b`` times a statistic of
``d_i = x_i - μ`` alone: with ``d`` equal to ``+ε_j`` and ``-ε_j`` for a pair::

    Σ_i w_i d_i = Σ_j (u_j⁺ - u_j⁻) ε_j
    Σ_i w_i (d_i² - σ²) = Σ_j (u_j⁺ + u_j⁻ - 2b)(ε_j² - σ²)

(the baseline cancels in the first sum), so ``g_μ = Σ_i w_i d_i / n`` and
``g_σ = Σ_i w_i (d_i² - σ²) / (n σ)``. A sharded run exchanges the fitness and these two
``(num_dims,)`` sums, never the population. Non-finite fitness ranks worst (``raw`` and
``z_score``: the worst finite value), and a member whose row was not finite gets ``w_i = 0``,
which makes its half of the pair count as the baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from esjax import shaping
from esjax.base import (
    Capabilities,
    Decomposition,
    PyTree,
    Strategy,
    StrategyState,
    check_int,
    make_strategy,
)
from esjax.strategies.openai_es import perturbations

FITNESS_SHAPINGS = ("centered_ranks", "z_score", "raw")


@struct.dataclass
class PGPEParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    Attributes:
      sigma: initial standard deviation of every coordinate (> 0).
      center_learning_rate: ClipUp's step length ``α`` (> 0; unused with an optax optimizer).
      max_speed: ClipUp's speed limit ``v_max`` (> 0); ``None`` means ``2 α``.
      momentum: ClipUp's momentum ``m`` in [0, 1).
      sigma_learning_rate: ``η_σ``, the rate of the σ update (>= 0; 0 keeps σ fixed).
      sigma_max_change: the largest relative change of a ``σ_j`` per generation, in [0, 1).
    """

    sigma: float | jax.Array
    center_learning_rate: float | jax.Array
    max_speed: float | jax.Array | None
    momentum: float | jax.Array
    sigma_learning_rate: float | jax.Array
    sigma_max_change: float | jax.Array


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "center_learning_rate": (0.0, None, False, True),
    "max_speed": (0.0, None, False, True),
    "momentum": (0.0, 1.0, True, False),
    "sigma_learning_rate": (0.0, None),
    "sigma_max_change": (0.0, 1.0, True, False),
}


@struct.dataclass
class PGPEState(StrategyState):
    """PGPE state.

    Attributes:
      mean: ``(num_dims,)`` the centre ``μ``.
      sigma: ``(num_dims,)`` per-coordinate standard deviations ``σ``.
      opt_state: ClipUp's velocity ``v`` (``(num_dims,)``), or the optax optimizer's state.
    """

    mean: jax.Array
    sigma: jax.Array
    opt_state: PyTree
    params: PGPEParams


def member_sums(
    fn: Callable[[jax.Array, jax.Array], PyTree],
    members: jax.Array,
    weights: jax.Array,
    num_chunks: int = 8,
    fill: jax.Array | None = None,
) -> PyTree:
    """``Σ`` over blocks of ``⌈k / num_chunks⌉`` members of ``fn(block, block_weights)``.

    ``fn`` returns a pytree of sums over its block. A block at a time, the temporaries ``fn``
    forms (deviations, their squares) are ``1/num_chunks`` of the population, not a second
    population-sized array. The first block starts the sum, so the total has the members' type
    (device-varying inside ``shard_map``).

    With ``fill`` (a finite ``(num_dims,)`` row, e.g. the mean), the rows of weight exactly zero
    reach ``fn`` as ``fill`` (fused into the block's read): a zero-weight row then adds nothing
    even when it holds inf or NaN, so a strategy summing with it can declare
    ``needs_finite_rows=False`` (``fn`` must give a row of weight zero a zero sum).
    """
    count = members.shape[0]
    rows = -(-count // num_chunks)

    def block(first, size):
        block_members = jax.lax.dynamic_slice_in_dim(members, first, size)
        block_weights = jax.lax.dynamic_slice_in_dim(weights, first, size)
        if fill is not None:
            block_members = jnp.where((block_weights != 0)[:, None], block_members, fill)
        return fn(block_members, block_weights)

    if rows >= count:
        return block(0, count)
    blocks = count // rows

    def add(total, more):
        return jax.tree_util.tree_map(jnp.add, total, more)

    total = jax.lax.fori_loop(1, blocks, lambda i, t: add(t, block(i * rows, rows)), block(0, rows))
    if blocks * rows < count:  # the last count - blocks * rows members
        total = add(total, block(blocks * rows, count - blocks * rows))
    return total


def shape_fitness(fitness: jax.Array, kind: str) -> jax.Array:
    """Shaped fitness, lower is better: centred ranks, z-scores or raw values.

    Non-finite entries rank worst (``centered_ranks``) or take the worst finite score; a
    generation without a finite entry shapes to zeros.
    """
    if kind == "centered_ranks":
        return shaping.centered_ranks(fitness)
    if kind == "z_score":
        return shaping.z_score(fitness)
    finite = jnp.isfinite(fitness)
    worst = jnp.max(jnp.where(finite, fitness, -jnp.inf))
    return jnp.where(finite, fitness, jnp.where(jnp.isfinite(worst), worst, 0.0))


def scaled_norm(vector: jax.Array) -> jax.Array:
    """``‖v‖`` as ``s ‖v / s‖`` with ``s = max |v_i|``, so the sum of squares cannot overflow
    (raw-fitness gradients can be huge); 0 for a zero vector."""
    scale = jnp.max(jnp.abs(vector))
    scale = jnp.where(scale > 0, scale, 1)
    return scale * jnp.sqrt(jnp.sum(jnp.square(vector / scale)))


def clipup_step(
    velocity: jax.Array,
    gradient: jax.Array,
    learning_rate: jax.Array,
    momentum: jax.Array,
    max_speed: jax.Array,
) -> jax.Array:
    """ClipUp's new velocity (Toklu et al. 2020): ``m v + α g/‖g‖``, clipped to ``v_max``.

    A zero gradient (a generation without information, e.g. all fitness tied) adds nothing,
    rather than 0/0.
    """
    norm = scaled_norm(gradient)
    velocity = momentum * velocity + learning_rate * gradient / jnp.where(norm > 0, norm, 1)
    speed = scaled_norm(velocity)
    return velocity * jnp.minimum(1, max_speed / jnp.where(speed > 0, speed, 1))


def pgpe(
    population_size: int,
    sigma: float = 0.1,
    center_learning_rate: float = 0.1,
    max_speed: float | None = None,
    momentum: float = 0.9,
    sigma_learning_rate: float = 0.1,
    sigma_max_change: float = 0.2,
    optimizer: optax.GradientTransformation | None = None,
    fitness_shaping: str = "centered_ranks",
) -> Strategy:
    """Build PGPE with symmetric sampling (Sehnke et al. 2010) and ClipUp (Toklu et al. 2020).

    Args:
      population_size: members per generation: ``n/2`` mirrored pairs (even, >= 2).
      sigma: initial standard deviation of every coordinate (> 0). 0.1 suits network weights.
      center_learning_rate: ClipUp's step length ``α`` (> 0).
      max_speed: ClipUp's speed limit (> 0); default ``2 α`` (Toklu et al.'s advice).
      momentum: ClipUp's momentum, in [0, 1).
      sigma_learning_rate: rate of the σ update (>= 0).
      sigma_max_change: largest relative change of each ``σ_j`` per generation, in [0, 1).
      optimizer: an optax transformation to use for the centre instead of ClipUp; it receives
        ``g_μ`` (and descends it). ``center_learning_rate``, ``max_speed`` and ``momentum`` are
        then unused.
      fitness_shaping: ``"centered_ranks"`` (default), ``"z_score"`` or ``"raw"``.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises, with a sharded decomposition (members from
      ``(key, i)``, the update from two ``(num_dims,)`` sums).

    Example:
      >>> es = pgpe(population_size=64, sigma=0.1, center_learning_rate=0.05)
      >>> state = es.init(jax.random.key(0), jnp.ones(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size = check_int("population_size", population_size, 2)
    if population_size % 2:
        raise ValueError(
            f"population_size must be even (mirrored pairs for symmetric sampling), got "
            f"{population_size}"
        )
    if fitness_shaping not in FITNESS_SHAPINGS:
        raise ValueError(
            f"fitness_shaping must be one of {FITNESS_SHAPINGS}, got {fitness_shaping!r}"
        )
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-2)) or None "
            f"for ClipUp, got {type(optimizer).__name__}"
        )
    half = population_size // 2

    def resolve(params: PGPEParams, num_dims: int) -> PGPEParams:
        del num_dims  # no default depends on the dimension
        if params.max_speed is None:
            return params.replace(max_speed=2 * params.center_learning_rate)
        return params

    def init(key: jax.Array, mean: jax.Array, params: PGPEParams) -> dict:
        del key  # the initial state is deterministic
        opt_state = jnp.zeros_like(mean) if optimizer is None else optimizer.init(mean)
        return {
            "mean": mean,
            "sigma": jnp.full_like(mean, params.sigma),
            "opt_state": opt_state,
        }

    def sample(key: jax.Array, state: PGPEState, indices: jax.Array) -> jax.Array:
        noise = perturbations(key, indices, state.num_dims, population_size, True, state.mean.dtype)
        return state.mean + state.sigma * noise

    def ask(key: jax.Array, state: PGPEState) -> tuple[jax.Array, PGPEState]:
        # Each pair's noise drawn once: the rows sample() gives members i and i + n/2.
        noise = perturbations(
            key, jnp.arange(half), state.num_dims, population_size, True, state.mean.dtype
        )
        steps = state.sigma * noise
        return jnp.concatenate([state.mean + steps, state.mean - steps]), state

    def weights(state: PGPEState, fitness: jax.Array, scalars: None) -> jax.Array:
        shaped = shape_fitness(fitness, fitness_shaping)
        return (shaped - jnp.mean(shaped)).astype(state.mean.dtype)  # w_i = u_i - b

    def statistics(state: PGPEState, members: jax.Array, weights: jax.Array) -> dict:
        variance = jnp.square(state.sigma)

        def block_sums(block, block_weights):
            deviations = block - state.mean  # ±ε_j, exact to the rounding of x_i
            return {
                "center": block_weights @ deviations,
                "spread": block_weights @ (jnp.square(deviations) - variance),
            }

        return member_sums(block_sums, members, weights, fill=state.mean)

    def apply(state: PGPEState, totals: dict, fitness: jax.Array) -> PGPEState:
        params = state.params
        grad_center = totals["center"] / population_size
        grad_sigma = totals["spread"] / (population_size * state.sigma)
        if optimizer is None:
            velocity = clipup_step(
                state.opt_state,
                grad_center,
                params.center_learning_rate,
                params.momentum,
                params.max_speed,
            )
            mean, opt_state = state.mean - velocity, velocity
        else:
            updates, opt_state = optimizer.update(grad_center, state.opt_state, state.mean)
            mean = optax.apply_updates(state.mean, updates)
        change = params.sigma_max_change * state.sigma
        sigma = jnp.clip(
            state.sigma - params.sigma_learning_rate * grad_sigma,
            state.sigma - change,
            state.sigma + change,
        )
        # Kept normal (not subnormal, not zero) so that (d² - σ²)/σ stays defined after a long
        # convergence, and below sqrt(max) so that σ² stays finite.
        info = jnp.finfo(sigma.dtype)
        sigma = jnp.clip(sigma, info.tiny, jnp.sqrt(info.max))
        return state.replace(mean=mean.astype(state.mean.dtype), sigma=sigma, opt_state=opt_state)

    def info(state: PGPEState) -> dict:
        return {
            "sigma_mean": jnp.mean(state.sigma),
            "sigma_min": jnp.min(state.sigma),
            "sigma_max": jnp.max(state.sigma),
        }

    return make_strategy(
        name="pgpe",
        population_size=population_size,
        default_params=PGPEParams(
            sigma=sigma,
            center_learning_rate=center_learning_rate,
            max_speed=max_speed,
            momentum=momentum,
            sigma_learning_rate=sigma_learning_rate,
            sigma_max_change=sigma_max_change,
        ),
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=PGPEState,
        init=init,
        ask=ask,
        info=info,
        capabilities=Capabilities(
            decomposition=Decomposition(sample, weights, statistics, apply, needs_finite_rows=False)
        ),
    )


__all__ = [
    "FITNESS_SHAPINGS",
    "PGPEParams",
    "PGPEState",
    "clipup_step",
    "member_sums",
    "pgpe",
    "scaled_norm",
    "shape_fitness",
]
