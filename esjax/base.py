"""The strategy contract: the :class:`Strategy` tuple, its declared :class:`Capabilities`, and
:func:`make_strategy`, which owns the bookkeeping every strategy shares.

A strategy is a :class:`Strategy`: a NamedTuple of pure functions built by a factory such as
:func:`esjax.openai_es`. Its state is a ``flax.struct`` dataclass (a pytree) deriving from
:class:`StrategyState`, so it can be jitted, vmapped, scanned over and checkpointed.

The loop a user writes is::

    state = es.init(key, x0)                      # x0: flat vector or any pytree
    population, state = es.ask(key, state)        # (population_size, num_dims)
    state = es.tell(state, population, fitness)   # fitness: (population_size,), minimised

Every strategy minimises. To maximise a reward, pass ``-reward``.

**What a strategy module writes.** Only its algorithm: a state dataclass, ``init`` from the flat
mean, ``ask``, and the update from population and fitness (or, for a distribution whose update
is a sum over members, a :class:`Decomposition`), plus a declaration (:class:`Capabilities`).
:func:`make_strategy` adds, for every strategy alike:

* ``x0`` flattening and the **dtype policy**: the search runs in the floating type of ``x0``'s
  leaves, at least float32 (float16/bfloat16 leaves are searched in float32; ``fitness_fn``
  still receives each leaf in its own dtype); integer and bool leaves are refused, naming the
  leaf, since a real-valued search cast back to integers would silently stall;
* argument, shape and dtype checks, raised at trace time and naming the argument;
* **non-finite handling**: a member whose row or fitness is NaN/±inf contributes nothing. Its
  row is replaced by the best solution so far (finite) and its fitness by NaN before the
  algorithm sees it, so the update gives it zero weight (or the worst rank where selection
  needs one) and it never becomes state (best, personal best, chain position);
* best-so-far tracking, the generation count and the evaluation counter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from esjax import shaping
from esjax.flatten import FlatSpec, flatten_x0

PyTree = Any

FITNESS_KINDS = ("scalar", "residuals")


@struct.dataclass
class StrategyState:
    """Fields shared by every strategy state (set by :func:`make_strategy`, not by algorithms).

    Attributes:
      best_solution: ``(num_dims,)`` best member evaluated so far (flat).
      best_fitness: scalar, its fitness (``+inf`` until a finite fitness is seen).
      generation: scalar int32, number of completed ``tell`` calls.
      evaluations: scalar int32, fitness evaluations told so far.
      spec: static description of ``x0``'s pytree structure, used by :meth:`unravel`.
    """

    best_solution: jax.Array
    best_fitness: jax.Array
    generation: jax.Array
    evaluations: jax.Array
    spec: FlatSpec = struct.field(pytree_node=False)

    def unravel(self, vector: jax.Array) -> PyTree:
        """Map a flat ``(num_dims,)`` vector back to a pytree shaped like ``x0``."""
        return self.spec.unflatten(vector)

    @property
    def best_params(self) -> PyTree:
        """The best solution shaped like ``x0`` (e.g. Flax params)."""
        return self.spec.unflatten(self.best_solution)

    @property
    def num_dims(self) -> int:
        return self.spec.num_dims


class Decomposition(NamedTuple):
    """A generation split at its one reduction over members (the sharded decomposition).

    Member ``i`` is a function of ``(key, i)`` alone, and the update is a sum of per-member
    statistics followed by a step that needs only that sum and the ``(population_size,)``
    fitness. :mod:`esjax.distributed` then runs such a strategy without moving a
    population-sized array between devices: each device samples and evaluates its own members,
    and only fitness values and one sum cross devices. ``ask`` and ``tell`` on one device are
    built from the same pieces, so both paths compute the same update.

    Attributes:
      sample: ``(key, state, indices) -> members``: ``(k, num_dims)`` rows for the ``(k,)``
        member indices, under the key given to ``ask``.
      weights: ``(state, fitness, scalars) -> (population_size,)`` per-member weights from the
        whole generation's fitness (NaN for members that carry no information).
      statistics: ``(state, members, weights) -> pytree``, ``Σ_i`` over the given members of
        their weighted statistics (a sum, so it can be split across devices and added).
      apply: ``(state, totals, fitness) -> state``: the update from the summed statistics.
      scalars: optional ``(state, members) -> (k,)`` per-member values that ``weights`` needs
        besides fitness (gathered with it; e.g. ``‖x_i‖²`` for weight decay).
      needs_finite_rows: ``True`` (default): a member whose row is not finite reaches
        ``scalars`` and ``statistics`` replaced by the best solution so far (a population-sized
        copy in every ``tell``). ``False``: rows arrive as told, non-finite ones included, with
        weight exactly zero (and scalar zero); ``statistics`` must then give a zero-weight row no
        influence even when it holds inf or NaN (``0 · inf`` is NaN in a plain product), and
        ``scalars`` may be NaN for it. Saves the copy: OpenAI-ES with a noise table at
        1,024 × 10k went from 15.5 to 8.7 ms a steady-state generation.
    """

    sample: Callable[[jax.Array, Any, jax.Array], jax.Array]
    weights: Callable[[Any, jax.Array, jax.Array | None], jax.Array]
    statistics: Callable[[Any, jax.Array, jax.Array], PyTree]
    apply: Callable[[Any, PyTree, jax.Array], Any]
    scalars: Callable[[Any, jax.Array], jax.Array] | None = None
    needs_finite_rows: bool = True


class Capabilities(NamedTuple):
    """What a strategy declares about itself, so drivers never guess from its state.

    Attributes:
      fitness: what ``tell`` consumes: ``"scalar"`` (``(population_size,)``) or ``"residuals"``
        (``(population_size, m)`` residual vectors, as EKI uses).
      solution: name of the state attribute holding the solution the strategy reports (its
        estimate of the optimum): ``"mean"``, or ``"best_solution"`` for strategies without a
        mean (swarms, chains).
      init_uses_key: whether ``init`` draws random numbers (a random initial swarm or ensemble).
      state_holds_key: whether the state carries a PRNG key of its own (checkpoints restore it).
      termination: optional ``state -> bool`` scalar: the strategy's own stop signal (CMA-ES's
        ``tolx``, ``tolfun``, ...). Drivers stop on it.
      bounds: optional ``(lower, upper)`` box the strategy keeps its members in.
      evaluations_per_generation: fitness evaluations one ``tell`` consumes (default
        ``population_size``).
      count_evaluations: optional ``(state, told) -> int32`` scalar for strategies whose
        evaluations per generation vary (Nelder-Mead counts only the points its sequential
        rule would have evaluated); ``state`` is the state before the update. Overrides
        ``evaluations_per_generation`` in ``state.evaluations``.
      decomposition: optional :class:`Decomposition` (see there).
      score: for ``fitness="residuals"``, ``(state, residuals) -> (population_size,)`` the scalar
        loss each residual vector stands for (best tracking and metrics use it).
    """

    fitness: str = "scalar"
    solution: str = "mean"
    init_uses_key: bool = False
    state_holds_key: bool = False
    termination: Callable[[Any], jax.Array] | None = None
    bounds: tuple[Any, Any] | None = None
    evaluations_per_generation: int | None = None
    count_evaluations: Callable[[Any, Any], jax.Array] | None = None
    decomposition: Decomposition | None = None
    score: Callable[[Any, jax.Array], jax.Array] | None = None


class Strategy(NamedTuple):
    """A gradient-free optimiser as a tuple of pure functions (built by :func:`make_strategy`).

    Attributes:
      name: registry name, e.g. ``"openai_es"``.
      population_size: number of members ``ask`` returns.
      default_params: the numeric hyperparameters (a ``flax.struct`` dataclass). Pass a modified
        copy to ``init`` to vmap over hyperparameters, e.g.
        ``es.init(key, x0, es.default_params.replace(sigma=s))``.
      init: ``(key, x0, params=None) -> state``.
      ask: ``(key, state) -> (population, state)``; population is ``(population_size, num_dims)``.
      tell: ``(state, population, fitness) -> state``; fitness ``(population_size,)`` is minimised.
      info: ``state -> dict`` of scalar diagnostics (sigma, acceptance rate, ...), cheap to log.
      capabilities: the strategy's declaration (:class:`Capabilities`).
    """

    name: str
    population_size: int
    default_params: Any
    init: Callable[..., StrategyState]
    ask: Callable[[jax.Array, StrategyState], tuple[jax.Array, StrategyState]]
    tell: Callable[[StrategyState, jax.Array, jax.Array], StrategyState]
    info: Callable[[StrategyState], dict]
    capabilities: Capabilities = Capabilities()

    def solution(self, state: StrategyState) -> jax.Array:
        """The flat solution this strategy reports (its declared ``solution`` attribute)."""
        return getattr(state, self.capabilities.solution)

    def terminated(self, state: StrategyState) -> jax.Array:
        """The strategy's own stop signal as a bool scalar (always False when it declares none)."""
        if self.capabilities.termination is None:
            return jnp.zeros((), bool)
        return jnp.asarray(self.capabilities.termination(state), bool)


