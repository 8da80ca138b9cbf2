"""Simulated annealing: global-basin success on 2-D rastrigin, cooling rate, Metropolis reference,
schedules, step-size adaptation, re-annealing, determinism, vmap, NaN safety, bad arguments."""

import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esjax
from esjax.experiments.config import build_strategy, load_config
from esjax.problems import rastrigin, sphere
from esjax.strategies.simulated_annealing import chain_draws, scheduled_temperature

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Budget for the rastrigin runs: 8 chains x 1000 generations = 8000 evaluations per seed. With
# T0 = 30 (above the ~20 barrier between neighbouring rastrigin basins) and the exponential
# schedule at rate 0.01, the temperature ends at 30 e^-10 ≈ 1e-3: the run is fully annealed.
NUM_CHAINS, NUM_GENERATIONS, NUM_SEEDS = 8, 1000, 20
SLOW_RATE, FAST_RATE = 0.01, 0.1
X0 = jnp.array([4.5, 4.5])  # f(x0) ≈ 80.5, about 40 local minima away from the origin


def _annealer(**kwargs):
    return esjax.simulated_annealing(
        population_size=NUM_CHAINS, initial_temperature=30.0, step_size=0.5, **kwargs
    )


def _run(es, fitness_fn, key, state, num_generations):
    def body(state, generation):
        population, state = es.ask(jax.random.fold_in(key, generation), state)
        return es.tell(state, population, fitness_fn(population)), None

    state, _ = jax.lax.scan(body, state, jnp.arange(num_generations))
    return state


@pytest.fixture(scope="module")
def rastrigin_runs():
    """Best-ever fitness/solution for 20 seeds x {slow, fast} cooling, in one vmapped jit."""
    es = _annealer()

    def run_one(key, cooling_rate):
        state = es.init(key, X0, es.default_params.replace(cooling_rate=cooling_rate))
        state = _run(es, rastrigin, key, state, NUM_GENERATIONS)
        return state.best_fitness, state.best_solution, state.temperature

    keys = jax.random.split(jax.random.key(0), NUM_SEEDS)
    rates = jnp.array([SLOW_RATE, FAST_RATE])
    return jax.jit(jax.vmap(jax.vmap(run_one, (0, None)), (None, 0)))(keys, rates)


def _in_global_basin(best_fitness, best_solution):
    # Every non-global rastrigin minimum has f >= 0.995 (the four at (±1, 0), (0, ±1)), and a
    # basin's points lie above its minimum, so f < 0.5 can only happen in the global basin.
    return (np.asarray(best_fitness) < 0.5) & (np.max(np.abs(best_solution), axis=-1) < 0.5)


def test_rastrigin_2d_ends_in_global_basin_for_at_least_90_percent_of_seeds(rastrigin_runs):
    best_fitness, best_solution, temperature = rastrigin_runs
    success = _in_global_basin(best_fitness[0], best_solution[0])
    # Measured: 19/20 here, 99% over 200 other seeds; the issue asks for >= 90%.
    assert success.sum() >= 18, success
    np.testing.assert_allclose(temperature[0], 30.0 * math.exp(-SLOW_RATE * NUM_GENERATIONS))


def test_slower_cooling_raises_rastrigin_success_rate(rastrigin_runs):
    best_fitness, best_solution, _ = rastrigin_runs
    slow = _in_global_basin(best_fitness[0], best_solution[0]).mean()
    fast = _in_global_basin(best_fitness[1], best_solution[1]).mean()
    # Measured: 0.95 vs 0.25 here, 0.99 vs 0.13 over 200 other seeds. Quenching freezes the
    # chains in whichever basin they reach first; a 0.4 gap on 20 seeds is > 4 binomial sd.
    assert slow - fast >= 0.4, (slow, fast)


# One small strategy shared by the unit tests below, jitted once: eager dispatch and fresh
# compiles are what make JAX tests slow. Temperatures are set on the state directly.
SMALL = esjax.simulated_annealing(population_size=6, step_size=0.3)
SMALL_ASK, SMALL_TELL = jax.jit(SMALL.ask), jax.jit(SMALL.tell)
WORST = float(jnp.finfo(jnp.float32).max)  # the stored fitness of a chain with nothing accepted


