"""Test functions: optima, vectorisation, shift and rotation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.problems import FUNCTIONS, ellipsoid, make_problem


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_optimum_is_zero_and_elsewhere_positive(name):
    problem = make_problem(name, 6, key=jax.random.key(1), shift_scale=2.0, rotate=True)
    np.testing.assert_allclose(problem.fitness(problem.x_opt), 0.0, atol=1e-4)
    population = problem.x_opt + jax.random.normal(jax.random.key(2), (5, 6))
    values = problem.fitness(population)
    chex.assert_shape(values, (5,))
    assert bool(jnp.all(values > 0))


def test_ellipsoid_condition_number():
    x = jnp.eye(10)
    values = ellipsoid(x)
    np.testing.assert_allclose(values[-1] / values[0], 1e6, rtol=1e-4)


def test_rotation_is_orthogonal_and_keeps_sphere():
    problem = make_problem("sphere", 5, key=jax.random.key(0), rotate=True)
    x = jax.random.normal(jax.random.key(3), (4, 5))
    np.testing.assert_allclose(problem.fitness(x), jnp.sum(x**2, -1), rtol=1e-5)


def test_bad_problem_arguments():
    with pytest.raises(ValueError, match="name"):
        make_problem("himmelblau", 2)
    with pytest.raises(ValueError, match="num_dims"):
        make_problem("rosenbrock", 1)
    with pytest.raises(ValueError, match="key"):
        make_problem("sphere", 3, rotate=True)