def make_strategy(
    *,
    name: str,
    population_size: int,
    default_params: Any,
    state_type: type,
    init: Callable[[jax.Array, jax.Array, Any], dict],
    ask: Callable[[jax.Array, Any], tuple[jax.Array, Any]] | None = None,
    update: Callable[[Any, jax.Array, jax.Array], Any] | None = None,
    info: Callable[[Any], dict] | None = None,
    param_checks: Callable[[Any], None] | dict | None = None,
    resolve_params: Callable[[Any, int], Any] | None = None,
    capabilities: Capabilities | None = None,
) -> Strategy:
    """Build the public :class:`Strategy` from an algorithm's own pieces.

    Args:
      name: registry name.
      population_size: members per generation (static: it fixes array shapes).
      default_params: the hyperparameter dataclass ``init`` uses when given none.
      state_type: the algorithm's state class (a subclass of :class:`StrategyState` with a
        ``params`` field).
      init: ``(key, mean, params) -> dict`` of the algorithm's own state fields, from the flat
        float ``(num_dims,)`` ``x0`` and the checked, resolved hyperparameters (as arrays of the
        search dtype). The shared fields and ``params`` are added here.
      ask: ``(key, state) -> (population, state)``. Optional with a ``decomposition``: member
        ``i`` is then ``decomposition.sample(key, state, i)``.
      update: ``(state, population, fitness) -> state``: the algorithm's update. Rows are finite;
        fitness is NaN for members that carry no information. Not given with a decomposition.
      info: ``state -> dict`` of scalar diagnostics (default: none).
      param_checks: a callable that raises on bad hyperparameters, or a dict of ranges for
        :func:`check_params` (applied to the params ``init`` is given, when concrete).
      resolve_params: ``(params, num_dims) -> params`` filling defaults that need the
        dimension (e.g. CMA-ES's learning rates).
      capabilities: the declaration (:class:`Capabilities`; default: scalar fitness, reports
        the mean, nothing else declared).
    """
    population_size = check_int("population_size", population_size, 1)
    capabilities = Capabilities() if capabilities is None else capabilities
    if capabilities.fitness not in FITNESS_KINDS:
        raise ValueError(
            f"capabilities.fitness must be one of {FITNESS_KINDS}, got {capabilities.fitness!r}"
        )
    if capabilities.fitness == "residuals" and capabilities.score is None:
        raise ValueError("capabilities.score is required when capabilities.fitness='residuals'")
    decomposition = capabilities.decomposition
    if (update is None) == (decomposition is None):
        raise ValueError("give exactly one of update= and capabilities.decomposition")
    if ask is None:
        if decomposition is None:
            raise ValueError("ask is required without a capabilities.decomposition")
        indices = jnp.arange(population_size)

        def ask(key, state):
            return decomposition.sample(key, state, indices), state

    if isinstance(param_checks, dict):
        ranges = param_checks

        def param_checks(params):
            check_params(params, ranges)

    if param_checks is not None:
        param_checks(default_params)  # bad factory arguments fail at construction

    evaluations = capabilities.evaluations_per_generation or population_size
    algorithm_ask, algorithm_update, algorithm_info = ask, update, info

    def check_state(state, argument="state"):
        if not isinstance(state, state_type):
            raise TypeError(
                f"{argument} must be a {state_type.__name__} (made by this {name} strategy's "
                f"init), got {type(state).__name__}"
            )

    def strategy_init(key: jax.Array, x0: PyTree, params: Any = None) -> StrategyState:
        key = check_key(key)
        params = default_params if params is None else params
        if type(params) is not type(default_params):
            raise TypeError(
                f"params must be a {type(default_params).__name__} (e.g. "
                f"es.default_params.replace(...)), got {type(params).__name__}"
            )
        if param_checks is not None:
            param_checks(params)
        mean, spec = flatten_x0(x0)
        if resolve_params is not None:
            params = resolve_params(params, spec.num_dims)
        params = params_to_arrays(params, mean.dtype)
        fields = init(key, mean, params)
        return state_type(
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, dtype=mean.dtype),
            generation=jnp.array(0, jnp.int32),
            evaluations=jnp.array(0, jnp.int32),
            spec=spec,
            params=params,
            **fields,
        )

    def strategy_ask(key: jax.Array, state: StrategyState) -> tuple[jax.Array, StrategyState]:
        key = check_key(key)
        check_state(state)
        return algorithm_ask(key, state)

    def strategy_tell(
        state: StrategyState, population: jax.Array, fitness: jax.Array
    ) -> StrategyState:
        check_state(state)
        if capabilities.fitness == "scalar":
            fitness = check_fitness(fitness, population_size)
        else:
            fitness = check_residuals(fitness, population_size)
        check_population(population, population_size, state.num_dims)
        copy_rows = decomposition is None or decomposition.needs_finite_rows
        population, fitness, rows_finite = mask_non_finite(state, population, fitness, copy_rows)
        if decomposition is None:
            told = algorithm_update(state, population, fitness)
        else:
            told = decomposed_update(decomposition, state, population, fitness, rows_finite)
        spent = evaluations
        if capabilities.count_evaluations is not None:
            spent = capabilities.count_evaluations(state, told)
        return record(state, told, population, member_scores(state, fitness), spent)

    def member_scores(state, fitness):
        if capabilities.fitness == "scalar":
            return fitness
        return capabilities.score(state, fitness)

    def strategy_info(state: StrategyState) -> dict:
        return {} if algorithm_info is None else algorithm_info(state)

    return Strategy(
        name=name,
        population_size=population_size,
        default_params=default_params,
        init=strategy_init,
        ask=strategy_ask,
        tell=strategy_tell,
        info=strategy_info,
        capabilities=capabilities._replace(evaluations_per_generation=evaluations),
    )