def test_metropolis_acceptance_matches_reference(key):
    chain_fitness = jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, WORST])
    proposed = jnp.array([0.5, 2.0, 2.0, 5.0, jnp.nan, 3.0])
    draws = jnp.array([0.9, 0.5, 0.7, 0.1, 0.01, 0.99])
    state = SMALL.init(key, jnp.zeros(2)).replace(
        temperature=jnp.array(2.0), fitness=chain_fitness, acceptance_draws=draws
    )
    population = jnp.arange(12.0).reshape(6, 2)
    told = SMALL_TELL(state, population, proposed)
    # u < exp(-Δ/T): downhill always; Δ=1 at T=2 gives e^-0.5 ≈ 0.61 (accept u=0.5, not 0.7);
    # Δ=4 gives e^-2 ≈ 0.135 (accept u=0.1); NaN never; anything finite beats WORST.
    expected = np.array([True, True, False, True, False, True])
    current, new, u = (np.asarray(a, np.float64) for a in (chain_fitness, proposed, draws))
    with np.errstate(invalid="ignore", over="ignore"):
        reference = np.isfinite(new) & ((new <= current) | (u < np.exp(-(new - current) / 2.0)))
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(told.positions, np.where(expected[:, None], population, 0.0))
    np.testing.assert_allclose(told.fitness, np.where(expected, proposed, chain_fitness))
    assert float(SMALL.info(told)["acceptance_rate"]) == pytest.approx(4 / 6)


def test_zero_temperature_is_greedy(key):
    state = SMALL.init(key, jnp.zeros(2)).replace(
        temperature=jnp.array(0.0),
        fitness=jnp.ones(6),
        acceptance_draws=jnp.array([1.0, 1e-30, 1.0, 1e-30, 0.5, 0.5]),
    )
    told = SMALL_TELL(state, jnp.ones((6, 2)), jnp.array([1.0 + 1e-6, 1.0 + 1e-6, 1.0, 1.0, 0, 2]))
    # T = 0: any uphill move is refused however small the step or u (no 0/0); ties and downhill
    # moves are accepted.
    np.testing.assert_array_equal(told.positions[:, 0], [0, 0, 1, 1, 1, 0])


@pytest.mark.parametrize(
    "schedule, formula",
    [
        ("exponential", lambda k: 5.0 * math.exp(-0.2 * k)),
        ("linear", lambda k: 5.0 * max(1.0 - 0.2 * k, 0.0)),
        ("logarithmic", lambda k: 5.0 / (1.0 + 0.2 * math.log1p(k))),
        (lambda k, t0: t0 / (1.0 + k) ** 2, lambda k: 5.0 / (1.0 + k) ** 2),
    ],
    ids=["exponential", "linear", "logarithmic", "callable"],
)
def test_cooling_schedules_follow_their_formulas(schedule, formula, key):
    # The state path through the schedule (anneal_step -> temperature) is checked by the
    # rastrigin and reheat tests; here each schedule's values against its formula.
    es = esjax.simulated_annealing(
        population_size=2,
        initial_temperature=5.0,
        cooling_schedule=schedule,
        cooling_rate=0.2,
        min_temperature=0.01,
    )
    params = es.init(key, jnp.zeros(1)).params
    steps = jnp.array([0, 1, 3, 10, 100])
    temperatures = jax.vmap(lambda k: scheduled_temperature(schedule, k, params))(steps)
    expected = [max(formula(int(k)), 0.01) for k in steps]  # min_temperature floors them
    np.testing.assert_allclose(temperatures, expected, rtol=1e-5)


def test_step_size_adapts_to_target_acceptance(key):
    # At a fixed T = 1 the chains sample exp(-||x||²) on the 5-D sphere, a Gaussian with sd
    # s = 1/√2: a stationary target, so the Robbins-Monro update must settle where the acceptance
    # rate equals the target, from a step 10x too large as from one 700x too small. Random-walk
    # theory puts that step near 2.38 s / √5 ≈ 0.75 (Roberts et al. 1997; slightly less for 0.3).
    es = esjax.simulated_annealing(
        population_size=64,
        initial_temperature=1.0,
        cooling_rate=0.0,
        target_acceptance=0.3,
        step_size_adaptation=0.1,
    )

    def run_one(step_size):
        state = es.init(key, jnp.ones(5), es.default_params.replace(step_size=step_size))

        def body(state, generation):
            population, state = es.ask(jax.random.fold_in(key, generation), state)
            state = es.tell(state, population, sphere(population))
            return state, state.acceptance_rate

        state, rates = jax.lax.scan(body, state, jnp.arange(400))
        return jnp.mean(rates[200:]), jnp.median(state.step_size)

    rates, step_sizes = jax.jit(jax.vmap(run_one))(jnp.array([10.0, 0.001]))
    # 64 chains x 200 generations: the rate's sd is ~0.01 (correlated draws); measured 0.30, 0.30.
    np.testing.assert_allclose(rates, 0.3, atol=0.03)
    # Measured 0.77 and 0.76.
    assert np.all((step_sizes > 0.5) & (step_sizes < 1.0)), step_sizes


