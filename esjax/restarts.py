"""Restart drivers: IPOP and BIPOP run a strategy again and again with new populations until a
budget is spent or a target is reached.

References: A. Auger & N. Hansen, "A Restart CMA Evolution Strategy With Increasing Population
Size", IEEE CEC 2005 (IPOP); N. Hansen, "Benchmarking a BI-Population CMA-ES on the BBOB-2009
Function Testbed", GECCO 2009 workshop proceedings (BIPOP).

**IPOP.** A larger population makes CMA-ES see the global structure of multimodal functions
(rastrigin, ...), so each restart multiplies ``λ`` by ``population_growth`` (2), always from the
same ``σ0``.

**BIPOP** interlaces two regimes and gives them the same budget. The *large* regime is IPOP:
its ``k``-th run (the first run of all being its 0-th) has ``λ = λ_def 2^k`` and ``σ0``. The
*small* regime draws, for each run, two independent uniforms ``U₁, U₂`` on [0, 1) and uses

    λ_s = ⌊λ_def (λ_l / (2 λ_def))^(U₁²)⌋,      σ_s = σ0 · 10^(-2 U₂),

where ``λ_l`` is the population the next large run would get (twice the latest one), so
``λ_s`` lies between ``λ_def`` and the latest large population and is mostly small (``U₁²``
favours 0), while ``σ_s`` ranges over two decades below ``σ0`` (local restarts). A small run may
spend at most half the evaluations of the latest large run. Before each restart BIPOP picks the
regime that has spent fewer evaluations so far (the first run counts as large; a tie goes to
large), so the small regime's spending trails the large one's; if the small regime's draw could
not take one generation within its cap, the large regime runs instead. The run ends when the
large regime would need a restart beyond ``max_restarts``, when the next run cannot take one
generation within ``max_evaluations``, or at the target. With a growth factor ``g`` other than
2, large runs have ``λ_def g^k`` and ``λ_l / g`` replaces ``λ_l / 2``.

**Strategies.** Both drivers take any factory whose population size can grow: it is called as
``strategy(population_size=λ, **strategy_kwargs)``, and each run's initial step size goes into
the strategy's params field named ``sigma_param`` (``"sigma"`` for CMA-ES, sep-CMA-ES and
OpenAI-ES; ``"step_size"`` for simulated annealing). Because the step size is a params leaf, a
run's ``σ0`` is an input of its compiled program, not part of it. A restart is triggered by the
strategy's declared termination signal (``es.terminated``: for CMA-ES tolx, tolfun, condition,
stagnation, no-effect; see :mod:`esjax.strategies.cma_es`); a strategy that declares none runs
until the budget is spent.

**Compilation.** The population size fixes array shapes, so each distinct ``λ`` is a new
strategy and a new compiled program; the loop over restarts runs in Python and one restart
(``init`` and every generation until its stop) is a single jitted ``lax.while_loop``. Programs
are cached per population size within one call and reused by every key of a batch (which runs
its independent runs one after the other). BIPOP's small populations are random, so a BIPOP
call compiles more programs than an IPOP call. Everything else a run needs (key, ``σ0``, caps,
budget, target) is a program input; so is a fitness given as a ``jax.tree_util.Partial`` (e.g.
:func:`esjax.problems.bbob.bbob_function`'s), whose arrays are then not baked in as constants:
with XLA's persistent compilation cache (``jax_compilation_cache_dir``) later calls on other
instances of the same function reuse the compiled programs. The evaluation count is the
strategy's own (``state.evaluations``: ``Σ generations × λ`` for CMA-ES).

With :func:`esjax.run` instead, :func:`stop_callback` ends a run at the chunk where a signal
fires; re-``init`` a strategy with a larger ``population_size`` and call ``run`` again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esjax.base import Strategy, StrategyState, check_int, check_range
from esjax.flatten import FlatSpec, flatten_x0
from esjax.loop import make_generation
from esjax.strategies.cma_es import cma_es, default_population_size


@dataclasses.dataclass(frozen=True)
class IPOPResult:
    """What :func:`ipop` found. Arrays have a leading run axis when a batch of keys was given.

    Attributes:
      best_solution: ``(num_dims,)`` best member over all restarts (flat; ``spec.unflatten``).
      best_fitness: its fitness.
      evaluations: evaluations spent (``Σ generations × λ``).
      evaluations_to_target: evaluations when the best fitness first fell below
        ``target_fitness`` (-1 if it never did).
      num_restarts: restarts after the first run of the strategy.
      population_sizes: ``λ`` of each stage, first to last.
      stage_generations: per stage, the generations each batch member ran (0 if finished).
      spec: the structure of ``x0``.
    """

    best_solution: np.ndarray
    best_fitness: np.ndarray
    evaluations: np.ndarray
    evaluations_to_target: np.ndarray
    num_restarts: np.ndarray
    population_sizes: tuple[int, ...]
    stage_generations: tuple[np.ndarray, ...]
    spec: FlatSpec


@dataclasses.dataclass(frozen=True)
class BIPOPStage:
    """One run of :func:`bipop`.

    Attributes:
      regime: ``"large"`` (IPOP's doubling populations) or ``"small"``.
      population_size: its ``λ``.
      sigma: its initial step size.
      uniforms: ``(U₁, U₂)`` the small regime drew for ``λ_s`` and ``σ_s`` (None for large).
      max_evaluations: what this run alone could spend (half the latest large run's evaluations
        for a small run; the remaining budget for a large one).
      evaluations: what it spent.
      generations: how many generations it ran.
    """

    regime: str
    population_size: int
    sigma: float
    uniforms: tuple[float, float] | None
    max_evaluations: int
    evaluations: int
    generations: int


@dataclasses.dataclass(frozen=True)
class BIPOPResult:
    """What :func:`bipop` found. Arrays have a leading run axis when a batch of keys was given.

    Attributes:
      best_solution: ``(num_dims,)`` best member over all runs (flat; ``spec.unflatten``).
      best_fitness: its fitness.
      evaluations: evaluations spent in total.
      evaluations_to_target: evaluations when the best fitness first fell below
        ``target_fitness`` (-1 if it never did).
      num_restarts: runs after the first one (both regimes).
      large_evaluations, small_evaluations: evaluations spent by each regime (the first run
        counts as large).
      stages: the runs in order, as :class:`BIPOPStage` (a tuple of such tuples, one per key,
        for a batch of keys: their schedules differ).
      spec: the structure of ``x0``.
    """

    best_solution: np.ndarray
    best_fitness: np.ndarray
    evaluations: np.ndarray
    evaluations_to_target: np.ndarray
    num_restarts: np.ndarray
    large_evaluations: np.ndarray
    small_evaluations: np.ndarray
    stages: tuple
    spec: FlatSpec


def stop_callback(target_fitness: float | None = None) -> Callable[[StrategyState, dict], bool]:
    """A ``callback`` for :func:`esjax.run` that stops at the chunk where ``stop`` fired.

    Also stops once ``state.best_fitness < target_fitness`` when a target is given.
    """

    def callback(state: StrategyState, chunk_metrics: dict) -> bool:
        stopped = bool(np.any(chunk_metrics.get("stop", False)))
        if target_fitness is not None:
            stopped |= bool(state.best_fitness < target_fitness)
        return stopped

    return callback


def ipop(
    fitness_fn: Callable[..., jax.Array],
    key: jax.Array,
    x0: Any,
    *,
    sigma: float,
    max_evaluations: int,
    population_size: int | None = None,
    population_growth: int = 2,
    max_restarts: int = 9,
    target_fitness: float = -np.inf,
    strategy: Callable[..., Strategy] = cma_es,
    strategy_kwargs: dict | None = None,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    compiler_options: dict | None = None,
    sigma_param: str = "sigma",
) -> IPOPResult:
    """Run IPOP (Auger & Hansen 2005): restart with ``λ ← population_growth · λ``.

    Args:
      fitness_fn: scores one member shaped like ``x0``; minimised (as in :func:`esjax.run`).
      key: a PRNG key, or a batch of keys ``(k,)`` for ``k`` independent runs.
      x0: the initial solution (flat vector or pytree), or ``x0(key) -> solution`` to draw a new
        start for every restart (e.g. uniform in a box, as in Auger & Hansen).
      sigma: initial step size of every restart (> 0).
      max_evaluations: budget per run; a restart stops before the generation that would exceed it.
      population_size: ``λ`` of the first run; default ``4 + ⌊3 ln n⌋`` (CMA-ES's default).
      population_growth: factor on ``λ`` per restart (2 in IPOP).
      max_restarts: at most this many restarts after the first run.
      target_fitness: a run finishes once its best fitness is below this.
      strategy: factory called as ``strategy(population_size=λ, **strategy_kwargs)``:
        :func:`esjax.cma_es` (default), :func:`esjax.sep_cma_es` or any strategy whose
        population size can grow.
      strategy_kwargs: further factory arguments.
      batch_size: evaluate the population this many members at a time (as in :func:`esjax.run`).
      fitness_takes_key: call ``fitness_fn(member, key)`` (as in :func:`esjax.run`).
      compiler_options: passed to ``jax.jit`` for each population size's program, e.g.
        ``{"xla_backend_optimization_level": 0}`` to trade run time for compile time when the
        fitness is cheap and compilation dominates.
      sigma_param: the field of the strategy's params that receives ``sigma`` at every restart.

    Returns:
      An :class:`IPOPResult`.

    Example:
      >>> result = ipop(esjax.problems.rastrigin, jax.random.key(0),
      ...               lambda k: jax.random.uniform(k, (10,), minval=-4, maxval=4),
      ...               sigma=2.0, max_evaluations=200_000, target_fitness=1e-5)
    """
    population_growth = check_int("population_growth", population_growth, 1)
    max_restarts = check_int("max_restarts", max_restarts, 0)
    stages = _Stages(
        fitness_fn=fitness_fn,
        key=key,
        x0=x0,
        sigma=sigma,
        max_evaluations=max_evaluations,
        population_size=population_size,
        target_fitness=target_fitness,
        strategy=strategy,
        strategy_kwargs=strategy_kwargs,
        batch_size=batch_size,
        fitness_takes_key=fitness_takes_key,
        compiler_options=compiler_options,
        sigma_param=sigma_param,
    )
    first = stages.default_size
    records, schedules = [], []
    for run_key in stages.keys:
        record = stages.initial_record()
        generations = []
        for stage in range(max_restarts + 1):
            size = first * population_growth**stage
            if int(record["to_target"]) >= 0 or not stages.fits(size, record):
                break
            record, stage_generations = stages.run(
                size, jax.random.fold_in(run_key, stage), record, sigma, max_evaluations
            )
            generations.append(int(stage_generations))
        records.append(jax.device_get(record))
        schedules.append(generations)

    num_stages = max(len(generations) for generations in schedules)
    return IPOPResult(
        **stages.gather(records),
        num_restarts=stages.column([len(generations) - 1 for generations in schedules]),
        population_sizes=tuple(first * population_growth**s for s in range(num_stages)),
        stage_generations=tuple(
            stages.column([g[s] if s < len(g) else 0 for g in schedules]) for s in range(num_stages)
        ),
        spec=stages.spec,
    )


def bipop(
    fitness_fn: Callable[..., jax.Array],
    key: jax.Array,
    x0: Any,
    *,
    sigma: float,
    max_evaluations: int,
    population_size: int | None = None,
    population_growth: int = 2,
    max_restarts: int = 9,
    target_fitness: float = -np.inf,
    strategy: Callable[..., Strategy] = cma_es,
    strategy_kwargs: dict | None = None,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    compiler_options: dict | None = None,
    sigma_param: str = "sigma",
) -> BIPOPResult:
    """Run BIPOP (Hansen 2009): IPOP's large-population restarts interlaced with small ones.

    See the module docstring for the regimes, the formulas for ``λ_s`` and ``σ_s`` and the
    budget rule. The arguments are :func:`ipop`'s, with these meanings here:

    Args:
      fitness_fn: as in :func:`ipop`.
      key: as in :func:`ipop`.
      x0: as in :func:`ipop`.
      sigma: ``σ0``: the large regime's initial step size; small runs start below it.
      max_evaluations: budget per run of BIPOP (both regimes together).
      population_size: ``λ_def``, the first run's population; default ``4 + ⌊3 ln n⌋``.
      population_growth: the large regime's factor on ``λ`` per restart (2 in BIPOP).
      max_restarts: restarts of the large regime after the first run (small runs not counted).
      target_fitness: BIPOP finishes once its best fitness is below this.
      batch_size: as in :func:`ipop`.
      fitness_takes_key: as in :func:`ipop`.
      compiler_options: as in :func:`ipop`.
      strategy: as in :func:`ipop`.
      strategy_kwargs: as in :func:`ipop`.
      sigma_param: as in :func:`ipop`.

    Returns:
      A :class:`BIPOPResult`; ``stages`` lists each run's regime, ``λ``, ``σ0`` and spending.

    Example:
      >>> result = bipop(esjax.problems.rastrigin, jax.random.key(0),
      ...                lambda k: jax.random.uniform(k, (10,), minval=-4, maxval=4),
      ...                sigma=2.0, max_evaluations=200_000, target_fitness=1e-5)
      >>> result.stages[0].regime, result.stages[1].regime
      ('large', 'small')
    """
    population_growth = check_int("population_growth", population_growth, 2)
    max_restarts = check_int("max_restarts", max_restarts, 0)
    stages = _Stages(
        fitness_fn=fitness_fn,
        key=key,
        x0=x0,
        sigma=sigma,
        max_evaluations=max_evaluations,
        population_size=population_size,
        target_fitness=target_fitness,
        strategy=strategy,
        strategy_kwargs=strategy_kwargs,
        batch_size=batch_size,
        fitness_takes_key=fitness_takes_key,
        compiler_options=compiler_options,
        sigma_param=sigma_param,
    )
    records, schedules = [], []
    for run_key in stages.keys:
        record, schedule = _bipop_run(stages, run_key, sigma, population_growth, max_restarts)
        records.append(record)
        schedules.append(schedule)

    def spent(regime):
        return stages.column(
            [sum(s.evaluations for s in schedule if s.regime == regime) for schedule in schedules]
        )

    return BIPOPResult(
        **stages.gather(records),
        num_restarts=stages.column([len(schedule) - 1 for schedule in schedules]),
        large_evaluations=spent("large"),
        small_evaluations=spent("small"),
        stages=schedules[0] if stages.single else tuple(schedules),
        spec=stages.spec,
    )


def _bipop_run(
    stages: _Stages, run_key: jax.Array, sigma: float, growth: int, max_restarts: int
) -> tuple[dict, tuple[BIPOPStage, ...]]:
    """One BIPOP run: choose each restart's regime, draw its λ and σ0, run it."""
    stage_keys, draw_keys = jax.random.split(run_key)
    record = stages.initial_record()
    schedule: list[BIPOPStage] = []
    spent = {"large": 0, "small": 0}
    large_runs, latest_large = 0, 0
    while int(record["to_target"]) < 0:
        index = len(schedule)
        small = index > 0 and spent["small"] < spent["large"]
        if small:
            u = np.asarray(jax.random.uniform(jax.random.fold_in(draw_keys, index), (2,)))
            uniforms = (float(u[0]), float(u[1]))
            latest_size = stages.default_size * growth ** (large_runs - 1)
            size = small_population_size(stages.default_size, latest_size, uniforms[0])
            run_sigma = sigma * 10.0 ** (-2.0 * uniforms[1])
            cap = latest_large // 2
            # A small run that cannot take one generation would spend nothing and be drawn
            # again forever: the turn goes to the large regime instead.
            small = cap >= stages.evaluations_per_generation(size)
        if not small:
            if large_runs > max_restarts:
                break
            uniforms = None
            size, run_sigma = stages.default_size * growth**large_runs, sigma
            cap = stages.max_evaluations
        if not stages.fits(size, record):
            break
        before = int(record["evaluations"])
        record, generations = stages.run(
            size, jax.random.fold_in(stage_keys, index), record, run_sigma, cap
        )
        used = int(record["evaluations"]) - before
        regime = "small" if small else "large"
        spent[regime] += used
        if regime == "large":
            large_runs += 1
            latest_large = used
        schedule.append(
            BIPOPStage(regime, size, float(run_sigma), uniforms, cap, used, int(generations))
        )
        if used == 0:  # the strategy stopped before its first generation: nothing would change
            break
    return jax.device_get(record), tuple(schedule)


def small_population_size(default_size: int, latest_large_size: int, uniform: float) -> int:
    """BIPOP's small population ``⌊λ_def (λ_latest / λ_def)^(U²)⌋`` (``λ_latest = λ_l / 2``).

    Args:
      default_size: ``λ_def``.
      latest_large_size: the population of the latest large-regime run.
      uniform: ``U₁`` in [0, 1).

    Returns:
      An integer in ``[λ_def, λ_latest]``.
    """
    ratio = latest_large_size / default_size
    return int(math.floor(default_size * ratio ** (uniform**2)))


class _Stages:
    """The restart programs of one driver call, compiled once per population size.

    A program is ``(fitness, key, record, sigma, cap, budget, target) -> (record, generations)``:
    everything that varies between runs is an input, so a program serves every run of every key.
    A ``jax.tree_util.Partial`` fitness is an input too (its arrays are not baked in as
    constants): programs then coincide for e.g. all instances of a BBOB function, and XLA's
    persistent compilation cache (``jax_compilation_cache_dir``) can reuse them across calls.
    """

    def __init__(
        self,
        *,
        fitness_fn: Callable,
        key: jax.Array,
        x0: Any,
        sigma: float,
        max_evaluations: int,
        population_size: int | None,
        target_fitness: float,
        strategy: Callable[..., Strategy],
        strategy_kwargs: dict | None,
        batch_size: int | None,
        fitness_takes_key: bool,
        compiler_options: dict | None,
        sigma_param: str,
    ):
        self.max_evaluations = check_int("max_evaluations", max_evaluations, 1)
        check_range("sigma", sigma, 0.0, None, low_inclusive=False)
        if not isinstance(sigma_param, str):
            raise TypeError(f"sigma_param must be a str naming a params field, got {sigma_param!r}")
        self.draw_x0 = x0 if callable(x0) else (lambda _: x0)
        keys = jnp.asarray(key)
        self.single = keys.ndim == 0
        self.keys = keys[None] if self.single else keys
        _, self.spec = flatten_x0(self.draw_x0(self.keys[0]))
        size = (
            default_population_size(self.spec.num_dims)
            if population_size is None
            else population_size
        )
        self.default_size = check_int("population_size", size, 1)
        self.target_fitness = float(target_fitness)
        self.fitness_fn = fitness_fn
        self.factory = strategy
        self.strategy_kwargs = dict(strategy_kwargs or {})
        self.batch_size = batch_size
        self.fitness_takes_key = fitness_takes_key
        self.compiler_options = compiler_options
        self.sigma_param = sigma_param
        self.programs: dict[int, tuple[Strategy, Callable]] = {}

    def strategy(self, size: int) -> Strategy:
        """The strategy of population ``size`` (built, checked and compiled on first use)."""
        if size not in self.programs:
            es = self.factory(population_size=size, **self.strategy_kwargs)
            fields = {field.name for field in dataclasses.fields(es.default_params)}
            if self.sigma_param not in fields:
                raise ValueError(
                    f"sigma_param must name a field of {type(es.default_params).__name__} (the "
                    f"strategy's params: {sorted(fields)}), got {self.sigma_param!r}"
                )
            stage = _stage(
                es,
                self.fitness_fn,
                self.draw_x0,
                self.batch_size,
                self.fitness_takes_key,
                self.sigma_param,
            )
            self.programs[size] = (es, jax.jit(stage, compiler_options=self.compiler_options))
        return self.programs[size][0]

    def evaluations_per_generation(self, size: int) -> int:
        return int(self.strategy(size).capabilities.evaluations_per_generation)

    def fits(self, size: int, record: dict) -> bool:
        """Whether one more generation of ``λ = size`` stays within the budget."""
        spent = int(record["evaluations"]) + self.evaluations_per_generation(size)
        return spent <= self.max_evaluations

    def run(self, size: int, key, record: dict, sigma: float, cap: int) -> tuple[dict, jax.Array]:
        """One restart of ``λ = size`` from ``sigma``, spending at most ``cap`` evaluations."""
        self.strategy(size)
        fitness = self.fitness_fn if isinstance(self.fitness_fn, jax.tree_util.Partial) else None
        return self.programs[size][1](
            fitness,
            key,
            record,
            jnp.asarray(sigma, self.spec.dtype),
            jnp.asarray(cap, jnp.int32),
            jnp.asarray(self.max_evaluations, jnp.int32),
            jnp.asarray(self.target_fitness, self.spec.dtype),
        )

    def initial_record(self) -> dict:
        return {
            "evaluations": jnp.array(0, jnp.int32),
            "best_fitness": jnp.array(jnp.inf, self.spec.dtype),
            "best_solution": jnp.zeros(self.spec.num_dims, self.spec.dtype),
            "to_target": jnp.array(-1, jnp.int32),
        }

    def gather(self, records: list[dict]) -> dict:
        """The per-run records as result fields (a leading run axis for a batch of keys)."""
        names = {
            "best_solution": "best_solution",
            "best_fitness": "best_fitness",
            "evaluations": "evaluations",
            "evaluations_to_target": "to_target",
        }
        return {field: self.column([r[name] for r in records]) for field, name in names.items()}

    def column(self, values: list) -> np.ndarray:
        values = np.stack([np.asarray(value) for value in values])
        return values[0] if self.single else values


def _stage(
    es: Strategy,
    fitness_fn: Callable,
    draw_x0: Callable,
    batch_size: int | None,
    fitness_takes_key: bool,
    sigma_param: str,
) -> Callable:
    """One restart, ``init`` to stop, as a function to jit (see :class:`_Stages` for its inputs).

    ``cap`` bounds this restart's own evaluations (BIPOP's small regime), ``budget`` the run's
    total; ``fitness`` is a ``Partial`` fitness given as input, or None to use ``fitness_fn``.
    """
    per_generation = es.capabilities.evaluations_per_generation

    def run_stage(fitness, stage_key, record, sigma, cap, budget, target):
        generation = make_generation(
            es,
            fitness_fn if fitness is None else fitness,
            batch_size=batch_size,
            fitness_takes_key=fitness_takes_key,
        )
        x0_key, init_key, run_key = jax.random.split(stage_key, 3)
        state = es.init(
            init_key, draw_x0(x0_key), es.default_params.replace(**{sigma_param: sigma})
        )
        start = record["evaluations"]

        def running(carry):
            state, record = carry
            reached = record["best_fitness"] < target
            budget_spent = record["evaluations"] + per_generation > budget
            cap_spent = state.evaluations + per_generation > cap
            return ~(es.terminated(state) | reached | budget_spent | cap_spent)

        def body(carry):
            state, record = carry
            state, _ = generation(jax.random.fold_in(run_key, state.generation), state)
            evaluations = start + state.evaluations
            improved = state.best_fitness < record["best_fitness"]
            best_fitness = jnp.where(improved, state.best_fitness, record["best_fitness"])
            first_hit = (best_fitness < target) & (record["to_target"] < 0)
            return state, {
                "evaluations": evaluations,
                "best_fitness": best_fitness,
                "best_solution": jnp.where(improved, state.best_solution, record["best_solution"]),
                "to_target": jnp.where(first_hit, evaluations, record["to_target"]),
            }

        state, record = jax.lax.while_loop(running, body, (state, record))
        return record, state.generation

    return run_stage


__all__ = [
    "BIPOPResult",
    "BIPOPStage",
    "IPOPResult",
    "bipop",
    "ipop",
    "small_population_size",
    "stop_callback",
]
