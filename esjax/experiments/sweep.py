"""Where each method stops working as the dimension grows: ``esjax sweep CONFIG.yaml``.

Every gradient-free method runs on a rotated ellipsoid, a shifted Rosenbrock and a shifted
Rastrigin function at several dimensions ``d``, on a few seeded random instances of each, with
two budgets: a fixed one (Rios & Sahinidis 2013 gave each of their 22 solvers 2,500 evaluations)
and one that grows with ``d`` (``per_dim · d``, capped). A config::

    name: dimension_sweep
    seed: 0
    dimensions: [2, 5, 10, 20, 50, 100, 300, 1000]
    functions: [ellipsoid, rosenbrock, rastrigin]
    instances: 3
    budgets: {fixed: 2500, per_dim: 1000, max: 100000}
    tolerance: 1.0e-3                  # the Moré-Wild τ of the tables
    profile_tolerances: [1.0e-1, 1.0e-3, 1.0e-5]
    methods:
      - label: cma_es
        strategy: {name: cma_es, sigma: 2.0}
        caps: {1000: 2500}             # at most this many evaluations at these dimensions
    smoke: {dimensions: [2, 3, 5], instances: 1, budgets: {fixed: 60, per_dim: 20, max: 200}}

**Problems** (``x0 = 0`` for every one; ``f* = 0``):

- ``ellipsoid``: ``Σ 10^(6 i/(d-1)) z_i²`` with ``z = R P (x - x*)``; ``P`` a random permutation
  and ``R`` a random rotation, block-diagonal in blocks of ``block_size`` (40) coordinates beyond
  ``d = block_size`` (the last block smaller when ``block_size`` does not divide ``d``), as the
  bbob-largescale suite does (Varelas et al. 2018), so an evaluation costs ``O(40 d)``;
- ``rosenbrock``: ``Σ 100 (u_{i+1} - u_i²)² + (1 - u_i)²`` with ``u = x - x* + 1``;
- ``rastrigin``: ``Σ z_i² + 20 sin²(π z_i)`` (= ``10 d + Σ z_i² - 10 cos 2π z_i``, without the
  cancellation), ``z = x - x*``;

with ``x* ~ U[-shift, shift]^d`` (``shift``: 3; Rosenbrock: 2) drawn per instance. Each has a
residual form ``f = Σ r_j²`` (``√w_i z_i``; ``√20 sin π z_i``; ``10 (u_{i+1} - u_i²)``,
``1 - u_i``), which ensemble Kalman inversion (``eki``) is given (scaled by √2, since EKI
minimises ``½ ‖r‖²``), so it runs on all three.

**Measures** (Moré & Wild 2009, "Benchmarking derivative-free optimization algorithms"). A
problem counts as solved within ``k`` evaluations at tolerance ``τ`` when the best value found
``f`` passes ``f(x0) − f ≥ (1 − τ)(f(x0) − f_L)``, with ``f_L = f* = 0`` (the known minimum,
stricter than Moré & Wild's best-found value). The data profile of a method is
``d_s(α) = |{p : t_p ≤ α (n_p + 1)}| / |P|``, ``t_p`` the evaluations it needed on problem
``p`` of dimension ``n_p``. Evaluations are the strategy's own count (``state.evaluations``;
Nelder-Mead counts only the points scipy's sequential rule evaluates, and its best value is its
best simplex vertex, never a speculative row). The best value after ``k`` evaluations is that of
the last generation whose count is at most ``k``, so both budgets are read from one run of the
larger one (the strategies' schedules do not depend on the budget).

**Caps.** ``budgets.max`` caps the growing budget for every method; a method's ``caps: {d: k}``
caps it (and the fixed budget, if smaller) at dimension ``d``. Capped cells are marked in the
outputs, and a capped run is judged at the evaluations it had.

Outputs in ``<output_dir>/<name>/`` (claimed with
:func:`esjax.experiments.outputs.claim_run_dir`): ``sweep.csv`` (one row per method, dimension,
problem and budget), ``sweep.md`` (per method × dimension: fraction solved and median final
value at both budgets, and the answer), ``data_profiles.png`` and ``summary.json``.

Keys: problem ``p`` of dimension ``d`` draws its data from NumPy's generator seeded with
``(seed, function index, d, instance)``, and every method's run on it uses
``fold_in(fold_in(key(seed), d), p)``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import io
import math
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from esjax.base import check_int
from esjax.experiments.config import (
    RESIDUAL_STRATEGIES,
    SEED_RANGE,
    build_strategy,
    select_methods,
    strategy_factory,
    validate_strategy_section,
)
from esjax.experiments.outputs import check_run_name, claim_run_dir, read_yaml, write_json
from esjax.experiments.schema import check_keys, check_section
from esjax.loop import make_generation

FUNCTIONS = ("ellipsoid", "rosenbrock", "rastrigin")
OUTPUTS = ("sweep.csv", "sweep.md", "data_profiles.png", "summary.json")
BUDGET_NAMES = ("fixed", "growing")

TOP_KEYS = {
    "name": (str,),
    "seed": (int,),
    "output_dir": (str,),
    "dimensions": (list,),
    "functions": (list,),
    "instances": (int,),
    "block_size": (int,),
    "condition": (int, float),
    "shift": (int, float),
    "rosenbrock_shift": (int, float),
    "budgets": (dict,),
    "tolerance": (int, float),
    "profile_tolerances": (list,),
    "profile_groups": (list,),
    "answer_threshold": (int, float),
    "methods": (list,),
    "smoke": (dict,),
}
BUDGET_KEYS = ("fixed", "per_dim", "max")
METHOD_KEYS = ("label", "strategy", "caps")
SMOKE_KEYS = ("dimensions", "instances", "budgets", "methods")


@dataclasses.dataclass(frozen=True)
class SweepMethod:
    """One method of the sweep: its label, strategy section and per-dimension caps."""

    label: str
    strategy: dict
    caps: dict[int, int]

    @property
    def takes_residuals(self) -> bool:
        return self.strategy["name"] in RESIDUAL_STRATEGIES


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated dimension sweep (see the module docstring for the YAML layout)."""

    name: str
    seed: int
    output_dir: str
    dimensions: tuple[int, ...]
    functions: tuple[str, ...]
    instances: int
    block_size: int
    condition: float
    shift: float
    rosenbrock_shift: float
    fixed_budget: int
    per_dim_budget: int
    max_budget: int | None
    tolerance: float
    profile_tolerances: tuple[float, ...]
    profile_groups: tuple[tuple[int, ...], ...]
    answer_threshold: float
    methods: tuple[SweepMethod, ...]
    smoke: bool
    raw: dict

    def budget(self, name: str, num_dims: int) -> int:
        """The evaluations budget ``name`` (``fixed`` or ``growing``) grants at ``num_dims``."""
        if name == "fixed":
            return self.fixed_budget
        growing = self.per_dim_budget * num_dims
        return growing if self.max_budget is None else min(growing, self.max_budget)

    def run_budget(self, method: SweepMethod, num_dims: int) -> int:
        """The evaluations ``method`` runs for at ``num_dims``: the larger budget, capped."""
        budget = max(self.budget(name, num_dims) for name in BUDGET_NAMES)
        return min(budget, method.caps.get(num_dims, budget))


