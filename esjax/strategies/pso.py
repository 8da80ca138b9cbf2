"""Particle swarm optimisation: Standard PSO 2011 (SPSO-2011), population-parallel.

References: Zambrano-Bigiarini, Clerc & Rojas, "Standard Particle Swarm Optimisation 2011 at
CEC-2013: A baseline for future PSO improvements", IEEE CEC 2013, doi:10.1109/CEC.2013.6557848;
Clerc, "Standard Particle Swarm Optimisation", technical report, 2012, hal-00764996; Kennedy &
Eberhart, "Particle swarm optimization", ICNN 1995, and Shi & Eberhart, "A modified particle swarm
optimizer", 1998 (the classic inertia-weight update); Kennedy & Mendes, "Population structure and
particle swarm performance", CEC 2002 (the ring topology).

Particle ``i`` has position ``x_i``, velocity ``v_i``, personal best ``p_i`` and the best personal
best ``l_i`` among its informants (the topology). With ``w = inertia``, ``c1 = cognitive``,
``c2 = social`` and ``U1, U2 ~ U(0, 1)^d`` drawn **per particle and per dimension** (``⊙`` is the
elementwise product), SPSO-2011 (``update="spso2011"``, the default) moves each particle by::

    p'_i = x_i + c1 U1 ⊙ (p_i - x_i)          a point a little beyond p_i
    l'_i = x_i + c2 U2 ⊙ (l_i - x_i)          a point a little beyond l_i
    G_i  = (x_i + p'_i + l'_i) / 3            (G_i = (x_i + p'_i) / 2 when l_i is p_i itself)
    x'_i ~ H(G_i, ||G_i - x_i||)              a random point in the hypersphere around G_i
    v_i  ← w v_i + x'_i - x_i
    x_i  ← x_i + v_i

The hypersphere point is ``G_i + ρ ||G_i - x_i|| z / ||z||`` with ``z ~ N(0, I_d)`` and
``ρ ~ U(0, 1)``, the radius law of Clerc's reference implementation. In expectation ``G_i`` is
``x_i + c (p_i + l_i - 2 x_i) / 3``, the form often quoted for SPSO-2011; drawing ``U1, U2`` per
dimension, as the 2013 paper and the reference code do, is what makes the swarm explore each
coordinate separately. ``update="classic"`` is the SPSO-2006-style rule
``v_i ← w v_i + c1 U1 ⊙ (p_i - x_i) + c2 U2 ⊙ (l_i - x_i)`` with the same constants.
Defaults: ``w = 1 / (2 ln 2) ≈ 0.721``, ``c1 = c2 = 0.5 + ln 2 ≈ 1.193``.

Topologies: ``"global"`` (every particle informs every other) and ``"ring"`` (lbest: particle
``i`` is informed by itself and the ``num_neighbors / 2`` particles on each side, indices mod
``n``). SPSO-2011's adaptive random topology is not implemented. Velocities are clipped to
``[-max_velocity, max_velocity]`` per coordinate when ``max_velocity > 0``.

Bounds (``lower_bound``/``upper_bound``). The initial swarm is ``x_i ~ U(lower, upper)`` and
``v_i ~ U(lower - x_i, upper - x_i)`` as SPSO-2011 specifies; a coordinate that leaves the box is
put back either by ``"clip"`` (SPSO-2011's confinement: ``x = bound``, ``v ← -0.5 v``) or by
``"reflect"`` (mirrored in the violated bound, ``v ← -v``); ``x0`` then only fixes the dimension
and pytree structure. Without bounds the same rule draws the swarm in the box
``x0 ± init_spread`` and positions are never confined.

Ask and tell. ``init`` needs no evaluated population: the first ``ask`` returns the initial swarm
and the first ``tell`` sets the personal bests; every later ``ask`` moves the swarm. Non-finite
fitness never becomes a personal best, so it never enters a velocity.

Randomness. A move draws ``3 d + 1`` numbers per particle (``U1, U2, z, ρ``). In float32,
``U1`` and ``U2`` are the two words of one Threefry block and ``z`` the first word of another
(:func:`~esjax.prng.random_pairs`); ``z``'s second word is left unused. (Float64 draws 64-bit
words with :func:`~esjax.prng.random_bits`.) All of them are a function of the key given
to ``ask`` alone (so every device of a sharded run draws the same swarm); ``z`` is ``erf⁻¹`` of
a uniform on the open interval ``(-1, 1)``, a normal up to the factor ``√2`` that ``z / ||z||``
drops. ``coefficients="per_particle"`` shares ``U1, U2`` across a particle's coordinates (see
:func:`pso`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from esjax import shaping
from esjax.base import Capabilities, Strategy, StrategyState, check_int, make_strategy
from esjax.bounds import bounds_like, check_bounds
from esjax.prng import (
    float_bits_type,
    random_bits,
    random_pairs,
    symmetric_from_bits,
    uniform_from_bits,
)

TOPOLOGIES = ("global", "ring")
UPDATES = ("spso2011", "classic")
COEFFICIENTS = ("per_dimension", "per_particle")
BOUNDS_HANDLING = ("clip", "reflect")


@struct.dataclass
class PSOParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over). Their defaults are
    :func:`pso`'s arguments: start from ``es.default_params``.

    Attributes:
      inertia: ``w`` (>= 0).
      cognitive: ``c1``, pull towards the particle's own best (>= 0).
      social: ``c2``, pull towards the informants' best (>= 0).
      max_velocity: per-coordinate velocity clamp (>= 0; 0: no clamping).
      init_spread: half-width of the initial box around ``x0`` when no bounds are given (> 0).
    """

    inertia: float | jax.Array
    cognitive: float | jax.Array
    social: float | jax.Array
    max_velocity: float | jax.Array
    init_spread: float | jax.Array


