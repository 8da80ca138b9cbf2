"""Random search: its samples follow the stated laws (checked against exact and Monte-Carlo
distributions of the best of N samples), it improves on x0, CMA-ES beats it at the same budget,
and bad arguments are refused.

Compiled programs use XLA's fast-compile options: the problems are tiny, so compiling, not
running, is what costs time here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import esjax
from esjax.problems import rastrigin, sphere
from esjax.strategies.random_search import random_search

# XLA's fast-compile options (as tests/test_distributed.py uses them): ~2x faster compiles here.
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
NUM_SEEDS = 16


def _runs(es, fitness, x0, generations, num_seeds=NUM_SEEDS):
    """Final states of ``num_seeds`` vmapped runs, one compiled program."""
    keys = jax.random.split(jax.random.key(7), num_seeds)
    states = jax.vmap(lambda k: es.init(k, x0))(keys)
    run = jax.vmap(lambda k, s: esjax.evolve(es, fitness, k, s, generations)[0])
    return jax.jit(run, compiler_options=FAST_COMPILE)(keys, states)


def test_gaussian_samples_give_the_exact_law_of_the_best_of_n_on_the_sphere():
    # Around x0 = 0 with scale σ, f = ‖x‖² = σ² χ²_4, whose survival function is
    # S(u) = exp(-u/2) (1 + u/2); the best of N samples exceeds t with probability S(t/σ²)^N.
    sigma, population, generations = 0.5, 16, 50
    n = population * generations
    es = random_search(population_size=population, sigma=sigma)
    best = np.asarray(_runs(es, sphere, jnp.zeros(4), generations).best_fitness)

    def quantile(p):  # t with P(best <= t) = p, by bisection on the exact CDF
        low, high = 0.0, 10.0
        for _ in range(100):
            mid = (low + high) / 2
            u = mid / sigma**2
            below = 1 - (np.exp(-u / 2) * (1 + u / 2)) ** n
            low, high = (mid, high) if below < p else (low, mid)
        return low

    # The median of 16 draws lies in [q_0.1, q_0.9] except with probability 1.2e-4 (eight or
    # more of 16 draws on one side of a 10% tail). A sampler that ignored σ (scale 1) would put
    # the median near 4x the true one, above q_0.9 = 1.8x the median.
    assert quantile(0.1) < np.median(best) < quantile(0.9)
    # And the mean of the 16 minima matches E[best] = ∫ S(t/σ²)^N dt within 3 standard errors
    # (the best of N here is ~Weibull with shape 2, coefficient of variation 0.52).
    expected = integrate.quad(
        lambda t: (np.exp(-t / 2 / sigma**2) * (1 + t / 2 / sigma**2)) ** n, 0, 5
    )[0]
    assert abs(np.mean(best) - expected) < 3 * 0.52 * expected / np.sqrt(NUM_SEEDS)


def test_uniform_samples_fill_the_box_and_match_a_monte_carlo_best_on_rastrigin(key):
    lower, upper = np.array([-5.12, -1.0]), np.array([5.12, 3.0])
    es = random_search(population_size=4096, lower_bound=lower.tolist(), upper_bound=upper.tolist())
    population, _, _ = _one_generation(es, jnp.zeros(2), sphere, key)
    population = np.asarray(population, np.float64)
    assert np.all((population >= lower) & (population <= upper))
    # U(l, u): mean (l + u)/2, variance (u - l)²/12; 4 standard errors of 4096 draws.
    width = upper - lower
    assert np.all(np.abs(population.mean(0) - (lower + upper) / 2) < 4 * width / np.sqrt(12 * 4096))
    variance_error = width**2 * np.sqrt(1 / 180) / np.sqrt(4096)  # std of a U sample variance
    assert np.all(np.abs(population.var(0) - width**2 / 12) < 4 * variance_error)

    # The best of N = 1600 uniform samples on 2-D rastrigin in [-5.12, 5.12]²: its distribution
    # from 2000 NumPy repetitions; the median over 16 seeds must fall in its [q_0.1, q_0.9].
    population_size, generations = 32, 50
    es = random_search(population_size=population_size, lower_bound=-5.12, upper_bound=5.12)
    best = np.asarray(_runs(es, rastrigin, jnp.zeros(2), generations).best_fitness)
    rng = np.random.default_rng(0)
    samples = rng.uniform(-5.12, 5.12, (2000, population_size * generations, 2))
    values = 20 + np.sum(samples**2 - 10 * np.cos(2 * np.pi * samples), axis=-1)
    reference = values.min(axis=1)
    low, high = np.quantile(reference, [0.1, 0.9])
    assert low < np.median(best) < high


def test_cma_es_beats_random_search_at_the_same_budget_on_sphere_d10():
    # 1,000 evaluations from x0 = 1 (f = 10) on the 10-D sphere, 4 seeds each (λ = 10 for both).
    # Measured: random search 2.4-4.4, CMA-ES 3e-7 to 1e-5 (OpenAI-ES with 10 members, σ = 0.1,
    # learning rate 0.1: 0.021-0.028, left out here to save a compilation).
    x0, generations, seeds = jnp.ones(10), 100, 4
    search = _runs(random_search(10, sigma=1.0), sphere, x0, generations, seeds).best_fitness
    cma = _runs(esjax.cma_es(num_dims=10, sigma=1.0), sphere, x0, generations, seeds)
    search = np.asarray(search)
    assert np.all(search < 8)  # it does improve on f(x0) = 10
    # A 1,000x margin against the *best* random-search seed (measured: 2e5x).
    assert np.max(np.asarray(cma.best_fitness)) < np.min(search) / 1000


def _one_generation(es, x0, fitness_fn, key):
    """``(population, fitness, state)`` of one jitted ask/tell (one compile, not one per op)."""

    @jax.jit
    def generation(key):
        state = es.init(key, x0)
        population, state = es.ask(key, state)
        fitness = fitness_fn(population)
        return population, fitness, es.tell(state, population, fitness)

    return generation(key)


def test_float64_runs_in_float64(key):
    with jax.enable_x64(True):
        es = random_search(population_size=8, sigma=0.3)
        population, fitness, state = _one_generation(es, jnp.ones(3, jnp.float64), sphere, key)
        assert population.dtype == state.best_fitness.dtype == jnp.float64
        assert float(state.best_fitness) == np.min(np.asarray(fitness))


def test_reports_the_best_sample_and_never_a_nan_one(key):
    es = random_search(population_size=6, sigma=1.0)

    def with_nan_best(population):  # the best member's fitness is NaN: no information
        fitness = sphere(population)
        return fitness.at[jnp.argmin(fitness)].set(jnp.nan)

    population, fitness, state = _one_generation(es, jnp.zeros(2), with_nan_best, key)
    finite = np.where(np.isfinite(fitness), np.asarray(fitness), np.inf)
    assert float(state.best_fitness) == finite.min()
    np.testing.assert_array_equal(es.solution(state), population[np.argmin(finite)])
    assert float(es.info(state)["finite_fraction"]) == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"population_size": 0}, "population_size"),
        ({"population_size": 4, "sigma": 0.0}, "sigma"),
        ({"population_size": 4, "lower_bound": -1.0}, "upper_bound"),
        ({"population_size": 4, "lower_bound": 1.0, "upper_bound": -1.0}, "lower_bound"),
        ({"population_size": 4, "lower_bound": [0, 0], "upper_bound": [1, 1, 1]}, "same length"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        random_search(**kwargs)


def test_bounds_of_the_wrong_length_fail_at_init(key):
    es = random_search(population_size=4, lower_bound=[0.0, 0.0], upper_bound=[1.0, 1.0])
    with pytest.raises(ValueError, match="lower_bound"):
        es.init(key, jnp.zeros(3))
