"""CMA-ES: sample efficiency against pycma, invariance, one update against the tutorial's
equations, lazy eigendecomposition, termination signals, IPOP restarts, NaN safety, arguments.

pycma (Hansen's reference implementation, ``import cma``) is the oracle and runs in the same
tests. Compiled programs use XLA's fast-compile options where noted: these problems are tiny,
so compilation, not running, is what costs time here.
"""

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esjax
from esjax.cli import main
from esjax.problems import ellipsoid, make_problem, rastrigin, rosenbrock, sphere
from esjax.restarts import stop_callback
from esjax.strategies.cma_es import default_hyperparameters, tolfun_window

cma = pytest.importorskip("cma")

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

NUM_DIMS = 10
NUM_SEEDS = 5
TARGET = 1e-8
GENERATIONS = 1500  # 15,000 evaluations at λ = 10: ~2x the slowest run below
ROTATION = make_problem("ellipsoid", NUM_DIMS, key=jax.random.key(42), rotate=True).fitness
PROBLEMS = {
    "sphere": sphere,
    "ellipsoid": ellipsoid,
    "rosenbrock": rosenbrock,
    "rotated_ellipsoid": ROTATION,
}
# (name, problem, active, eigen_interval): every case runs NUM_SEEDS seeds in one program.
CASES = [
    ("sphere", "sphere", False, None),
    ("ellipsoid", "ellipsoid", False, None),
    ("rosenbrock", "rosenbrock", False, None),
    ("rotated_ellipsoid", "rotated_ellipsoid", False, None),
    ("ellipsoid_active", "ellipsoid", True, None),
    ("ellipsoid_every_10", "ellipsoid", False, 10.0),
]


@pytest.fixture(scope="module")
def esjax_evaluations():
    """Evaluations to reach f < 1e-8 from x0 = 3·1, σ0 = 2, default λ, per case and seed.

    All 30 runs are one vmapped ``lax.scan``: the problem is picked by ``lax.switch`` and the
    active weights and eigendecomposition interval are state leaves, so one compilation serves
    every case. Evaluations = (first generation whose best fitness is below target) × λ.
    """
    es = esjax.cma_es(num_dims=NUM_DIMS, sigma=2.0, active=False)
    active_weights = esjax.cma_es(num_dims=NUM_DIMS, active=True).init(
        jax.random.key(0), jnp.zeros(NUM_DIMS)
    )
    functions = list(PROBLEMS.values())

    def run_one(problem, active, eigen_interval, seed_key):
        params = es.default_params.replace(eigen_interval=eigen_interval)
        state = es.init(seed_key, 3.0 * jnp.ones(NUM_DIMS), params)
        # Active CMA differs from passive only in its weights (eq. 53), a state leaf.
        state = state.replace(weights=jnp.where(active, active_weights.weights, state.weights))

        def body(state, generation):
            population, state = es.ask(jax.random.fold_in(seed_key, generation), state)
            fitness = jax.lax.switch(problem, functions, population)
            state = es.tell(state, population, fitness)
            return state, state.best_fitness

        _, best = jax.lax.scan(body, state, jnp.arange(GENERATIONS))
        hit = best < TARGET
        return jnp.where(jnp.any(hit), jnp.argmax(hit) + 1, -1)

    names = list(PROBLEMS)
    problem = jnp.repeat(jnp.array([names.index(case[1]) for case in CASES]), NUM_SEEDS)
    active = jnp.repeat(jnp.array([case[2] for case in CASES]), NUM_SEEDS)
    lazy_gap = float(es.init(jax.random.key(0), jnp.zeros(NUM_DIMS)).params.eigen_interval)
    interval = jnp.repeat(jnp.array([case[3] or lazy_gap for case in CASES]), NUM_SEEDS)
    seed_keys = jax.random.split(jax.random.key(2024), NUM_SEEDS)
    seeds = seed_keys[jnp.tile(jnp.arange(NUM_SEEDS), len(CASES))]
    runs = jax.jit(jax.vmap(run_one), compiler_options=FAST_COMPILE)
    generations = np.asarray(runs(problem, active, interval, seeds)).reshape(len(CASES), -1)
    evaluations = np.where(generations > 0, generations * es.population_size, np.inf)
    return {case[0]: evaluations[i] for i, case in enumerate(CASES)}