PARAM_RANGES = {
    "inertia": (0.0, None),
    "cognitive": (0.0, None),
    "social": (0.0, None),
    "max_velocity": (0.0, None),
    "init_spread": (0.0, None, False, True),
}


@struct.dataclass
class PSOState(StrategyState):
    """Swarm state.

    Attributes:
      positions: ``(population_size, num_dims)`` current positions ``x_i``.
      velocities: ``(population_size, num_dims)`` velocities ``v_i``.
      personal_best: ``(population_size, num_dims)`` personal bests ``p_i``.
      personal_best_fitness: ``(population_size,)`` their fitness (the largest finite float
        until a finite fitness is told).
    """

    positions: jax.Array
    velocities: jax.Array
    personal_best: jax.Array
    personal_best_fitness: jax.Array
    params: PSOParams


def informant_best(
    personal_best_fitness: jax.Array, topology: str, num_neighbors: int
) -> jax.Array:
    """Index ``l(i)`` of the best personal best among particle ``i``'s informants (itself too).

    Ties go to the lowest index for ``"global"`` and to the first informant in ring order
    ``i - k/2, ..., i + k/2`` for ``"ring"``; non-finite fitness counts as worst.
    """
    fitness = shaping.sanitize(personal_best_fitness)
    n = fitness.shape[0]
    if topology == "global":
        return jnp.full((n,), jnp.argmin(fitness))
    half = num_neighbors // 2
    informants = (jnp.arange(n)[:, None] + jnp.arange(-half, half + 1)[None, :]) % n
    return jnp.take_along_axis(informants, jnp.argmin(fitness[informants], axis=1)[:, None], 1)[
        :, 0
    ]


