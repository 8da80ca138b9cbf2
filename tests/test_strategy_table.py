"""One table of checks that every strategy must pass. A new strategy joins by adding a row.

Each row builds a small strategy and brings its own fitness (the sphere, or residual vectors for
a strategy that takes them); the checks are: population shape, state structure and dtypes
unchanged by ``tell``, jit == eager on the same key, no retracing on a second call,
``jax.eval_shape(init)``, vmap over keys, finite state after NaN/inf fitness, and convergence on
a small sphere within ``budget`` generations.
"""

import chex
import jax
import jax.numpy as jnp
import pytest
from strategy_cases import NUM_DIMS, STRATEGY_CASES, key_data

import esjax


@pytest.fixture(params=STRATEGY_CASES, ids=[case.id for case in STRATEGY_CASES])
def case(request):
    return request.param


def _x0():
    return jnp.ones(NUM_DIMS)


def test_population_shape_and_tell_preserves_structure(case, key):
    es, fitness = case.factory(), case.fitness
    state = es.init(key, _x0())
    population, asked = es.ask(key, state)
    chex.assert_shape(population, (es.population_size, NUM_DIMS))
    told = es.tell(asked, population, fitness(population))
    chex.assert_trees_all_equal_shapes_and_dtypes(told, state)
    assert int(told.generation) == 1
    chex.assert_tree_all_finite(key_data(told))


def _well_defined(state):
    """``state`` with eigenvector matrices replaced by the matrix they reconstruct.

    Eigenvectors are fixed only up to sign and rotation within (nearly) equal eigenvalues, and
    jit and eager runs may return different ones (2e-5 relative apart was seen for CMA-ES);
    ``B D² Bᵀ`` and the eigenvalues ``D`` are what the state actually means.
    """
    if not hasattr(state, "eigenvectors"):
        return key_data(state)
    basis, lengths = state.eigenvectors, state.axis_lengths
    return key_data(state.replace(eigenvectors=(basis * lengths**2) @ basis.T))


def test_jit_equals_eager_and_no_retrace(case, key):
    chex.clear_trace_counter()  # chex counts traces per source location, across parametrised rows
    es, fitness = case.factory(), case.fitness
    state = es.init(key, _x0())

    @jax.jit
    @chex.assert_max_traces(n=1)
    def generation(k, s):
        population, s = es.ask(k, s)
        return es.tell(s, population, fitness(population))

    jitted = generation(key, state)
    jitted = generation(jax.random.fold_in(key, 1), jitted)  # second call: no retrace
    population, eager = es.ask(key, state)
    eager = es.tell(eager, population, fitness(population))
    population, eager = es.ask(jax.random.fold_in(key, 1), eager)
    eager = es.tell(eager, population, fitness(population))
    chex.assert_trees_all_close(_well_defined(jitted), _well_defined(eager), rtol=1e-5, atol=1e-6)


def test_eval_shape_and_vmap_over_keys(case, key):
    es = case.factory()
    abstract = jax.eval_shape(es.init, key, _x0())
    concrete = es.init(key, _x0())
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)
    keys = jax.random.split(key, 3)
    states = jax.vmap(es.init, (0, None))(keys, _x0())
    populations, states = jax.vmap(es.ask)(keys, states)
    chex.assert_shape(populations, (3, es.population_size, NUM_DIMS))
    states = jax.vmap(es.tell)(states, populations, case.fitness(populations))
    chex.assert_shape(states.best_fitness, (3,))


def test_non_finite_fitness_keeps_state_finite(case, key):
    es = case.factory()
    state = es.init(key, _x0())
    for generation in range(3):
        population, state = es.ask(jax.random.fold_in(key, generation), state)
        fitness = case.fitness(population)  # residual rows: the whole vector of a member
        fitness = fitness.at[0].set(jnp.nan).at[1].set(jnp.inf).at[2].set(-jnp.inf)
        state = es.tell(state, population, fitness)
    chex.assert_tree_all_finite(key_data(state))


def test_converges_on_small_sphere(case, key):
    es = case.factory()
    state = es.init(key, _x0())
    state, _ = esjax.run(es, case.fitness, jax.random.key(1), state, case.budget, progress=False)
    assert float(state.best_fitness) < case.target
