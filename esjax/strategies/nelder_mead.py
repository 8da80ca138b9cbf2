"""Nelder-Mead: the downhill simplex method, one iteration per generation.

References: Nelder & Mead, "A simplex method for function minimization", The Computer Journal 7,
1965 (the method); Lagarias, Reeds, Wright & Wright, "Convergence properties of the Nelder-Mead
simplex method in low dimensions", SIAM J. Optim. 9, 1998 (the precise sequential rule with its
outside and inside contractions, and the coefficient conditions); Gao & Han, "Implementing the
Nelder-Mead simplex algorithm with adaptive parameters", Comput. Optim. Appl. 51, 2012 (the
dimension-dependent coefficients). The rule and the initial simplex follow
``scipy.optimize.minimize(method="Nelder-Mead")``, which the tests reproduce iteration by
iteration.

The simplex is ``n + 1`` vertices ``x_0, ..., x_n`` sorted by fitness, ``f_0 <= ... <= f_n``.
With the centroid of the ``n`` best, ``c = (x_0 + ... + x_{n-1}) / n``, and the coefficients
``ρ`` (reflection), ``χ`` (expansion), ``ψ`` (contraction) and ``σ`` (shrink), one iteration
considers the points::

    x_r  = (1 + ρ) c - ρ x_n                reflection
    x_e  = (1 + ρ χ) c - ρ χ x_n            expansion
    x_oc = (1 + ψ ρ) c - ψ ρ x_n            outside contraction
    x_ic = (1 - ψ) c + ψ x_n                inside contraction
    v_j  = x_0 + σ (x_j - x_0),  j = 1..n   shrink

and applies the sequential rule:

1. ``f_r < f_0``: expansion; ``x_n ← x_e`` if ``f_e < f_r``, else ``x_n ← x_r``.
2. ``f_0 <= f_r < f_{n-1}``: ``x_n ← x_r``.
3. ``f_{n-1} <= f_r < f_n``: ``x_n ← x_oc`` if ``f_oc <= f_r``, else shrink.
4. ``f_r >= f_n``: ``x_n ← x_ic`` if ``f_ic < f_n``, else shrink.
5. Shrink: ``x_j ← v_j`` for ``j = 1..n`` (``x_0`` stays).

and sorts the simplex again (a stable sort: among equal fitness the earlier vertex stays first;
NumPy's default sort, which scipy uses, gives no such promise for ties). Coefficients, with
``adaptive=False`` (the default, as in scipy): ``ρ = 1, χ = 2, ψ = 1/2, σ = 1/2`` (Nelder & Mead);
with ``adaptive=True`` (Gao & Han 2012, eq. 4.1): ``ρ = 1, χ = 1 + 2/n, ψ = 3/4 - 1/(2n),
σ = 1 - 1/n``, which keeps the expansion and shrink steps from destroying the simplex in many
dimensions (at ``n = 2`` both sets agree; at ``n = 1`` the adaptive ``σ`` is 0, as in scipy).

Initial simplex (scipy's rule): ``x_0 = x0`` and ``x_k = x0 + h_k e_k`` with
``h_k = initial_step · x0_k`` (5 %) for a non-zero coordinate and ``h_k = zero_step`` (0.00025)
for a zero one.

**A fixed-size population.** The sequential rule evaluates 1, 2 or ``n + 2`` points per iteration
depending on earlier outcomes, but ``ask`` returns a fixed number of rows. So every generation
asks for all the points the rule might need, speculatively, and ``tell`` applies the rule to
their fitness::

    generation 0:   rows 0..n        the initial simplex (n + 1 points)
    generation >=1: row 0 x_r, row 1 x_e, row 2 x_oc, row 3 x_ic, rows 4..n+3 v_1..v_n

The population size is therefore at least ``n + 4`` (the default); rows beyond those above are
copies of the best vertex, asked only to fill the static shape. One ``tell`` is one iteration of
scipy's loop. ``state.evaluations`` counts only the evaluations the sequential rule would have
made (``Capabilities.count_evaluations``): ``n + 1`` for generation 0, then 1 (reflection
accepted in step 2), 2 (steps 1, 3 and 4 without shrink) or ``n + 2`` (with shrink). The other
rows are evaluated too (in parallel) and count towards nothing but ``best_solution``: the best
of every row ever told, which is at least as good as the best vertex ``state.best_vertex`` and is
the solution this strategy reports.

Non-finite fitness (NaN, ±inf) counts as the worst possible value, the largest finite float (so
the state stays finite): such a point enters the simplex only where the rule would accept any
point (a shrink) and is then the first vertex to be replaced. Termination (scipy's test, checked
before each iteration): ``max_j ||x_j - x_0||_∞ <= xatol`` and ``max_j |f_j - f_0| <= fatol``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esjax.base import (
    Capabilities,
    Strategy,
    StrategyState,
    check_int,
    check_params,
    check_range,
    make_strategy,
)

# The sequential rule's outcome, stored as ``state.last_step`` (``es.info``'s ``step``).
STEPS = (
    "initial_simplex",
    "reflection",
    "expansion",
    "reflection_after_expansion",
    "outside_contraction",
    "inside_contraction",
    "shrink",
)
INITIAL, REFLECT, EXPAND, REFLECT_AFTER_EXPANSION, OUTSIDE, INSIDE, SHRINK = range(len(STEPS))
NUM_TRIAL_POINTS = 4  # x_r, x_e, x_oc, x_ic: the rows before the n shrink points


@struct.dataclass
class NelderMeadParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over). Their defaults are
    :func:`nelder_mead`'s arguments: start from ``es.default_params``.

    Attributes:
      reflection: ``ρ`` (> 0).
      expansion: ``χ`` (> 1 and > ``ρ``).
      contraction: ``ψ``, in (0, 1).
      shrink: ``σ``, in (0, 1).
      xatol: termination threshold on the simplex's extent around its best vertex (>= 0).
      fatol: termination threshold on the fitness spread of the simplex (>= 0).
      initial_step: relative offset of the initial vertices, ``h_k = initial_step · x0_k``
        (> 0).
      zero_step: absolute offset for a zero coordinate of ``x0`` (> 0).
    """

    reflection: float | jax.Array | None
    expansion: float | jax.Array | None
    contraction: float | jax.Array | None
    shrink: float | jax.Array | None
    xatol: float | jax.Array
    fatol: float | jax.Array
    initial_step: float | jax.Array
    zero_step: float | jax.Array


