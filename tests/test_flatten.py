"""Flax linen and nnx parameters as x0: exact round trips, and ES improving a tiny regression."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

import esjax
from esjax.flatten import flatten


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(1)(jnp.tanh(linen.Dense(8)(x)))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(2, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def test_linen_params_round_trip_exactly(key):
    params = LinenMLP().init(key, jnp.zeros((1, 2)))
    vector, spec = flatten(params)
    chex.assert_shape(vector, (2 * 8 + 8 + 8 * 1 + 1,))
    chex.assert_trees_all_equal(spec.unflatten(vector), params)
    assert hash(spec) == hash(flatten(params)[1])  # static and hashable: jit caches on it


def test_nnx_state_round_trips_exactly(key):
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
    vector, spec = flatten(state)
    rebuilt = spec.unflatten(vector)
    chex.assert_trees_all_equal(rebuilt, state)
    model = nnx.merge(graphdef, rebuilt)
    assert model(jnp.ones((3, 2))).shape == (3, 1)


def test_mixed_dtypes_come_back_in_their_own_dtype():
    tree = {"a": jnp.ones((2,), jnp.bfloat16), "b": jnp.arange(3.0, dtype=jnp.float32)}
    vector, spec = flatten(tree)
    assert vector.dtype == jnp.float32
    chex.assert_trees_all_equal_dtypes(spec.unflatten(vector), tree)


def _regression_data():
    x = jax.random.uniform(jax.random.key(5), (64, 2), minval=-1.0, maxval=1.0)
    return x, jnp.sin(2.0 * x[:, :1]) * x[:, 1:]


def test_es_on_linen_mlp_improves_regression_loss(key):
    x, y = _regression_data()
    model = LinenMLP()
    params = model.init(key, x[:1])

    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    es = esjax.openai_es(population_size=32, sigma=0.05, learning_rate=0.03)
    state = es.init(key, params)
    state, _ = esjax.run(es, loss, jax.random.key(1), state, 150, progress=False)
    trained = state.unravel(state.mean)
    chex.assert_trees_all_equal_shapes_and_dtypes(trained, params)
    assert float(loss(trained)) < 0.5 * float(loss(params))


def test_es_on_nnx_mlp_improves_regression_loss():
    x, y = _regression_data()
    graphdef, nnx_state = nnx.split(NnxMLP(nnx.Rngs(1)))

    def loss(state):
        return jnp.mean((nnx.merge(graphdef, state)(x) - y) ** 2)

    es = esjax.openai_es(population_size=32, sigma=0.05, learning_rate=0.03)
    state = es.init(jax.random.key(0), nnx_state)
    state, _ = esjax.run(es, loss, jax.random.key(1), state, 150, progress=False)
    assert float(loss(state.unravel(state.mean))) < 0.5 * float(loss(nnx_state))
    np.testing.assert_array_equal(state.unravel(state.mean)["out"]["bias"].shape, (1,))