def _pycma_function(name):
    scales = 1e6 ** (np.arange(NUM_DIMS) / (NUM_DIMS - 1))
    return {
        "sphere": lambda x: float(np.sum(x**2)),
        "ellipsoid": lambda x: float(np.sum(scales * x**2)),
        "rosenbrock": lambda x: float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)),
    }[name]


@pytest.fixture(scope="module")
def pycma_evaluations():
    """pycma's evaluations to f < 1e-8 with the same start, σ0 and λ (seeds 1..5)."""
    results = {}
    for name, problem, active in [
        ("sphere", "sphere", False),
        ("ellipsoid", "ellipsoid", False),
        ("rosenbrock", "rosenbrock", False),
        ("ellipsoid_active", "ellipsoid", True),
    ]:
        function = _pycma_function(problem)
        counts = []
        for seed in range(1, NUM_SEEDS + 1):
            options = {
                "ftarget": TARGET,
                "seed": seed,
                "verbose": -9,
                "CMA_active": active,
                "maxfevals": GENERATIONS * 10,
            }
            es = cma.CMAEvolutionStrategy(3.0 * np.ones(NUM_DIMS), 2.0, options)
            while not es.stop():
                population = es.ask()
                es.tell(population, [function(x) for x in population])
            counts.append(es.countevals if es.best.f < TARGET else np.inf)
        results[name] = np.array(counts)
    return results


@pytest.mark.parametrize(
    "name, pycma_name",
    [
        ("sphere", "sphere"),
        ("ellipsoid", "ellipsoid"),
        ("rosenbrock", "rosenbrock"),
        ("ellipsoid_active", "ellipsoid_active"),
    ],
)
def test_median_evaluations_match_pycma(esjax_evaluations, pycma_evaluations, name, pycma_name):
    ours, theirs = esjax_evaluations[name], pycma_evaluations[pycma_name]
    print(
        f"{name}: esjax {ours.tolist()} median {np.median(ours):.0f}; "
        f"pycma {theirs.tolist()} median {np.median(theirs):.0f}"
    )
    assert np.all(np.isfinite(ours)), ours  # every seed reaches 1e-8
    ratio = np.median(ours) / np.median(theirs)
    # The bar: within 1.25x of pycma. pycma differs in small ways (c_μ with a 1/4 offset,
    # c_σ with n + μ_eff + 3), so equal medians are not expected, but neither is a big win:
    # beating pycma by > 1.5x on these unimodal functions would point at a counting error.
    assert 1 / 1.5 <= ratio <= 1.25, ratio


def test_active_cma_is_the_default_as_in_pycma():
    # pycma 4.x runs active CMA unless CMA_active=False: the default weights are the active ones.
    x0 = jnp.zeros(NUM_DIMS)
    default = esjax.cma_es(num_dims=NUM_DIMS).init(jax.random.key(0), x0).weights
    active = esjax.cma_es(num_dims=NUM_DIMS, active=True).init(jax.random.key(0), x0).weights
    passive = esjax.cma_es(num_dims=NUM_DIMS, active=False).init(jax.random.key(0), x0).weights
    np.testing.assert_array_equal(default, active)
    assert float(jnp.min(default)) < 0 and float(jnp.min(passive)) == 0
    assert cma.CMAOptions()["CMA_active"].split()[0] == "True"


def test_active_weights_speed_up_the_ellipsoid(esjax_evaluations):
    # Negative weights shrink the variance in bad directions; pycma saves ~25% with them here.
    active = np.median(esjax_evaluations["ellipsoid_active"])
    passive = np.median(esjax_evaluations["ellipsoid"])
    assert active < 0.9 * passive, (active, passive)


def test_rotated_ellipsoid_costs_about_the_same(esjax_evaluations):
    # CMA-ES is rotation invariant: a random rotation only reshuffles the seeds' luck, so the
    # medians of 5 seeds agree within the 25% of the issue (seed-to-seed spread is ~10%).
    rotated = np.median(esjax_evaluations["rotated_ellipsoid"])
    aligned = np.median(esjax_evaluations["ellipsoid"])
    assert np.all(np.isfinite(esjax_evaluations["rotated_ellipsoid"]))
    assert abs(rotated / aligned - 1) <= 0.25, (rotated, aligned)