def _jitted_generation(es, fitness_fn):
    @jax.jit
    def generation(key, state):
        population, state = es.ask(key, state)
        return es.tell(state, population, fitness_fn(population)), state.step_size

    return generation


def test_reheat_restarts_the_schedule_after_patience_generations(key):
    es = esjax.simulated_annealing(
        population_size=3, initial_temperature=4.0, cooling_rate=0.5, reheat_patience=5
    )
    # Constant fitness: the first tell sets best = 1; nothing improves on it afterwards.
    generation = _jitted_generation(es, lambda population: jnp.ones(3))
    state = es.init(key, jnp.zeros(2))
    for g in range(20):
        state, step_size_before = generation(jax.random.fold_in(key, g), state)
        if g == 5:  # the 6th tell is the 5th without improvement
            assert int(state.num_reheats) == 1
            assert float(state.temperature) == pytest.approx(4.0)
            np.testing.assert_allclose(state.step_size, 0.1)
            assert not np.allclose(step_size_before, 0.1)  # it had adapted before the reheat
    # Reheats at tells 6, 11 and 16; four tells since the last one.
    assert int(state.num_reheats) == 3
    assert int(state.anneal_step) == 4
    assert float(state.temperature) == pytest.approx(4.0 * math.exp(-0.5 * 4), rel=1e-5)
    assert int(es.info(state)["num_reheats"]) == 3
    # Without reheat_patience the same run anneals on.
    state = SMALL.init(key, jnp.zeros(2))
    for g in range(8):
        population, state = SMALL_ASK(jax.random.fold_in(key, g), state)
        state = SMALL_TELL(state, population, jnp.ones(6))
    assert int(state.num_reheats) == 0 and int(state.anneal_step) == 8


def test_first_ask_spreads_chains_from_x0_and_first_tell_accepts_them(key):
    x0 = jnp.array([1.0, -2.0])
    state = SMALL.init(key, x0)
    chex.assert_trees_all_equal(state.positions, jnp.tile(x0, (6, 1)))
    proposals, state = SMALL_ASK(key, state)
    assert not np.allclose(proposals, x0)
    told = SMALL_TELL(state, proposals, sphere(proposals))
    chex.assert_trees_all_equal(told.positions, proposals)
    assert float(told.acceptance_rate) == 1.0
    # Acceptances against WORST carry no information about the step size: left unchanged.
    np.testing.assert_allclose(told.step_size, 0.3)


def test_chain_randomness_depends_only_on_key_and_index(key):
    state = SMALL.init(key, jnp.zeros(2))
    proposals, state = SMALL_ASK(key, state)
    some = jnp.array([4, 1])
    noise, draws = chain_draws(key, 5, 2)
    np.testing.assert_allclose(proposals[some], 0.3 * noise[some], rtol=1e-6)
    np.testing.assert_array_equal(state.acceptance_draws[some], draws[some])
    # Row i depends on (key, i, num_dims) alone: more chains extend the draw, and each chain's
    # noise is its own (the rows differ).
    more_noise, more_draws = chain_draws(key, 9, 2)
    np.testing.assert_array_equal(more_noise[:5], noise)
    np.testing.assert_array_equal(more_draws[:5], draws)
    assert len(np.unique(np.asarray(more_noise))) == more_noise.size


def _three_generations(key, state, jit):
    ask, tell = (SMALL_ASK, SMALL_TELL) if jit else (SMALL.ask, SMALL.tell)
    for generation in range(3):
        population, state = ask(jax.random.fold_in(key, generation), state)
        state = tell(state, population, rastrigin(population))
    return state


def test_ask_tell_identical_with_and_without_jit(key):
    state = SMALL.init(key, jnp.array([-1.0, 1.0])).replace(temperature=jnp.array(3.0))
    jitted = _three_generations(key, state, jit=True)
    eager = _three_generations(key, state, jit=False)
    # Same ops either way; fusion may reassociate float32 arithmetic by a few ulps.
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)