def _number(where: str, value: Any, low: float, high: float | None = None, *, open_low=False):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= low if open_low else value < low)
    bad |= high is not None and value > high
    if bad:
        bracket = "(" if open_low else "["
        raise ValueError(f"{where} must lie in {bracket}{low}, {high or 'inf'}], got {value}")
    return value


def _int_list(where: str, values: Any, low: int) -> tuple[int, ...]:
    if not isinstance(values, list) or not values:
        raise TypeError(f"{where} must be a non-empty list of integers, got {values!r}")
    out = tuple(check_int(f"{where}[{i}]", v, low) for i, v in enumerate(values))
    if len(set(out)) != len(out):
        raise ValueError(f"{where} must not repeat a value, got {list(out)}")
    return out


def _parse_budgets(raw: Any, where: str) -> tuple[int, int, int | None]:
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping with keys {list(BUDGET_KEYS)}")
    check_keys(where, raw, BUDGET_KEYS)
    fixed = check_int(f"{where}.fixed", raw.get("fixed", 2500), 1)
    per_dim = check_int(f"{where}.per_dim", raw.get("per_dim", 1000), 1)
    cap = raw.get("max")
    cap = None if cap is None else check_int(f"{where}.max", cap, 1)
    return fixed, per_dim, cap


def _parse_method(raw: Any, where: str, dimensions: tuple[int, ...]) -> SweepMethod:
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}")
    check_keys(where, raw, METHOD_KEYS)
    if "strategy" not in raw:
        raise ValueError(f"{where} needs a 'strategy' section (e.g. {{name: cma_es}})")
    validate_strategy_section(raw["strategy"], f"{where}.strategy")
    name = raw["strategy"]["name"]
    if name == "low_rank_es":
        raise ValueError(
            f"{where}.strategy.name: low_rank_es on a flat vector is openai_es (its low-rank "
            "noise applies to matrix leaves only), so the sweep leaves it out"
        )
    label = raw.get("label", name)
    check_run_name(label, f"{where}.label")
    caps = raw.get("caps") or {}
    if not isinstance(caps, dict):
        raise TypeError(f"{where}.caps must be a mapping {{dimension: max evaluations}}")
    parsed = {}
    for dim, cap in caps.items():
        dim = check_int(f"{where}.caps key", dim, 1)
        parsed[dim] = check_int(f"{where}.caps.{dim}", cap, 0)  # 0: not run at d
    return SweepMethod(label=str(label), strategy=dict(raw["strategy"]), caps=parsed)


