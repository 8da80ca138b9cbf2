"""Nelder-Mead: iteration-by-iteration agreement with scipy (best vertex and evaluation count),
scipy's termination, the speculative population layout, non-finite fitness, bad arguments.

scipy.optimize.minimize(method="Nelder-Mead") is the oracle. The comparisons run in float64
(``jax.enable_x64`` as a context manager, so x64 does not leak into other tests) and feed both
sides the same fitness: every row is scored by the same one-point NumPy function scipy calls
(a batched NumPy evaluation, e.g. a matmul over rows, rounds differently).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import esjax
from esjax.strategies.nelder_mead import (
    SHRINK,
    STEPS,
    coefficients,
    nelder_mead,
)

# At its default optimisation level XLA's CPU backend contracts a·b + c into fused multiply-adds,
# which round once where NumPy rounds twice (measured: best values then agree with scipy to
# ~4e-11 relative over 300 iterations, still inside 1e-9). At level 0 the compiled program does
# NumPy's IEEE operations one by one and the two runs agree bit for bit (measured: max relative
# difference 0.0 in every case below).
EXACT = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ITERATIONS = 300
X0_4 = np.array([-1.2, 1.0, -1.2, 1.0])
X0_5 = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
X0_CONCAVE = np.array([1.3, -0.7, 2.2, 0.4])
ROTATION_5 = np.linalg.qr(np.random.default_rng(3).standard_normal((5, 5)))[0]
ELLIPSOID_WEIGHTS = 1e6 ** (np.arange(5) / 4)
CONCAVE_CENTRE = np.array([0.31, -0.17, 0.53, 0.11])


def rosenbrock(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rotated_ellipsoid(x):
    return np.sum(ELLIPSOID_WEIGHTS * (ROTATION_5 @ x) ** 2)


def concave(x):
    """Σ i |x_i - c_i|^0.2: concave along every coordinate away from the minimum, so
    contractions fail and the simplex shrinks (on convex functions it almost never does)."""
    return np.sum(np.arange(1, 5) * np.abs(x - CONCAVE_CENTRE) ** 0.2)


def scipy_history(fitness_fn, x0, iterations, adaptive, xatol=0.0, fatol=0.0):
    """scipy's best value and cumulative evaluations after each iteration, and its result."""
    calls, best, evaluations = [0], [], []

    def counted(x):
        calls[0] += 1
        return fitness_fn(x)

    def callback(intermediate_result):
        best.append(intermediate_result.fun)
        evaluations.append(calls[0])

    # scipy's loop runs while its counter (starting at 1) is below maxiter.
    options = dict(
        adaptive=adaptive, maxiter=iterations + 1, maxfev=10**9, xatol=xatol, fatol=fatol
    )
    result = minimize(counted, x0, method="Nelder-Mead", callback=callback, options=options)
    return np.array(best), np.array(evaluations), result


@functools.cache
def compiled(num_dims):
    """Jitted ask/tell for ``num_dims``, compiled once: they read the coefficients from the
    state's params, so one pair serves both coefficient sets."""
    es = nelder_mead(num_dims=num_dims)
    return jax.jit(es.ask, compiler_options=EXACT), jax.jit(es.tell, compiler_options=EXACT)


def esjax_history(fitness_fn, x0, iterations, adaptive):
    """Best vertex value, evaluations and step after each iteration (generation 0, the initial
    simplex, is not one of scipy's iterations)."""
    ask, tell = compiled(len(x0))
    es = nelder_mead(num_dims=len(x0), adaptive=adaptive, xatol=0.0, fatol=0.0)
    key = jax.random.key(0)  # unused: Nelder-Mead draws nothing
    state = es.init(key, jnp.asarray(x0, jnp.float64))
    best, evaluations, steps = [], [], []
    for generation in range(iterations + 1):
        population, state = ask(key, state)
        fitness = np.array([fitness_fn(row) for row in np.asarray(population)])
        state = tell(state, population, jnp.asarray(fitness))
        if generation:
            best.append(float(state.simplex_fitness[0]))
            evaluations.append(int(state.evaluations))
            steps.append(int(state.last_step))
    return np.array(best), np.array(evaluations), np.array(steps)


