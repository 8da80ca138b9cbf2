"""Fitness shaping: ranks, ties, non-finite values, weights."""

import jax.numpy as jnp
import numpy as np

from esjax import shaping


def test_centered_ranks_order_range_and_sum():
    fitness = jnp.array([3.0, -1.0, 10.0, 0.5])
    shaped = shaping.centered_ranks(fitness)
    np.testing.assert_allclose(shaped, [1 / 6, -0.5, 0.5, -1 / 6], rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(shaped), 0.0, atol=1e-7)
    # A population of one has nothing to rank against: no push in any direction.
    np.testing.assert_array_equal(shaping.centered_ranks(jnp.array([7.0])), [0.0])


def test_ties_share_their_mean_rank():
    np.testing.assert_allclose(shaping.ranks(jnp.array([2.0, 1.0, 2.0, 0.0])), [2.5, 1.0, 2.5, 0.0])


def test_non_finite_fitness_ranks_worst():
    fitness = jnp.array([jnp.nan, 1.0, -jnp.inf, 0.0, jnp.inf])
    ranked = shaping.ranks(fitness)
    np.testing.assert_allclose(ranked[jnp.array([3, 1])], [0.0, 1.0])
    assert bool(jnp.all(ranked[jnp.array([0, 2, 4])] == 3.0))  # the three non-finite tie last


def test_z_score_finite_and_standardised():
    scores = shaping.z_score(jnp.array([1.0, 2.0, 3.0, jnp.nan]))
    assert bool(jnp.all(jnp.isfinite(scores)))
    np.testing.assert_allclose(scores[:3], [-1.2247449, 0.0, 1.2247449], rtol=1e-5)
    assert float(scores[3]) == float(scores[2])  # NaN scores as the worst finite member


def test_log_rank_weights_and_assignment():
    weights = shaping.log_rank_weights(6)
    np.testing.assert_allclose(jnp.sum(weights), 1.0, rtol=1e-6)
    assert bool(jnp.all(jnp.diff(weights[:3]) < 0)) and bool(jnp.all(weights[3:] == 0))
    assigned = shaping.rank_weights(jnp.array([5.0, jnp.nan, 1.0, 3.0, 2.0, 4.0]), weights)
    np.testing.assert_allclose(assigned[2], weights[0])
    np.testing.assert_allclose(assigned[1], 0.0)


def test_l2_penalty():
    np.testing.assert_allclose(
        shaping.l2_penalty(jnp.array([[1.0, 2.0], [0.0, 0.0]]), 0.5), [2.5, 0]
    )
