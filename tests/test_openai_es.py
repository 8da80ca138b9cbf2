"""OpenAI-ES: convergence, determinism, vmap over seeds and sigma, NaN safety, bad arguments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import esjax
from esjax.problems import rosenbrock, sphere
from esjax.strategies.openai_es import perturbations, weighted_deviation_sum


def _sphere_es():
    # sigma and the learning rate decay so the mean can resolve the optimum well below the
    # initial noise scale (with a fixed sigma=0.1 the smoothed sphere bottoms out near d σ²).
    return esjax.openai_es(
        population_size=64,
        sigma=0.1,
        sigma_decay=0.99,
        sigma_limit=1e-3,
        optimizer=optax.adam(optax.exponential_decay(0.05, 1000, 0.01)),
    )


def test_sphere_100d_reaches_1e_minus_3_within_1000_generations():
    es = _sphere_es()
    state = es.init(jax.random.key(0), jnp.ones(100))  # f(x0) = 100
    state, metrics = esjax.run(es, sphere, jax.random.key(1), state, 1000, progress=False)
    assert float(sphere(state.mean)) < 1e-3
    assert float(state.best_fitness) < 1e-3
    hit = int(np.argmax(metrics["best_fitness"] < 1e-3))
    assert 0 < hit < 1000, hit


def test_rosenbrock_10d_goes_down_the_valley():
    # f(0) = 9. Reaching f < 0.1 means the mean left the flat start, found the curved valley and
    # travelled most of its length towards (1, ..., 1); a random walk or a stuck ES stays near 9.
    es = esjax.openai_es(
        population_size=64, sigma=0.05, sigma_decay=0.998, sigma_limit=0.005, learning_rate=0.01
    )
    state = es.init(jax.random.key(0), jnp.zeros(10))
    state, _ = esjax.run(es, rosenbrock, jax.random.key(1), state, 2000, progress=False)
    assert float(rosenbrock(state.mean)) < 0.1


def _three_generations(es, key, state, jit):
    ask = jax.jit(es.ask) if jit else es.ask
    tell = jax.jit(es.tell) if jit else es.tell
    for generation in range(3):
        population, state = ask(jax.random.fold_in(key, generation), state)
        state = tell(state, population, sphere(population))
    return state


def test_ask_tell_identical_with_and_without_jit(key):
    es = esjax.openai_es(population_size=8, sigma=0.1, learning_rate=0.1)
    state = es.init(key, jnp.linspace(-1.0, 1.0, 5))
    jitted = _three_generations(es, key, state, jit=True)
    eager = _three_generations(es, key, state, jit=False)
    # The same XLA ops run either way; differences would only come from fusion reassociating
    # float32 sums, which stays within a few ulps.
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-7)


def test_same_seed_same_run_different_seed_different_run(key):
    es = esjax.openai_es(population_size=8, sigma=0.1)
    state = es.init(key, jnp.ones(6))
    a, _ = esjax.run(es, sphere, jax.random.key(3), state, 20, progress=False)
    b, _ = esjax.run(es, sphere, jax.random.key(3), state, 20, progress=False)
    c, _ = esjax.run(es, sphere, jax.random.key(4), state, 20, progress=False)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a.mean, c.mean)


def test_member_noise_depends_only_on_key_and_index(key):
    full = perturbations(key, jnp.arange(8), 5, 8, antithetic=True)
    part = perturbations(key, jnp.array([6, 1]), 5, 8, antithetic=True)
    np.testing.assert_array_equal(part, full[jnp.array([6, 1])])
    np.testing.assert_array_equal(full[4:], -full[:4])  # mirrored halves


def test_vmap_over_seeds_and_sigmas_matches_separate_runs():
    es = esjax.openai_es(population_size=8, sigma=0.1, learning_rate=0.05)
    step = esjax.step(es, sphere, jit=False)
    x0 = jnp.ones(4)

    def run_one(seed_key, sigma):
        state = es.init(seed_key, x0, es.default_params.replace(sigma=sigma))

        def body(state, generation):
            return step(jax.random.fold_in(seed_key, generation), state)

        state, _ = jax.lax.scan(body, state, jnp.arange(10))
        return state.mean

    seeds = jax.random.split(jax.random.key(7), 8)
    sigmas = jnp.array([0.02, 0.05, 0.1, 0.2])
    grid = jax.jit(jax.vmap(jax.vmap(run_one, (None, 0)), (0, None)))(seeds, sigmas)
    chex.assert_shape(grid, (8, 4, 4))
    for i in (0, 5):
        for j in (0, 3):
            separate = jax.jit(run_one)(seeds[i], sigmas[j])
            np.testing.assert_allclose(grid[i, j], separate, rtol=1e-5, atol=1e-6)
    # Different sigmas really give different runs.
    assert not np.allclose(grid[0, 0], grid[0, 3])


def test_nan_fitness_never_reaches_mean_or_optimizer_state(key):
    es = esjax.openai_es(population_size=8, sigma=0.1)
    state = es.init(key, jnp.ones(3))
    population, state = es.ask(key, state)
    fitness = sphere(population).at[jnp.array([0, 3])].set(jnp.nan).at[5].set(jnp.inf)
    new = es.tell(state, population, fitness)
    chex.assert_tree_all_finite((new.mean, new.opt_state, new.best_solution, new.best_fitness))
    assert float(new.best_fitness) == float(jnp.min(sphere(population)[jnp.array([1, 2, 4, 6, 7])]))
    all_nan = es.tell(state, population, jnp.full(8, jnp.nan))
    chex.assert_tree_all_finite((all_nan.mean, all_nan.opt_state))
    np.testing.assert_array_equal(all_nan.mean, state.mean)  # no information, no move


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"population_size": 1}, "population_size"),
        ({"population_size": 7}, "population_size"),
        ({"population_size": 8, "sigma": 0.0}, "sigma"),
        ({"population_size": 8, "sigma": -1.0}, "sigma"),
        ({"population_size": 8, "sigma_decay": 1.5}, "sigma_decay"),
        ({"population_size": 8, "weight_decay": -0.1}, "weight_decay"),
        ({"population_size": 8, "learning_rate": 0.0}, "learning_rate"),
        ({"population_size": 8, "fitness_shaping": "softmax"}, "fitness_shaping"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        esjax.openai_es(**kwargs)


def test_odd_population_is_fine_without_antithetic(key):
    es = esjax.openai_es(population_size=7, antithetic=False)
    population, _ = es.ask(key, es.init(key, jnp.zeros(3)))
    chex.assert_shape(population, (7, 3))


def test_wrong_fitness_shape_and_bad_x0_raise(key):
    es = esjax.openai_es(population_size=8)
    state = es.init(key, jnp.zeros(3))
    population, state = es.ask(key, state)
    with pytest.raises(ValueError, match="fitness"):
        es.tell(state, population, jnp.zeros(7))
    with pytest.raises(ValueError, match="fitness"):
        jax.jit(es.tell)(state, population, jnp.zeros((8, 1)))
    with pytest.raises(ValueError, match="x0"):
        es.init(key, jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="sigma"):
        es.init(key, jnp.zeros(3), es.default_params.replace(sigma=-0.5))


def test_weight_decay_pulls_towards_zero(key):
    # On a flat objective only the L2 term ranks members, so the mean must shrink.
    es = esjax.openai_es(population_size=16, sigma=0.1, learning_rate=0.05, weight_decay=1.0)
    state = es.init(key, jnp.full(5, 2.0))
    state, _ = esjax.run(es, lambda x: jnp.zeros(()), key, state, 30, progress=False)
    assert float(jnp.linalg.norm(state.mean)) < float(jnp.linalg.norm(jnp.full(5, 2.0))) - 1.0


def test_one_sgd_step_moves_the_mean_by_the_true_gradient():
    """Raw fitness and ``optax.sgd(1.0)``: one ``tell`` moves θ by ``-g``, the ES estimate of
    ∇E[f(θ + σε)] = 2θ on the sphere (the smoothing adds σ² n, which does not depend on θ).
    Adam would hide a wrong constant factor (such as σ instead of σ² in g's denominator, which
    shrinks g by σ = 0.1 here) and sgd keeps it; the signs of θ's entries are mixed to catch a
    sign error too.

    Tolerance from the estimator's Monte-Carlo error: with P = n/2 antithetic pairs,
    ``g = (2/P) Σ_k (θ·ε_k) ε_k`` exactly on the sphere, and entry i has standard deviation
    ``2 √((‖θ‖² + θ_i²) / P)``, 0.02-0.04 (1-4% of 2θ_i) at n = 40,000. The check allows 5 of
    them per entry.
    """
    theta = jnp.array([1.0, -0.5, 2.0, -0.25])
    population_size = 40_000
    es = esjax.openai_es(
        population_size, sigma=0.1, optimizer=optax.sgd(1.0), fitness_shaping="raw"
    )

    @jax.jit
    def one_step(key, state):
        population, state = es.ask(key, state)
        return es.tell(state, population, sphere(population))

    state = one_step(jax.random.key(0), es.init(jax.random.key(0), theta))
    gradient = 2 * np.asarray(theta)
    pairs = population_size // 2
    standard_deviation = 2 * np.sqrt((np.sum(gradient**2) / 4 + gradient**2 / 4) / pairs)
    error = np.abs(np.asarray(state.mean - theta) + gradient)
    assert np.all(error < 5 * standard_deviation), (np.asarray(state.mean - theta), -gradient)


@pytest.mark.parametrize("num_members", [37, 5, 64, 1])
def test_weighted_deviation_sum_is_the_plain_sum_in_blocks(num_members):
    # 37 rows: 7 blocks of 5 and a remainder of 2; 5 rows: fewer rows than blocks (5 blocks of
    # one); 64: 8 blocks of 8; 1: a single product.
    rng = np.random.default_rng(num_members)
    members, weights, mean = (
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in ((num_members, 300), (num_members,), (300,))
    )
    blocked = jax.jit(weighted_deviation_sum)(weights, members, mean)
    np.testing.assert_allclose(blocked, weights @ (members - mean), rtol=1e-5, atol=1e-5)
    # bfloat16 members: the blocks are summed in float32 and rounded once, so the result is
    # within a bfloat16 rounding (2^-8 relative) of the float32 sum of the same inputs.
    low = [a.astype(jnp.bfloat16) for a in (weights, members, mean)]
    reference = np.asarray(
        low[0].astype(jnp.float32) @ (low[1].astype(jnp.float32) - low[2].astype(jnp.float32))
    )
    got = jax.jit(weighted_deviation_sum)(*low)
    chex.assert_type(got, jnp.bfloat16)
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(np.asarray(got, np.float32), reference, atol=scale * 2.0**-7)


def test_weighted_deviation_sum_keeps_precision_and_holds_one_block_of_deviations():
    # |θ| ~ 100 and σ = 1e-4 in float32 (x_i itself only holds σ ε_i to ~2%): subtracting θ
    # first gives a relative error of 0.025 against the float64 sum of w_i σ ε_i; the cheaper
    # Σ w_i x_i - (Σ w_i) θ would give 0.17 (both measured).
    rng = np.random.default_rng(0)
    n, d, sigma = 1024, 1000, 1e-4
    mean = (100 * rng.normal(size=d)).astype(np.float32)
    noise = rng.normal(size=(n, d))
    members = (mean + sigma * noise).astype(np.float32)
    weights = np.asarray(esjax.shaping.centered_ranks(jnp.asarray(rng.normal(size=n))))
    ideal = weights.astype(np.float64) @ (sigma * noise)
    got = np.asarray(jax.jit(weighted_deviation_sum)(weights, members, mean), np.float64)
    assert np.linalg.norm(got - ideal) / np.linalg.norm(ideal) < 0.05
    # XLA's buffer assignment: the temporaries are one block of deviations (1/8 of the members),
    # not a second population-sized array as for `weights @ (members - mean)`.
    args = (jnp.asarray(weights), jnp.asarray(members), jnp.asarray(mean))
    blocked = jax.jit(weighted_deviation_sum).lower(*args).compile().memory_analysis()
    plain = jax.jit(lambda w, x, m: w @ (x - m)).lower(*args).compile().memory_analysis()
    assert blocked.temp_size_in_bytes <= members.nbytes / 4 <= plain.temp_size_in_bytes / 2