CASES = {
    "rosenbrock4-adaptive": (rosenbrock, X0_4, True),
    "rosenbrock4-standard": (rosenbrock, X0_4, False),
    "rotated_ellipsoid5-adaptive": (rotated_ellipsoid, X0_5, True),
    "rotated_ellipsoid5-standard": (rotated_ellipsoid, X0_5, False),
    "concave4-adaptive": (concave, X0_CONCAVE, True),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_scipy_iteration_by_iteration(case):
    fitness_fn, x0, adaptive = CASES[case]
    with jax.enable_x64(True):
        best, evaluations, steps = esjax_history(fitness_fn, x0, ITERATIONS, adaptive)
    want_best, want_evaluations, _ = scipy_history(fitness_fn, x0, ITERATIONS, adaptive)
    assert len(want_best) == ITERATIONS  # scipy ran every iteration (no early stop)
    # The same branches on the same IEEE operations: bit-identical (see EXACT); 1e-9 relative
    # leaves room for a platform whose libm rounds differently, not for a different branch
    # (which shows up as ~1e-3 or more within a few iterations).
    relative = np.abs(best - want_best) / np.abs(want_best)
    assert relative.max() <= 1e-9, (np.argmax(relative), relative.max())
    # Only the points scipy's sequential rule evaluates are counted, iteration by iteration.
    np.testing.assert_array_equal(evaluations, want_evaluations)
    # Every branch of the rule was taken; shrinks only on the concave function (measured: 16).
    taken = set(steps.tolist())
    assert taken >= set(range(1, SHRINK)), sorted(STEPS[s] for s in taken)
    if case.startswith("concave"):
        assert np.sum(steps == SHRINK) >= 10


def test_termination_and_tolerances_match_scipy():
    """xatol/fatol as scipy applies them, two settings in one vmapped, jitted ``evolve``: the run
    freezes at scipy's iteration with scipy's best vertex and evaluation count."""
    tolerances = np.array([1e-4, 1e-2])  # scipy's default, and a loose one
    with jax.enable_x64(True):
        es = nelder_mead(num_dims=4, adaptive=True)

        def run(tolerance):
            params = es.default_params.replace(xatol=tolerance, fatol=tolerance)
            state = es.init(jax.random.key(0), jnp.asarray(X0_4), params)
            return esjax.evolve(es, esjax.problems.rosenbrock, jax.random.key(1), state, 600)

        final, metrics = jax.jit(jax.vmap(run), compiler_options=EXACT)(jnp.asarray(tolerances))
        for lane, tolerance in enumerate(tolerances):
            _, _, result = scipy_history(rosenbrock, X0_4, 10**4, True, tolerance, tolerance)
            assert result.success, result.message  # stopped by the tolerances, not maxiter
            # scipy's `nit` starts at 1 and counts iterations; esjax's generation 0 is the
            # initial simplex, so both are 1 + the iterations run (measured: 422 and 364).
            assert int(final.generation[lane]) == result.nit
            assert int(final.evaluations[lane]) == result.nfev
            np.testing.assert_allclose(final.simplex_fitness[lane, 0], result.fun, rtol=1e-9)
            np.testing.assert_allclose(final.simplex[lane, 0], result.x, rtol=1e-9)
            terminated = np.asarray(metrics["terminated"][lane])
            assert not terminated[: result.nit].any() and terminated[result.nit :].all()
        # best_solution also sees the speculative rows, so it is never worse than the vertex.
        assert np.all(final.best_fitness <= final.simplex_fitness[:, 0])
        assert final.generation[1] < final.generation[0]


def test_population_layout_and_padding():
    x0 = np.array([0.0, 2.0, -1.0, 4.0])
    with jax.enable_x64(True):
        es = nelder_mead(population_size=10)  # n + 4 = 8 rows needed, 2 padding rows
        ask = jax.jit(es.ask, compiler_options=EXACT)
        tell = jax.jit(es.tell, compiler_options=EXACT)
        state = es.init(jax.random.key(0), jnp.asarray(x0))
        population, state = ask(jax.random.key(0), state)
        # scipy's initial simplex: x0, then coordinate k x 1.05, or 0.00025 where it is 0.
        want = np.tile(x0, (5, 1))
        want[1, 0], want[2, 1], want[3, 2], want[4, 3] = 0.00025, 2.1, -1.05, 4.2
        np.testing.assert_array_equal(population[:5], want)
        np.testing.assert_array_equal(population[5:], np.tile(x0, (5, 1)))  # padding: x0
        state = tell(state, population, esjax.problems.sphere(population))
        assert int(state.evaluations) == 5  # the n + 1 vertices only
        assert np.all(np.diff(np.asarray(state.simplex_fitness)) >= 0)  # sorted, best first

        # Later rows: reflection, expansion, outside/inside contraction, the n shrink points and
        # the best vertex as padding, in scipy's arithmetic (exactly, see EXACT).
        population, _ = ask(jax.random.key(0), state)
        sim = np.asarray(state.simplex)
        rho, chi, psi, sigma = coefficients(False, 4).values()
        centroid = np.add.reduce(sim[:-1], 0) / 4
        want = [
            (1 + rho) * centroid - rho * sim[-1],
            (1 + rho * chi) * centroid - rho * chi * sim[-1],
            (1 + psi * rho) * centroid - psi * rho * sim[-1],
            (1 - psi) * centroid + psi * sim[-1],
            *(sim[0] + sigma * (sim[1:] - sim[0])),
            sim[0],
            sim[0],
        ]
        np.testing.assert_array_equal(population, np.array(want))


def test_non_finite_fitness_is_worst_and_never_enters_the_state():
    with jax.enable_x64(True):  # reuses the float64 programs of the scipy comparison
        _non_finite_fitness_checks()


def _non_finite_fitness_checks():
    es = nelder_mead(num_dims=4)
    ask, tell = compiled(4)
    state = es.init(jax.random.key(0), jnp.ones(4, jnp.float64))
    population, state = ask(jax.random.key(0), state)
    fitness = np.sum(np.asarray(population) ** 2, axis=1)
    fitness[1], fitness[2] = np.nan, np.inf
    state = tell(state, population, jnp.asarray(fitness))
    simplex, simplex_fitness = np.asarray(state.simplex), np.asarray(state.simplex_fitness)
    worst = np.finfo(np.float64).max
    # The two non-finite vertices sort last at the worst finite value; the others keep theirs.
    np.testing.assert_array_equal(simplex_fitness[3:], [worst, worst])
    np.testing.assert_array_equal(simplex[0], np.asarray(population)[0])

    # A generation with no finite fitness at all: the rule finds nothing better than the worst
    # vertex and shrinks (as scipy does with inf); the best vertex and its value survive.
    population, state = ask(jax.random.key(0), state)
    state = tell(state, population, jnp.full(es.population_size, jnp.nan))
    assert int(state.last_step) == SHRINK
    assert int(state.evaluations) == 5 + 4 + 2  # n + 1, then a shrink's n + 2
    np.testing.assert_array_equal(state.best_vertex, simplex[0])
    assert np.asarray(state.simplex_fitness)[0] == simplex_fitness[0]
    chex.assert_tree_all_finite(state)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({}, ValueError, "num_dims"),
        ({"num_dims": 4, "population_size": 7}, ValueError, "at least num_dims + 4 = 8"),
        ({"population_size": 4}, ValueError, "population_size must lie in [5, inf]"),
        ({"num_dims": 0}, ValueError, "num_dims must lie in [1, inf]"),
        ({"num_dims": 2, "adaptive": 1}, TypeError, "adaptive must be a bool"),
        ({"num_dims": 2, "contraction": 1.0}, ValueError, "contraction must lie in (0.0, 1.0)"),
        ({"num_dims": 2, "shrink": 0.0}, ValueError, "shrink must lie in (0.0, 1.0)"),
        ({"num_dims": 2, "reflection": 0.0}, ValueError, "reflection must lie in (0.0, inf]"),
        ({"num_dims": 2, "expansion": 1.0}, ValueError, "expansion must lie in (1.0, inf]"),
        ({"num_dims": 2, "reflection": 3.0}, ValueError, "expansion must lie in (3.0, inf]"),
        ({"num_dims": 2, "xatol": -1.0}, ValueError, "xatol must lie in [0.0, inf]"),
        ({"num_dims": 2, "initial_step": 0.0}, ValueError, "initial_step must lie in (0.0, inf]"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, error, words):
    with pytest.raises(error) as raised:
        nelder_mead(**kwargs)
    assert words in str(raised.value)


def test_init_checks_x0_against_the_population_size_and_num_dims():
    # The checks run at trace time, so abstract evaluation (no compile) reaches them.
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="at least num_dims \\+ 4 = 10"):
        jax.eval_shape(nelder_mead(population_size=8).init, key, jnp.ones(6))
    with pytest.raises(ValueError, match="built for num_dims=3"):
        jax.eval_shape(nelder_mead(num_dims=3).init, key, jnp.ones(4))
    # Without num_dims, the adaptive default coefficients are resolved (and checked) at init.
    with pytest.raises(ValueError, match="expansion must lie in \\(1.6, inf\\]"):
        jax.eval_shape(
            nelder_mead(population_size=8, adaptive=True, reflection=1.6).init, key, jnp.ones(4)
        )
    # Gao & Han's coefficients for n = 4 (eq. 4.1): 1, 1 + 2/n, 3/4 - 1/(2n), 1 - 1/n.
    assert coefficients(True, 4) == {
        "reflection": 1.0,
        "expansion": 1.5,
        "contraction": 0.625,
        "shrink": 0.75,
    }
