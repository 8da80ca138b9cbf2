"""Gradient-free methods on one ``esjax run`` problem: ``esjax compare CONFIG.yaml``.

A problem comparison names one ``problem`` section, exactly as a run config does (a built-in test
function, a control or model task, or your own ``function: "module:attr"``), and several
gradient-free strategies; every method of a seed starts from the same problem and initial
solution, and is measured by the same loop (:func:`esjax.baselines.timed_run`)::

    name: functions_compare
    problem: {name: rastrigin, num_dims: 10, x0: 3.0}
    seeds: [0, 1, 2]                  # or seed: 0
    eval_every: 10                    # generations between recorded rows (default: ~20 rows)
    target_fitness: 1.0e-3            # optional: the "evaluations to target" column
    methods:
      - {label: cma_es, strategy: {name: cma_es, population_size: 16}, generations: 200}
      - {label: pso, strategy: {name: pso, population_size: 32}, generations: 200}

A method may set ``eval_every`` and ``population_batch_size`` (evaluate the population in chunks
of that many members); a top-level ``generations`` is the default of every method without its
own. A method is a gradient-free ``strategy`` or an optax gradient baseline, ``optimizer:
{name: adam, learning_rate: 0.01}`` with ``steps``, run on the problem's own gradient (refused
for problems without a useful one: :data:`NOT_DIFFERENTIABLE`); ``elm`` methods need a model and
a data set, which is what a ``task``/``model`` comparison (:mod:`esjax.experiments.compare`) is
for.

Keys, as in :func:`esjax.experiments.runner.run_experiment`: the problem uses
``fold_in(key(seed), 0)``, a strategy's ``init`` ``fold_in(key(seed), 1)`` and the generations
``fold_in(key(seed), 2)``; so a one-method comparison reproduces ``esjax run``'s best fitness
and solution exactly. A method's seeds share one compiled chunk when the problem does not depend
on its key (a function without shift or rotation, your own function); otherwise each seed
compiles its own.

Outputs in ``<output_dir>/<name>/``: per method ``<label>/seed_<s>/metrics.csv`` (one row per
``eval_every`` generations and the start: generation ``step``, ``wall_clock_s``, ``evaluations``
(also as ``forward_passes``, the dataset comparison's name), ``best_fitness`` and
``solution_fitness``, the fitness of the solution the strategy reports),
``<label>/seed_<s>/solution.msgpack`` (:func:`esjax.checkpoint.load_solution`) and
``<label>/summary.json`` (per seed and mean ± std); ``summary.json``, ``comparison.md`` and
``fitness.png`` (mean best fitness against evaluations). ``checkpoint_every``/``--checkpoint-every``
and ``--resume`` work as in a dataset comparison, a seed at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from esjax import checkpoint, nn
from esjax.base import Strategy, check_int
from esjax.baselines import BACKWARD_COST_IN_FORWARDS, GradientState, optax_trainer
from esjax.experiments import report, schema
from esjax.experiments.compare import (
    METHOD_SUMMARY_FILE,
    SOLUTION_FILE,
    _clear_method_dir,
    _finished_summary,
    resumable_timed_run,
)
from esjax.experiments.compare import _parse_seeds as _parse_seed_list
from esjax.experiments.compare import _std as _sample_std
from esjax.experiments.config import (
    RESIDUAL_STRATEGIES,
    SEED_RANGE,
    build_optimizer,
    build_strategy,
    select_methods,
    validate_strategy_section,
)
from esjax.experiments.outputs import (
    check_run_name,
    claim_run_dir,
    read_yaml,
    replace_text,
    write_json,
    write_metrics_csv,
)
from esjax.experiments.setup import ProblemSetup, build_problem, check_problem_section
from esjax.loop import make_generation
from esjax.problems.functions import FUNCTIONS

NUMBER = (int, float)
TOP_KEYS = {
    "name": str,
    "problem": dict,
    "seed": int,
    "seeds": list,
    "generations": int,
    "eval_every": (int, type(None)),
    "target_fitness": (*NUMBER, type(None)),
    "output_dir": str,
    "methods": list,
    "checkpoint_every": (int, type(None)),
}
METHOD_KEYS = {
    "label": str,
    "strategy": dict,
    "optimizer": dict,
    "generations": int,
    "steps": int,
    "eval_every": (int, type(None)),
    "population_batch_size": (int, type(None)),
}
# Method kinds of a dataset comparison that a problem comparison cannot run.
GRADIENT_KEYS = ("elm",)
# Problems whose fitness has no useful gradient, and why.
NOT_DIFFERENTIABLE = {
    "cartpole": "its policy picks discrete actions (an argmax), so the episode return has a zero "
    "gradient almost everywhere",
}
RUN_COLUMNS = ("step", "wall_clock_s", "forward_passes")  # timed_run's, before evaluations
DEFAULT_ROWS = 20  # evaluation rows per method without an eval_every


@dataclasses.dataclass(frozen=True)
class ProblemMethod:
    """One method of a problem comparison.

    Attributes:
      label: its name in tables, plots and the output folder.
      strategy: the strategy section (``{name: ..., **factory arguments}``), or None for a
        gradient method.
      generations: generations (a gradient method: optax steps) to run (>= 1).
      eval_every: generations between recorded rows (None: about :data:`DEFAULT_ROWS` rows).
      population_batch_size: evaluate the population this many members at a time (None: all).
      optimizer: a gradient method's optax section (``{name: adam, learning_rate: ...}``).
    """

    label: str
    strategy: dict | None
    generations: int
    eval_every: int | None = None
    population_batch_size: int | None = None
    optimizer: dict | None = None

    @property
    def kind(self) -> str:
        """``"gradient"`` (an optax optimizer on the problem's gradient) or ``"gradient-free"``."""
        return "gradient" if self.optimizer is not None else "gradient-free"

    @property
    def every(self) -> int:
        """The generations per recorded row this method runs with."""
        if self.eval_every is not None:
            return self.eval_every
        return max(1, self.generations // DEFAULT_ROWS)


@dataclasses.dataclass(frozen=True)
class ProblemComparisonConfig:
    """A validated problem comparison (see the module docstring for the YAML layout)."""

    name: str
    problem: dict
    methods: tuple[ProblemMethod, ...]
    seeds: tuple[int, ...]
    target_fitness: float | None
    output_dir: str
    raw: dict
    checkpoint_every: int | None = None
    config_dir: str | None = dataclasses.field(default=None, compare=False)


def _parse_seeds(raw: dict) -> tuple[int, ...]:
    if "seeds" in raw:
        if "seed" in raw:
            raise ValueError("give either 'seed' or 'seeds' (a list), not both")
        if not raw["seeds"]:
            raise ValueError("config key 'seeds' must be a non-empty list of integers")
        return _parse_seed_list(raw["seeds"], "seeds")
    return (check_int("seed", raw.get("seed", 0), *SEED_RANGE),)


def _parse_method(
    raw: Any,
    where: str,
    defaults: dict,
    steps: int | None,
    config_dir: str | None,
    problem: dict,
) -> ProblemMethod:
    if isinstance(raw, dict):
        gradient = [key for key in GRADIENT_KEYS if key in raw]
        if gradient:
            raise ValueError(
                f"{where} has {gradient[0]!r}: an ELM fits a model's readout on a data set, so it "
                "needs a task and a model (see esjax.experiments.compare)"
            )
    schema.check_section(where, raw, METHOD_KEYS, label=where)
    if ("strategy" in raw) == ("optimizer" in raw):
        raise ValueError(
            f"{where} needs exactly one of 'strategy' (gradient-free) or 'optimizer' (an optax "
            f"gradient baseline), got {sorted(raw)}"
        )
    if "strategy" in raw:
        validate_strategy_section(raw["strategy"], f"{where}.strategy", config_dir)
        name = raw["strategy"]["name"]
    else:
        if "name" not in raw["optimizer"]:
            raise ValueError(f"{where}.optimizer needs a 'name' (an optax optimizer, e.g. adam)")
        name = raw["optimizer"]["name"]
        reason = NOT_DIFFERENTIABLE.get(problem.get("name"))
        if reason is not None:
            raise ValueError(
                f"{where}.optimizer: problem {problem['name']!r} has no useful gradient: {reason}"
            )
        try:  # unknown optimizers and arguments fail here, before anything runs
            build_optimizer(raw["optimizer"])
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}.optimizer: {error}") from None
    label = raw.get("label", name)
    check_run_name(label, f"{where}.label")
    if "generations" in raw and "steps" in raw:
        raise ValueError(f"{where} sets both 'generations' and 'steps' (the same budget): keep one")
    budget = raw.get("generations", raw.get("steps"))
    if steps is not None:
        generations = check_int("--steps", steps, 1)
    elif budget is not None:
        key = "generations" if "generations" in raw else "steps"
        generations = check_int(f"{where}.{key}", budget, 1)
    elif defaults["generations"] is not None:
        generations = defaults["generations"]
    else:
        raise ValueError(f"{where} needs 'generations' or 'steps' (or a top-level 'generations')")
    eval_every = raw.get("eval_every", defaults["eval_every"])
    if eval_every is not None:
        eval_every = check_int(f"{where}.eval_every", eval_every, 1)
    batch = raw.get("population_batch_size")
    if batch is not None:
        batch = check_int(f"{where}.population_batch_size", batch, 1)
    return ProblemMethod(
        label=label,
        strategy=dict(raw["strategy"]) if "strategy" in raw else None,
        generations=generations,
        eval_every=eval_every,
        population_batch_size=batch,
        optimizer=dict(raw["optimizer"]) if "optimizer" in raw else None,
    )


def parse_problem_comparison(
    raw: Any,
    *,
    steps: int | None = None,
    methods: list[str] | None = None,
    config_dir: str | Path | None = None,
) -> ProblemComparisonConfig:
    """Validate a problem-comparison config dict; ``steps`` overrides every method's
    generations, ``methods`` keeps only the listed labels, ``config_dir`` is where
    ``"module:attribute"`` references (problem functions, strategies) are looked for first."""
    if not isinstance(raw, dict):
        raise TypeError(f"a config must be a mapping at the top level, got {type(raw).__name__}")
    schema.check_section(
        "", raw, TOP_KEYS, ("name", "problem", "methods"), label="the problem comparison config"
    )
    config_dir = None if config_dir is None else str(config_dir)
    check_run_name(raw["name"])
    check_problem_section(raw["problem"])  # name or function, keys: before anything is built
    seeds = _parse_seeds(raw)
    defaults = {
        "generations": None
        if "generations" not in raw
        else check_int("generations", raw["generations"], 1),
        "eval_every": None
        if raw.get("eval_every") is None
        else check_int("eval_every", raw["eval_every"], 1),
    }
    target = raw.get("target_fitness")
    if target is not None:
        target = float(target)
        if not math.isfinite(target):
            raise ValueError(f"target_fitness must be a finite number, got {target}")
    parsed = tuple(
        _parse_method(m, f"methods[{i}]", defaults, steps, config_dir, raw["problem"])
        for i, m in enumerate(raw["methods"])
    )
    if "loss" in raw["problem"]:
        for method in parsed:
            nn.check_loss_kind(
                raw["problem"]["loss"],
                takes_residuals=method.strategy is not None
                and method.strategy["name"] in RESIDUAL_STRATEGIES,
                where=f"problem.loss (method {method.label!r})",
            )
    parsed, _ = select_methods(parsed, methods)
    return ProblemComparisonConfig(
        name=raw["name"],
        problem=dict(raw["problem"]),
        methods=parsed,
        seeds=seeds,
        target_fitness=target,
        output_dir=raw.get("output_dir", "results"),
        raw=raw,
        checkpoint_every=None
        if raw.get("checkpoint_every") is None
        else check_int("checkpoint_every", raw["checkpoint_every"], 1),
        config_dir=config_dir,
    )


def load_problem_comparison(path: str | Path, **overrides) -> ProblemComparisonConfig:
    """Read and validate a problem-comparison YAML file (``overrides``: ``steps``, ``methods``
    as in :func:`parse_problem_comparison`); references resolve from the file's folder first."""
    return parse_problem_comparison(
        read_yaml(path), config_dir=Path(path).resolve().parent, **overrides
    )


def is_problem_comparison(raw: Any) -> bool:
    """Whether a comparison config (as read from YAML) compares methods on a ``problem``."""
    return isinstance(raw, dict) and "problem" in raw


def seed_free(problem: dict) -> bool:
    """Whether the problem a section builds is the same whatever its key: then every seed can
    share one problem and one compiled chunk (your own function; a built-in function without
    shift or rotation). Task problems draw data or parameters from the key."""
    if "function" in problem:
        return True
    return (
        problem.get("name") in FUNCTIONS
        and not problem.get("shift_scale", 0.0)
        and not problem.get("rotate", False)
    )


def problem_description(problem: dict) -> str:
    """``rastrigin (num_dims 10)``, or the function reference of your own."""
    name = problem.get("name") or problem.get("function")
    return f"{name} (num_dims {problem['num_dims']})" if "num_dims" in problem else str(name)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The problem, init and generations keys of a seed (as in ``esjax run``)."""
    key = jax.random.key(seed)
    return tuple(jax.random.fold_in(key, i) for i in range(3))


def make_evaluate(es, problem: ProblemSetup):
    """The jitted ``state -> {best_fitness[, solution_fitness]}`` of every recorded row:
    the solution's fitness only where the problem's fitness is a scalar (not for residuals);
    a fitness that takes a key is scored with the fixed key ``jax.random.key(0)``."""

    def fitness(solution):
        if problem.fitness_takes_key:
            return problem.fitness_fn(solution, jax.random.key(0))
        return problem.fitness_fn(solution)

    scalar = jax.eval_shape(fitness, problem.x0).shape == ()

    @jax.jit
    def evaluate(state) -> dict:
        values = {"best_fitness": state.best_fitness}
        if scalar:
            values["solution_fitness"] = fitness(state.unravel(es.solution(state)))
        return values

    return evaluate


def evaluations_to_target(history: list[dict], target: float | None) -> int | None:
    """The evaluations of the first row with ``best_fitness <= target`` (None: never, or no
    target)."""
    if target is None:
        return None
    for row in history:
        if row["best_fitness"] <= target:
            return int(row["evaluations"])
    return None


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def _std(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return _sample_std(values) if values else None


def mean_history(histories: list[list[dict]]) -> list[dict]:
    """Rows averaged over seeds (the first seed's when the seeds' steps differ)."""
    first = histories[0]
    if any([r["step"] for r in h] != [r["step"] for r in first] for h in histories[1:]):
        return first
    return [
        {key: _mean([h[i][key] for h in histories]) for key in row} for i, row in enumerate(first)
    ]


PER_SEED_NUMBERS = ("best_fitness", "solution_fitness", "evaluations", "wall_clock_s")


def aggregate(
    method: ProblemMethod, runner: MethodRunner, per_seed: list[dict], target: float | None
) -> dict:
    """One method's summary: the per-seed results, and the mean and sample standard deviation
    (``<key>_std``) of each number over seeds; ``evaluations_to_target`` is the mean over the
    seeds that reached the target (``seeds_reaching_target`` of them)."""
    summary: dict[str, Any] = {
        "label": method.label,
        "kind": method.kind,
        "strategy": method.strategy,
        "optimizer": method.optimizer,
        "population_size": runner.population_size,
        "reported_solution": runner.reported_solution,
        "generations": method.generations,
        "eval_every": method.every,
        "seeds": [s["seed"] for s in per_seed],
    }
    for key in PER_SEED_NUMBERS:
        values = [s.get(key) for s in per_seed]
        summary[key] = _mean(values)
        summary[f"{key}_std"] = _std(values)
    fitness = [s["best_fitness"] for s in per_seed]
    summary["best_fitness_min"] = min(fitness)
    summary["best_fitness_max"] = max(fitness)
    summary["compile_s"] = float(sum(s["compile_s"] for s in per_seed))
    reached = [
        s["evaluations_to_target"] for s in per_seed if s["evaluations_to_target"] is not None
    ]
    summary["target_fitness"] = target
    summary["evaluations_to_target"] = _mean(reached)
    summary["seeds_reaching_target"] = len(reached)
    summary["terminated"] = sum(bool(s["terminated"]) for s in per_seed)
    summary["per_seed"] = [{k: v for k, v in s.items() if k != "history"} for s in per_seed]
    summary["history"] = mean_history([s["history"] for s in per_seed])
    return summary


def seed_fingerprint(config: ProblemComparisonConfig, method: ProblemMethod, seed: int) -> dict:
    """Everything that changes one method's run at one seed: a checkpoint or a finished seed's
    summary resumes only under the same (:func:`esjax.experiments.schema.check_fingerprint`)."""
    return schema.fingerprint(
        {
            "method": dataclasses.asdict(method),
            "problem": config.problem,
            "seed": seed,
            "target_fitness": config.target_fitness,
        }
    )


class MethodRunner(NamedTuple):
    """What :func:`run_method` needs of a method, whatever its kind.

    Attributes:
      name: the strategy's or the optimizer's name.
      init: ``(key, x0) -> state``.
      step_fn: ``problem -> (key, state) -> (state, metrics)`` (one generation or optax step).
      evaluate: ``problem -> state -> {"best_fitness"?, "solution_fitness"?}`` (jitted).
      counter: ``state -> steps done``.
      per_step: evaluations per step (a gradient step counts as 1 + 2 for the backward pass).
      count: ``state -> evaluations spent`` (None: ``steps × per_step``).
      solution: ``state -> the reported solution, shaped like x0``.
      terminated: ``state -> bool``: stopped by the method's own termination signal.
      population_size: members per generation (None for a gradient method).
      reported_solution: ``"mean"``, ``"best"`` or ``"params"`` (a gradient method's iterate).
    """

    name: str
    init: Callable
    step_fn: Callable
    evaluate: Callable
    counter: Callable
    per_step: int
    count: Callable | None
    solution: Callable
    terminated: Callable
    population_size: int | None
    reported_solution: str


def _problem_fitness(problem: ProblemSetup) -> Callable:
    # A fitness that takes a key is scored with the fixed key jax.random.key(0).
    def fitness(solution):
        if problem.fitness_takes_key:
            return problem.fitness_fn(solution, jax.random.key(0))
        return problem.fitness_fn(solution)

    return fitness


def strategy_runner(es: Strategy, method: ProblemMethod) -> MethodRunner:
    """A gradient-free method: the strategy's generations (``esjax.run``'s)."""

    def step_fn(problem: ProblemSetup) -> Callable:
        return make_generation(
            es,
            problem.fitness_fn,
            batch_size=method.population_batch_size,
            fitness_takes_key=problem.fitness_takes_key,
        )

    return MethodRunner(
        name=es.name,
        init=es.init,
        step_fn=step_fn,
        evaluate=lambda problem: make_evaluate(es, problem),
        counter=lambda state: state.generation,
        per_step=es.population_size,
        count=lambda state: state.evaluations,
        solution=lambda state: state.unravel(es.solution(state)),
        terminated=lambda state: bool(es.terminated(state)),
        population_size=es.population_size,
        reported_solution=es.capabilities.solution,
    )


def gradient_runner(method: ProblemMethod) -> MethodRunner:
    """A gradient method: an optax optimizer on the problem's own gradient
    (:func:`esjax.baselines.optax_trainer`); each step's key is the generation key a strategy
    would get. Its rows' ``best_fitness`` is the lowest fitness of the iterate so far (at the
    recorded rows), ``solution_fitness`` the iterate's."""
    optimizer = build_optimizer(method.optimizer)

    def trainer(problem: ProblemSetup):
        def loss(params, key):
            if problem.fitness_takes_key:
                return problem.fitness_fn(params, key)
            return problem.fitness_fn(params)

        return optax_trainer(loss, optimizer, name=method.label)

    def evaluate(problem: ProblemSetup) -> Callable:
        fitness = _problem_fitness(problem)
        return jax.jit(lambda state: {"solution_fitness": fitness(state.params)})

    return MethodRunner(
        name=method.optimizer["name"],
        init=lambda key, x0: GradientState(
            params=x0, opt_state=optimizer.init(x0), step=jnp.zeros((), jnp.int32)
        ),
        step_fn=lambda problem: trainer(problem).step,
        evaluate=evaluate,
        counter=lambda state: state.step,
        per_step=1 + BACKWARD_COST_IN_FORWARDS,
        count=None,
        solution=lambda state: state.params,
        terminated=lambda state: False,
        population_size=None,
        reported_solution="params",
    )


