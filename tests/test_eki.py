"""EKI: one update against a dense transcription, least squares within the span, memory,
non-finite residuals, jit == eager, bad arguments, and digits MLP against OpenAI-ES."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import esjax
from esjax.strategies.eki import ADAPTIVE_EPS


def _dense_update(population, residuals, noise_cov, step, tikhonov, update, adaptive):
    """The paper's update with every covariance formed explicitly (float64, small sizes).

    Tikhonov-EKI as the augmented problem [G(u); u] ≈ [y; 0] with noise diag(Γ, I/λ).
    """
    population = np.asarray(population, np.float64)
    residuals = np.asarray(residuals, np.float64)
    num_members, num_dims = population.shape
    noise_cov = np.broadcast_to(np.asarray(noise_cov, np.float64), residuals.shape[1:])
    centered_r = residuals - residuals.mean(0)
    if adaptive:
        d_matrix = (residuals / noise_cov) @ centered_r.T  # D_jk = <r_k - r̄, Γ⁻¹ r_j>
        step = step / (np.linalg.norm(d_matrix) + ADAPTIVE_EPS)
    outputs = residuals
    gamma = noise_cov
    if tikhonov > 0:
        outputs = np.concatenate([residuals, population], axis=1)
        gamma = np.concatenate([noise_cov, np.full(num_dims, 1.0 / tikhonov)])
    centered_u = population - population.mean(0)
    centered_g = outputs - outputs.mean(0)
    c_up = centered_u.T @ centered_g / num_members
    c_pp = centered_g.T @ centered_g / num_members
    if update == "kalman":
        gain = c_up @ np.linalg.inv(c_pp + np.diag(gamma) / step)
    else:
        gain = step * c_up / gamma
    return population + (gain @ (-outputs).T).T


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"update": "euler", "step_size": 0.05},
        {"tikhonov": 0.3, "step_size": 0.7},
        {"adaptive_step": True, "step_size": 2.0},
        {"update": "euler", "adaptive_step": True, "tikhonov": 0.5},
    ],
    ids=["kalman", "euler", "tikhonov", "adaptive", "euler_adaptive_tikhonov"],
)
def test_one_update_matches_dense_covariance_formula(kwargs):
    num_members, num_dims, num_outputs = 6, 7, 5
    noise_cov = jnp.linspace(0.5, 2.0, num_outputs)
    es = esjax.eki(ensemble_size=num_members, init_std=0.5, noise_cov=noise_cov, **kwargs)
    state = es.init(jax.random.key(0), jnp.linspace(-1.0, 1.0, num_dims))
    population, state = es.ask(jax.random.key(1), state)
    matrix = jax.random.normal(jax.random.key(2), (num_outputs, num_dims))
    residuals = jnp.tanh(population @ matrix.T) - 0.3
    new = es.tell(state, population, residuals)
    expected = _dense_update(
        population,
        residuals,
        noise_cov,
        kwargs.get("step_size", 1.0),
        kwargs.get("tikhonov", 0.0),
        kwargs.get("update", "kalman"),
        kwargs.get("adaptive_step", False),
    )
    # float32 ensemble-space algebra vs float64 dense inverses of (m+d)-sized matrices: agreement
    # to ~1e-5 relative to the step shows the J × J formulation is the same update.
    moved = np.abs(expected - np.asarray(population)).max()
    assert moved > 1e-2  # the update is not trivially zero
    np.testing.assert_allclose(new.ensemble, expected, atol=2e-5 * max(moved, 1.0))


def test_perturbed_observations_average_to_the_deterministic_update():
    # The update is linear in the perturbations ξ_j ~ N(0, Γ/h), so averaging over many keys
    # gives the Σ = 0 update; each single draw differs from it.
    kwargs = {"ensemble_size": 5, "init_std": 0.5, "step_size": 0.5, "tikhonov": 0.2}
    deterministic = esjax.eki(**kwargs)
    perturbed = esjax.eki(perturb_observations=True, **kwargs)
    state = perturbed.init(jax.random.key(0), jnp.zeros(4))
    population, _ = perturbed.ask(jax.random.key(1), state)
    residuals = population @ jax.random.normal(jax.random.key(2), (4, 6)) - 1.0
    target = jax.jit(deterministic.tell)(state, population, residuals).ensemble

    def one(key):
        return perturbed.tell(state.replace(key=key), population, residuals).ensemble

    draws = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), 256))
    assert float(jnp.abs(draws[0] - target).max()) > 0.01
    # Each entry's sample mean lies within 5 standard errors of the Σ = 0 update.
    standard_error = draws.std(0) / np.sqrt(draws.shape[0])
    assert float(jnp.max(jnp.abs(draws.mean(0) - target) / standard_error)) < 5.0


PERTURBATION_DRAWS = 2000


def test_perturbation_spread_scales_with_the_step_size_as_the_equations_say():
    """The perturbations' share of the Euler step, ``perturbed - deterministic``, over many keys.

    Data block: member j moves by ``h C^up Γ⁻¹ ξ_j`` with ``ξ_j ~ N(0, Γ/h)``, covariance
    ``h C^up Γ⁻¹ C^upᵀ``. Tikhonov block (``[G(u); u] ≈ [y; 0]``, prior covariance ``I/λ``): by
    ``h λ C^uu ξ'_j`` with ``ξ'_j ~ N(0, I/(λh))``, covariance ``h λ C^uu C^uu``. Both grow like
    ``h`` (the std like √h): between h = 2 and h = 0.5 the std ratio is 2; noise scaled by √h
    instead of 1/√h would make it 8, which the default h = 1 cannot tell apart. The Tikhonov
    case has residuals that do not depend on u, so only the prior's perturbation moves anyone;
    the data case has λ = 0. (λ and h are state leaves: one compiled program serves all four.)
    """
    num_members, num_dims, num_outputs = 6, 3, 4
    noise_cov = np.linspace(0.5, 2.0, num_outputs)
    kwargs = {
        "ensemble_size": num_members,
        "init_std": 0.5,
        "noise_cov": jnp.asarray(noise_cov, jnp.float32),
        "update": "euler",
    }
    perturbed = esjax.eki(perturb_observations=True, **kwargs)
    deterministic = esjax.eki(**kwargs)
    state = perturbed.init(jax.random.key(0), jnp.linspace(-1.0, 1.0, num_dims))
    population, _ = perturbed.ask(jax.random.key(1), state)
    matrix = jax.random.normal(jax.random.key(2), (num_outputs, num_dims))
    keys = jax.random.split(jax.random.key(3), PERTURBATION_DRAWS)

    @jax.jit
    def moves(state, residuals):
        target = deterministic.tell(state, population, residuals).ensemble
        draws = jax.vmap(lambda k: perturbed.tell(state.replace(key=k), population, residuals))
        return draws(keys).ensemble - target  # (draws, J, d)

    u = np.asarray(population, np.float64)
    c_uu = (u - u.mean(0)).T @ (u - u.mean(0)) / num_members
    for block, tikhonov, residuals in [
        ("data", 0.0, population @ matrix.T - 1.0),
        ("tikhonov", 0.5, jnp.ones((num_members, num_outputs))),  # no information in the data
    ]:
        r = np.asarray(residuals, np.float64)
        c_up = (u - u.mean(0)).T @ (r - r.mean(0)) / num_members
        samples = {}
        for step in (2.0, 0.5):
            params = state.params.replace(
                step_size=jnp.float32(step), tikhonov=jnp.float32(tikhonov)
            )
            moved = np.asarray(moves(state.replace(params=params), residuals), np.float64)
            samples[step] = moved.reshape(-1, num_dims)  # every member's move: one law
        # The same keys at both step sizes and a perturbation linear in them: the ratio is
        # √(2 / 0.5) = 2 up to float32 rounding.
        ratio = np.sqrt(np.mean(samples[2.0] ** 2) / np.mean(samples[0.5] ** 2))
        np.testing.assert_allclose(ratio, 2.0, rtol=1e-3, err_msg=f"{block}: std ratio")
        for step, drawn in samples.items():
            if block == "data":
                expected = step * c_up @ np.diag(1 / noise_cov) @ c_up.T
            else:
                expected = step * tikhonov * c_uu @ c_uu
            empirical = drawn.T @ drawn / drawn.shape[0]  # the perturbations have mean 0
            # 12,000 draws of a 3-d Gaussian: the sampling error of Σ is ~2% of ‖Σ‖; 10% is
            # over 4 standard errors, and a wrong power of h changes Σ 4x.
            error = np.linalg.norm(empirical - expected) / np.linalg.norm(expected)
            assert error < 0.1, (block, step, error, empirical, expected)


# (members, dims, outputs, residual scale, residual rank, step size h, Tikhonov λ). Before the
# thin-SVD Kalman step (eigh of the Gram matrix, then its eigenvectors applied to the cross
# term) these moved members by 0.37, 55 and 12 times the correct step; now by < 2e-5 times it.
LARGE_RESIDUAL_CASES = {
    "one_output": (8, 4, 1, 1e4, 1, 1.0, 0.0),
    "rank_2_of_20_long_step": (8, 4, 20, 1e2, 2, 1e4, 0.0),
    "rank_3_of_50_tikhonov": (16, 5, 50, 1e3, 3, 10.0, 1.0),
}


@pytest.mark.parametrize("case", LARGE_RESIDUAL_CASES.values(), ids=LARGE_RESIDUAL_CASES.keys())
def test_kalman_step_stays_bounded_for_large_residuals(case):
    """Residuals of a large low-rank part (scale × rank-r random matrix) plus an O(1) nonlinear
    one: ``h ‖Γ^-1/2 Δr‖²`` is far above 1/eps in float32. The float32 ensemble-space update
    must agree with the float64 dense formula to 1% of the move (~0.6-1). ``(I + h BBᵀ)⁻¹``
    from an eigendecomposition of the Gram matrix multiplied the float32 rounding of the cross
    term along its (near-)null eigenvectors by h; the SVD of B weights each direction by its
    own ``h s / (1 + h s²)`` instead."""
    num_members, num_dims, num_outputs, scale, rank, step, tikhonov = case
    es = esjax.eki(ensemble_size=num_members, init_std=0.5, step_size=step, tikhonov=tikhonov)
    state = es.init(jax.random.key(0), jnp.linspace(-1.0, 1.0, num_dims))
    population, _ = es.ask(jax.random.key(0), state)
    k1, k2 = jax.random.split(jax.random.key(5))
    low_rank = jax.random.normal(k1, (num_members, rank)) @ jax.random.normal(
        k2, (rank, num_outputs)
    )
    residuals = scale * low_rank + jnp.tanh(population @ jnp.ones((num_dims, num_outputs)))
    new = jax.jit(es.tell)(state, population, residuals)
    expected = _dense_update(population, residuals, 1.0, step, tikhonov, "kalman", False)
    moved = np.abs(expected - np.asarray(population)).max()
    assert moved > 0.1
    np.testing.assert_allclose(new.ensemble, expected, atol=1e-2 * moved)


@pytest.fixture(scope="module")
def linear_problem():
    num_dims, num_outputs, num_members = 30, 50, 10
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    matrix = jax.random.normal(k1, (num_outputs, num_dims)) / np.sqrt(num_dims)
    targets = matrix @ jax.random.normal(k2, (num_dims,)) + 0.1 * jax.random.normal(
        k3, (num_outputs,)
    )
    return matrix, targets, num_members


def _run_linear(es, state, matrix, targets, generations):
    """Run ``generations`` generations; also return the ensemble mean after each one."""

    def body(state, _):
        population, state = es.ask(jax.random.key(0), state)
        state = es.tell(state, population, population @ matrix.T - targets)
        return state, state.mean

    return jax.jit(lambda s: jax.lax.scan(body, s, None, length=generations))(state)


def test_linear_least_squares_mean_converges_to_solution_within_the_span(linear_problem):
    matrix, targets, num_members = linear_problem
    es = esjax.eki(ensemble_size=num_members, init_std=1.0, step_size=1.0)
    state = es.init(jax.random.key(1), jnp.zeros(matrix.shape[1]))
    start = state.mean
    anomalies = (state.ensemble - start).T  # (d, J): the affine span is start + range(anomalies)
    coefficients = jnp.linalg.lstsq(matrix @ anomalies, targets - matrix @ start)[0]
    in_span = start + anomalies @ coefficients
    unrestricted = jnp.linalg.lstsq(matrix, targets)[0]

    final, means = _run_linear(es, state, matrix, targets, 1000)
    errors = jnp.linalg.norm(means - in_span, axis=1) / jnp.linalg.norm(in_span)
    # Deterministic EKI on a linear map: the spread decays like 1/√(nh) and so does the mean's
    # distance to the in-span minimiser (seen: 4.0 % after 100, 1.3 % after 1000 generations).
    assert float(errors[-1]) < 0.025, errors[-1]
    assert float(errors[-1]) < float(errors[99]) / 2.5, (errors[99], errors[-1])
    # Every member stayed in the initial affine span (the subspace property)...
    projector = anomalies @ jnp.linalg.pinv(anomalies)
    off_span = (final.ensemble - start) - (final.ensemble - start) @ projector.T
    assert float(jnp.abs(off_span).max()) < 1e-4
    # ...so the mean is far from the unrestricted least-squares solution (J - 1 = 9 of 30 dims).
    assert float(jnp.linalg.norm(final.mean - unrestricted)) > 10 * float(
        jnp.linalg.norm(final.mean - in_span)
    )


def test_large_step_is_one_gauss_newton_step_within_the_span(linear_problem):
    # h → ∞ turns the Kalman update into the exact least-squares solve within the span.
    matrix, targets, num_members = linear_problem
    es = esjax.eki(ensemble_size=num_members, init_std=1.0, step_size=1e4)
    state = es.init(jax.random.key(1), jnp.zeros(matrix.shape[1]))
    anomalies = (state.ensemble - state.mean).T
    coefficients = jnp.linalg.lstsq(matrix @ anomalies, targets - matrix @ state.mean)[0]
    in_span = state.mean + anomalies @ coefficients
    population, state = es.ask(jax.random.key(0), state)
    final = jax.jit(es.tell)(state, population, population @ matrix.T - targets)
    # Residual regularisation Γ/h = 1e-4 vs singular values O(1) of A·anomalies: ~1e-3 relative.
    assert float(jnp.linalg.norm(final.mean - in_span) / jnp.linalg.norm(in_span)) < 5e-3


def test_large_problem_never_forms_d_by_d_or_m_by_m():
    num_members, num_dims, num_outputs = 16, 100_000, 10_000
    es = esjax.eki(ensemble_size=num_members, tikhonov=1e-3, perturb_observations=True)
    state = es.init(jax.random.key(0), jnp.zeros(num_dims))
    population, state = es.ask(jax.random.key(1), state)
    # A cheap nonlinear "model": each output reads 10 parameters (no dense (m, d) matrix).
    columns = jax.random.randint(jax.random.key(2), (num_outputs, 10), 0, num_dims)
    residuals = jnp.tanh(population[:, columns].sum(-1)) - 0.5
    chex.assert_shape(residuals, (num_members, num_outputs))

    jaxpr = jax.make_jaxpr(es.tell)(state, population, residuals)
    shapes = []

    def collect(closed):
        for equation in closed.eqns:
            shapes.extend(v.aval.shape for v in equation.outvars if hasattr(v.aval, "shape"))
            for param in equation.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [param]:
                    if hasattr(sub, "jaxpr"):
                        collect(sub.jaxpr)
                    elif hasattr(sub, "eqns"):
                        collect(sub)

    collect(jaxpr.jaxpr)
    assert len(shapes) > 20
    largest = max(int(np.prod(s)) for s in shapes)
    # Nothing is bigger than the (J, d) ensemble itself; a (d, d) or (m, m) or (m, d) matrix
    # would be 1e10, 1e8 or 1e9 entries.
    assert largest <= num_members * num_dims, largest
    assert not [s for s in shapes if sum(n >= num_outputs for n in s) >= 2]

    new = jax.jit(es.tell)(state, population, residuals)
    chex.assert_shape(new.ensemble, (num_members, num_dims))
    chex.assert_tree_all_finite((new.ensemble, new.misfit, new.best_fitness))
    # The update helps: the members' mean misfit drops when re-evaluated.
    new_residuals = jnp.tanh(new.ensemble[:, columns].sum(-1)) - 0.5
    assert float(jnp.sum(new_residuals**2)) < 0.9 * float(jnp.sum(residuals**2))


def test_non_finite_residuals_carry_no_information(linear_problem):
    matrix, targets, num_members = linear_problem
    es = esjax.eki(ensemble_size=num_members, init_std=1.0)
    state = es.init(jax.random.key(1), jnp.zeros(matrix.shape[1]))
    population, state = es.ask(jax.random.key(0), state)
    residuals = population @ matrix.T - targets
    bad = residuals.at[2, 5].set(jnp.nan).at[7].set(jnp.inf)
    tell = jax.jit(es.tell)
    new = tell(state, population, bad)
    chex.assert_tree_all_finite((new.ensemble, new.misfit, new.best_fitness))
    np.testing.assert_array_equal(new.ensemble[jnp.array([2, 7])], population[jnp.array([2, 7])])
    # The finite members move exactly as in an ensemble without the two bad ones.
    keep = jnp.array([i for i in range(num_members) if i not in (2, 7)])
    small = esjax.eki(ensemble_size=num_members - 2, init_std=1.0)
    reference = jax.jit(small.tell)(
        small.init(jax.random.key(1), jnp.zeros(matrix.shape[1])).replace(
            ensemble=population[keep]
        ),
        population[keep],
        residuals[keep],
    )
    np.testing.assert_allclose(new.ensemble[keep], reference.ensemble, rtol=1e-5, atol=1e-5)
    misfits = 0.5 * jnp.sum(residuals[keep] ** 2, axis=1)
    np.testing.assert_allclose(new.best_fitness, misfits.min(), rtol=1e-6)
    all_bad = tell(state, population, jnp.full_like(residuals, jnp.nan))
    np.testing.assert_array_equal(all_bad.ensemble, population)  # no information, no move
    assert float(all_bad.best_fitness) == float("inf")


def _generations(es, key, state, matrix, targets, jit):
    ask = jax.jit(es.ask) if jit else es.ask
    tell = jax.jit(es.tell) if jit else es.tell
    for generation in range(2):
        population, state = ask(jax.random.fold_in(key, generation), state)
        state = tell(state, population, population @ matrix.T - targets)
    return state


def test_jit_equals_eager_and_vmap_over_step_size(linear_problem, key):
    matrix, targets, num_members = linear_problem
    es = esjax.eki(
        ensemble_size=num_members,
        perturb_observations=True,
        inflation=1.1,
        additive_inflation=0.01,
        tikhonov=0.1,
    )
    state = es.init(key, jnp.zeros(matrix.shape[1]))
    jitted = _generations(es, key, state, matrix, targets, jit=True)
    eager = _generations(es, key, state, matrix, targets, jit=False)
    # Same ops either way; only float32 reassociation under fusion differs (a few ulps, grown
    # through two generations' QR factorisations and J × J SVDs).
    np.testing.assert_array_equal(jax.random.key_data(jitted.key), jax.random.key_data(eager.key))
    chex.assert_trees_all_close(
        jitted.replace(key=None), eager.replace(key=None), rtol=1e-4, atol=1e-5
    )

    # Hyperparameters are state leaves: one compiled tell serves a vmapped grid of step sizes.
    population, _ = es.ask(key, jitted)
    residuals = population @ matrix.T - targets
    tell = jax.jit(es.tell)

    def told(step_size):
        params = jitted.params.replace(step_size=step_size)
        return tell(jitted.replace(params=params), population, residuals).ensemble

    batched = jax.vmap(told)(jnp.array([1.0, 10.0]))
    for index, step_size in enumerate((1.0, 10.0)):
        np.testing.assert_allclose(batched[index], told(step_size), rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"ensemble_size": 1}, "ensemble_size"),
        ({"init_std": 0.0}, "init_std"),
        ({"step_size": -1.0}, "step_size"),
        ({"noise_cov": 0.0}, "noise_cov"),
        ({"noise_cov": jnp.array([1.0, -1.0])}, "noise_cov"),
        ({"noise_cov": jnp.ones((2, 2))}, "noise_cov"),
        ({"inflation": 0.9}, "inflation"),
        ({"additive_inflation": -0.1}, "additive_inflation"),
        ({"tikhonov": -1.0}, "tikhonov"),
        ({"update": "newton"}, "update"),
        ({"adaptive_step": 1}, "adaptive_step"),
        ({"perturb_observations": "yes"}, "perturb_observations"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        esjax.eki(**{"ensemble_size": 4, **kwargs})


def test_bad_residuals_and_noise_shape_raise_value_error(key):
    es = esjax.eki(ensemble_size=4, noise_cov=jnp.ones(3))
    state = es.init(key, jnp.zeros(2))
    population, state = es.ask(key, state)
    with pytest.raises(ValueError, match="residuals"):
        es.tell(state, population, jnp.zeros(4))  # a scalar fitness is not enough for EKI
    with pytest.raises(ValueError, match="residuals"):
        es.tell(state, population, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="noise_cov"):
        es.tell(state, population, jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="init_std"):
        es.init(key, jnp.zeros(2), es.default_params.replace(init_std=-1.0))


# --- digits MLP: forward passes to a test accuracy, EKI vs OpenAI-ES -------------------------

HIDDEN = 32
BATCH = 200
TARGET_ACCURACY = 0.9
CHECK_EVERY = 100  # forward passes between test-accuracy checks


@pytest.fixture(scope="module")
def digits():
    inputs, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(inputs))
    inputs = (inputs[order] / 16.0).astype(np.float32)
    labels = labels[order]
    split = 1400
    return (
        jnp.asarray(inputs[:split]),
        jnp.asarray(labels[:split]),
        jnp.asarray(inputs[split:]),
        jnp.asarray(labels[split:]),
    )


def _mlp(params, inputs):
    return jnp.tanh(inputs @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _initial_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (64, HIDDEN)) / 8.0,
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN),
        "b2": jnp.zeros(10),
    }


def _forward_passes_to_target(es, fitness_fn, digits, budget):
    """Forward passes (members × generations, one minibatch each) until the ensemble/search mean
    reaches TARGET_ACCURACY on the held-out digits, checked every CHECK_EVERY passes."""
    _, _, test_inputs, test_labels = digits
    accuracy = jax.jit(lambda p: jnp.mean(jnp.argmax(_mlp(p, test_inputs), -1) == test_labels))
    state = es.init(jax.random.key(1), _initial_params())
    history = []

    def callback(state, _):
        history.append(
            (int(state.generation) * es.population_size, float(accuracy(state.unravel(state.mean))))
        )
        return history[-1][1] >= TARGET_ACCURACY

    esjax.run(
        es,
        fitness_fn,
        jax.random.key(2),
        state,
        budget // es.population_size,
        log_every=CHECK_EVERY // es.population_size,
        fitness_takes_key=True,
        progress=False,
        callback=callback,
    )
    hits = [passes for passes, acc in history if acc >= TARGET_ACCURACY]
    return (hits[0] if hits else None), history


def test_digits_mlp_eki_needs_fewer_forward_passes_than_openai_es(digits):
    train_inputs, train_labels, _, _ = digits

    def minibatch(key):
        index = jax.random.choice(key, train_inputs.shape[0], (BATCH,), replace=False)
        return train_inputs[index], train_labels[index]

    def residuals(params, key):
        # Kovachki & Stuart's classification set-up: softmax outputs against one-hot targets.
        inputs, labels = minibatch(key)
        return (jax.nn.softmax(_mlp(params, inputs)) - jax.nn.one_hot(labels, 10)).ravel()

    def cross_entropy(params, key):
        inputs, labels = minibatch(key)
        return -jnp.mean(jax.nn.log_softmax(_mlp(params, inputs))[jnp.arange(BATCH), labels])

    eki = esjax.eki(ensemble_size=20, init_std=0.1, step_size=10.0, additive_inflation=0.03)
    eki_passes, eki_history = _forward_passes_to_target(eki, residuals, digits, 3000)
    print(f"EKI: {eki_passes} forward passes to {TARGET_ACCURACY}: {eki_history}")
    # Seen: 1,200 here (1,600 with the pre-0.2 sampling; 1,200-1,600 over other seeds).
    assert eki_passes is not None and eki_passes <= 2000, eki_history
    # The best OpenAI-ES of a small sweep on this set-up (population 10/20/50, sigma 0.02-0.1,
    # learning rate 0.02-0.1); it needed 2,700 passes here and 2,000-2,200 over three other
    # seeds. It gets 25 % more passes than EKI used and must still be short of the target.
    openai_es = esjax.openai_es(population_size=20, sigma=0.05, learning_rate=0.03)
    budget = -(-int(1.25 * eki_passes) // CHECK_EVERY) * CHECK_EVERY
    es_passes, es_history = _forward_passes_to_target(openai_es, cross_entropy, digits, budget)
    print(f"OpenAI-ES: {es_passes} forward passes to {TARGET_ACCURACY}: {es_history}")
    assert es_passes is None, es_history
    assert es_history[-1][0] == budget


def test_an_overflowing_kalman_step_is_nan_not_a_hang():
    # An anomaly that overflowed (inf) reaches the QR; LAPACK's SVD of the resulting factor
    # loops forever on an inf entry (measured), so the step must not call it on one.
    from esjax.strategies.eki import _kalman_coefficients

    # One output: the QR of the (1, J) block is the row itself, so the factor holds inf (and
    # no NaN, with which the SVD would return).
    anomalies = jnp.ones((4, 1)).at[0, 0].set(jnp.inf)
    ones = jnp.ones((4, 5))
    coefficients = jax.jit(_kalman_coefficients)(
        anomalies, jnp.ones((4, 1)), ones, ones, jnp.float32(1.0), jnp.float32(1.0)
    )
    assert coefficients.shape == (4, 4)
    assert np.all(np.isnan(np.asarray(coefficients)))