def parse_sweep(raw: dict, *, smoke: bool = False, methods: list[str] | None = None) -> SweepConfig:
    """Validate a sweep config dict; ``smoke`` applies its ``smoke`` section (smaller dimensions,
    instances, budgets and optionally methods) and ``methods`` keeps only the listed labels.
    Errors name the key path."""
    if not isinstance(raw, dict):
        raise TypeError(f"a config must be a mapping at the top level, got {type(raw).__name__}")
    check_section("", raw, TOP_KEYS, ("name", "dimensions", "methods"), label="the sweep config")
    settings = dict(raw)
    if smoke:
        section = raw.get("smoke") or {}
        check_keys("smoke", section, SMOKE_KEYS)
        settings.update({k: v for k, v in section.items() if k != "methods"})
        if "methods" in section and methods is None:
            methods = section["methods"]
            if not isinstance(methods, list):
                raise TypeError("smoke.methods must be a list of method labels")
    smoke_keys = (raw.get("smoke") or {}) if smoke else {}
    prefix = {key: "smoke." if key in smoke_keys else "" for key in SMOKE_KEYS}
    dimensions = _int_list(f"{prefix['dimensions']}dimensions", settings["dimensions"], 2)
    functions = tuple(settings.get("functions", FUNCTIONS))
    for i, function in enumerate(functions):
        if function not in FUNCTIONS:
            raise ValueError(f"functions[{i}] must be one of {list(FUNCTIONS)}, got {function!r}")
    if not functions or len(set(functions)) != len(functions):
        raise ValueError(f"functions must list distinct names from {list(FUNCTIONS)}")
    fixed, per_dim, cap = _parse_budgets(settings.get("budgets", {}), f"{prefix['budgets']}budgets")
    parsed = tuple(
        _parse_method(m, f"methods[{i}]", dimensions) for i, m in enumerate(raw["methods"])
    )
    parsed, labels = select_methods(parsed, methods)
    tolerance = _number("tolerance", raw.get("tolerance", 1e-3), 0.0, 1.0, open_low=True)
    profile = raw.get("profile_tolerances", [tolerance])
    if not isinstance(profile, list) or not profile:
        raise TypeError("profile_tolerances must be a non-empty list of numbers")
    profile = tuple(
        _number(f"profile_tolerances[{i}]", t, 0.0, 1.0, open_low=True)
        for i, t in enumerate(profile)
    )
    groups = raw.get("profile_groups")
    if groups is None:
        groups = [[d] for d in dimensions] if len(dimensions) <= 3 else None
    if groups is None:
        third = -(-len(dimensions) // 3)
        groups = [list(dimensions[i : i + third]) for i in range(0, len(dimensions), third)]
    if not isinstance(groups, list) or not groups:
        raise TypeError("profile_groups must be a list of lists of dimensions")
    parsed_groups = []
    for i, group in enumerate(groups):
        group = _int_list(f"profile_groups[{i}]", group, 2)
        kept = tuple(d for d in group if d in dimensions)
        if kept:
            parsed_groups.append(kept)
    covered = {d for group in parsed_groups for d in group}
    if any(d not in covered for d in dimensions):  # e.g. a smoke run's own dimensions
        parsed_groups.append(tuple(d for d in dimensions if d not in covered))
    seed = raw.get("seed", 0)
    check_int("seed", seed, *SEED_RANGE)
    check_run_name(raw["name"])
    return SweepConfig(
        name=raw["name"],
        seed=seed,
        output_dir=raw.get("output_dir", "results"),
        dimensions=dimensions,
        functions=functions,
        instances=check_int(f"{prefix['instances']}instances", settings.get("instances", 3), 1),
        block_size=check_int("block_size", raw.get("block_size", 40), 2),
        condition=_number("condition", raw.get("condition", 1e6), 1.0),
        shift=_number("shift", raw.get("shift", 3.0), 0.0),
        rosenbrock_shift=_number("rosenbrock_shift", raw.get("rosenbrock_shift", 2.0), 0.0),
        fixed_budget=fixed,
        per_dim_budget=per_dim,
        max_budget=cap,
        tolerance=tolerance,
        profile_tolerances=profile,
        profile_groups=tuple(parsed_groups),
        answer_threshold=_number(
            "answer_threshold", raw.get("answer_threshold", 0.5), 0.0, 1.0, open_low=True
        ),
        methods=parsed,
        smoke=smoke,
        raw=raw,
    )


def load_sweep(
    path: str | Path, *, smoke: bool = False, methods: list[str] | None = None
) -> SweepConfig:
    """Read and validate a sweep YAML file (``smoke``, ``methods`` as in :func:`parse_sweep`)."""
    return parse_sweep(read_yaml(path), smoke=smoke, methods=methods)


# ----------------------------------------------------------------------------------------------
# Problems


def _rotation(rng: np.random.Generator, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def problem_data(config: SweepConfig, function: str, num_dims: int, instance: int) -> dict:
    """The arrays defining one instance: ``shift`` (the optimum), ``perm``, ``blocks``
    (``(num_blocks, b, b)`` rotations), ``weights`` and the switches ``beta`` (Rastrigin term),
    ``gamma`` (Rosenbrock term)."""
    index = FUNCTIONS.index(function)
    rng = np.random.default_rng([abs(config.seed), index, num_dims, instance])
    block = min(config.block_size, num_dims)
    num_blocks = -(-num_dims // block)
    blocks = np.tile(np.eye(block), (num_blocks, 1, 1))
    perm = np.arange(num_dims)
    weights = np.ones(num_dims)
    beta, gamma = 0.0, 0.0
    if function == "ellipsoid":
        shift = rng.uniform(-config.shift, config.shift, num_dims)
        perm = rng.permutation(num_dims)
        for k in range(num_blocks):
            size = min(block, num_dims - k * block)
            blocks[k, :size, :size] = _rotation(rng, size)
        weights = config.condition ** (np.arange(num_dims) / max(num_dims - 1, 1))
    elif function == "rosenbrock":
        shift = rng.uniform(-config.rosenbrock_shift, config.rosenbrock_shift, num_dims)
        weights = np.zeros(num_dims)
        gamma = 1.0
    else:
        shift = rng.uniform(-config.shift, config.shift, num_dims)
        beta = 1.0
    return {
        "shift": shift.astype(np.float32),
        "perm": perm.astype(np.int32),
        "blocks": blocks.astype(np.float32),
        "weights": weights.astype(np.float32),
        "beta": np.float32(beta),
        "gamma": np.float32(gamma),
    }


def _transform(data: dict, x: jax.Array) -> jax.Array:
    num_dims = x.shape[-1]
    num_blocks, block, _ = data["blocks"].shape
    y = (x - data["shift"])[data["perm"]]
    y = jnp.pad(y, (0, num_blocks * block - num_dims)).reshape(num_blocks, block)
    return jnp.einsum("kij,kj->ki", data["blocks"], y).reshape(-1)[:num_dims]


def residuals(data: dict, x: jax.Array) -> jax.Array:
    """The residual vector ``r`` of one instance at one point ``x``: ``f(x) = Σ r²``."""
    z = _transform(data, x)
    u = z + 1.0
    ellipsoid = jnp.where(data["weights"] > 0, jnp.sqrt(data["weights"]) * z, 0.0)
    sine = jnp.sqrt(20.0 * data["beta"]) * jnp.sin(jnp.pi * z)
    on = data["gamma"] > 0
    valley = jnp.where(on, 10.0 * (u[1:] - u[:-1] ** 2), 0.0)
    offset = jnp.where(on, 1.0 - u[:-1], 0.0)
    return jnp.concatenate([ellipsoid, sine, valley, offset])


def value(data: dict, x: jax.Array) -> jax.Array:
    """``f(x)`` of one instance at one point ``x`` (computed term by term, without residuals)."""
    z = _transform(data, x)
    u = z + 1.0
    ellipsoid = jnp.sum(jnp.where(data["weights"] > 0, data["weights"] * z**2, 0.0))
    sine = data["beta"] * jnp.sum(20.0 * jnp.sin(jnp.pi * z) ** 2)
    terms = 100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2
    valley = jnp.where(data["gamma"] > 0, jnp.sum(terms), 0.0)
    return ellipsoid + sine + valley


# ----------------------------------------------------------------------------------------------
# Runs


def _generations(es, method: SweepMethod, budget: int, num_dims: int) -> int:
    if method.strategy["name"] == "nelder_mead":
        # n + 1 evaluations for the initial simplex, then at least one per iteration (the run
        # stops when the budget is spent, usually long before this many).
        return max(1, budget - num_dims)
    per_generation = es.capabilities.evaluations_per_generation or es.population_size
    return max(1, -(-budget // per_generation))


def _best(method: SweepMethod, state) -> jax.Array:
    if method.strategy["name"] == "nelder_mead":
        return jnp.minimum(state.simplex_fitness[0], jnp.finfo(state.simplex_fitness.dtype).max)
    return state.best_fitness


def strategy_section(method: SweepMethod, num_dims: int) -> dict:
    """The method's strategy section, with ``num_dims`` added for factories whose defaults
    need it (population sizes of the CMA family, NES and Nelder-Mead)."""
    section = dict(method.strategy)
    factory = strategy_factory(section["name"])
    if "num_dims" in inspect.signature(factory).parameters and "num_dims" not in section:
        section["num_dims"] = num_dims
    return section


class CompiledCell(NamedTuple):
    """One (method, dimension) program, compiled: ``run()`` gives ``(evaluations, best)``."""

    program: Any
    arguments: tuple
    generations: int
    compile_s: float

    def run(self) -> tuple[np.ndarray, np.ndarray, float]:
        start = time.perf_counter()
        evaluations, best = jax.block_until_ready(self.program(*self.arguments))
        seconds = time.perf_counter() - start
        return np.asarray(evaluations, np.int64), np.asarray(best, np.float64), seconds


def compile_cell(
    config: SweepConfig,
    method: SweepMethod,
    num_dims: int,
    datas: list[dict],
    compiler_options: dict | None = None,
) -> CompiledCell:
    """Trace and compile ``method`` on every problem of one dimension as one vmapped program
    (thread-safe: :func:`run_sweep` compiles the next cell while one runs)."""
    es = build_strategy(strategy_section(method, num_dims))
    budget = config.run_budget(method, num_dims)
    generations = _generations(es, method, budget, num_dims)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *datas)
    root = jax.random.fold_in(jax.random.key(config.seed), num_dims)
    keys = jax.vmap(lambda p: jax.random.fold_in(root, p))(jnp.arange(len(datas)))
    x0 = jnp.zeros(num_dims, jnp.float32)

    def one(key, data):
        if method.takes_residuals:

            def fitness(x):
                return jnp.sqrt(2.0) * residuals(data, x)
        else:

            def fitness(x):
                return value(data, x)

        init_key, run_key = jax.random.split(key)
        state = es.init(init_key, x0)
        generation = make_generation(es, fitness)

        # Generations until the budget is spent (or the strategy's own termination signal):
        # a while loop over a preallocated trace, whose unused entries never count (their
        # evaluation count is the int32 maximum, their value +inf).
        evaluations = jnp.full(generations, jnp.iinfo(jnp.int32).max, jnp.int32)
        best = jnp.full(generations, jnp.inf, x0.dtype)

        def running(carry):
            state, g, _, _ = carry
            return (g < generations) & (state.evaluations < budget) & ~es.terminated(state)

        def body(carry):
            state, g, evaluations, best = carry
            state, _ = generation(jax.random.fold_in(run_key, g), state)
            evaluations = evaluations.at[g].set(state.evaluations)
            best = best.at[g].set(_best(method, state).astype(best.dtype))
            return state, g + 1, evaluations, best

        carry = (state, jnp.zeros((), jnp.int32), evaluations, best)
        _, _, evaluations, best = jax.lax.while_loop(running, body, carry)
        return evaluations, best

    start = time.perf_counter()
    lowered = jax.jit(jax.vmap(one)).lower(keys, stacked)
    program = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    return CompiledCell(program, (keys, stacked), generations, time.perf_counter() - start)


def run_cell(config: SweepConfig, method: SweepMethod, num_dims: int, datas: list[dict]):
    """Run ``method`` on every problem of one dimension in one vmapped program.

    Returns ``(evaluations, best, seconds)``: ``(num_problems, generations)`` arrays of the
    evaluation count and best value after each generation, and the wall-clock (compile
    excluded).
    """
    return compile_cell(config, method, num_dims, datas).run()


def best_within(evaluations: np.ndarray, best: np.ndarray, budget: int, f0: float) -> float:
    """The best value after at most ``budget`` evaluations (``f0`` before any; ``inf`` counts
    as no value)."""
    within = np.nonzero(evaluations <= budget)[0]
    if within.size == 0:
        return f0
    return float(best[within[-1]])


def evaluations_to_solve(evaluations, best, f0: float, tolerance: float, f_low: float = 0.0):
    """The first evaluation count at which Moré & Wild's test passes, or ``None``."""
    passed = np.nonzero(best <= f_low + tolerance * (f0 - f_low))[0]
    return None if passed.size == 0 else int(evaluations[passed[0]])


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2g}"


def run_sweep(
    config: SweepConfig,
    *,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run the sweep and write its outputs; returns the summary (also ``summary.json``)."""
    run_dir = claim_run_dir(
        Path(output_dir or config.output_dir) / config.name, OUTPUTS, overwrite=overwrite
    )
    started = time.perf_counter()
    problems = {
        d: [
            (function, instance, problem_data(config, function, d, instance))
            for function in config.functions
            for instance in range(config.instances)
        ]
        for d in config.dimensions
    }
    f0 = {
        d: [float(value(data, jnp.zeros(d, jnp.float32))) for _, _, data in problems[d]]
        for d in config.dimensions
    }
    rows: list[dict] = []
    traces: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    timings: dict[str, dict[int, float]] = {}
    compile_seconds: dict[str, dict[int, float]] = {}
    cells = [(method, d) for method in config.methods for d in config.dimensions]
    # Smoke runs are dominated by compilation: a lower XLA optimisation level cuts it.
    options = {"xla_backend_optimization_level": 0} if config.smoke else None
    workers = max(1, min(2, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: dict = {}

    def submit(index):
        if index < len(cells) and index not in pending:
            method, d = cells[index]
            datas = [data for _, _, data in problems[d]]
            if config.run_budget(method, d) > 0:
                pending[index] = pool.submit(compile_cell, config, method, d, datas, options)

    try:
        for index, (method, d) in enumerate(cells):
            for ahead in range(workers + 1):  # compile the next cells while this one runs
                submit(index + ahead)
            run_budget = config.run_budget(method, d)
            not_run = run_budget == 0  # capped to nothing: no evaluations, nothing solved
            if not_run:
                evaluations = np.zeros((len(problems[d]), 0), np.int64)
                best, seconds, compile_s = evaluations.astype(np.float64), 0.0, 0.0
            else:
                cell = pending.pop(index).result()
                evaluations, best, seconds = cell.run()
                compile_s = cell.compile_s
            timings.setdefault(method.label, {})[d] = seconds
            compile_seconds.setdefault(method.label, {})[d] = compile_s
            traces[(method.label, d)] = []
            for p, (function, instance, _) in enumerate(problems[d]):
                trace = (evaluations[p], best[p])
                traces[(method.label, d)].append(trace)
                for name in BUDGET_NAMES:
                    budget = config.budget(name, d)
                    granted = min(budget, run_budget)
                    final = math.nan if not_run else best_within(*trace, granted, f0[d][p])
                    solved_at = evaluations_to_solve(*trace, f0[d][p], config.tolerance)
                    rows.append(
                        {
                            "method": method.label,
                            "strategy": method.strategy["name"],
                            "num_dims": d,
                            "function": function,
                            "instance": instance,
                            "budget": name,
                            "budget_evaluations": budget,
                            "evaluations_allowed": granted,
                            "capped": granted < budget,
                            "not_run": not_run,
                            "evaluations_used": int(trace[0][trace[0] <= granted].max(initial=0)),
                            "f_x0": f0[d][p],
                            "final_value": final,
                            "relative_value": final / f0[d][p] if f0[d][p] > 0 else final,
                            "solved": solved_at is not None and solved_at <= granted,
                            "evaluations_to_solve": solved_at
                            if solved_at is not None and solved_at <= granted
                            else None,
                        }
                    )
            if progress:
                print(
                    f"  {method.label:<24} d={d:<5} {run_budget:>8} evaluations  {seconds:6.1f} s "
                    f"(+{compile_s:.1f} s compile)",
                    flush=True,
                )
    finally:
        for future in pending.values():
            future.cancel()
        pool.shutdown(wait=True)
    wall = time.perf_counter() - started
    table = summarise(config, rows)
    answer = answer_sentence(config, table)
    _write_csv(run_dir / "sweep.csv", rows)
    figure_path = run_dir / "data_profiles.png"
    profiles = data_profiles(config, traces, f0)
    _write_profiles(figure_path, config, profiles)
    summary = {
        "name": config.name,
        "smoke": config.smoke,
        "dimensions": list(config.dimensions),
        "functions": list(config.functions),
        "instances": config.instances,
        "problems_per_dimension": len(config.functions) * config.instances,
        "budgets": {
            "fixed": config.fixed_budget,
            "growing": f"{config.per_dim_budget} * d"
            + ("" if config.max_budget is None else f", at most {config.max_budget}"),
            "by_dimension": {
                str(d): {name: config.budget(name, d) for name in BUDGET_NAMES}
                for d in config.dimensions
            },
        },
        "caps": {m.label: {str(d): c for d, c in m.caps.items()} for m in config.methods if m.caps},
        "tolerance": config.tolerance,
        "convergence_test": "f(x0) - f >= (1 - tau) (f(x0) - f_L), f_L = f* = 0",
        "methods": [
            {
                "label": m.label,
                "strategy": m.strategy,
                "caps": {str(d): c for d, c in m.caps.items()},
            }
            for m in config.methods
        ],
        "results": table,
        "data_profiles": profiles,
        "seconds": {m: {str(d): s for d, s in t.items()} for m, t in timings.items()},
        "compile_seconds": {
            m: {str(d): s for d, s in t.items()} for m, t in compile_seconds.items()
        },
        "wall_clock_s": wall,
        "answer": answer,
        "machine": _machine(),
        "run_dir": str(run_dir),
    }
    _write_md(run_dir / "sweep.md", config, table, answer, summary)
    write_json(run_dir / "summary.json", summary)
    return summary


def _machine() -> str:
    from esjax.experiments.report import machine_description

    return machine_description()


def summarise(config: SweepConfig, rows: list[dict]) -> dict:
    """``{budget: {method: {d: cell}}}``; a cell has ``solved`` (fraction at ``tolerance``),
    ``median_relative_value`` (median of ``f / f(x0)``), ``median_value`` (all problems) and
    ``median_value_by_function``, and ``capped``."""
    table: dict = {}
    for name in BUDGET_NAMES:
        table[name] = {}
        for method in config.methods:
            table[name][method.label] = {}
            for d in config.dimensions:
                cell_rows = [
                    r
                    for r in rows
                    if r["budget"] == name and r["method"] == method.label and r["num_dims"] == d
                ]
                finals = [r["final_value"] for r in cell_rows]
                table[name][method.label][str(d)] = {
                    "solved": sum(r["solved"] for r in cell_rows) / len(cell_rows),
                    "median_relative_value": _median([r["relative_value"] for r in cell_rows]),
                    "median_value": _median(finals),
                    "median_value_by_function": {
                        f: _median([r["final_value"] for r in cell_rows if r["function"] == f])
                        for f in config.functions
                    },
                    "evaluations": cell_rows[0]["evaluations_allowed"],
                    "capped": any(r["capped"] for r in cell_rows),
                    "not_run": all(r["not_run"] for r in cell_rows),
                }
    return table


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]  # NaN: not run
    return statistics.median(values) if values else math.nan


def reach(config: SweepConfig, cells: dict) -> int | None:
    """The largest dimension up to which a method solves at least ``answer_threshold`` of the
    problems at every dimension (``None``: not even the smallest)."""
    last = None
    for d in config.dimensions:
        if cells[str(d)]["solved"] + 1e-12 < config.answer_threshold:
            break
        last = d
    return last


def answer_sentence(config: SweepConfig, table: dict) -> str:
    """One sentence from the numbers: which methods keep solving up to which ``d`` at each
    budget, and whether every method's success falls with the dimension."""
    parts = []
    for name in BUDGET_NAMES:
        reached = {m.label: reach(config, table[name][m.label]) for m in config.methods}
        by_dim: dict[int, list[str]] = {}
        for label, d in reached.items():
            if d is not None:
                by_dim.setdefault(d, []).append(label)
        if config.per_dim_budget and name == "growing":
            budget = f"{config.per_dim_budget:,}·d evaluations" + (
                "" if config.max_budget is None else f" (at most {config.max_budget:,})"
            )
        else:
            budget = f"{config.fixed_budget:,} evaluations"
        if by_dim:
            listed = "; ".join(
                f"{', '.join(sorted(labels))} up to d={d}"
                for d, labels in sorted(by_dim.items(), reverse=True)
            )
            none = sorted(label for label, d in reached.items() if d is None)
            tail = f"; {', '.join(none)} not even at d={config.dimensions[0]}" if none else ""
            parts.append(f"with {budget}: {listed}{tail}")
        else:
            parts.append(f"with {budget}: no method, not even at d={config.dimensions[0]}")
    small, large = str(config.dimensions[0]), str(config.dimensions[-1])
    diminishing = [
        m.label
        for m in config.methods
        if table["growing"][m.label][large]["solved"] < table["growing"][m.label][small]["solved"]
        or table["growing"][m.label][small]["solved"] == 0
    ]
    holds = len(diminishing) == len(config.methods)
    never = [m.label for m in config.methods if table["growing"][m.label][small]["solved"] == 0]
    exceptions = sorted({m.label for m in config.methods} - set(diminishing))
    verdict = (
        f"every method solves a smaller fraction at d={large} than at d={small}"
        + (f" (or never solved any: {', '.join(never)})" if never else "")
        + ", so Rios & Sahinidis's finding holds for esjax"
        if holds
        else f"{len(diminishing)} of {len(config.methods)} methods solve less at d={large} than "
        f"at d={small} (not: {', '.join(exceptions)}), so Rios & Sahinidis's finding holds "
        "only in part"
    )
    threshold = f"{config.answer_threshold:.0%}"
    return (
        f"Solving at least {threshold} of the problems to τ={config.tolerance:g} at every "
        f"dimension up to d: " + "; ".join(parts) + f"; {verdict}."
    )


def data_profiles(config: SweepConfig, traces: dict, f0: dict) -> dict:
    """Moré-Wild data profiles ``d_s(α)`` per tolerance and dimension group, on a log grid of
    ``α`` (evaluations per ``n_p + 1``)."""
    top = max(config.run_budget(m, d) / (d + 1) for m in config.methods for d in config.dimensions)
    alphas = np.unique(np.geomspace(0.1, max(top, 1.0), 60).round(4))
    out = {"alpha": alphas.tolist(), "profiles": {}}
    for tolerance in config.profile_tolerances:
        for group in config.profile_groups:
            key = f"tau={tolerance:g} d={','.join(map(str, group))}"
            out["profiles"][key] = {}
            for method in config.methods:
                ratios = []
                for d in group:
                    for p, trace in enumerate(traces[(method.label, d)]):
                        t = evaluations_to_solve(*trace, f0[d][p], tolerance)
                        ratios.append(math.inf if t is None else t / (d + 1))
                ratios = np.asarray(ratios)
                out["profiles"][key][method.label] = [float(np.mean(ratios <= a)) for a in alphas]
    return out


def _write_profiles(path: Path, config: SweepConfig, profiles: dict) -> None:
    from matplotlib.figure import Figure

    from esjax.experiments.report import method_colour

    rows, columns = len(config.profile_tolerances), len(config.profile_groups)
    figure = Figure(figsize=(4.2 * columns + 2.2, 3.2 * rows), layout="constrained")
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False))
    alphas = profiles["alpha"]
    styles = ("-", "--", ":", "-.")
    for i, tolerance in enumerate(config.profile_tolerances):
        for j, group in enumerate(config.profile_groups):
            ax = axes[i, j]
            key = f"tau={tolerance:g} d={','.join(map(str, group))}"
            for k, method in enumerate(config.methods):
                ax.step(
                    alphas,
                    profiles["profiles"][key][method.label],
                    styles[k % len(styles)],
                    where="post",
                    color=method_colour(method.label),
                    label=method.label,
                )
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"τ = {tolerance:g}, d ∈ {{{', '.join(map(str, group))}}}", fontsize=9)
            if i == rows - 1:
                ax.set_xlabel("α: evaluations / (d + 1)")
            if j == 0:
                ax.set_ylabel("fraction solved d_s(α)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=8)
    figure.suptitle(
        f"{config.name}: Moré-Wild data profiles ({len(config.functions)} functions × "
        f"{config.instances} instances per d)",
        fontsize=10,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_bytes(buffer.getvalue())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_csv(path: Path, rows: list[dict]) -> None:
    from esjax.experiments.outputs import replace_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    replace_text(path, buffer.getvalue())


def markdown_tables(config: SweepConfig, table: dict) -> str:
    """Per budget: fraction solved, then median ``f / f(x0)``, per method × dimension."""
    lines = []
    dims = config.dimensions
    header = "| method | " + " | ".join(f"d={d}" for d in dims) + " |"
    rule = "|---|" + "---:|" * len(dims)
    for name in BUDGET_NAMES:
        if name == "fixed":
            title = f"{config.fixed_budget:,} evaluations (Rios & Sahinidis's budget)"
        else:
            title = f"{config.per_dim_budget:,}·d evaluations" + (
                "" if config.max_budget is None else f", at most {config.max_budget:,}"
            )
        for measure, caption in (
            ("solved", f"fraction solved to τ = {config.tolerance:g}"),
            ("median_relative_value", "median final value f / f(x0)"),
        ):
            lines += [f"**{title}: {caption}** († capped, n/r not run)", "", header, rule]
            for method in config.methods:
                cells = []
                for d in dims:
                    cell = table[name][method.label][str(d)]
                    text = (
                        f"{cell['solved']:.2f}"
                        if measure == "solved"
                        else _fmt(cell["median_relative_value"])
                    )
                    if cell["not_run"]:
                        text = "n/r"
                    cells.append(text + (" †" if cell["capped"] else ""))
                lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _write_md(path: Path, config: SweepConfig, table: dict, answer: str, summary: dict) -> None:
    from esjax.experiments.outputs import replace_text

    caps = [
        f"{m.label}: " + ", ".join(f"d={d} ≤ {c:,}" for d, c in sorted(m.caps.items()))
        for m in config.methods
        if any(d in config.dimensions for d in m.caps)
    ]
    lines = [
        f"# {config.name}" + (" (smoke run)" if config.smoke else ""),
        "",
        f"{len(config.methods)} methods × {', '.join(config.functions)} × {config.instances} "
        f"random instances (shifts; the ellipsoid rotated, in blocks of {config.block_size} "
        f"beyond d={config.block_size}) at d ∈ {{{', '.join(map(str, config.dimensions))}}}; "
        f"x0 = 0. Solved: f(x0) − f ≥ (1 − τ)(f(x0) − f*) with f* = 0 and "
        f"τ = {config.tolerance:g} (Moré & Wild 2009). Growing budget "
        f"{config.per_dim_budget:,}·d"
        + ("" if config.max_budget is None else f", at most {config.max_budget:,}")
        + ". Caps: "
        + ("; ".join(caps) if caps else "none")
        + ".",
        "",
        f"**Answer.** {answer}",
        "",
        markdown_tables(config, table),
        f"Wall-clock {summary['wall_clock_s']:.0f} s on {summary['machine']}.",
        "",
        "![data profiles](data_profiles.png)",
        "",
    ]
    replace_text(path, "\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Command line


def _sweep_command(args: argparse.Namespace) -> int:
    methods = args.methods.split(",") if args.methods else None
    config = load_sweep(args.config, smoke=args.smoke, methods=methods)
    summary = run_sweep(
        config, output_dir=args.output_dir, overwrite=args.overwrite, progress=not args.quiet
    )
    print(markdown_tables(config, summary["results"]))
    print(summary["answer"])
    print(f"wrote {summary['run_dir']}/ ({', '.join(OUTPUTS)}) in {summary['wall_clock_s']:.0f} s")
    return 0


def add_sweep_command(subparsers) -> argparse.ArgumentParser:
    """Add ``esjax sweep CONFIG [--smoke] [--output-dir D] [--overwrite] [--methods a,b]
    [--quiet]`` to an argparse ``subparsers`` (its handler is ``args.handler``)."""
    parser = subparsers.add_parser(
        "sweep", help="every method on test functions as the dimension grows (a sweep config)"
    )
    parser.add_argument("config", help="path to a sweep config (configs/dimension_sweep.yaml)")
    parser.add_argument(
        "--smoke", action="store_true", help="the config's smoke section: a seconds-long run"
    )
    parser.add_argument("--output-dir", default=None, help="parent folder for results")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier sweep's outputs in the run folder (refused otherwise)",
    )
    parser.add_argument("--methods", default=None, help="comma-separated labels to run")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress lines")
    parser.set_defaults(handler=_sweep_command)
    return parser


__all__ = [
    "FUNCTIONS",
    "OUTPUTS",
    "SweepConfig",
    "SweepMethod",
    "add_sweep_command",
    "answer_sentence",
    "data_profiles",
    "load_sweep",
    "parse_sweep",
    "problem_data",
    "residuals",
    "run_sweep",
    "summarise",
    "value",
]