def test_lazy_decomposition_reaches_the_same_target(esjax_evaluations):
    # Decomposing only every 10th generation samples from a slightly stale C^{1/2}; every seed
    # must still reach 1e-8 and the cost may grow by at most 25%.
    lazy = esjax_evaluations["ellipsoid_every_10"]
    every = esjax_evaluations["ellipsoid"]
    assert np.all(np.isfinite(lazy)), lazy
    assert np.median(lazy) <= 1.25 * np.median(every), (lazy, every)


def test_default_eigen_interval_follows_pycma():
    # pycma's lazy gap is 1 / (10 n (c_1 + c_μ)); ours uses the tutorial's c_μ, which is smaller
    # than pycma's (no 1/4 offset), so our gap is a few percent longer.
    for n in (10, 100, 400):
        ours = esjax.cma_es(num_dims=n).init(jax.random.key(0), jnp.zeros(n)).params
        reference = cma.CMAEvolutionStrategy(np.zeros(n), 1.0, {"verbose": -9}).sm.lazy_update_gap
        assert 1.0 <= float(ours.eigen_interval) / reference <= 1.15, (n, ours.eigen_interval)


def test_eigendecomposition_is_refreshed_every_interval(key):
    es = esjax.cma_es(num_dims=6, sigma=1.0, eigen_interval=3)
    state = es.init(key, jnp.ones(6))
    tell = jax.jit(es.tell)
    refreshed_at = []
    for generation in range(7):
        population, _ = es.ask(jax.random.fold_in(key, generation), state)
        previous = state
        state = tell(state, population, ellipsoid(population))
        refreshed = int(state.eigen_generation) == generation + 1
        refreshed_at.append(int(state.eigen_generation))
        if refreshed:
            rebuilt = (state.eigenvectors * state.axis_lengths**2) @ state.eigenvectors.T
            np.testing.assert_allclose(rebuilt, state.covariance, rtol=1e-4, atol=1e-6)
        else:  # between refreshes the cache is exactly the previous one
            np.testing.assert_array_equal(state.eigenvectors, previous.eigenvectors)
            np.testing.assert_array_equal(state.axis_lengths, previous.axis_lengths)
    assert refreshed_at == [0, 0, 3, 3, 3, 6, 6]


