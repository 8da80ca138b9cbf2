"""Flax models as population fitness: linen == nnx, chunked == vmapped, losses, step activations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax import nn

NUM_INPUTS, NUM_CLASSES, HIDDEN = 6, 3, (5, 4)


@pytest.fixture(scope="module")
def data():
    inputs = jax.random.normal(jax.random.key(1), (40, NUM_INPUTS))
    labels = jax.random.randint(jax.random.key(2), (40,), 0, NUM_CLASSES)
    return inputs, labels


@pytest.fixture(scope="module")
def models():
    linen_model = nn.mlp(NUM_INPUTS, NUM_CLASSES, HIDDEN, key=jax.random.key(0), api="linen")
    nnx_model = nn.mlp(NUM_INPUTS, NUM_CLASSES, HIDDEN, key=jax.random.key(0), api="nnx")
    return linen_model, nnx_model


def _population(num_params, size=8):
    return 0.5 * jax.random.normal(jax.random.key(3), (size, num_params))


def test_linen_and_nnx_mlps_share_the_flat_layout(models):
    linen_model, nnx_model = models
    # (6*5 + 5) + (5*4 + 4) + (4*3 + 3) parameters in both APIs.
    assert linen_model.num_params == nnx_model.num_params == 35 + 24 + 15
    vector = jnp.arange(linen_model.num_params, dtype=jnp.float32)
    linen_params = linen_model.spec.unflatten(vector)["params"]
    nnx_params = nnx_model.spec.unflatten(vector)["layers"]
    # Same leaf order (per layer: bias, then kernel) means the same vector is the same network.
    for i in range(len(HIDDEN) + 1):
        chex.assert_trees_all_equal(
            (linen_params[f"Dense_{i}"]["bias"], linen_params[f"Dense_{i}"]["kernel"]),
            (nnx_params[i]["bias"].get_value(), nnx_params[i]["kernel"].get_value()),
        )


def test_linen_and_nnx_give_identical_fitness_for_the_same_flat_vectors(models, data):
    linen_model, nnx_model = models
    population = _population(linen_model.num_params)

    @jax.jit
    def all_losses(population):
        return {
            api: jnp.stack(
                [nn.population_fitness(model, loss, population, *data) for loss in nn.LOSSES]
            )
            for api, model in (("linen", linen_model), ("nnx", nnx_model))
        }

    fitness = all_losses(population)
    chex.assert_shape(fitness["linen"], (len(nn.LOSSES), 8))
    # The same matmuls in the same order: equal up to float32 rounding of the fused ops.
    np.testing.assert_allclose(fitness["linen"], fitness["nnx"], rtol=1e-6, atol=1e-7)
    assert float(jnp.min(jnp.std(fitness["linen"][:2], axis=1))) > 0  # members really differ


def test_chunked_and_vmapped_population_evaluation_agree(models, data):
    model = models[0]
    population = _population(model.num_params, size=10)

    @jax.jit
    def both(population):
        whole = nn.population_fitness(model, "cross_entropy", population, *data)
        # 10 members in chunks of 3: three full chunks and a remainder of one.
        chunked = nn.population_fitness(model, "cross_entropy", population, *data, batch_size=3)
        return whole, chunked

    whole, chunked = both(population)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)


def _primitive_names(jaxpr) -> set:
    names = set()
    for equation in jaxpr.eqns:
        names.add(equation.primitive.name)
        for value in equation.params.values():
            if hasattr(value, "jaxpr"):
                names |= _primitive_names(getattr(value.jaxpr, "jaxpr", value.jaxpr))
    return names


def test_population_evaluation_is_one_batched_apply_without_a_loop(models, data):
    model = models[0]
    population = _population(model.num_params)

    def evaluate(batch_size):
        return jax.make_jaxpr(
            lambda p: nn.population_fitness(model, "mse", p, *data, batch_size=batch_size)
        )(population).jaxpr

    vmapped = _primitive_names(evaluate(None))
    assert "dot_general" in vmapped
    assert not {"scan", "while"} & vmapped  # a single batched program, no per-member loop
    assert {"scan", "while"} & _primitive_names(evaluate(2))  # chunks are a lax.map loop


def test_losses_match_their_definitions():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 2, 2])
    log_softmax = logits - jnp.log(jnp.sum(jnp.exp(logits), axis=1, keepdims=True))
    expected = -jnp.mean(log_softmax[jnp.arange(3), labels])
    np.testing.assert_allclose(nn.cross_entropy(logits, labels), expected, rtol=1e-6)
    assert float(nn.zero_one_error(logits, labels)) == pytest.approx(1 / 3)  # row 1 is wrong
    assert float(nn.accuracy(logits, labels)) == pytest.approx(2 / 3)
    one_hot = jax.nn.one_hot(labels, 3)
    np.testing.assert_allclose(nn.mse(logits, labels), jnp.mean((logits - one_hot) ** 2))
    # The residual "losses" for EKI are vectors: one entry per (example, class).
    residual = nn.get_loss("softmax_residual")(logits, labels)
    chex.assert_shape(residual, (9,))
    np.testing.assert_allclose(residual, (jax.nn.softmax(logits) - one_hot).ravel(), rtol=1e-6)
    np.testing.assert_allclose(residual.reshape(3, 3).sum(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(nn.output_residual(logits, labels), (logits - one_hot).ravel())


def test_step_has_zero_gradient_and_straight_through_keeps_its_forward_values():
    x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5])
    np.testing.assert_array_equal(nn.step(x), [0.0, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(nn.step_straight_through(x), nn.step(x))
    np.testing.assert_array_equal(jax.vmap(jax.grad(nn.step))(x), jnp.zeros(5))
    # Hard-sigmoid surrogate: slope 1/2 on |x| <= 1, zero outside.
    np.testing.assert_array_equal(
        jax.vmap(jax.grad(nn.step_straight_through))(x), [0.0, 0.5, 0.5, 0.5, 0.0]
    )


def test_minibatch_fitness_is_shared_by_key_and_full_data_without_one(models, data):
    model = models[0]
    fitness = jax.jit(nn.dataset_fitness(model, "cross_entropy", *data, batch_size=8))
    params = model.params
    key = jax.random.key(7)
    assert float(fitness(params, key)) == float(fitness(params, key))
    assert float(fitness(params, key)) != float(fitness(params, jax.random.key(8)))
    full = nn.cross_entropy(model.apply(params, data[0]), data[1])
    np.testing.assert_allclose(fitness(params), full, rtol=1e-6)
    index = nn.minibatch_indices(key, 40, 8)
    chex.assert_shape(index, (8,))
    assert int(index.min()) >= 0 and int(index.max()) < 40


def test_from_linen_and_from_nnx_wrap_user_modules(data):
    from flax import linen, nnx

    class Tiny(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(NUM_CLASSES)(x)

    model = nn.from_linen(Tiny(), jax.random.key(0), data[0][:1])
    assert model.num_params == NUM_INPUTS * NUM_CLASSES + NUM_CLASSES
    chex.assert_shape(model.apply_flat(model.x0, data[0]), (40, NUM_CLASSES))
    nnx_model = nn.from_nnx(nnx.Linear(NUM_INPUTS, NUM_CLASSES, rngs=nnx.Rngs(0)))
    assert nnx_model.num_params == model.num_params
    chex.assert_shape(nnx_model.apply_flat(nnx_model.x0, data[0]), (40, NUM_CLASSES))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"activation": "swishy"}, "activation"),
        ({"api": "haiku"}, "api"),
    ],
)
def test_bad_model_arguments_name_the_problem(kwargs, words):
    with pytest.raises(ValueError, match=words):
        nn.mlp(2, 2, (3,), key=jax.random.key(0), **kwargs)


def test_unknown_loss_lists_the_valid_ones(models, data):
    with pytest.raises(ValueError, match="cross_entropy"):
        nn.dataset_fitness(models[0], "hinge", *data)