def mask_non_finite(
    state: StrategyState, population: jax.Array, fitness: jax.Array, copy_rows: bool = True
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Members whose row or fitness is non-finite carry no information: their fitness becomes
    NaN and, with ``copy_rows``, their rows the best solution so far (finite).

    Returns ``(population, fitness, rows_finite)``; ``fitness`` may be ``(n,)`` or ``(n, m)``.
    Without ``copy_rows`` the population is returned as given (no population-sized copy).
    """
    # Σ_j 0·x_ij is 0 for a finite row and NaN as soon as one entry is ±inf or NaN: one fast
    # float reduction instead of a boolean array the size of the population (which XLA's CPU
    # backend materialises and reduces slowly: a tenth of an OpenAI-ES generation at 1,024 × 10k).
    rows_finite = jnp.isfinite(jnp.sum(population * jnp.zeros((), population.dtype), axis=1))
    if copy_rows:
        population = jnp.where(rows_finite[:, None], population, state.best_solution)
    mask = rows_finite.reshape(rows_finite.shape + (1,) * (fitness.ndim - 1))
    return population, jnp.where(mask, fitness, jnp.nan), rows_finite


def decomposed_update(
    decomposition: Decomposition,
    state: StrategyState,
    population: jax.Array,
    fitness: jax.Array,
    rows_finite: jax.Array,
) -> StrategyState:
    """``tell`` of a decomposed strategy on one device: every member's statistics, summed."""
    scalars = member_scalars(decomposition, state, population, rows_finite)
    weights = member_weights(decomposition, state, fitness, scalars, rows_finite)
    return decomposition.apply(state, decomposition.statistics(state, population, weights), fitness)


def member_scalars(
    decomposition: Decomposition, state: StrategyState, members: jax.Array, rows_finite: jax.Array
) -> jax.Array | None:
    """The decomposition's per-member scalars (``None`` when it declares none), zero for members
    whose row was not finite (which, without ``needs_finite_rows``, may hold inf or NaN)."""
    if decomposition.scalars is None:
        return None
    scalars = decomposition.scalars(state, members)
    return jnp.where(rows_finite, scalars, jnp.zeros((), scalars.dtype))


def member_weights(
    decomposition: Decomposition,
    state: StrategyState,
    fitness: jax.Array,
    scalars: jax.Array | None,
    rows_finite: jax.Array,
) -> jax.Array:
    """The decomposition's weights, zero for members whose row was not finite."""
    weights = decomposition.weights(state, fitness, scalars)
    return jnp.where(rows_finite, weights, jnp.zeros((), weights.dtype))


def record(
    state: StrategyState,
    told: StrategyState,
    candidates: jax.Array,
    scores: jax.Array,
    evaluations: int | jax.Array,
) -> StrategyState:
    """The shared bookkeeping after an update: generation, evaluations and best-so-far.

    ``candidates`` are the ``(k, num_dims)`` members this generation evaluated (or just its best
    one) and ``scores`` their scalar fitness; ``state`` is the state before the update and
    ``evaluations`` the fitness evaluations the generation spent.
    """
    return told.replace(
        generation=state.generation + 1,
        evaluations=state.evaluations + jnp.asarray(evaluations, jnp.int32),
        **update_best(state, candidates, scores),
    )


def update_best(state: StrategyState, population: jax.Array, fitness: jax.Array) -> dict:
    """Best-ever solution/fitness after seeing ``population`` with ``fitness``.

    Non-finite fitness never becomes the best. Returns a dict to pass to ``state.replace``.
    """
    safe = shaping.sanitize(fitness)
    index = jnp.argmin(safe)
    improved = safe[index] < state.best_fitness
    return {
        "best_solution": jnp.where(improved, population[index], state.best_solution),
        "best_fitness": jnp.where(improved, safe[index], state.best_fitness).astype(
            state.best_fitness.dtype
        ),
    }


def params_to_arrays(params: Any, dtype: Any) -> Any:
    """Turn a params dataclass's numeric leaves into arrays of ``dtype`` (stable state dtypes)."""
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), params)


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Check that ``key`` is a PRNG key (``jax.random.key(...)`` or legacy ``PRNGKey`` data)."""
    if isinstance(key, jax.Array | jax.core.Tracer):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise TypeError(
        f"{name} must be a PRNG key made by jax.random.key(seed) (one key, not a batch), got "
        f"{type(key).__name__} {getattr(key, 'dtype', '')}{list(getattr(key, 'shape', ()))}"
    )


def check_fitness(fitness: jax.Array, population_size: int, name: str = "fitness") -> jax.Array:
    """Check at trace time that ``fitness`` has shape ``(population_size,)`` and a real dtype."""
    fitness = jnp.asarray(fitness)
    if fitness.shape != (population_size,):
        raise ValueError(
            f"{name} must have shape (population_size,) = ({population_size},), got {fitness.shape}"
        )
    return _real(fitness, name)


def check_residuals(residuals: jax.Array, population_size: int) -> jax.Array:
    """Check at trace time that ``residuals`` is ``(population_size, m)`` and real."""
    residuals = jnp.asarray(residuals)
    if residuals.ndim != 2 or residuals.shape[0] != population_size:
        raise ValueError(
            f"residuals must have shape (ensemble_size, m) = ({population_size}, m): one residual "
            f"vector G(u_j) - y per member, got {residuals.shape}"
        )
    return _real(residuals, "residuals")


def _real(values: jax.Array, name: str) -> jax.Array:
    if jnp.issubdtype(values.dtype, jnp.complexfloating) or values.dtype == jnp.bool_:
        raise TypeError(f"{name} must be real (float or int), got dtype {values.dtype}")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.result_type(float))
    return values


def check_population(population: jax.Array, population_size: int, num_dims: int) -> None:
    """Check at trace time that ``population`` is ``(population_size, num_dims)``."""
    if jnp.shape(population) != (population_size, num_dims):
        raise ValueError(
            f"population must have shape (population_size, num_dims) = "
            f"({population_size}, {num_dims}), got {jnp.shape(population)}"
        )


def _is_concrete_number(value: Any) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    if isinstance(value, numbers.Number):
        return True
    try:
        return jnp.ndim(value) == 0
    except TypeError:
        return False


def _bound(value: float | None, integral: bool, infinite: str) -> str:
    if value is None:
        return infinite
    return str(int(value)) if integral else str(value)


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` if a concrete ``value`` lies outside the range.

    Traced values (under jit/vmap) are not checked: they are validated where they are built.
    """
    if not _is_concrete_number(value):
        return
    if isinstance(value, str):
        raise TypeError(f"{name} must be a number, got the string {value!r}")
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    integral &= all(b is None or float(b).is_integer() for b in (low, high))
    value = int(value) if integral else float(value)
    lo, hi = _bound(low, integral, "-inf"), _bound(high, integral, "inf")
    interval = f"{'[' if low_inclusive else '('}{lo}, {hi}{']' if high_inclusive else ')'}"
    # +-inf only passes where the range itself is unbounded on that side *and* says so:
    # an infinite sigma or temperature is never a meaningful setting.
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value < low if low_inclusive else value <= low
    if high is not None:
        bad |= value > high if high_inclusive else value >= high
    if bad:
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Check that ``value`` is a Python/NumPy integer in ``[low, high]`` and return it as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    check_range(name, int(value), low, high)
    return int(value)


def check_params(params: Any, checks: dict[str, tuple]) -> None:
    """Apply :func:`check_range` to the named, non-``None`` fields of a params dataclass.

    ``checks`` maps field name to ``(low, high)`` or ``(low, high, low_inclusive, high_inclusive)``.
    """
    for field, bounds in checks.items():
        value = getattr(params, field, None)
        if value is None:
            continue
        low, high, *inclusive = bounds
        low_inc, high_inc = inclusive if inclusive else (True, True)
        check_range(field, value, low, high, low_inclusive=low_inc, high_inclusive=high_inc)


__all__ = [
    "Capabilities",
    "Decomposition",
    "PyTree",
    "Strategy",
    "StrategyState",
    "check_fitness",
    "check_int",
    "check_key",
    "check_params",
    "check_population",
    "check_range",
    "check_residuals",
    "decomposed_update",
    "make_strategy",
    "mask_non_finite",
    "member_scalars",
    "member_weights",
    "params_to_arrays",
    "record",
    "update_best",
]