def _tutorial_update(mean, sigma, cov, path_sigma, path_c, generation, population, fitness, active):
    """One generation of Hansen (2016), eqs. 41-58, transcribed in float64 NumPy."""
    lam, n = population.shape
    mu = lam // 2
    w_prime = np.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))  # eq. 49
    mueff = w_prime[:mu].sum() ** 2 / np.sum(w_prime[:mu] ** 2)
    mueff_minus = w_prime[mu:].sum() ** 2 / np.sum(w_prime[mu:] ** 2)
    c_sigma = (mueff + 2) / (n + mueff + 5)
    d_sigma = 1 + 2 * max(0.0, np.sqrt((mueff - 1) / (n + 1)) - 1) + c_sigma
    c_c = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    c_1 = 2 / ((n + 1.3) ** 2 + mueff)
    c_mu = min(1 - c_1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    weights = np.where(w_prime > 0, w_prime / w_prime[w_prime > 0].sum(), 0.0)
    if active:
        alpha = min(
            1 + c_1 / c_mu, 1 + 2 * mueff_minus / (mueff + 2), (1 - c_1 - c_mu) / (n * c_mu)
        )
        weights = np.where(w_prime < 0, alpha * w_prime / -w_prime[w_prime < 0].sum(), weights)
    y = (population[np.argsort(fitness)] - mean) / sigma
    y_w = weights[:mu] @ y[:mu]
    values, vectors = np.linalg.eigh(cov)
    inv_sqrt = vectors @ np.diag(values**-0.5) @ vectors.T
    chi_n = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    ps = (1 - c_sigma) * path_sigma + np.sqrt(c_sigma * (2 - c_sigma) * mueff) * inv_sqrt @ y_w
    new_sigma = sigma * np.exp(c_sigma / d_sigma * (np.linalg.norm(ps) / chi_n - 1))
    norm = np.linalg.norm(ps) / np.sqrt(1 - (1 - c_sigma) ** (2 * (generation + 1)))
    h = float(norm < (1.4 + 2 / (n + 1)) * chi_n)
    pc = (1 - c_c) * path_c + h * np.sqrt(c_c * (2 - c_c) * mueff) * y_w
    w_circ = [
        w if w >= 0 else w * n / np.sum((inv_sqrt @ yi) ** 2)
        for w, yi in zip(weights, y, strict=True)
    ]
    delta = (1 - h) * c_c * (2 - c_c)
    new_cov = (
        (1 + c_1 * delta - c_1 - c_mu * weights.sum()) * cov
        + c_1 * np.outer(pc, pc)
        + c_mu * sum(w * np.outer(yi, yi) for w, yi in zip(w_circ, y, strict=True))
    )
    return {
        "mean": mean + sigma * y_w,
        "sigma": new_sigma,
        "covariance": new_cov,
        "path_sigma": ps,
        "path_c": pc,
        "weights": weights,
        "h_sigma": h,
    }


@pytest.mark.parametrize("active, path_scale, h_sigma", [(False, 0.2, 1.0), (True, 2.0, 0.0)])
def test_one_update_matches_the_tutorial_equations(active, path_scale, h_sigma):
    rng = np.random.default_rng(7)
    n, lam = 5, 8
    basis = np.linalg.qr(rng.normal(size=(n, n)))[0]
    cov = basis @ np.diag([0.5, 1.0, 2.0, 4.0, 9.0]) @ basis.T
    mean, path_sigma, path_c = rng.normal(size=(3, n))
    path_sigma *= path_scale * np.sqrt(n) / np.linalg.norm(path_sigma)
    sigma, generation = 0.7, 3
    population = mean + sigma * rng.normal(size=(lam, n)) @ np.linalg.cholesky(cov).T
    fitness = rng.permutation(lam).astype(float)
    expected = _tutorial_update(
        mean, sigma, cov, path_sigma, path_c, generation, population, fitness, active
    )
    assert expected["h_sigma"] == h_sigma  # both branches of the h_σ stall are exercised

    with jax.enable_x64(True):
        es = esjax.cma_es(population_size=lam, num_dims=n, active=active, eigen_interval=1)
        state = es.init(jax.random.key(0), jnp.asarray(mean))
        values, vectors = np.linalg.eigh(cov)
        state = state.replace(
            sigma=jnp.asarray(sigma),
            covariance=jnp.asarray(cov),
            eigenvectors=jnp.asarray(vectors),
            axis_lengths=jnp.asarray(np.sqrt(values)),
            path_sigma=jnp.asarray(path_sigma),
            path_c=jnp.asarray(path_c),
            generation=jnp.asarray(generation, jnp.int32),
        )
        new = es.tell(state, jnp.asarray(population), jnp.asarray(fitness))
        assert new.covariance.dtype == jnp.float64
        for name in ("mean", "sigma", "covariance", "path_sigma", "path_c"):
            # float64 on both sides: only summation order differs (~1e-15 relative).
            np.testing.assert_allclose(getattr(new, name), expected[name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state.weights, expected["weights"], rtol=1e-12)
        rebuilt = (new.eigenvectors * new.axis_lengths**2) @ new.eigenvectors.T
        np.testing.assert_allclose(rebuilt, new.covariance, rtol=1e-9, atol=1e-12)


def test_first_generation_keeps_the_rank_one_update():
    """The first ``tell`` from ``init`` (g = 0): p_σ has then had one update, whose variance is
    ``c_σ (2 - c_σ) = 1 - (1 - c_σ)^{2(g+1)}``, so h_σ is 1 for an ordinary step and
    ``p_c = √(c_c (2 - c_c) μ_eff) ⟨y⟩_w`` (eq. 45 from p_c = 0). The normaliser at exponent
    2g instead is 0, which stalls h_σ on every first generation and loses that update."""
    n, lam, sigma = 5, 8, 0.7  # the tutorial test's sizes (its eager ops are compiled already)
    rng = np.random.default_rng(11)
    mean = rng.normal(size=n)
    population = mean + sigma * rng.normal(size=(lam, n))  # what ask draws from init's N(m, σ² I)
    fitness = rng.permutation(lam).astype(float)  # ranks unrelated to the step: an ordinary one
    with jax.enable_x64(True):
        es = esjax.cma_es(population_size=lam, num_dims=n, sigma=sigma, eigen_interval=1)
        state = es.init(jax.random.key(0), jnp.asarray(mean))
        new = es.tell(state, jnp.asarray(population), jnp.asarray(fitness))
        assert int(state.generation) == 0 and new.path_c.dtype == jnp.float64
    weights = np.asarray(state.weights, np.float64)
    positive = np.where(weights > 0, weights, 0.0)
    steps = (population[np.argsort(fitness)] - mean) / sigma  # y_{i:λ}
    step = positive @ steps  # ⟨y⟩_w (eq. 41)
    mu_eff = positive.sum() ** 2 / np.sum(positive**2)
    # h_σ's test with C = I: ‖p_σ‖ / √(c_σ (2 - c_σ)) = √μ_eff ‖⟨y⟩_w‖ is below the threshold.
    chi_n = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    assert np.sqrt(mu_eff) * np.linalg.norm(step) < (1.4 + 2 / (n + 1)) * chi_n
    c_c = float(new.params.c_c)
    expected = np.sqrt(c_c * (2 - c_c) * mu_eff) * step
    assert np.linalg.norm(expected) > 0.1
    np.testing.assert_allclose(new.path_c, expected, rtol=1e-9, atol=1e-12)


def test_negative_weights_are_capped_by_alpha_posdef():
    """Eq. 53 scales the negative weights to sum to ``-min(α_μ, α_μ_eff, α_posdef)`` (eqs.
    50-52). With the default rates α_posdef is never the smallest for small n; a large c_μ
    makes it so: λ = 8, n = 5, c_1 = 0.1, c_μ = 0.5 give α_μ = 1.2, α_μ_eff ≈ 1.7 and
    α_posdef = (1 - c_1 - c_μ) / (n c_μ) = 0.16."""
    n, lam, c_1, c_mu = 5, 8, 0.1, 0.5
    mu = lam // 2
    prime = np.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))  # eq. 49
    mu_eff = prime[:mu].sum() ** 2 / np.sum(prime[:mu] ** 2)
    mu_eff_minus = prime[mu:].sum() ** 2 / np.sum(prime[mu:] ** 2)
    alpha_mu = 1 + c_1 / c_mu
    alpha_mu_eff = 1 + 2 * mu_eff_minus / (mu_eff + 2)
    alpha_posdef = (1 - c_1 - c_mu) / (n * c_mu)
    assert alpha_posdef < 0.2 * min(alpha_mu, alpha_mu_eff)  # the branch under test
    with jax.enable_x64(True):
        es = esjax.cma_es(population_size=lam, num_dims=n)
        params = es.default_params.replace(c_1=c_1, c_mu=c_mu)
        weights = np.asarray(es.init(jax.random.key(0), jnp.zeros(n), params).weights)
    np.testing.assert_allclose(weights[:mu].sum(), 1.0, rtol=1e-12)
    assert np.all(weights[mu:] < 0)
    np.testing.assert_allclose(weights[mu:].sum(), -alpha_posdef, rtol=1e-12)
    # Negative weights keep the shape of eq. 49's: only their total is capped.
    np.testing.assert_allclose(
        weights[mu:], alpha_posdef * prime[mu:] / -prime[mu:].sum(), rtol=1e-12
    )


