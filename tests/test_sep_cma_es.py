"""sep-CMA-ES: the d = 1000 ellipsoid, one update against the equations, O(n) memory, NaN safety,
IPOP with the diagonal strategy, bad arguments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esjax
from esjax.problems import ellipsoid, sphere

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def test_ellipsoid_1000d_improves_six_orders_within_360k_evaluations():
    # Budget: 15,000 generations of the default λ = 24, i.e. 360,000 evaluations. From x0 = 1
    # (f ≈ 7.2e7) with σ0 = 1, learning the 1e6 spread of the 1000 variances takes most of it:
    # the run passes f(x0) · 1e-6 after ~11,700 generations (280,000 evaluations). pycma's
    # sep-CMA with the same cumulative step-size adaptation tracks the same curve (its default,
    # TPA step-size adaptation, is faster here). The loop stops at the target, so the test
    # costs only what it needs.
    num_dims, budget = 1000, 15_000
    es = esjax.sep_cma_es(num_dims=num_dims, sigma=1.0)
    assert es.population_size == 24
    x0 = jnp.ones(num_dims)
    target = float(ellipsoid(x0)) * 1e-6

    @jax.jit
    def run(key):
        def body(state):
            population, state = es.ask(jax.random.fold_in(key, state.generation), state)
            return es.tell(state, population, ellipsoid(population))

        def going(state):
            return (state.best_fitness >= target) & (state.generation < budget)

        return jax.lax.while_loop(going, body, es.init(key, x0))

    state = run(jax.random.key(1))
    print(f"sep-CMA-ES d=1000 ellipsoid: 1e-6 of f(x0) after {int(state.generation)} generations")
    assert float(state.best_fitness) < target, float(state.best_fitness)
    assert int(state.generation) < budget


def _sep_update(mean, sigma, variances, path_sigma, path_c, generation, population, fitness):
    """One sep-CMA-ES generation (Hansen 2016 eqs. 41-58 on the diagonal, Ros & Hansen 2008)."""
    lam, n = population.shape
    mu = lam // 2
    w_prime = np.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
    weights = np.where(w_prime > 0, w_prime / w_prime[w_prime > 0].sum(), 0.0)
    mueff = 1 / np.sum(weights**2)
    c_sigma = (mueff + 2) / (n + mueff + 5)
    d_sigma = 1 + 2 * max(0.0, np.sqrt((mueff - 1) / (n + 1)) - 1) + c_sigma
    c_c = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    c_1 = 2 / ((n + 1.3) ** 2 + mueff) * (n + 2) / 3
    c_mu = min(1 - c_1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff) * (n + 2) / 3)
    y = (population[np.argsort(fitness)] - mean) / sigma
    y_w = weights[:mu] @ y[:mu]
    chi_n = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    ps = (1 - c_sigma) * path_sigma + np.sqrt(c_sigma * (2 - c_sigma) * mueff) * y_w / np.sqrt(
        variances
    )
    new_sigma = sigma * np.exp(c_sigma / d_sigma * (np.linalg.norm(ps) / chi_n - 1))
    norm = np.linalg.norm(ps) / np.sqrt(1 - (1 - c_sigma) ** (2 * (generation + 1)))
    h = float(norm < (1.4 + 2 / (n + 1)) * chi_n)
    pc = (1 - c_c) * path_c + h * np.sqrt(c_c * (2 - c_c) * mueff) * y_w
    delta = (1 - h) * c_c * (2 - c_c)
    new_variances = (1 + c_1 * delta - c_1 - c_mu) * variances + c_1 * pc**2 + c_mu * weights @ y**2
    return {
        "mean": mean + sigma * y_w,
        "sigma": new_sigma,
        "variances": new_variances,
        "path_sigma": ps,
        "path_c": pc,
    }, h


# h_σ = 0 (a long p_σ stalls the rank-one path) is the only case where the c_1 δ(h_σ) term of
# eq. 47 is not zero: both branches are exercised.
@pytest.mark.parametrize("path_scale, h_sigma", [(0.3, 1.0), (6.0, 0.0)])
def test_one_update_matches_the_diagonal_equations(path_scale, h_sigma):
    rng = np.random.default_rng(3)
    n, lam = 6, 8
    variances = rng.uniform(0.2, 5.0, n)
    mean, path_sigma, path_c = rng.normal(size=(3, n))
    path_sigma *= path_scale
    sigma, generation = 0.4, 5
    population = mean + sigma * np.sqrt(variances) * rng.normal(size=(lam, n))
    fitness = rng.permutation(lam).astype(float)
    expected, h = _sep_update(
        mean, sigma, variances, path_sigma, path_c, generation, population, fitness
    )
    assert h == h_sigma
    with jax.enable_x64(True):
        es = esjax.sep_cma_es(population_size=lam, num_dims=n)
        state = es.init(jax.random.key(0), jnp.asarray(mean)).replace(
            sigma=jnp.asarray(sigma),
            variances=jnp.asarray(variances),
            path_sigma=jnp.asarray(path_sigma),
            path_c=jnp.asarray(path_c),
            generation=jnp.asarray(generation, jnp.int32),
        )
        new = es.tell(state, jnp.asarray(population), jnp.asarray(fitness))
        assert new.variances.dtype == jnp.float64
        for name, value in expected.items():
            # float64 on both sides: only summation order differs.
            np.testing.assert_allclose(getattr(new, name), value, rtol=1e-10, atol=1e-13)


def test_state_is_linear_in_the_dimension(key):
    # n = 1e6 would need 8 TB for full CMA-ES's two n×n float32 matrices; sep's state is O(n).
    num_dims = 1_000_000
    es = esjax.sep_cma_es(num_dims=num_dims, sigma=0.01)
    assert es.population_size == 4 + int(3 * np.log(num_dims))
    state = jax.eval_shape(es.init, key, jax.ShapeDtypeStruct((num_dims,), jnp.float32))
    largest = max(leaf.size for leaf in jax.tree_util.tree_leaves(state))
    assert largest == num_dims
    with pytest.raises(ValueError, match="sep_cma_es"):
        esjax.cma_es(num_dims=num_dims)


def test_non_finite_fitness_never_enters_the_update(key):
    es = esjax.sep_cma_es(num_dims=4, population_size=8)
    state = es.init(key, jnp.ones(4))
    population, _ = es.ask(key, state)
    fitness = sphere(population)
    nothing = es.tell(state, population, jnp.full(8, jnp.nan))
    for name in ("mean", "sigma", "variances", "path_sigma", "path_c"):
        np.testing.assert_array_equal(getattr(nothing, name), getattr(state, name))
    # NaN/-inf among the λ - μ = 4 losers get weight zero, exactly like huge finite values.
    bad = es.tell(state, population, fitness.at[jnp.array([1, 6])].set(jnp.nan))
    huge = es.tell(state, population, fitness.at[jnp.array([1, 6])].set(1e30))
    for name in ("mean", "sigma", "variances", "path_sigma", "path_c"):
        np.testing.assert_array_equal(getattr(bad, name), getattr(huge, name))
    chex.assert_tree_all_finite(bad)


def test_ipop_drives_sep_cma_es(key):
    # The restart driver takes any factory with CMA-ES's signature; on a sphere the first run
    # reaches the target, so no restart is spent.
    result = esjax.ipop(
        sphere,
        key,
        jnp.full(5, 2.0),
        sigma=1.0,
        max_evaluations=20_000,
        target_fitness=1e-8,
        strategy=esjax.sep_cma_es,
        compiler_options=FAST_COMPILE,
    )
    assert float(result.best_fitness) < 1e-8
    assert int(result.num_restarts) == 0 and result.population_sizes == (8,)
    assert 0 < int(result.evaluations_to_target) == int(result.evaluations) <= 20_000


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({}, "num_dims"),
        ({"population_size": 1}, "population_size"),
        ({"num_dims": 4, "sigma": -1.0}, "sigma"),
        ({"num_dims": 4, "num_parents": 9}, "num_parents"),
        ({"num_dims": 4, "sigma_bounds": (-1.0, 1.0)}, "sigma_bounds"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        esjax.sep_cma_es(**kwargs)