def _with_running_best(history: list[dict]) -> list[dict]:
    # A gradient method's best fitness: the lowest iterate fitness recorded so far.
    best, rows = math.inf, []
    for row in history:
        value = row["solution_fitness"]
        if value is not None and math.isfinite(value):
            best = min(best, value)
        rows.append({**row, "best_fitness": best})
    return rows


def method_runner(method: ProblemMethod, config_dir: str | None) -> MethodRunner:
    """The runner of ``method``: its strategy, or its optax optimizer."""
    if method.optimizer is not None:
        return gradient_runner(method)
    return strategy_runner(build_strategy(method.strategy, config_dir), method)


def run_method(
    config: ProblemComparisonConfig,
    method: ProblemMethod,
    problems: dict[int, ProblemSetup],
    run_dir: Path,
    *,
    progress: bool = True,
    runner: MethodRunner | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> dict:
    """One method at every seed of ``config`` (``problems``: each seed's problem; ``runner``:
    the method's :class:`MethodRunner`, built from its section when not given); writes its per-seed
    ``metrics.csv``, ``solution.msgpack`` and ``summary.json`` and its ``summary.json``.

    ``checkpoint_every = K`` saves each seed's state to ``<label>/seed_<s>/checkpoint.msgpack``
    at the first recorded row at or after every K generations (the dataset comparison's rule);
    ``resume=True`` reuses finished seeds and continues an interrupted one from its checkpoint,
    with every row but wall-clock equal to an uninterrupted run's."""
    if runner is None:
        runner = method_runner(method, config.config_dir)
    steps = {}  # one step function and compiled chunks per distinct problem object
    per_seed = []
    for seed in config.seeds:
        problem = problems[seed]
        _, init_key, run_key = seed_keys(seed)
        seed_dir = run_dir / method.label / f"seed_{seed}"
        fingerprint = seed_fingerprint(config, method, seed)
        if not resume:
            _clear_method_dir(seed_dir, also=("metrics.csv",))
        finished = _finished_summary(seed_dir, fingerprint) if resume else None
        if finished is not None:
            per_seed.append(finished)
            continue
        if id(problem) not in steps:
            steps[id(problem)] = (runner.step_fn(problem), runner.evaluate(problem), {})
        step_fn, evaluate, compiled = steps[id(problem)]
        seed_dir.mkdir(parents=True, exist_ok=True)
        result, compile_seconds = resumable_timed_run(
            step_fn,
            runner.init(init_key, problem.x0),
            run_key,
            method.generations,
            run_dir=seed_dir,
            fingerprint=fingerprint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            counter=runner.counter,
            evaluate=evaluate,
            eval_every=method.every,
            forward_passes_per_step=runner.per_step,
            count_forward_passes=runner.count,
            progress=progress,
            description=f"{method.label} seed {seed}",
            compiled=compiled,
        )
        history = [
            {**{k: row[k] for k in RUN_COLUMNS}, "evaluations": int(row["forward_passes"]), **row}
            for row in result.history
        ]
        if method.kind == "gradient":
            history = _with_running_best(history)
        state, final = result.state, history[-1]
        write_metrics_csv(seed_dir / "metrics.csv", history)
        checkpoint.save_solution(
            seed_dir / SOLUTION_FILE,
            runner.solution(state),
            {
                "strategy": runner.name,
                "reported_solution": runner.reported_solution,
                "label": method.label,
                "seed": seed,
                "best_fitness": final["best_fitness"],
            },
        )
        seed_summary = {
            "seed": seed,
            "best_fitness": final["best_fitness"],
            "solution_fitness": final.get("solution_fitness"),
            "evaluations": int(final["evaluations"]),
            "generations": int(runner.counter(state)),
            "wall_clock_s": final["wall_clock_s"],
            "compile_s": compile_seconds,
            "evaluations_to_target": evaluations_to_target(history, config.target_fitness),
            "terminated": runner.terminated(state),
            "history": history,
        }
        # Written last: a seed with a summary is finished, and --resume reuses it as it is.
        seed_summary = write_json(
            seed_dir / METHOD_SUMMARY_FILE, {**seed_summary, "fingerprint": fingerprint}
        )
        seed_summary.pop("fingerprint")
        per_seed.append(seed_summary)
    summary = aggregate(method, runner, per_seed, config.target_fitness)
    write_json(
        run_dir / method.label / METHOD_SUMMARY_FILE,
        {k: v for k, v in summary.items() if k != "history"},
    )
    return summary


def build_problems(config: ProblemComparisonConfig) -> dict[int, ProblemSetup]:
    """Each seed's problem from ``fold_in(key(seed), 0)``: one object shared by every seed when
    the problem does not depend on its key (:func:`seed_free`)."""
    problems: dict[int, ProblemSetup] = {}
    for seed in config.seeds:
        if problems and seed_free(config.problem):
            problems[seed] = next(iter(problems.values()))
        else:
            problems[seed] = build_problem(config.problem, seed_keys(seed)[0], config.config_dir)
    return problems


def run_problem_comparison(
    config: ProblemComparisonConfig,
    *,
    output_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> dict:
    """Run every method at every seed and write all outputs (module docstring) to
    ``<output_dir or config.output_dir>/<name>/``; a folder holding an earlier comparison's
    outputs is refused unless ``resume`` or ``overwrite`` (which removes only esjax's own
    outputs).

    ``checkpoint_every`` (default: the config's) checkpoints every seed of every method
    (:func:`run_method`); ``resume=True`` continues a killed comparison: finished seeds are
    reused, the interrupted one continues from its checkpoint, and every number but wall-clock
    and compile time equals the uninterrupted comparison's.

    Returns:
      ``{"run_dir", "methods": [summary, ...]}``; a summary's ``history`` is the mean curve.
    """
    run_dir = Path(output_dir or config.output_dir) / config.name
    outputs = ("summary.json", "comparison.md", "fitness.png", *(m.label for m in config.methods))
    # Every strategy and problem is built before anything runs or the folder is claimed: a bad
    # argument fails the comparison at once and leaves no empty folder behind.
    runners = [method_runner(m, config.config_dir) for m in config.methods]
    problems = build_problems(config)
    if checkpoint_every is None:
        checkpoint_every = config.checkpoint_every
    else:
        checkpoint_every = check_int("checkpoint_every (--checkpoint-every)", checkpoint_every, 1)
    claim_run_dir(run_dir, outputs, resume=resume, overwrite=overwrite)
    summaries = [
        run_method(
            config,
            method,
            problems,
            run_dir,
            progress=progress,
            runner=runner,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        for method, runner in zip(config.methods, runners, strict=True)
    ]
    context = {
        "name": config.name,
        "problem": config.problem,
        "seeds": list(config.seeds),
        "target_fitness": config.target_fitness,
        "machine": report.machine_description(),
    }
    plot_fitness(summaries, run_dir / "fitness.png", context)
    write_comparison_md(run_dir / "comparison.md", context, summaries)
    write_json(
        run_dir / "summary.json",
        {
            **context,
            "output_dir": str(run_dir.parent),
            "methods": [{k: v for k, v in s.items() if k != "history"} for s in summaries],
            "config": config.raw,
        },
    )
    return {"run_dir": str(run_dir), "methods": summaries}


def _number(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def problem_table(summaries: list[dict], target: float | None) -> str:
    """A Markdown table: one row per method with its seeds, the final best fitness (mean ± sample
    std over seeds), evaluations, wall-clock and evaluations to the target."""
    to_target = "evaluations to target" if target is None else f"evaluations to ≤ {target:.3g}"
    lines = [
        "| method | seeds | best fitness mean ± std | evaluations | wall-clock (s) "
        f"| {to_target} (seeds reached) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        seeds = len(s["seeds"])
        if target is None:
            hit = "no target"
        elif s["seeds_reaching_target"] == 0:
            hit = f"not reached (0/{seeds})"
        else:
            hit = f"{_count(s['evaluations_to_target'])} ({s['seeds_reaching_target']}/{seeds})"
        lines.append(
            f"| {s['label']} | {seeds} | {_number(s['best_fitness'])} ± "
            f"{_number(s['best_fitness_std'])} | {_count(s['evaluations'])} "
            f"| {s['wall_clock_s']:.3g} | {hit} |"
        )
    return "\n".join(lines)


NOTE = (
    "Evaluations are each strategy's own count of fitness evaluations (state.evaluations; for "
    "Nelder-Mead what its sequential rule would have evaluated). Wall-clock is the run only: "
    "each scanned chunk is compiled ahead of time (compile time is in summary.json) and the "
    "recorded rows are evaluated outside the timed region. Best fitness is the best member seen; "
    "solution fitness (metrics.csv, summary.json) is the fitness of the solution the strategy "
    "reports (its mean, or its best member). A gradient method (an optax optimizer on the "
    "problem's own gradient, dashed in the plot) counts 3 evaluations per step (the backward "
    "pass as 2 forward passes); its best fitness is the lowest fitness of its iterate at the "
    "recorded rows. Evaluations to target is the mean over the seeds that reached it, resolved "
    "to eval_every generations."
)


def write_comparison_md(path: Path, context: dict, summaries: list[dict]) -> None:
    """``comparison.md``: the setup, the summary table, accounting and the plot."""
    seeds = context["seeds"]
    lines = [
        f"# {context['name']}",
        "",
        f"Problem: {problem_description(context['problem'])}; {len(seeds)} seed(s) {seeds}: "
        "within a seed every method starts from the same problem and initial solution. "
        f"Ran on {context['machine']}.",
        "",
        problem_table(summaries, context["target_fitness"]),
        "",
    ]
    stopped = [
        f"{s['label']} ({s['terminated']}/{len(s['seeds'])})" for s in summaries if s["terminated"]
    ]
    if stopped:
        lines += [
            "Stopped early by their own termination signal (seeds): " + ", ".join(stopped) + ".",
            "",
        ]
    lines += [
        NOTE,
        "",
        "![best fitness vs evaluations](fitness.png)",
        "",
    ]
    replace_text(path, "\n".join(lines))


def fitness_figure(summaries: list[dict], title: str = ""):
    """Mean best fitness over seeds against mean evaluations, one line per method; a log y axis
    when every finite value is positive, else symlog. Non-finite rows are left out."""
    figure, axes = report._figure()
    every = []
    for s in summaries:
        rows = [
            r
            for r in s["history"]
            if r["best_fitness"] is not None and math.isfinite(r["best_fitness"])
        ]
        every += [r["best_fitness"] for r in rows]
        axes.plot(
            [r["evaluations"] for r in rows],
            [r["best_fitness"] for r in rows],
            "--" if s.get("kind") == "gradient" else "-",
            marker=".",
            color=report.method_colour(s["label"]),
            label=s["label"],
        )
    if every and min(every) > 0:
        axes.set_yscale("log")
    else:
        positive = [abs(v) for v in every if v != 0]
        axes.set_yscale("symlog", linthresh=min(positive) if positive else 1.0)
    axes.set_xlabel("fitness evaluations")
    axes.set_ylabel("best fitness (mean over seeds)")
    axes.grid(alpha=0.3)
    handles, _ = axes.get_legend_handles_labels()
    if any(s.get("kind") == "gradient" for s in summaries):
        from matplotlib.lines import Line2D

        handles.append(
            Line2D([], [], color="black", linestyle="--", label="dashed: gradient (backprop)")
        )
    axes.legend(handles=handles, fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_fitness(summaries: list[dict], path: Path, context: dict) -> Path:
    """``fitness.png`` (:func:`fitness_figure`), titled with the problem and the machine."""
    title = f"{problem_description(context['problem'])} · {context['machine']}"
    fitness_figure(summaries, title).savefig(path, dpi=120)
    return path


__all__ = [
    "METHOD_KEYS",
    "ProblemComparisonConfig",
    "ProblemMethod",
    "TOP_KEYS",
    "aggregate",
    "build_problems",
    "evaluations_to_target",
    "fitness_figure",
    "is_problem_comparison",
    "load_problem_comparison",
    "make_evaluate",
    "parse_problem_comparison",
    "plot_fitness",
    "problem_table",
    "run_method",
    "run_problem_comparison",
    "seed_free",
    "write_comparison_md",
]