PARAM_RANGES = {
    "reflection": (0.0, None, False, True),
    "expansion": (1.0, None, False, True),
    "contraction": (0.0, 1.0, False, False),
    "shrink": (0.0, 1.0, False, False),
    "xatol": (0.0, None),
    "fatol": (0.0, None),
    "initial_step": (0.0, None, False, True),
    "zero_step": (0.0, None, False, True),
}


@struct.dataclass
class NelderMeadState(StrategyState):
    """The simplex, sorted by fitness.

    Attributes:
      simplex: ``(num_dims + 1, num_dims)`` vertices, best first (before the first ``tell``: the
        initial simplex, not yet evaluated).
      simplex_fitness: ``(num_dims + 1,)`` their fitness, ascending (the largest finite float
        before the first ``tell`` and for non-finite values).
      last_step: scalar int32, the outcome of the last iteration, an index into :data:`STEPS`.
    """

    simplex: jax.Array
    simplex_fitness: jax.Array
    last_step: jax.Array
    params: NelderMeadParams

    @property
    def best_vertex(self) -> jax.Array:
        """``(num_dims,)`` the simplex's best vertex ``x_0``."""
        return self.simplex[0]


def coefficients(adaptive: bool, num_dims: int) -> dict:
    """The default ``ρ, χ, ψ, σ``: Nelder & Mead's, or Gao & Han's for ``num_dims``."""
    if adaptive:
        return {
            "reflection": 1.0,
            "expansion": 1.0 + 2.0 / num_dims,
            "contraction": 0.75 - 1.0 / (2.0 * num_dims),
            "shrink": 1.0 - 1.0 / num_dims,
        }
    return {"reflection": 1.0, "expansion": 2.0, "contraction": 0.5, "shrink": 0.5}


def initial_simplex(x0: jax.Array, initial_step: jax.Array, zero_step: jax.Array) -> jax.Array:
    """scipy's initial simplex: ``x0`` and ``x0`` with coordinate ``k`` moved by 5 % (or by
    ``zero_step`` where it is 0), ``(n + 1, n)``."""
    # (1 + initial_step) · x, as scipy writes it (not x + initial_step · x), for equal rounding.
    moved = jnp.where(x0 != 0, (1 + initial_step) * x0, zero_step)
    eye = jnp.eye(x0.shape[0], dtype=bool)
    return jnp.concatenate([x0[None], jnp.where(eye, moved[None, :], x0[None, :])])