def swarm_draws(
    key: jax.Array,
    population_size: int,
    num_dims: int,
    dtype=jnp.float32,
    coefficients: str = "per_dimension",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The whole swarm's random numbers for one move, a function of ``key`` alone.

    Returns:
      ``U1, U2`` (uniforms on ``[0, 1)``: ``(population_size, num_dims)`` for
      ``coefficients="per_dimension"``, ``(population_size, 1)`` for ``"per_particle"``),
      ``z`` (``(population_size, num_dims)``, each row a normal vector up to a common scale: its
      direction ``z / ||z||`` is uniform on the sphere) and ``ρ`` (``(population_size,)``
      uniforms on ``[0, 1)``, the radius fractions).
    """
    if coefficients not in COEFFICIENTS:
        raise ValueError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
    uint, wide, _ = float_bits_type(dtype)
    coefficient_key, direction_key, radius_key = jax.random.split(key, 3)
    shape = (population_size, num_dims)
    coefficient_shape = shape if coefficients == "per_dimension" else (population_size, 1)
    if uint == jnp.uint32:
        # U1 and U2 are the two words of one block, z the first word of another (see the module
        # docstring, "Randomness").
        bits_u1, bits_u2 = random_pairs(coefficient_key, coefficient_shape)
        bits_z = random_pairs(direction_key, shape)[0]
    else:
        bits_u1, bits_u2 = random_bits(coefficient_key, (2, *coefficient_shape), uint)
        bits_z = random_bits(direction_key, shape, uint)
    # erf⁻¹(s) for s ~ U(-1, 1) is N(0, 1/2) (the normal's inverse CDF up to √2, which the
    # direction does not see); erf⁻¹ is cheaper than ndtri.
    # (In float32 or float64, then cast: a bfloat16 s would round to ±1 and z to ±inf.)
    z = jax.lax.erf_inv(symmetric_from_bits(bits_z, wide)).astype(dtype)
    rho = jax.random.uniform(radius_key, (population_size,), dtype)
    return uniform_from_bits(bits_u1, dtype), uniform_from_bits(bits_u2, dtype), z, rho


def reflect_into(x: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """Mirror ``x`` into ``[lower, upper]`` (repeatedly, for steps longer than the box)."""
    width = upper - lower
    folded = jnp.mod(x - lower, 2 * width)
    return lower + width - jnp.abs(folded - width)


def pso(
    population_size: int,
    topology: str = "ring",
    num_neighbors: int = 2,
    update: str = "spso2011",
    coefficients: str = "per_dimension",
    inertia: float = 1.0 / (2.0 * math.log(2.0)),
    cognitive: float = 0.5 + math.log(2.0),
    social: float = 0.5 + math.log(2.0),
    max_velocity: float = 0.0,
    lower_bound: float | list[float] | None = None,
    upper_bound: float | list[float] | None = None,
    bounds_handling: str = "clip",
    init_spread: float = 1.0,
) -> Strategy:
    """Build Standard PSO 2011 (Zambrano-Bigiarini, Clerc & Rojas 2013).

    Args:
      population_size: swarm size ``n`` (>= 2; SPSO-2011 suggests 40).
      topology: ``"ring"`` (lbest, default: slower but more robust on multimodal problems) or
        ``"global"`` (gbest).
      num_neighbors: informants per particle besides itself in the ring (even, >= 2, < n).
      update: ``"spso2011"`` (hypersphere around the centre of gravity, default) or
        ``"classic"`` (per-dimension inertia-weight update).
      coefficients: ``"per_dimension"`` (``U1, U2`` drawn for every coordinate, as SPSO-2011
        specifies; default) or ``"per_particle"`` (one ``U1`` and one ``U2`` per particle, shared
        by its coordinates: "linear" PSO). Choose ``"per_particle"`` when the update should be
        invariant to rotations of the search space: per-dimension coefficients move each
        coordinate separately and so favour the coordinate axes, while shared ones scale the
        whole attractor directions (bounds, ``max_velocity`` and the initial box remain
        axis-aligned). The cost is diversity: with the classic update a particle then moves only
        within the span of its velocity and its two attractors, and the swarm can stall in a
        subspace (Wilke, Kok & Groenwold, "Comparison of linear and classical velocity update
        rules in particle swarm optimization: notes on diversity", 2007); SPSO-2011's hypersphere
        point still adds a random direction. It draws ``d + 3`` numbers per particle instead of
        ``3 d + 1`` (``2`` instead of ``2 d`` for ``"classic"``).
      inertia: ``w`` (>= 0), default ``1 / (2 ln 2)``.
      cognitive: ``c1`` (>= 0), default ``0.5 + ln 2``.
      social: ``c2`` (>= 0), default ``0.5 + ln 2``.
      max_velocity: clamp ``|v_id| <= max_velocity`` (>= 0; 0 disables).
      lower_bound: lower box bound, a scalar or a ``num_dims`` list (with ``upper_bound``, or
        neither); finite with ``lower < upper``.
      upper_bound: upper box bound, likewise.
      bounds_handling: ``"clip"`` (SPSO-2011) or ``"reflect"``.
      init_spread: without bounds, the swarm starts in ``x0 ± init_spread`` (> 0).

    Returns:
      A :class:`~esjax.base.Strategy` that minimises.

    Example:
      >>> es = pso(population_size=40, lower_bound=-5.12, upper_bound=5.12)
      >>> state = es.init(jax.random.key(0), jnp.zeros(10))
      >>> swarm, state = es.ask(jax.random.key(1), state)   # the initial swarm
      >>> state = es.tell(state, swarm, esjax.problems.rastrigin(swarm))
    """
    population_size = check_int("population_size", population_size, 2)
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}, got {topology!r}")
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    if coefficients not in COEFFICIENTS:
        raise ValueError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
    if bounds_handling not in BOUNDS_HANDLING:
        raise ValueError(
            f"bounds_handling must be one of {BOUNDS_HANDLING}, got {bounds_handling!r}"
        )
    num_neighbors = check_int("num_neighbors", num_neighbors, 2)
    if topology == "ring" and (num_neighbors % 2 or num_neighbors >= population_size):
        raise ValueError(
            f"num_neighbors must be even and smaller than population_size={population_size} "
            f"for the ring topology, got {num_neighbors}"
        )
    bounds = check_bounds(lower_bound, upper_bound)
    indices = jnp.arange(population_size)

    def init(key: jax.Array, mean: jax.Array, params: PSOParams) -> dict:
        if bounds is None:
            lower, upper = mean - params.init_spread, mean + params.init_spread
        else:
            lower, upper = bounds_like(bounds, mean)

        uint, _, _ = float_bits_type(mean.dtype)
        bits = random_bits(key, (2, population_size, *mean.shape), uint)
        width = upper - lower
        # x ~ U(lower, upper), then v ~ U(lower - x, upper - x): x + v is again in the box.
        positions = jnp.clip(lower + width * uniform_from_bits(bits[0], mean.dtype), lower, upper)
        velocities = (lower - positions) + width * uniform_from_bits(bits[1], mean.dtype)
        return {
            "positions": positions,
            "velocities": velocities,
            "personal_best": positions,
            # The largest finite float, not +inf: the state stays finite before evaluation.
            "personal_best_fitness": jnp.full(
                (population_size,), jnp.finfo(mean.dtype).max, mean.dtype
            ),
        }

    def move_velocity(key: jax.Array, state: PSOState) -> jax.Array:
        """The new velocities before confinement to the bounds."""
        params, x, v = state.params, state.positions, state.velocities
        best_index = informant_best(state.personal_best_fitness, topology, num_neighbors)
        own_best = state.personal_best
        if topology == "global":  # one row, broadcast: no (n, d) gather
            informed_best = own_best[best_index[0]][None, :]
        else:
            informed_best = own_best[best_index]
        informs_itself = (best_index == indices)[:, None]
        dtype, num_dims = x.dtype, state.num_dims

        u1, u2, z, rho = swarm_draws(key, population_size, num_dims, dtype, coefficients)
        to_p = params.cognitive * u1 * (own_best - x)
        to_l = params.social * u2 * (informed_best - x)
        if update == "classic":
            velocities = params.inertia * v + to_p + to_l
        else:
            # G - x = ((p' - x) + (l' - x)) / 3, or (p' - x) / 2 when the particle informs itself.
            to_centre = jnp.where(informs_itself, to_p / 2, (to_p + to_l) / 3)
            radius = jnp.linalg.norm(to_centre, axis=1, keepdims=True)
            # z / ||z|| is a uniform direction; the guard only matters for num_dims = 1, z = 0.
            unit = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-30)
            velocities = params.inertia * v + to_centre + rho[:, None] * radius * unit
        return jnp.where(
            params.max_velocity > 0,
            jnp.clip(velocities, -params.max_velocity, params.max_velocity),
            velocities,
        )

    def ask(key: jax.Array, state: PSOState) -> tuple[jax.Array, PSOState]:
        # Generation 0 evaluates the initial swarm itself (personal bests do not exist yet). A
        # select rather than `lax.cond`: in a scanned loop a conditional's outputs are copied
        # into the loop state every generation, and positions computed from the selected
        # velocities keep XLA from running the move (and its random draws) a second time.
        first = state.generation == 0
        x = state.positions
        velocities = jnp.where(first, state.velocities, move_velocity(key, state))
        if bounds is None:
            positions = jnp.where(first, x, x + velocities)
        else:
            lower, upper = bounds_like(bounds, state.best_solution)
            moved = x + velocities
            outside = ((moved < lower) | (moved > upper)) & ~first
            if bounds_handling == "clip":
                positions = jnp.clip(moved, lower, upper)
                velocities = jnp.where(outside, -0.5 * velocities, velocities)
            else:
                positions = reflect_into(moved, lower, upper)
                velocities = jnp.where(outside, -velocities, velocities)
            positions = jnp.where(first, x, positions)
        return positions, state.replace(positions=positions, velocities=velocities)

    def update_swarm(state: PSOState, population: jax.Array, fitness: jax.Array) -> PSOState:
        # NaN (a member that carries no information) sanitizes to +inf: never a personal best.
        safe = shaping.sanitize(fitness).astype(state.personal_best_fitness.dtype)
        improved = safe < state.personal_best_fitness
        return state.replace(
            positions=population,
            personal_best=jnp.where(improved[:, None], population, state.personal_best),
            personal_best_fitness=jnp.where(improved, safe, state.personal_best_fitness),
        )

    def info(state: PSOState) -> dict:
        """``diversity``: mean distance of the swarm's positions to their centroid;
        ``mean_speed``: mean velocity norm."""
        centred = state.positions - jnp.mean(state.positions, axis=0)
        return {
            # Diagnostics are computed here, when asked for, not in every `tell`.
            "diversity": jnp.mean(jnp.linalg.norm(centred, axis=1)),
            "mean_speed": jnp.mean(jnp.linalg.norm(state.velocities, axis=1)),
        }

    return make_strategy(
        name="pso",
        population_size=population_size,
        default_params=PSOParams(
            inertia=inertia,
            cognitive=cognitive,
            social=social,
            max_velocity=max_velocity,
            init_spread=init_spread,
        ),
        param_checks=PARAM_RANGES,
        state_type=PSOState,
        init=init,
        ask=ask,
        update=update_swarm,  # not `update`: that name is the update-rule argument
        info=info,
        capabilities=Capabilities(solution="best_solution", init_uses_key=True, bounds=bounds),
    )


__all__ = [
    "BOUNDS_HANDLING",
    "COEFFICIENTS",
    "PARAM_RANGES",
    "TOPOLOGIES",
    "UPDATES",
    "PSOParams",
    "PSOState",
    "informant_best",
    "pso",
    "reflect_into",
    "swarm_draws",
]
