"""esjax.minimize (scipy-shaped), esjax.es_gradient, your own objective and strategy from a
config, and the solution file every run writes."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from readme_snippets import python_block

import esjax
from esjax import checkpoint
from esjax.experiments.config import load_config
from esjax.experiments.runner import run_experiment
from esjax.problems import sphere

METHODS = {
    "openai_es": {"population_size": 16, "sigma": 0.1, "learning_rate": 0.05},
    "cma_es": {"sigma": 0.5},
    "sep_cma_es": {"sigma": 0.5},
    "pso": {"population_size": 8},
    "simulated_annealing": {"population_size": 8, "initial_temperature": 1e-3, "step_size": 0.3},
    "eki": None,  # residual vectors, not scalars: not a minimize method
}


@pytest.mark.parametrize("method", [m for m, o in METHODS.items() if o is not None])
def test_minimize_each_method_counts_its_evaluations(method):
    result = esjax.minimize(sphere, jnp.ones(3), method, {**METHODS[method], "maxfev": 800})
    es_population = result.state.evaluations // max(result.nit, 1)
    assert result.nfev == int(result.state.evaluations) == result.nit * es_population
    assert result.nfev <= 800 and result.status in (0, 1, 2)
    assert result.fun == float(result.state.best_fitness) < 3.0  # f(x0) = 3
    np.testing.assert_allclose(sphere(result.x), result.fun, rtol=1e-6)  # x is the point of fun


def test_minimize_stops_at_ftarget_and_at_the_methods_own_test():
    hit = esjax.minimize(
        esjax.problems.rosenbrock, jnp.zeros(4), "cma_es", {"sigma": 0.5, "ftarget": 1e-6}
    )
    assert hit.status == 1 and hit.success and hit.fun <= 1e-6
    converged = esjax.minimize(sphere, jnp.ones(4), "sep_cma_es", {"sigma": 0.5, "ftol": 1e-6})
    assert converged.status == 2 and "stop_tolfun" in converged.message
    with pytest.raises(ValueError, match="xtol/ftol are not meaningful"):
        esjax.minimize(sphere, jnp.ones(3), "pso", {"population_size": 8, "xtol": 1e-3})
    with pytest.raises(ValueError, match="unknown option"):
        esjax.minimize(sphere, jnp.ones(3), "cma_es", {"sgima": 0.5})


def test_es_gradient_is_the_true_gradient_of_a_quadratic_on_average():
    # For f = ‖x‖² the antithetic estimate is (1/m) Σ 2 (x·ε_j) ε_j: mean 2x, per-coordinate
    # standard deviation 2 √((‖x‖² + x_i²)/m) = 0.09 here (m = 2,000 pairs): 5 sigma is 0.45.
    x = jnp.array([1.0, -2.0, 0.5])
    grad = esjax.es_gradient(sphere, x, jax.random.key(0), sigma=0.01, population_size=4000)
    np.testing.assert_allclose(grad, 2 * x, atol=0.45)
    tree = esjax.es_gradient(lambda p: sphere(p["w"]), {"w": x}, jax.random.key(0), 0.01, 4000)
    chex.assert_trees_all_close(tree, {"w": grad}, rtol=1e-6)
    with pytest.raises(ValueError, match="even"):
        esjax.es_gradient(sphere, x, jax.random.key(0), population_size=5)


def _write_config(folder, problem, strategy):
    raw = {"name": "own", "generations": 30, "problem": problem, "strategy": strategy}
    (folder / "own.yaml").write_text(yaml.safe_dump(raw))
    return folder / "own.yaml"


def test_a_config_names_its_own_objective_and_strategy(tmp_path):
    (tmp_path / "my_objective.py").write_text(
        "import jax.numpy as jnp\n\ndef shifted(x):\n    return jnp.sum((x - 0.5) ** 2)\n"
    )
    (tmp_path / "my_strategy.py").write_text(
        python_block("Writing your own strategy").split("\nes = ")[0]
    )
    config = _write_config(
        tmp_path,
        {"function": "my_objective:shifted", "num_dims": 4, "x0": 2.0},
        {"name": "my_strategy:mu_lambda_es", "population_size": 16, "num_parents": 4},
    )
    summary = run_experiment(load_config(config), progress=False, output_dir=tmp_path / "out")
    assert summary["problem"] == "my_objective:shifted"
    assert summary["best_fitness"] < 0.5  # from f(x0) = 9
    solution = checkpoint.load_solution(tmp_path / "out" / "own" / "solution.msgpack")
    # The reported solution (the mean for this strategy) comes back exactly, shaped like x0.
    state_mean = json.loads((tmp_path / "out" / "own" / "summary.json").read_text())
    assert solution.shape == (4,) and state_mean["reported_solution"] == "mean"


@pytest.mark.parametrize(
    "problem, words",
    [
        ({"function": "no_such_module:f", "num_dims": 2}, "problem.function: cannot import"),
        ({"function": "my_objective:missing", "num_dims": 2}, "has no attribute 'missing'"),
    ],
)
def test_a_missing_module_or_attribute_names_problem_function(tmp_path, problem, words):
    (tmp_path / "my_objective.py").write_text("def f(x):\n    return x.sum()\n")
    config = _write_config(tmp_path, problem, {"name": "openai_es", "population_size": 4})
    with pytest.raises(ValueError, match=words):
        run_experiment(load_config(config), progress=False, output_dir=tmp_path / "out")


@pytest.mark.parametrize("api", ["flat", "linen", "nnx"])
def test_load_solution_returns_the_reported_solution_in_the_shape_of_x0(tmp_path, api):
    from flax import nnx

    if api == "flat":
        x0 = jnp.arange(3.0)
    else:
        x0 = esjax.nn.mlp(2, 1, (3,), key=jax.random.key(0), api=api).params
    es = esjax.openai_es(4)
    state = es.init(jax.random.key(0), x0)
    solution = state.unravel(es.solution(state))
    checkpoint.save_solution(tmp_path / "s.msgpack", solution)
    loaded = checkpoint.load_solution(tmp_path / "s.msgpack")
    if api == "nnx":
        nnx.replace_by_pure_dict(solution, loaded)  # as the README shows
        loaded = solution
    chex.assert_trees_all_equal(
        jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(jax.device_get(solution))
    )
    with pytest.raises(checkpoint.CheckpointError, match="not a solution"):
        checkpoint.save(tmp_path / "c.msgpack", state)
        checkpoint.load_solution(tmp_path / "c.msgpack")
