"""BBOB functions against COCO's own implementation (``cocoex``): values at random points,
optima, instance handling, one compiled program per function and dimension.

``cocoex.Suite("bbob", "", "")`` is the reference (the coco-experiment wheel); the test skips
where it is not installed. Its instances are 1-5 and 71-80; instances 1, 2 and 71 cover an old
and a recent seed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.problems.bbob import NUM_FUNCTIONS, bbob_function, legacy_uniform

cocoex = pytest.importorskip("cocoex")

DIMS = (2, 10)
INSTANCES = (1, 2, 71)
NUM_POINTS = 100
# Relative tolerance against cocoex. Both compute in float64 and most functions agree to ~1e-12;
# the largest difference measured (dims 2-40, instances 1-3, 71, 80) is 1.2e-9, for f19, whose
# cos of values ~1e5 amplifies rounding. 1e-6 leaves room for other summation orders (BLAS, XLA
# versions) while any wrong constant, seed or transformation order shows up as O(1).
RTOL = 1e-6


@pytest.fixture(scope="module")
def suite():
    return cocoex.Suite("bbob", "", "")


# Tiny programs: compiling, not running, is what costs time here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _evaluate_points(fitness, points):
    return jax.vmap(fitness)(points)


# ``fitness`` is a ``jax.tree_util.Partial``: its instance data are inputs, so this compiles once
# per function and dimension and serves every instance.
evaluate_points = jax.jit(_evaluate_points, compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("function_id", range(1, NUM_FUNCTIONS + 1))
def test_values_equal_cocoex(suite, function_id):
    rng = np.random.default_rng(function_id)
    compiled_before = evaluate_points._cache_size()
    with jax.enable_x64(True):
        for num_dims in DIMS:
            for instance in INSTANCES:
                problem = bbob_function(function_id, num_dims, instance)
                reference = suite.get_problem_by_function_dimension_instance(
                    function_id, num_dims, instance
                )
                assert problem.name == reference.id
                # The box of interest, a few points beyond it (penalties, f5's plateau) and the
                # optimum last.
                points = np.concatenate(
                    [
                        rng.uniform(-5, 5, (NUM_POINTS, num_dims)),
                        rng.uniform(-8, 8, (10, num_dims)),
                        problem.x_opt[None],
                    ]
                )
                ours = np.asarray(evaluate_points(problem.fitness, jnp.asarray(points)))
                theirs = np.array([reference(point) for point in points])
                np.testing.assert_allclose(ours, theirs, rtol=RTOL, err_msg=problem.name)
                # x_opt reaches COCO's final target f_opt + 1e-8, in COCO's function and ours.
                assert abs(theirs[-1] - problem.f_opt) < 1e-8, problem.name
                assert abs(ours[-1] - problem.f_opt) < 1e-8, problem.name
    # One program per dimension, whatever the instance.
    assert evaluate_points._cache_size() - compiled_before == len(DIMS)


def test_evaluate_vmaps_over_instances():
    # The instance data are plain arrays, so instances stack and vmap like any input.
    problems = [bbob_function(21, 5, instance) for instance in (1, 2, 3)]
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *[p.data for p in problems])
    x = np.random.default_rng(0).uniform(-5, 5, (4, 5))
    with jax.enable_x64(True):
        over_instances = jax.jit(jax.vmap(problems[0].evaluate, in_axes=(0, None)))
        together = over_instances(stacked, jnp.asarray(x))
        for row, problem in zip(together, problems, strict=True):
            np.testing.assert_allclose(row, evaluate_points(problem.fitness, x), rtol=1e-12)


def test_leading_axes_and_dtype():
    # Leading axes are kept and the value has x's dtype (float32 here: x64 is off).
    problem = bbob_function(15, 3, 1)
    values = jax.jit(problem.fitness)(jnp.zeros((2, 4, 3), jnp.float32))
    assert values.shape == (2, 4) and values.dtype == jnp.float32


def test_legacy_uniform_generator():
    # Park-Miller with a Bays-Durham table: every value in (0, 1], reproducible, and seeds
    # below 1 are treated as in COCO (|seed|, at least 1).
    values = legacy_uniform(1000, 12345)
    assert np.all((values > 0) & (values <= 1)) and len(np.unique(values)) == 1000
    np.testing.assert_array_equal(values, legacy_uniform(1000, 12345))
    np.testing.assert_array_equal(legacy_uniform(5, -7), legacy_uniform(5, 7))
    np.testing.assert_array_equal(legacy_uniform(5, 0), legacy_uniform(5, 1))
    # A uniform sample: mean 1/2 within 4 standard errors (1 / √(12 · 1000) ≈ 0.009).
    assert abs(values.mean() - 0.5) < 0.04


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"function_id": 0, "num_dims": 2}, "function_id"),
        ({"function_id": 25, "num_dims": 2}, "function_id"),
        ({"function_id": 1, "num_dims": 1}, "num_dims"),
        ({"function_id": 1, "num_dims": 2, "instance": 0}, "instance"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        bbob_function(**kwargs)