def test_vmap_over_seeds_and_temperatures_matches_separate_runs():
    def three_generations(seed_key, temperature):
        params = SMALL.default_params.replace(initial_temperature=temperature)
        state = SMALL.init(seed_key, X0, params)
        for generation in range(3):
            population, state = SMALL.ask(jax.random.fold_in(seed_key, generation), state)
            state = SMALL.tell(state, population, rastrigin(population))
        return state

    seeds = jax.random.split(jax.random.key(3), 3)
    temperatures = jnp.array([0.1, 10.0])
    grid = jax.jit(jax.vmap(jax.vmap(three_generations, (None, 0)), (0, None)))(seeds, temperatures)
    chex.assert_shape(grid.positions, (3, 2, 6, 2))
    for i, j in ((0, 1), (2, 0)):
        params = SMALL.default_params.replace(initial_temperature=temperatures[j])
        state = SMALL.init(seeds[i], X0, params)
        for generation in range(3):
            population, state = SMALL_ASK(jax.random.fold_in(seeds[i], generation), state)
            state = SMALL_TELL(state, population, rastrigin(population))
        one = jax.tree_util.tree_map(lambda leaf, i=i, j=j: leaf[i, j], grid)
        chex.assert_trees_all_close(one, state, rtol=1e-5, atol=1e-6)
    # The temperature matters: at T = 10 uphill moves are accepted that T = 0.1 refuses.
    assert not np.allclose(grid.positions[0, 0], grid.positions[0, 1])


def test_nan_fitness_is_rejected_and_state_stays_finite(key):
    state = SMALL.init(key, jnp.ones(2))
    population, asked = SMALL_ASK(key, state)
    all_nan = SMALL_TELL(asked, population, jnp.full(6, jnp.nan))
    # Nothing was evaluated: chains stay at x0, at the worst fitness, with unchanged step sizes.
    chex.assert_trees_all_equal(all_nan.positions, state.positions)
    chex.assert_trees_all_equal(all_nan.step_size, state.step_size)
    assert float(all_nan.acceptance_rate) == 0.0
    state = state.replace(temperature=jnp.array(1e6))
    best_seen = math.inf
    for generation in range(4):
        population, state = SMALL_ASK(jax.random.fold_in(key, generation), state)
        fitness = sphere(population).at[0].set(jnp.nan).at[1].set(jnp.inf).at[2].set(-jnp.inf)
        previous = state.positions
        state = SMALL_TELL(state, population, fitness)
        best_seen = min(best_seen, float(jnp.min(fitness[3:])))
        # Even at a huge temperature a non-finite proposal is never accepted.
        chex.assert_trees_all_equal(state.positions[:3], previous[:3])
    chex.assert_tree_all_finite(state)
    assert float(state.best_fitness) == best_seen


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"population_size": 0}, "population_size"),
        ({"initial_temperature": -1.0}, "initial_temperature"),
        ({"cooling_rate": -0.1}, "cooling_rate"),
        ({"cooling_schedule": "cubic"}, "cooling_schedule"),
        ({"min_temperature": -1.0}, "min_temperature"),
        ({"step_size": 0.0}, "step_size"),
        ({"target_acceptance": 1.0}, "target_acceptance"),
        ({"target_acceptance": 0.0}, "target_acceptance"),
        ({"step_size_adaptation": -0.5}, "step_size_adaptation"),
        ({"min_step_size": 0.0}, "min_step_size"),
        ({"min_step_size": 1.0, "max_step_size": 0.5}, "max_step_size"),
        ({"reheat_patience": -1}, "reheat_patience"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        esjax.simulated_annealing(**{"population_size": 4, **kwargs})


def test_bad_params_at_init_and_wrong_fitness_shape_raise(key):
    with pytest.raises(ValueError, match="step_size"):
        SMALL.init(key, jnp.zeros(2), SMALL.default_params.replace(step_size=-1.0))
    state = SMALL.init(key, jnp.zeros(2))
    population, state = SMALL_ASK(key, state)
    with pytest.raises(ValueError, match="fitness"):
        SMALL_TELL(state, population, jnp.zeros(3))


def test_shipped_config_builds_the_strategy_it_names():
    # `esjax run` itself is exercised in tests/test_cli.py; here the config must parse, name
    # valid arguments and match the setting measured above.
    config = load_config(CONFIGS / "rastrigin_simulated_annealing.yaml")
    es = build_strategy(config.strategy)
    assert es.name == "simulated_annealing" and es.population_size == NUM_CHAINS
    assert float(es.default_params.initial_temperature) == 30.0
    assert float(es.default_params.cooling_rate) == SLOW_RATE
    assert config.generations == NUM_GENERATIONS and config.problem["num_dims"] == 2
