"""SPSO-2011: sphere and rastrigin budgets, ring vs global best, per-dimension randomness, a NumPy
reference of one move, the fused Threefry draws, initialisation in bounds, determinism, vmap, NaN
safety, bad arguments."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esjax
from esjax.experiments.config import build_strategy, load_config
from esjax.problems import rastrigin, sphere
from esjax.strategies.pso import informant_best, swarm_draws

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
W, C = 1.0 / (2.0 * np.log(2.0)), 0.5 + np.log(2.0)  # SPSO-2011's constants


def _runner(es, fitness_fn, num_dims, num_generations):
    """``key -> best-ever fitness per generation`` for one seed (vmap it over seeds)."""

    def run_one(key):
        state = es.init(key, jnp.zeros(num_dims))

        def body(state, generation):
            population, state = es.ask(jax.random.fold_in(key, generation), state)
            state = es.tell(state, population, fitness_fn(population))
            return state, state.best_fitness

        return jax.lax.scan(body, state, jnp.arange(num_generations))[1]

    return run_one


def test_sphere_30d_reaches_1e_minus_6_within_50k_evaluations():
    # 40 particles x 1250 generations = 5e4 evaluations, a quarter of the 2e5 the issue allows.
    # The swarm starts uniformly in [-100, 100]^30 (f ≈ 1e5); measured: every seed crosses 1e-6
    # between generations 860 and 940, and ends below 1e-9.
    es = esjax.pso(population_size=40, lower_bound=-100.0, upper_bound=100.0)
    run_one = _runner(es, sphere, 30, 1250)
    keys = jax.random.split(jax.random.key(0), 10)
    history = np.asarray(jax.jit(jax.vmap(run_one))(keys))
    assert np.median(history[:, -1]) < 1e-6
    assert np.all(history[:, -1] < 1e-6), history[:, -1]


@pytest.fixture(scope="module")
def rastrigin_finals():
    """Final best fitness on 10-D rastrigin in [-5.12, 5.12]^10 for ring and global topologies,
    80 seeds each, 40 particles x 1250 generations = 5e4 evaluations."""
    keys = jax.random.split(jax.random.key(1), 80)
    finals = {}
    for topology in ("ring", "global"):
        es = esjax.pso(population_size=40, topology=topology, lower_bound=-5.12, upper_bound=5.12)
        history = jax.jit(jax.vmap(_runner(es, rastrigin, 10, 1250)))(keys)
        finals[topology] = np.asarray(history[:, -1])
    return finals


def test_rastrigin_10d_median_below_12_within_50k_evaluations(rastrigin_finals):
    # The best of the 40 initial particles has f ≈ 60-100; a local minimum with every coordinate
    # one step from the optimum has f ≈ 9.95. Measured: median of the first 10 seeds 9.9
    # (global best: 12.9); with the previous random stream 9.0, 9.0 at 1e5 evaluations and 8.5
    # at 2e5.
    assert np.median(rastrigin_finals["ring"][:10]) < 12.0


def test_ring_beats_global_best_on_rastrigin_success_rate(rastrigin_finals):
    ring = np.mean(rastrigin_finals["ring"] < 10.0)
    global_best = np.mean(rastrigin_finals["global"] < 10.0)
    # Measured 0.575 vs 0.275 (the global swarm collapses onto its first good local minimum and
    # stops improving by generation ~1000); over 120 other seeds 0.58 vs 0.23, and 0.62 vs 0.27
    # with the previous random stream (same distribution). The gap, ~0.3, has an sd of ~0.075
    # over 80 seeds (40 seeds, sd ~0.1, left it within one sd of 0.2), so 0.2 is a decisive
    # difference that chance rarely undercuts.
    assert ring - global_best >= 0.2, (ring, global_best)


# One small bounded swarm shared by the unit tests below and jitted once: fresh compiles and
# eager dispatch are what make JAX tests slow.
LOWER, UPPER = np.array([-2.0, -2.0, -2.0]), np.array([2.0, 3.0, 4.0])
SMALL = esjax.pso(population_size=8, lower_bound=-2.0, upper_bound=UPPER.tolist())
SMALL_ASK, SMALL_TELL = jax.jit(SMALL.ask), jax.jit(SMALL.tell)
_CLASSIC = esjax.pso(
    population_size=8,
    update="classic",
    max_velocity=2.5,
    lower_bound=-2.0,
    upper_bound=UPPER.tolist(),
    bounds_handling="reflect",
)
SMALL_VARIANTS = {
    "spso2011": (SMALL, SMALL_ASK, SMALL_TELL),
    "classic": (_CLASSIC, jax.jit(_CLASSIC.ask), jax.jit(_CLASSIC.tell)),
}
WORST = float(jnp.finfo(jnp.float32).max)  # stored fitness of a personal best never evaluated


def _moved_state(es, key, num_dims, personal_best, personal_best_fitness):
    """A state one tell in, with positions and velocities zero and the given personal bests."""
    state = es.init(key, jnp.zeros(num_dims))
    zeros = jnp.zeros_like(state.positions)
    return state.replace(
        generation=jnp.array(1, jnp.int32),
        positions=zeros,
        velocities=zeros,
        personal_best=jnp.broadcast_to(personal_best, zeros.shape),
        personal_best_fitness=personal_best_fitness,
    )


def test_random_coefficients_are_drawn_per_dimension(key):
    # x = v = 0 and every personal best at a (e1 + e2): particle i's move along e1 and e2 is
    # (c/3)(U1_d + U2_d) a (+ the hypersphere point for spso2011). With one coefficient per
    # particle (coefficients="per_particle", evosax's form), v_1 = v_2 apart from the hypersphere
    # noise, whose per-coordinate size in 400 dimensions is ~||G - x|| / √400: the median
    # |v_1 - v_2| / a is ~0.015. Per-dimension draws give ~0.15 ((c/3) x the median
    # |U1_1 - U1_2 + U2_1 - U2_2|). (The classic update's per-dimension U1, U2 are pinned exactly
    # by the NumPy reference test.)
    num_dims, a = 400, 2.0
    target = jnp.zeros(num_dims).at[:2].set(a)
    spreads = {}
    for coefficients in ("per_dimension", "per_particle"):
        es = esjax.pso(population_size=64, coefficients=coefficients)
        state = _moved_state(es, key, num_dims, target, jnp.ones(64))
        population, _ = jax.jit(es.ask)(key, state)
        spreads[coefficients] = np.median(np.abs(population[:, 0] - population[:, 1])) / a
    assert spreads["per_dimension"] > 0.08, spreads
    assert spreads["per_particle"] < 0.04, spreads

    # The classic update with per-particle coefficients has no hypersphere noise: every particle
    # moves along the diagonal exactly.
    es = esjax.pso(population_size=64, update="classic", coefficients="per_particle")
    population, _ = jax.jit(es.ask)(key, _moved_state(es, key, num_dims, target, jnp.ones(64)))
    np.testing.assert_array_equal(population[:, 0], population[:, 1])
    assert np.all(population[:, 2:] == 0) and np.ptp(np.asarray(population[:, 0])) > 0.5


def _reference_move(x, v, p, p_fitness, key, update, handling, max_velocity=0.0):
    """One SPSO-2011 / classic move in the box of SMALL, transcribed in NumPy from the paper."""
    n, d = x.shape
    x, v, p = (np.asarray(a, np.float64) for a in (x, v, p))
    new_x, new_v, confined = np.empty_like(x), np.empty_like(v), 0
    draws = [np.asarray(a, np.float64) for a in swarm_draws(key, n, d)]
    for i in range(n):
        informants = [(i - 1) % n, i, (i + 1) % n]  # the ring with num_neighbors=2
        best = informants[int(np.argmin([p_fitness[k] for k in informants]))]
        u1, u2, z, rho = (a[i] for a in draws)
        p_prime = x[i] + C * u1 * (p[i] - x[i])
        l_prime = x[i] + C * u2 * (p[best] - x[i])
        if update == "classic":
            velocity = W * v[i] + (p_prime - x[i]) + (l_prime - x[i])
        else:
            centre = (x[i] + p_prime) / 2 if best == i else (x[i] + p_prime + l_prime) / 3
            radius = np.linalg.norm(centre - x[i])
            point = centre + rho * radius * z / np.linalg.norm(z)
            velocity = W * v[i] + point - x[i]
        if max_velocity > 0:
            velocity = np.clip(velocity, -max_velocity, max_velocity)
        position = x[i] + velocity
        for j in range(d):
            if position[j] < LOWER[j] or position[j] > UPPER[j]:
                confined += 1
                if handling == "clip":
                    position[j] = min(max(position[j], LOWER[j]), UPPER[j])
                    velocity[j] *= -0.5
                else:
                    while not LOWER[j] <= position[j] <= UPPER[j]:
                        bound = LOWER[j] if position[j] < LOWER[j] else UPPER[j]
                        position[j] = 2 * bound - position[j]
                    velocity[j] *= -1.0
        new_x[i], new_v[i] = position, velocity
    return new_x, new_v, confined


@pytest.mark.parametrize(
    "update, handling, max_velocity", [("spso2011", "clip", 0.0), ("classic", "reflect", 2.5)]
)
def test_one_move_matches_numpy_reference(update, handling, max_velocity, key):
    es, ask, tell = SMALL_VARIANTS[update]
    state = es.init(key, jnp.zeros(3))
    population, state = ask(key, state)
    # Particle 3 is its own best informant (the spso2011 special case); the others are not.
    fitness = jnp.array([5.0, 4.0, 6.0, 1.0, 3.0, 2.0, 7.0, 8.0])
    # Tripled velocities push many coordinates out of the box, so confinement is exercised.
    state = tell(state, population, fitness)
    state = state.replace(velocities=3.0 * state.velocities)
    move_key = jax.random.key(7)
    moved, new_state = ask(move_key, state)
    reference_x, reference_v, confined = _reference_move(
        state.positions,
        state.velocities,
        state.personal_best,
        np.asarray(fitness),
        move_key,
        update,
        handling,
        max_velocity,
    )
    np.testing.assert_allclose(moved, reference_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state.velocities, reference_v, rtol=1e-5, atol=1e-5)
    assert np.all((moved >= LOWER) & (moved <= UPPER))
    assert confined > 0
    if max_velocity:
        assert np.any(np.abs(reference_v) == max_velocity)


def test_swarm_draws_have_the_specified_distributions(key):
    # 400 x 500 = 2e5 draws per array: the moments below have standard errors <= 0.005.
    u1, u2, z, rho = (
        np.asarray(a, np.float64)
        for a in jax.jit(swarm_draws, static_argnums=(1, 2))(key, 400, 500)
    )
    for u in (u1, u2):
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.005
    assert np.all(np.isfinite(z))
    normal = z.ravel() * np.sqrt(2.0)  # erf⁻¹ of U(-1, 1) is N(0, 1/2)
    assert abs(normal.mean()) < 0.01 and abs(normal.var() - 1.0) < 0.02
    assert abs(np.mean(normal**4) - 3.0) < 0.1  # the normal's kurtosis, not the uniform's 1.8
    assert abs(np.corrcoef(u1.ravel(), u2.ravel())[0, 1]) < 0.01
    assert rho.shape == (400,) and abs(rho.mean() - 0.5) < 0.05
    # One (U1, U2) per particle; z and ρ are drawn as before, so the direction is the same.
    pu1, pu2, pz, _ = swarm_draws(key, 400, 500, coefficients="per_particle")
    chex.assert_shape((pu1, pu2), (400, 1))
    np.testing.assert_array_equal(pz, z.astype(np.float32))
    assert abs(float(jnp.mean(pu1)) - 0.5) < 0.05 and abs(float(jnp.mean(pu2)) - 0.5) < 0.05


def test_informants_of_ring_and_global_topologies():
    fitness = jnp.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0])
    # Ring with one neighbour per side: min over {i-1, i, i+1} (indices mod 8).
    np.testing.assert_array_equal(informant_best(fitness, "ring", 2), [1, 1, 1, 3, 3, 6, 6, 6])
    # Two per side: min over {i-2, ..., i+2}.
    np.testing.assert_array_equal(informant_best(fitness, "ring", 4), [1, 1, 1, 1, 3, 3, 6, 1])
    np.testing.assert_array_equal(informant_best(fitness, "global", 2), [1] * 8)
    # Non-finite fitness is the worst, never the best informant.
    np.testing.assert_array_equal(
        informant_best(jnp.array([jnp.nan, 2.0, -jnp.inf]), "global", 2), [1, 1, 1]
    )


def test_first_ask_returns_initial_swarm_inside_bounds_and_first_tell_sets_personal_bests(key):
    upper = np.array([2.0, 3.0, 4.0])
    state = SMALL.init(key, jnp.zeros(3))
    swarm, asked = SMALL_ASK(jax.random.key(5), state)
    chex.assert_trees_all_equal(swarm, state.positions)  # the initial swarm itself
    assert np.all((swarm >= -2.0) & (swarm <= upper))
    # SPSO-2011: v ~ U(lower - x, upper - x), i.e. x + v is again a point of the box.
    assert np.all((swarm + asked.velocities >= -2.0) & (swarm + asked.velocities <= upper))
    told = SMALL_TELL(asked, swarm, sphere(swarm))
    chex.assert_trees_all_equal(told.personal_best, swarm)
    np.testing.assert_allclose(told.personal_best_fitness, sphere(swarm))
    centroid = np.mean(np.asarray(swarm), axis=0)
    expected = np.mean(np.linalg.norm(np.asarray(swarm) - centroid, axis=1))
    assert float(SMALL.info(told)["diversity"]) == pytest.approx(expected, rel=1e-5)
    moved, _ = SMALL_ASK(jax.random.key(6), told)
    assert not np.allclose(moved, swarm)


def test_unbounded_swarm_starts_around_x0_within_init_spread(key):
    es = esjax.pso(population_size=16, init_spread=0.5)
    x0 = jnp.array([10.0, -3.0])
    state = es.init(key, x0)
    assert np.all(np.abs(state.positions - x0) <= 0.5)
    assert np.all(np.abs(state.positions + state.velocities - x0) <= 0.5)
    assert np.std(np.asarray(state.positions)) > 0.1  # spread out, not all at x0


def _three_generations(key, state, jit):
    ask, tell = (SMALL_ASK, SMALL_TELL) if jit else (SMALL.ask, SMALL.tell)
    for generation in range(3):
        population, state = ask(jax.random.fold_in(key, generation), state)
        state = tell(state, population, rastrigin(population))
    return state


def test_ask_tell_identical_with_and_without_jit(key):
    state = SMALL.init(key, jnp.zeros(3))
    jitted = _three_generations(key, state, jit=True)
    eager = _three_generations(key, state, jit=False)
    # Same ops either way; fusion may reassociate float32 arithmetic by a few ulps.
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)


def test_vmap_over_seeds_matches_separate_runs():
    def two_generations(seed_key):
        state = SMALL.init(seed_key, jnp.zeros(3))
        for generation in range(2):  # the initial swarm, then one move
            population, state = SMALL.ask(jax.random.fold_in(seed_key, generation), state)
            state = SMALL.tell(state, population, rastrigin(population))
        return state

    seeds = jax.random.split(jax.random.key(3), 3)
    states = jax.jit(jax.vmap(two_generations))(seeds)
    chex.assert_shape(states.positions, (3, 8, 3))
    for i in (0, 2):
        state = SMALL.init(seeds[i], jnp.zeros(3))
        for generation in range(2):
            population, state = SMALL_ASK(jax.random.fold_in(seeds[i], generation), state)
            state = SMALL_TELL(state, population, rastrigin(population))
        one = jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], states)
        chex.assert_trees_all_close(one, state, rtol=1e-5, atol=1e-6)
    assert not np.allclose(states.positions[0], states.positions[1])


def test_nan_fitness_never_becomes_a_personal_best(key):
    state = SMALL.init(key, jnp.zeros(3))
    swarm, state = SMALL_ASK(key, state)
    all_nan = SMALL_TELL(state, swarm, jnp.full(8, jnp.nan))
    np.testing.assert_array_equal(all_nan.personal_best_fitness, WORST)
    assert float(all_nan.best_fitness) == np.inf  # nothing finite seen yet (StrategyState)
    chex.assert_tree_all_finite(all_nan.replace(best_fitness=jnp.zeros(())))
    for generation in range(4):
        population, state = SMALL_ASK(jax.random.fold_in(key, generation), state)
        fitness = sphere(population).at[0].set(jnp.nan).at[1].set(jnp.inf).at[2].set(-jnp.inf)
        state = SMALL_TELL(state, population, fitness)
    np.testing.assert_array_equal(state.personal_best_fitness[:3], WORST)
    chex.assert_trees_all_equal(state.personal_best[:3], swarm[:3])  # never replaced
    chex.assert_tree_all_finite(state)
    assert float(state.best_fitness) == float(jnp.min(state.personal_best_fitness[3:]))


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"population_size": 1}, "population_size"),
        ({"topology": "star"}, "topology"),
        ({"update": "quantum"}, "update"),
        ({"num_neighbors": 3}, "num_neighbors"),
        ({"num_neighbors": 8}, "num_neighbors"),
        ({"inertia": -0.1}, "inertia"),
        ({"cognitive": -1.0}, "cognitive"),
        ({"social": -1.0}, "social"),
        ({"max_velocity": -1.0}, "max_velocity"),
        ({"init_spread": 0.0}, "init_spread"),
        ({"lower_bound": -1.0}, "upper_bound"),
        ({"lower_bound": 1.0, "upper_bound": 1.0}, "lower_bound"),
        ({"lower_bound": -np.inf, "upper_bound": 1.0}, "lower_bound"),
        ({"lower_bound": [0.0, 0.0], "upper_bound": [1.0, 1.0, 1.0]}, "lower_bound"),
        ({"bounds_handling": "wrap"}, "bounds_handling"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        esjax.pso(**{"population_size": 8, **kwargs})


def test_bound_length_and_fitness_shape_are_checked(key):
    with pytest.raises(ValueError, match="upper_bound"):
        SMALL.init(key, jnp.zeros(4))  # upper_bound has 3 entries
    state = SMALL.init(key, jnp.zeros(3))
    swarm, state = SMALL_ASK(key, state)
    with pytest.raises(ValueError, match="fitness"):
        SMALL_TELL(state, swarm, jnp.zeros(7))


def test_shipped_config_builds_the_strategy_it_names():
    # `esjax run` itself is exercised in tests/test_cli.py; here the config must parse, name
    # valid pso arguments and spend the 2e5 evaluations.
    config = load_config(CONFIGS / "rastrigin_pso.yaml")
    es = build_strategy(config.strategy)
    assert es.name == "pso" and es.population_size == 40
    assert config.strategy["lower_bound"] == -5.12 and config.problem["num_dims"] == 10
    assert config.generations * es.population_size == 200_000


def test_bfloat16_swarm_stays_finite(key):
    # A narrow (bfloat16) x0 is searched in float32 (esjax.flatten.search_dtype), so the swarm
    # is float32 and its moves stay finite.
    es = esjax.pso(population_size=16)
    state = es.init(key, jnp.zeros(50, jnp.bfloat16))
    for generation in range(4):
        swarm, state = es.ask(jax.random.fold_in(key, generation), state)
        state = es.tell(state, swarm, sphere(swarm.astype(jnp.float32)))
    chex.assert_type(swarm, jnp.float32)
    assert bool(jnp.all(jnp.isfinite(swarm))) and bool(jnp.all(jnp.isfinite(state.velocities)))
