"""esjax.nn.population_apply: equal to a naive vmap over members, chunked or not, with a bf16
option whose outputs stay close and come back in float32; bad shapes and chunks are refused."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

from esjax import nn


class TinyConvNet(linen.Module):
    """The benchmark ConvNet's layer types at a small size (8×8 inputs, 4 and 8 filters)."""

    @linen.compact
    def __call__(self, images):
        x = jax.nn.relu(linen.Conv(4, (3, 3), padding="SAME")(images))
        x = linen.max_pool(x, (2, 2), strides=(2, 2))
        x = jax.nn.relu(linen.Conv(8, (3, 3), padding="SAME")(x))
        return linen.Dense(10)(x.reshape(x.shape[0], -1))


MODEL = nn.from_linen(TinyConvNet(), jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
POPULATION = MODEL.x0 + 0.1 * jax.random.normal(jax.random.key(1), (10, MODEL.num_params))
IMAGES = jax.random.uniform(jax.random.key(2), (6, 8, 8, 1))


def _naive(population):
    return jax.vmap(lambda vector: MODEL.apply(MODEL.spec.unflatten(vector), IMAGES))(population)


@pytest.mark.parametrize("population_chunk", [None, 1, 4, 10, 32])
def test_matches_a_naive_vmap_for_every_chunking(population_chunk):
    # 4 does not divide the 10 members (lax.map's remainder path); 32 > 10 is one vmap.
    outputs = nn.population_apply(MODEL, POPULATION, IMAGES, population_chunk=population_chunk)
    chex.assert_shape(outputs, (10, 6, 10))
    # Chunking changes only how XLA batches the convolutions: float32 rounding, nothing more.
    chex.assert_trees_all_close(outputs, _naive(POPULATION), rtol=1e-5, atol=1e-5)


def test_bfloat16_outputs_are_float32_and_close():
    reference = _naive(POPULATION)
    outputs = nn.population_apply(MODEL, POPULATION, IMAGES, population_chunk=4, dtype=jnp.bfloat16)
    assert outputs.dtype == jnp.float32
    chex.assert_tree_all_finite(outputs)
    # bfloat16 keeps 8 significant bits (relative rounding 2^-8 ≈ 0.4%) per operand; through
    # three layers of ~100-term sums the logits move by a few percent of their scale.
    scale = float(jnp.max(jnp.abs(reference)))
    np.testing.assert_allclose(outputs, reference, atol=0.05 * scale)
    # ... and the argmax (the prediction) agrees almost everywhere.
    agreement = float(jnp.mean(jnp.argmax(outputs, -1) == jnp.argmax(reference, -1)))
    assert agreement >= 0.9, agreement


def test_jit_and_integer_inputs_are_left_alone():
    # Integer inputs (token ids, class labels) must not be cast to the forward dtype.
    embed = nn.from_linen(linen.Embed(5, 3), jax.random.key(3), jnp.zeros((1,), jnp.int32))
    population = embed.x0 + jnp.zeros((4, embed.num_params))
    tokens = jnp.array([0, 4, 2])
    outputs = jax.jit(
        lambda p: nn.population_apply(embed, p, tokens, population_chunk=3, dtype=jnp.bfloat16)
    )(population)
    chex.assert_shape(outputs, (4, 3, 3))
    expected = embed.apply(embed.params, tokens)
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-2)  # bf16-rounded embeddings


def test_bad_population_shape_and_chunk_raise():
    with pytest.raises(ValueError, match="population"):
        nn.population_apply(MODEL, POPULATION[:, :-1], IMAGES)
    with pytest.raises(ValueError, match="population_chunk"):
        nn.population_apply(MODEL, POPULATION, IMAGES, population_chunk=0)