def test_default_hyperparameters_match_table_1_at_n_10():
    # λ = 10, μ = 5: μ_eff and c_1 as pycma computes them for n = 10 (same formulas, eqs. 49, 57).
    reference = cma.CMAEvolutionStrategy(np.zeros(10), 1.0, {"verbose": -9}).sp
    values = default_hyperparameters(10)
    assert values["mu_eff"] == pytest.approx(reference.weights.mueff, rel=1e-12)
    assert values["c_1"] == pytest.approx(reference.c1, rel=1e-12)
    mu_eff = values["mu_eff"]
    assert values["c_sigma"] == pytest.approx((mu_eff + 2) / (10 + mu_eff + 5), rel=1e-12)
    assert esjax.cma_es(num_dims=10).population_size == 10
    assert esjax.cma_es(num_dims=1000).population_size == 4 + int(3 * np.log(1000))


def _generations(es, key, state, jit):
    ask = jax.jit(es.ask) if jit else es.ask
    tell = jax.jit(es.tell) if jit else es.tell
    for generation in range(3):
        population, state = ask(jax.random.fold_in(key, generation), state)
        state = tell(state, population, rosenbrock(population))
    return state


def test_ask_tell_identical_with_and_without_jit(key):
    # In float64 the jitted and eager programs agree to rounding. (In float32 they agree to a
    # few ulps per generation: XLA fuses and reassociates differently, and eigh amplifies it.)
    with jax.enable_x64(True):
        es = esjax.cma_es(num_dims=5, sigma=0.5, active=True)
        state = es.init(key, jnp.linspace(-1.0, 1.0, 5))
        jitted = _generations(es, key, state, jit=True)
        eager = _generations(es, key, state, jit=False)
        assert jitted.mean.dtype == jnp.float64
        chex.assert_trees_all_close(jitted, eager, rtol=1e-12, atol=1e-14)