def trial_points(state: NelderMeadState) -> jax.Array:
    """``(n + 4, n)``: reflection, expansion, outside and inside contraction, the n shrink points.

    Written in scipy's arithmetic (the same products in the same order), so a float64 run can
    agree with scipy bit for bit and take the same branches. (At its default optimisation level
    XLA's CPU backend fuses some of these products and sums into multiply-adds, which moves the
    last bit: measured ~1e-11 relative in the best value after 300 iterations.)
    """
    params, simplex = state.params, state.simplex
    num_dims = simplex.shape[1]
    rho, chi, psi, sigma = params.reflection, params.expansion, params.contraction, params.shrink
    worst = simplex[-1]
    # XLA's CPU reduction adds the rows in order, as NumPy's does. XLA rewrites a division by a
    # broadcast scalar as a multiplication by its reciprocal, which is inexact (e.g. for n = 5);
    # behind the barrier the divisor is an opaque array and the division stays a division.
    divisor = jax.lax.optimization_barrier(jnp.full((num_dims,), num_dims, simplex.dtype))
    centroid = jnp.sum(simplex[:-1], axis=0) / divisor
    reflection = (1 + rho) * centroid - rho * worst
    expansion = (1 + rho * chi) * centroid - rho * chi * worst
    outside = (1 + psi * rho) * centroid - psi * rho * worst
    inside = (1 - psi) * centroid + psi * worst
    shrunk = simplex[0] + sigma * (simplex[1:] - simplex[0])
    return jnp.concatenate([jnp.stack([reflection, expansion, outside, inside]), shrunk])


