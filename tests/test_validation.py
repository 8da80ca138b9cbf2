"""Bad input is refused early, with a ValueError/TypeError whose message names the culprit.

One table: rows generated for every strategy in ``tests/strategy_cases.py`` (population size,
x0, fitness and population shapes, every numeric hyperparameter set to NaN), rows for individual
strategies' own arguments, and rows for experiment configs and problem sections. Each row is
``(id, thunk, error type, regex the message must match)``; the regex names the parameter.
"""

import inspect
import math

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from strategy_cases import NUM_DIMS, STRATEGY_CASES

import esjax
from esjax.experiments.config import build_optimizer, build_schedule, parse_config
from esjax.experiments.setup import build_problem

KEY = jax.random.key(0)


def _numeric_fields(params):
    return [
        name
        for name, value in vars(params).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


def _takes_residuals(es):
    return es.capabilities.fitness == "residuals"


def _told_values(es, dtype=jnp.float32):
    """Zeros of what ``tell`` consumes: ``(n,)`` fitness, or ``(n, NUM_DIMS)`` residual vectors
    for a strategy that takes residuals."""
    n = es.population_size
    return jnp.zeros((n, NUM_DIMS) if _takes_residuals(es) else (n,), dtype)


def _generic_rows(case):
    """Checks every strategy must pass, whatever its hyperparameters."""
    es = case.factory()
    n = es.population_size
    size = case.size_argument

    def factory_with(population_size=n, **change):
        return lambda: case.sized(population_size, **change)

    def init_with(x0):
        return lambda: es.init(KEY, x0)

    def tell_with(population_shape=(n, NUM_DIMS), fitness=None):
        # Traced, not run: the checks fire at trace time and nothing needs compiling.
        def thunk():
            state = es.init(KEY, jnp.ones(NUM_DIMS))
            population = jnp.zeros(population_shape)
            fitness_ = _told_values(es) if fitness is None else fitness
            return jax.eval_shape(es.tell, state, population, fitness_)

        return thunk

    rows = [
        (f"{size}=0", factory_with(0), ValueError),
        (f"{size}=-4", factory_with(-4), ValueError),
        (f"{size}=8.5", factory_with(8.5), TypeError),
        (f"{size}='16'", factory_with("16"), TypeError),
        (f"{size}=True", factory_with(True), TypeError),
    ]
    rows = [(i, t, e, size) for i, t, e in rows]
    if _takes_residuals(es):
        # (n, m) residual vectors for any m: wrong member counts and missing axes are refused.
        told_rows = [
            ("residuals (n+1, m)", jnp.zeros((n + 1, NUM_DIMS))),
            ("residuals (n,)", jnp.zeros(n)),
            ("residuals scalar", jnp.float32(0.0)),
        ]
        told_name = "residuals"
    else:
        told_rows = [
            ("fitness (n+1,)", jnp.zeros(n + 1)),
            ("fitness (n, 1)", jnp.zeros((n, 1))),
            ("fitness scalar", jnp.float32(0.0)),
        ]
        told_name = "fitness"
    rows += [
        ("x0 NaN", init_with(jnp.array([1.0, jnp.nan, 0.0, 0.0])), ValueError, "x0"),
        ("x0 inf", init_with(jnp.array([1.0, 0.0, -jnp.inf, 0.0])), ValueError, "x0"),
        (
            "x0 NaN in pytree",
            init_with({"w": jnp.ones(2), "b": jnp.full(2, jnp.nan)}),
            ValueError,
            "x0",
        ),
        ("x0 empty", init_with(jnp.ones(0)), ValueError, "x0"),
        ("x0 empty pytree", init_with({}), ValueError, "x0"),
        *[(i, tell_with(fitness=told), ValueError, told_name) for i, told in told_rows],
        (
            "population rows",
            tell_with(population_shape=(n + 1, NUM_DIMS)),
            ValueError,
            "population",
        ),
        (
            "population dims",
            tell_with(population_shape=(n, NUM_DIMS + 1)),
            ValueError,
            "population",
        ),
    ]
    signature = inspect.signature(esjax.STRATEGIES[es.name]).parameters
    for field in _numeric_fields(es.default_params):
        bad = es.default_params.replace(**{field: math.nan})
        rows.append(
            (
                f"params.{field}=nan",
                lambda bad=bad: es.init(KEY, jnp.ones(NUM_DIMS), bad),
                ValueError,
                field,
            )
        )
        if field in signature:
            rows.append((f"{field}=nan", factory_with(**{field: math.nan}), ValueError, field))
    return [pytest.param(*row[1:], id=f"{case.id}: {row[0]}") for row in rows]


GENERIC_ROWS = [row for case in STRATEGY_CASES for row in _generic_rows(case)]


# Complex fitness would silently lose its imaginary part: a dtype error, not a cast.
COMPLEX_FITNESS_ROWS = [
    pytest.param(case.id, case.factory, id=f"{case.id}: complex fitness") for case in STRATEGY_CASES
]


def _openai(**kwargs):
    return lambda: esjax.openai_es(**{"population_size": 8, **kwargs})


STRATEGY_ROWS = [
    ("openai_es sigma=0", _openai(sigma=0.0), ValueError, r"sigma must lie in \(0"),
    ("openai_es sigma<0", _openai(sigma=-0.1), ValueError, "sigma"),
    ("openai_es sigma_decay=0", _openai(sigma_decay=0.0), ValueError, "sigma_decay"),
    ("openai_es sigma_decay>1", _openai(sigma_decay=1.5), ValueError, "sigma_decay"),
    ("openai_es sigma_limit<0", _openai(sigma_limit=-1.0), ValueError, "sigma_limit"),
    ("openai_es weight_decay<0", _openai(weight_decay=-0.1), ValueError, "weight_decay"),
    ("openai_es learning_rate=0", _openai(learning_rate=0.0), ValueError, "learning_rate"),
    ("openai_es odd antithetic", _openai(population_size=7), ValueError, "population_size.*even"),
    (
        "openai_es fitness_shaping",
        _openai(fitness_shaping="rank"),
        ValueError,
        "fitness_shaping.*centered_ranks",
    ),
    (
        "openai_es optimizer+learning_rate",
        _openai(optimizer=optax.sgd(0.1), learning_rate=0.1),
        ValueError,
        "learning_rate",
    ),
    (
        "openai_es params sigma=-1 at init",
        lambda: esjax.openai_es(8).init(
            KEY, jnp.ones(3), esjax.openai_es(8).default_params.replace(sigma=-1.0)
        ),
        ValueError,
        "sigma",
    ),
]


def _strategy(name, *args, **kwargs):
    """Build strategy ``name`` lazily (so a table row never fails at collection)."""
    return lambda: esjax.STRATEGIES[name](*args, **kwargs)


def _init_shape(name, x0_size, **kwargs):
    """Trace ``init`` on an x0 of ``x0_size`` entries: nothing is allocated, even if unguarded."""
    es = esjax.STRATEGIES[name](**kwargs)
    return lambda: jax.eval_shape(es.init, KEY, jnp.zeros(x0_size))


STRATEGY_ROWS += [
    ("cma_es memory limit", _strategy("cma_es", num_dims=100_000), ValueError, "num_dims.*GB"),
    (
        "cma_es memory limit at init",
        lambda: _init_shape("cma_es", 40_000, population_size=8)(),
        ValueError,
        "max_covariance_bytes",
    ),
    (
        "cma_es x0 vs num_dims",
        lambda: _init_shape("cma_es", 5, num_dims=4)(),
        ValueError,
        "x0.*num_dims",
    ),
    ("cma_es no population_size", _strategy("cma_es"), ValueError, "population_size.*num_dims"),
    (
        "cma_es sigma_bounds",
        _strategy("cma_es", 8, sigma_bounds=(1.0, 0.1)),
        ValueError,
        "sigma_bounds",
    ),
    ("cma_es num_parents>λ", _strategy("cma_es", 8, num_parents=9), ValueError, "num_parents"),
    (
        "cma_es eigen_interval=0",
        _strategy("cma_es", 8, eigen_interval=0),
        ValueError,
        "eigen_interval",
    ),
    ("cma_es population_size=1", _strategy("cma_es", 1), ValueError, "population_size"),
    (
        "sep_cma_es num_parents=0",
        _strategy("sep_cma_es", 8, num_parents=0),
        ValueError,
        "num_parents",
    ),
    (
        "sep_cma_es sigma_bounds<0",
        _strategy("sep_cma_es", 8, sigma_bounds=(-1.0, 1.0)),
        ValueError,
        "sigma_bounds",
    ),
    (
        "sep_cma_es x0 vs num_dims",
        lambda: _init_shape("sep_cma_es", 3, num_dims=4)(),
        ValueError,
        "x0.*num_dims",
    ),
    ("pso topology", _strategy("pso", 16, topology="star"), ValueError, "topology.*ring"),
    ("pso num_neighbors odd", _strategy("pso", 16, num_neighbors=3), ValueError, "num_neighbors"),
    ("pso one bound", _strategy("pso", 16, lower_bound=-1.0), ValueError, "upper_bound"),
    (
        "pso lower>upper",
        _strategy("pso", 16, lower_bound=1.0, upper_bound=-1.0),
        ValueError,
        "lower_bound",
    ),
    (
        "pso infinite bound",
        _strategy("pso", 16, lower_bound=-math.inf, upper_bound=1.0),
        ValueError,
        "lower_bound",
    ),
    (
        "pso bounds_handling",
        _strategy("pso", 16, lower_bound=-1.0, upper_bound=1.0, bounds_handling="wrap"),
        ValueError,
        "bounds_handling.*clip",
    ),
    ("pso update", _strategy("pso", 16, update="fancy"), ValueError, "update.*spso2011"),
    (
        "pso coefficients",
        _strategy("pso", 16, coefficients="per_swarm"),
        ValueError,
        "coefficients.*per_dimension",
    ),
    (
        "pso bound length vs x0",
        lambda: _init_shape(
            "pso", 4, population_size=16, lower_bound=[-1.0] * 3, upper_bound=[1.0] * 3
        )(),
        ValueError,
        "lower_bound",
    ),
    (
        "simulated_annealing cooling_schedule",
        _strategy("simulated_annealing", 8, cooling_schedule="fast"),
        ValueError,
        "cooling_schedule.*exponential",
    ),
    (
        "simulated_annealing initial_temperature<0",
        _strategy("simulated_annealing", 8, initial_temperature=-1.0),
        ValueError,
        "initial_temperature",
    ),
    (
        "simulated_annealing target_acceptance>1",
        _strategy("simulated_annealing", 8, target_acceptance=1.5),
        ValueError,
        "target_acceptance",
    ),
    (
        "simulated_annealing reheat_patience<0",
        _strategy("simulated_annealing", 8, reheat_patience=-1),
        ValueError,
        "reheat_patience",
    ),
    (
        "simulated_annealing max<min step",
        _strategy("simulated_annealing", 8, min_step_size=1.0, max_step_size=0.1),
        ValueError,
        "step_size",
    ),
]
STRATEGY_ROWS = [pytest.param(*row[1:], id=row[0]) for row in STRATEGY_ROWS] + [
    pytest.param(factory, ValueError, name, id=f"{label}=inf")
    for label, factory, name in [
        ("openai_es learning_rate", _openai(learning_rate=math.inf), "learning_rate"),
        ("openai_es sigma", _openai(sigma=math.inf), "sigma"),
        ("cma_es sigma", _strategy("cma_es", 8, sigma=math.inf), "sigma"),
        (
            "simulated_annealing initial_temperature",
            _strategy("simulated_annealing", 8, initial_temperature=math.inf),
            "initial_temperature",
        ),
    ]
]


def _config(**change):
    raw = {
        "name": "t",
        "generations": 3,
        "strategy": {"name": "openai_es", "population_size": 8},
        "problem": {"name": "sphere", "num_dims": 3},
    }
    raw.update(change)
    return lambda: parse_config(raw)


def _problem(**section):
    return lambda: build_problem({"name": "sphere", "num_dims": 3, **section}, KEY)


CONFIG_ROWS = [
    ("config unknown key", _config(sede=1), ValueError, r"'sede'.*valid keys.*seed"),
    ("config missing generations", lambda: parse_config({"name": "t"}), ValueError, "generations"),
    ("config not a mapping", lambda: parse_config([1, 2]), TypeError, "mapping"),
    ("config generations str", _config(generations="3"), TypeError, "generations"),
    ("config generations 0", _config(generations=0), ValueError, "generations"),
    ("config generations bool", _config(generations=True), TypeError, "generations"),
    ("config seed float", _config(seed=1.5), TypeError, "seed"),
    ("config checkpoint_every<0", _config(checkpoint_every=-1), ValueError, "checkpoint_every"),
    ("config log_every str", _config(log_every="5"), TypeError, "log_every"),
    ("config strategy list", _config(strategy=["openai_es"]), TypeError, "strategy"),
    ("config strategy no name", _config(strategy={"sigma": 1.0}), ValueError, "strategy.*name"),
    (
        "config strategy unknown",
        _config(strategy={"name": "nes"}),
        ValueError,
        "strategy name must be one of.*openai_es",
    ),
    (
        "config strategy bad key",
        _config(strategy={"name": "openai_es", "popsize": 8}),
        ValueError,
        "popsize.*population_size",
    ),
    ("config problem no name", _config(problem={"num_dims": 3}), ValueError, "problem.*name"),
    ("problem unknown name", lambda: build_problem({"name": "spear"}, KEY), ValueError, "sphere"),
    ("problem unknown key", _problem(dims=3), ValueError, "dims.*num_dims"),
    ("problem num_dims=0", _problem(num_dims=0), ValueError, "num_dims"),
    ("problem num_dims str", _problem(num_dims="3"), TypeError, "num_dims"),
    ("problem shift_scale<0", _problem(shift_scale=-1.0), ValueError, "shift_scale"),
    (
        "rosenbrock num_dims=1",
        lambda: build_problem({"name": "rosenbrock", "num_dims": 1}, KEY),
        ValueError,
        "num_dims",
    ),
    ("optimizer unknown", lambda: build_optimizer({"name": "adamm"}), ValueError, "adam"),
    ("optimizer no name", lambda: build_optimizer({"lr": 0.1}), TypeError, "optimizer"),
    (
        "optimizer bad key",
        lambda: build_optimizer({"name": "adam", "lr": 0.1}),
        ValueError,
        "lr.*learning_rate",
    ),
    ("schedule unknown", lambda: build_schedule({"schedule": "cosine"}), ValueError, "schedule"),
    ("schedule missing", lambda: build_schedule({"init_value": 0.1}), ValueError, "schedule"),
    (
        "run num_generations<0",
        lambda: esjax.run(
            esjax.openai_es(8), jnp.sum, KEY, esjax.openai_es(8).init(KEY, jnp.ones(2)), -1
        ),
        ValueError,
        "num_generations",
    ),
    (
        "run log_every=0",
        lambda: esjax.run(
            esjax.openai_es(8),
            jnp.sum,
            KEY,
            esjax.openai_es(8).init(KEY, jnp.ones(2)),
            3,
            log_every=0,
        ),
        ValueError,
        "log_every",
    ),
    (
        "step batch_size=0",
        lambda: esjax.step(esjax.openai_es(8), jnp.sum, batch_size=0),
        ValueError,
        "batch_size",
    ),
]
CONFIG_ROWS = [pytest.param(*row[1:], id=row[0]) for row in CONFIG_ROWS]

ALL_ROWS = GENERIC_ROWS + STRATEGY_ROWS + CONFIG_ROWS


def test_the_table_is_large_enough():
    assert len(ALL_ROWS) >= 25  # the issue asks for at least 25 distinct bad inputs


@pytest.mark.parametrize("thunk, error, words", ALL_ROWS)
def test_bad_input_is_refused_naming_the_parameter(thunk, error, words):
    with pytest.raises(error, match=words):
        thunk()


def _trace_tell(make, fitness_dtype):
    es = make()
    state = es.init(KEY, jnp.ones(NUM_DIMS))
    population = jnp.zeros((es.population_size, NUM_DIMS))
    fitness = _told_values(es, dtype=fitness_dtype)
    return state, jax.eval_shape(es.tell, state, population, fitness)


@pytest.mark.parametrize("case_id, make", COMPLEX_FITNESS_ROWS)
def test_complex_fitness_is_a_type_error(case_id, make):
    words = "residuals" if _takes_residuals(make()) else "fitness"
    with pytest.raises(TypeError, match=words):
        _trace_tell(make, jnp.complex64)


@pytest.mark.parametrize("case_id, make", [(c.id, c.factory) for c in STRATEGY_CASES])
def test_integer_fitness_is_accepted_and_keeps_state_dtypes(case_id, make):
    """Integer fitness (e.g. a count of errors) is a valid objective: cast to the state's float
    dtype, so the state's structure and dtypes do not change (no retrace, no int best_fitness)."""
    state, told = _trace_tell(make, jnp.int32)
    chex.assert_trees_all_equal_shapes_and_dtypes(told, jax.eval_shape(lambda: state))