def test_member_depends_only_on_key_and_index(key):
    # Member i's normals depend on (key, i) alone, so a population of 12 extends one of 6.
    small = esjax.cma_es(population_size=6, num_dims=4)
    large = esjax.cma_es(population_size=12, num_dims=4)
    x0 = jnp.ones(4)
    a, _ = small.ask(key, small.init(key, x0))
    b, _ = large.ask(key, large.init(key, x0))
    np.testing.assert_array_equal(a, b[:6])


def test_non_finite_fitness_never_enters_the_update(key):
    # Passive weights: a huge finite loser then also gets weight zero, so it stands in for the
    # non-finite ones below (with active CMA it would get a negative weight).
    es = esjax.cma_es(num_dims=4, population_size=10, active=False)
    state = es.init(key, jnp.ones(4))
    population, _ = es.ask(key, state)
    fitness = sphere(population)

    nothing = es.tell(state, population, jnp.full(10, jnp.nan))
    for name in ("mean", "sigma", "covariance", "path_sigma", "path_c"):
        np.testing.assert_array_equal(getattr(nothing, name), getattr(state, name))
    assert int(nothing.generation) == 1
    # Everything but best_fitness, which stays +inf until a finite fitness is seen.
    chex.assert_tree_all_finite(nothing.replace(best_fitness=jnp.zeros(())))

    # Two NaN/inf among λ - μ = 5 losers: ranked last, weight zero, as a huge finite value.
    bad = fitness.at[jnp.array([0, 3])].set(jnp.array([jnp.nan, -jnp.inf]))
    huge = fitness.at[jnp.array([0, 3])].set(1e30)
    with_bad, with_huge = es.tell(state, population, bad), es.tell(state, population, huge)
    for name in ("mean", "sigma", "covariance", "path_sigma", "path_c"):
        np.testing.assert_array_equal(getattr(with_bad, name), getattr(with_huge, name))

    # Seven non-finite: the 3 finite members share the renormalised top-3 weights.
    finite = jnp.array([2, 5, 9])
    mostly_bad = jnp.full(10, jnp.nan).at[finite].set(fitness[finite])
    new = es.tell(state, population, mostly_bad)
    order = finite[jnp.argsort(fitness[finite])]
    weights = state.weights[:3] / jnp.sum(state.weights[:3])
    np.testing.assert_allclose(new.mean, weights @ population[order], rtol=1e-6)
    chex.assert_tree_all_finite(new)


def test_run_stops_at_tolfun_through_the_callback():
    # Constant fitness: the best-fitness range is 0 once the 10 + ⌈30 n/λ⌉ = 40 generations of
    # history are full, so stop_tolfun fires exactly at generation 40 and esjax.run's callback
    # ends the run at the end of that chunk.
    es = esjax.cma_es(num_dims=NUM_DIMS)
    state = es.init(jax.random.key(0), jnp.ones(NUM_DIMS))
    state, metrics = esjax.run(
        es,
        lambda x: jnp.zeros(()),
        jax.random.key(1),
        state,
        200,
        log_every=10,
        progress=False,
        callback=stop_callback(),
    )
    assert tolfun_window(NUM_DIMS, es.population_size) == 40
    assert int(state.generation) == 40
    assert not metrics["stop_tolfun"][:39].any() and metrics["stop_tolfun"][39]
    assert not metrics["stop_stagnation"].any()  # its window is 120 + 30 = 150 generations


def test_termination_signals_on_built_states(key):
    es = esjax.cma_es(num_dims=3, sigma=1.0)
    state = es.init(key, jnp.ones(3))
    quiet = es.info(state)
    assert not bool(quiet["stop"])
    window = state.best_history.shape[0]
    improving = jnp.linspace(10.0, 1.0, window)
    flat = jnp.full(window, 1.0)
    late = state.replace(generation=jnp.array(window, jnp.int32))
    assert not bool(
        es.info(late.replace(best_history=improving, median_history=improving))["stop_stagnation"]
    )
    assert bool(es.info(late.replace(best_history=flat, median_history=flat))["stop_stagnation"])
    ill = state.replace(axis_lengths=jnp.array([1.0, 1.0, 1e8]))  # cond(C) = 1e16 > 1e14
    assert bool(es.info(ill)["stop_condition"])
    tiny = state.replace(sigma=jnp.array(1e-20))  # σ √C_ii and σ p_c below 1e-12 σ0
    assert bool(es.info(tiny)["stop_tolx"])
    far = state.replace(mean=jnp.full(3, 1e8), sigma=jnp.array(1e-3))  # float32 cannot move
    assert bool(es.info(far)["stop_no_effect"]) and bool(es.info(far)["stop"])