def sequential_rule(
    simplex: jax.Array,
    simplex_fitness: jax.Array,
    points: jax.Array,
    fitness: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One iteration of the rule on a sorted simplex, given every speculative point's fitness.

    ``points``/``fitness`` are the ``n + 4`` rows of :func:`trial_points` (in that order) and
    their (finite) fitness. Returns the unsorted new simplex, its fitness and the step taken.
    """
    num_dims = simplex.shape[1]
    f_best, f_second_worst, f_worst = simplex_fitness[0], simplex_fitness[-2], simplex_fitness[-1]
    f_r, f_e, f_oc, f_ic = (fitness[i] for i in range(NUM_TRIAL_POINTS))
    expand = f_r < f_best
    reflect = ~expand & (f_r < f_second_worst)
    outside = ~expand & ~reflect & (f_r < f_worst)
    inside = ~expand & ~reflect & ~outside
    accept_outside = outside & (f_oc <= f_r)
    accept_inside = inside & (f_ic < f_worst)
    shrink = (outside & ~accept_outside) | (inside & ~accept_inside)

    # Which row of `points` replaces the worst vertex (ignored on shrink).
    take_expansion = expand & (f_e < f_r)
    row = jnp.select([take_expansion, accept_outside, accept_inside], [1, 2, 3], default=0)
    replaced = simplex.at[-1].set(points[row])
    replaced_fitness = simplex_fitness.at[-1].set(fitness[row])
    shrunk = jnp.concatenate([simplex[:1], points[NUM_TRIAL_POINTS : NUM_TRIAL_POINTS + num_dims]])
    shrunk_fitness = jnp.concatenate(
        [simplex_fitness[:1], fitness[NUM_TRIAL_POINTS : NUM_TRIAL_POINTS + num_dims]]
    )
    new_simplex = jnp.where(shrink, shrunk, replaced)
    new_fitness = jnp.where(shrink, shrunk_fitness, replaced_fitness)
    step = jnp.select(
        [take_expansion, expand, reflect, accept_outside, accept_inside],
        [EXPAND, REFLECT_AFTER_EXPANSION, REFLECT, OUTSIDE, INSIDE],
        default=SHRINK,
    )
    return new_simplex, new_fitness, step.astype(jnp.int32)


def evaluations_of_step(step: jax.Array, num_dims: int) -> jax.Array:
    """Fitness evaluations the sequential rule makes for ``step`` (see :data:`STEPS`)."""
    table = np.array([num_dims + 1, 1, 2, 2, 2, 2, num_dims + 2], np.int32)
    return jnp.asarray(table)[step]


def nelder_mead(
    population_size: int | None = None,
    num_dims: int | None = None,
    adaptive: bool = False,
    xatol: float = 1e-4,
    fatol: float = 1e-4,
    reflection: float | None = None,
    expansion: float | None = None,
    contraction: float | None = None,
    shrink: float | None = None,
    initial_step: float = 0.05,
    zero_step: float = 0.00025,
) -> Strategy:
    """Build the Nelder-Mead simplex method (scipy's variant), one iteration per generation.

    Args:
      population_size: rows per generation; at least ``num_dims + 4`` (the speculative points
        of one iteration, see the module docstring). Default ``num_dims + 4``, which needs
        ``num_dims``; with a larger size the extra rows repeat the best vertex. Without
        ``num_dims``, ``init`` checks it against ``x0``.
      num_dims: the dimension ``n`` of ``x0``; needed when ``population_size`` is None, checked
        by ``init`` when given.
      adaptive: Gao & Han's dimension-dependent coefficients (see the module docstring) instead
        of Nelder & Mead's; False by default, as in scipy.
      xatol: stop when every vertex is within ``xatol`` of the best one in every coordinate
        (and the fitness test holds); >= 0, scipy's default 1e-4.
      fatol: stop when every vertex's fitness is within ``fatol`` of the best (and the ``xatol``
        test holds); >= 0, scipy's default 1e-4.
      reflection: ``ρ > 0`` (None: the value ``adaptive`` gives).
      expansion: ``χ > max(1, ρ)`` (None: from ``adaptive``).
      contraction: ``ψ ∈ (0, 1)`` (None: from ``adaptive``).
      shrink: ``σ ∈ (0, 1)`` (None: from ``adaptive``).
      initial_step: relative offset of the initial vertices (> 0; scipy: 0.05).
      zero_step: offset of the initial vertex along a coordinate where ``x0`` is 0 (> 0;
        scipy: 0.00025).

    Returns:
      A :class:`~esjax.base.Strategy` that minimises and reports ``best_solution``; it declares
      the ``xatol``/``fatol`` test as its termination signal and counts only the sequential
      rule's evaluations in ``state.evaluations``.

    Example:
      >>> es = nelder_mead(num_dims=4, adaptive=True)      # population_size = 8
      >>> state = es.init(jax.random.key(0), jnp.ones(4))
      >>> points, state = es.ask(jax.random.key(1), state)   # initial simplex (5 rows) + 3 copies
      >>> state = es.tell(state, points, esjax.problems.rosenbrock(points))
      >>> state.simplex_fitness[0]                            # best vertex's fitness
    """
    if not isinstance(adaptive, bool):
        raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__} {adaptive!r}")
    if num_dims is not None:
        num_dims = check_int("num_dims", num_dims, 1)
    if population_size is None:
        if num_dims is None:
            raise ValueError(
                "population_size is None, so the default num_dims + 4 needs num_dims: pass "
                "num_dims=... or population_size=..."
            )
        population_size = num_dims + NUM_TRIAL_POINTS
    # n + 4 rows at least, n >= 1: init checks the bound once x0 fixes n.
    population_size = check_int("population_size", population_size, 1 + NUM_TRIAL_POINTS)
    if num_dims is not None and population_size < num_dims + NUM_TRIAL_POINTS:
        raise ValueError(
            f"population_size must be at least num_dims + 4 = {num_dims + NUM_TRIAL_POINTS} "
            f"(one iteration's speculative points), got {population_size}"
        )

    def check_dims(mean: jax.Array) -> int:
        n = mean.shape[0]
        if num_dims is not None and n != num_dims:
            raise ValueError(
                f"x0 has {n} dimensions but the strategy was built for num_dims={num_dims}"
            )
        if population_size < n + NUM_TRIAL_POINTS:
            raise ValueError(
                f"population_size must be at least num_dims + 4 = {n + NUM_TRIAL_POINTS} for this "
                f"{n}-dimensional x0 (one iteration's speculative points), got {population_size}"
            )
        return n

    def resolve(params: NelderMeadParams, n: int) -> NelderMeadParams:
        defaults = coefficients(adaptive, n)
        params = params.replace(
            **{name: value for name, value in defaults.items() if getattr(params, name) is None}
        )
        _check_order(params)  # now that both coefficients are known
        return params

    def init(key: jax.Array, mean: jax.Array, params: NelderMeadParams) -> dict:
        del key  # the initial simplex is deterministic
        n = check_dims(mean)
        worst = jnp.finfo(mean.dtype).max
        return {
            "simplex": initial_simplex(mean, params.initial_step, params.zero_step),
            "simplex_fitness": jnp.full((n + 1,), worst, mean.dtype),
            "last_step": jnp.array(INITIAL, jnp.int32),
        }

    def padded(rows: jax.Array, fill: jax.Array) -> jax.Array:
        extra = population_size - rows.shape[0]
        return jnp.concatenate([rows, jnp.broadcast_to(fill, (extra, rows.shape[1]))])

    def ask(key: jax.Array, state: NelderMeadState) -> tuple[jax.Array, NelderMeadState]:
        del key  # every point is a function of the simplex
        first = padded(state.simplex, state.simplex[0])
        later = padded(trial_points(state), state.simplex[0])
        return jnp.where(state.generation == 0, first, later), state

    def update(
        state: NelderMeadState, population: jax.Array, fitness: jax.Array
    ) -> NelderMeadState:
        n = state.num_dims
        dtype = state.simplex_fitness.dtype
        # NaN (no information) and ±inf count as the worst value; a finite stand-in keeps the
        # state finite and sorts those vertices last.
        fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.finfo(dtype).max).astype(dtype)
        later, later_fitness, step = sequential_rule(
            state.simplex, state.simplex_fitness, population, fitness
        )
        first = state.generation == 0
        simplex = jnp.where(first, population[: n + 1], later)
        simplex_fitness = jnp.where(first, fitness[: n + 1], later_fitness)
        order = jnp.argsort(simplex_fitness, stable=True)
        return state.replace(
            simplex=simplex[order],
            simplex_fitness=simplex_fitness[order],
            last_step=jnp.where(first, INITIAL, step).astype(jnp.int32),
        )

    def count_evaluations(state: NelderMeadState, told: NelderMeadState) -> jax.Array:
        return evaluations_of_step(told.last_step, state.num_dims)

    def terminated(state: NelderMeadState) -> jax.Array:
        return (state.generation > 0) & within_tolerance(state)

    def info(state: NelderMeadState) -> dict:
        return {
            "step": state.last_step,
            "simplex_extent": simplex_extent(state),
            "simplex_fitness_spread": fitness_spread(state),
            "stop": terminated(state),
        }

    default_params = NelderMeadParams(
        reflection=reflection,
        expansion=expansion,
        contraction=contraction,
        shrink=shrink,
        xatol=xatol,
        fatol=fatol,
        initial_step=initial_step,
        zero_step=zero_step,
    )
    check_params(default_params, PARAM_RANGES)
    if num_dims is not None or not adaptive:  # the defaults are known: check them now
        resolve(default_params, num_dims or 2)

    return make_strategy(
        name="nelder_mead",
        population_size=population_size,
        default_params=default_params,
        param_checks=PARAM_RANGES,
        resolve_params=resolve,
        state_type=NelderMeadState,
        init=init,
        ask=ask,
        update=update,
        info=info,
        capabilities=Capabilities(
            solution="best_solution",
            termination=terminated,
            count_evaluations=count_evaluations,
        ),
    )


def simplex_extent(state: NelderMeadState) -> jax.Array:
    """``max_j ||x_j - x_0||_∞``, the quantity scipy's ``xatol`` bounds."""
    return jnp.max(jnp.abs(state.simplex[1:] - state.simplex[0]))


def fitness_spread(state: NelderMeadState) -> jax.Array:
    """``max_j |f_j - f_0|``, the quantity scipy's ``fatol`` bounds."""
    return jnp.max(jnp.abs(state.simplex_fitness[0] - state.simplex_fitness[1:]))


def within_tolerance(state: NelderMeadState) -> jax.Array:
    """scipy's convergence test on the current simplex (both tolerances met)."""
    params = state.params
    return (simplex_extent(state) <= params.xatol) & (fitness_spread(state) <= params.fatol)


def _check_order(params: NelderMeadParams) -> None:
    """``expansion > reflection`` (Lagarias et al. 1998), where both are concrete."""
    reflection = params.reflection
    if not isinstance(reflection, jax.core.Tracer) and np.ndim(reflection) == 0:
        check_range("expansion", params.expansion, float(reflection), None, low_inclusive=False)


__all__ = [
    "PARAM_RANGES",
    "STEPS",
    "NelderMeadParams",
    "NelderMeadState",
    "coefficients",
    "fitness_spread",
    "initial_simplex",
    "nelder_mead",
    "sequential_rule",
    "simplex_extent",
    "trial_points",
    "within_tolerance",
]