@pytest.mark.slow
def test_ipop_finds_the_rastrigin_basin_in_8_of_10_seeds():
    # Rastrigin d = 10 from x0 ~ U[-4, 4]^10, σ0 = 2: the default λ = 10 almost always ends in
    # a local minimum; IPOP doubles λ at every restart and large populations see the global
    # bowl. Auger & Hansen (2005) report this function solved with ~1e5 evaluations.
    result = esjax.ipop(
        rastrigin,
        jax.random.split(jax.random.key(0), 10),
        lambda k: jax.random.uniform(k, (NUM_DIMS,), minval=-4.0, maxval=4.0),
        sigma=2.0,
        max_evaluations=200_000,
        target_fitness=1e-5,
        compiler_options=FAST_COMPILE,
    )
    print("IPOP evaluations to f < 1e-5:", result.evaluations_to_target.tolist())
    print("restarts:", result.num_restarts.tolist(), "λ:", result.population_sizes)
    solved = (result.evaluations_to_target > 0) & (result.best_fitness < 1e-5)
    assert solved.sum() >= 8, result.evaluations_to_target
    assert np.all(result.evaluations <= 200_000)
    assert result.population_sizes[:3] == (10, 20, 40)
    assert np.all(result.num_restarts[solved] >= 1)  # λ = 10 alone does not solve it


def test_memory_limit_names_the_alternatives(key):
    with pytest.raises(ValueError, match="sep_cma_es.*openai_es"):
        esjax.cma_es(num_dims=20_000)  # 2 · 20000² · 4 bytes = 3.2 GB > 2 GB
    es = esjax.cma_es(population_size=8, max_covariance_bytes=1e4)
    with pytest.raises(ValueError, match="max_covariance_bytes"):
        es.init(key, jnp.zeros(100))  # 2 · 100² · 4 bytes = 80 kB > 10 kB


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({}, "num_dims"),
        ({"population_size": 1}, "population_size"),
        ({"num_dims": 0}, "num_dims"),
        ({"num_dims": 4, "sigma": 0.0}, "sigma"),
        ({"num_dims": 4, "num_parents": 0}, "num_parents"),
        ({"population_size": 6, "num_parents": 7}, "num_parents"),
        ({"num_dims": 4, "eigen_interval": 0}, "eigen_interval"),
        ({"num_dims": 4, "sigma_bounds": (1.0, 0.5)}, "sigma_bounds"),
        ({"num_dims": 4, "max_covariance_bytes": 0}, "max_covariance_bytes"),
        ({"num_dims": 4, "active": "yes"}, "active"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        esjax.cma_es(**kwargs)


def test_bad_params_and_x0_are_rejected(key):
    es = esjax.cma_es(num_dims=4)
    with pytest.raises(ValueError, match="num_dims"):
        es.init(key, jnp.zeros(5))
    with pytest.raises(ValueError, match="c_1"):
        es.init(key, jnp.zeros(4), es.default_params.replace(c_1=1.5))


def test_shipped_rosenbrock_config_runs(tmp_path):
    config = str(CONFIGS / "rosenbrock_cma_es.yaml")
    code = main(["run", config, "--output-dir", str(tmp_path), "--generations", "30", "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "rosenbrock_cma_es" / "summary.json").read_text())
    assert summary["population_size"] == 10 and summary["evaluations"] == 300
    metrics = (tmp_path / "rosenbrock_cma_es" / "metrics.csv").read_text().splitlines()
    assert "stop_tolfun" in metrics[0] and len(metrics) == 31
    first = float(metrics[1].split(",")[metrics[0].split(",").index("fitness_min")])
    # Members drawn around x0 = 0 with σ = 0.5 score ~100-300; 30 generations cut that by 3x+.
    assert summary["best_fitness"] < first / 3, (summary["best_fitness"], first)
