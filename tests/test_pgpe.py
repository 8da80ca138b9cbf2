"""PGPE: one update against Sehnke et al.'s symmetric-sampling equations and ClipUp, additive
statistics (what sharding relies on), per-coordinate σ adaptation, NaN safety, vmap over
hyperparameters, bad arguments, and a digits MLP against OpenAI-ES at the same budget."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import rankdata

import esjax
from esjax import nn
from esjax.base import mask_non_finite, member_weights
from esjax.problems import sphere
from esjax.strategies.pgpe import PGPEState, pgpe
from esjax.tasks import load_digits

# Cheaper compiles that keep these small runs fast (the backend's optimisation level 0 would
# compile faster still but run the matmul-heavy digits loops ~6x slower).
LIGHT_COMPILE = {"xla_llvm_disable_expensive_passes": True, "xla_cpu_use_fusion_emitters": False}


def _reference_step(state, population, fitness, optimizer="clipup"):
    """One PGPE generation transcribed in float64 NumPy from the papers' equations.

    Sehnke et al. 2010, symmetric sampling: ``g_μ = mean_j (u⁺ - u⁻)/2 ε_j`` and
    ``g_σ = mean_j ((u⁺ + u⁻)/2 - b)(ε_j² - σ²)/σ`` with centred ranks ``u`` (ties averaged,
    NaN worst) and ``b`` their mean; ClipUp (Toklu et al. 2020) for the centre.
    """
    params = {k: float(v) for k, v in vars(state.params).items()}
    mean, sigma = np.asarray(state.mean), np.asarray(state.sigma)
    population, fitness = np.asarray(population), np.asarray(fitness)
    n = fitness.size
    half = n // 2
    eps = population[:half] - mean
    ranked = rankdata(np.where(np.isfinite(fitness), fitness, np.inf)) - 1
    u = ranked / (n - 1) - 0.5
    plus, minus = u[:half], u[half:]
    g_mu = np.mean(((plus - minus) / 2)[:, None] * eps, axis=0)
    spread = (eps**2 - sigma**2) / sigma
    g_sigma = np.mean(((plus + minus) / 2 - u.mean())[:, None] * spread, axis=0)
    if optimizer == "clipup":
        velocity = params["momentum"] * np.asarray(state.opt_state)
        velocity = velocity + params["center_learning_rate"] * g_mu / np.linalg.norm(g_mu)
        speed = np.linalg.norm(velocity)
        if speed > params["max_speed"]:
            velocity *= params["max_speed"] / speed
        new_mean = mean - velocity
    else:  # plain gradient descent, optax.sgd(0.3)
        velocity, new_mean = None, mean - 0.3 * g_mu
    change = params["sigma_max_change"] * sigma
    unclipped = sigma - params["sigma_learning_rate"] * g_sigma
    new_sigma = np.clip(unclipped, sigma - change, sigma + change)
    clipped = np.abs(unclipped - sigma) > change
    return new_mean, new_sigma, velocity, clipped


def _pieces(es, split):
    """Jitted ``(state, population, fitness) -> (summed, whole, told, tell)``: the
    decomposition's statistics of the members split at ``split``, summed; of all members; the
    step from the summed ones; and ``es.tell`` itself."""
    decomposition = es.capabilities.decomposition

    def pieces(state, population, fitness):
        masked, masked_fitness, rows_finite = mask_non_finite(state, population, fitness)
        weights = member_weights(decomposition, state, masked_fitness, None, rows_finite)
        parts = [
            decomposition.statistics(state, masked[:split], weights[:split]),
            decomposition.statistics(state, masked[split:], weights[split:]),
        ]
        summed = jax.tree_util.tree_map(jnp.add, *parts)
        whole = decomposition.statistics(state, masked, weights)
        told = decomposition.apply(state, summed, masked_fitness)
        return summed, whole, told, es.tell(state, population, fitness)

    return jax.jit(pieces)


def _assert_parts_add_up(summed, whole, told, direct):
    # float64: the sums differ only in association (~1e-16 relative).
    chex.assert_trees_all_close(summed, whole, rtol=1e-12, atol=1e-14)
    shared = ("best_solution", "best_fitness", "generation", "evaluations")
    told = told.replace(**{name: getattr(direct, name) for name in shared})
    chex.assert_trees_all_close(told, direct, rtol=1e-12, atol=1e-14)


@functools.cache
def _float64_generation(optimizer):
    """A float64 PGPE generation (12 members, 6 dimensions), compiled once per optimizer for the
    tests below (call its ``pieces`` under ``jax.enable_x64``)."""
    with jax.enable_x64(True):
        # sigma_learning_rate = 5 makes some coordinates hit the ±20% clip and others not.
        es = pgpe(
            population_size=12,
            sigma=0.3,
            center_learning_rate=0.2,
            max_speed=0.3,
            sigma_learning_rate=5.0,
            optimizer=None if optimizer == "clipup" else optax.sgd(0.3),
        )
        state = es.init(jax.random.key(0), jnp.linspace(-1.0, 1.0, 6))
        if optimizer == "clipup":
            # Momentum from an earlier generation: 0.9 v + 0.2 ĝ exceeds max_speed, so the
            # speed limit acts.
            state = state.replace(opt_state=jnp.full_like(state.mean, 0.2))
        population, state = jax.jit(es.ask)(jax.random.key(1), state)
        # Split between the mirrored halves (6) or through a pair (5).
        return state, population, _pieces(es, split=6 if optimizer == "clipup" else 5)


@pytest.mark.parametrize("optimizer", ["clipup", "sgd"])
def test_one_update_matches_the_equations_and_statistics_add_up(optimizer):
    state, population, pieces = _float64_generation(optimizer)
    with jax.enable_x64(True):
        fitness = sphere(population).at[3].set(jnp.nan)  # ranks worst
        fitness = fitness.at[5].set(fitness[7])  # a tie: both get the mean of their ranks
        summed, whole, told, new = pieces(state, population, fitness)
        mean, sigma, velocity, clipped = _reference_step(state, population, fitness, optimizer)
        # float64 on both sides: only the summation order differs.
        np.testing.assert_allclose(new.mean, mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new.sigma, sigma, rtol=1e-12)
        if velocity is not None:
            np.testing.assert_allclose(new.opt_state, velocity, rtol=1e-12, atol=1e-14)
            assert np.linalg.norm(velocity) == pytest.approx(0.3)  # the speed limit acted
        assert clipped.any() and not clipped.all()  # both branches of the σ clip are exercised
        assert new.mean.dtype == new.sigma.dtype == jnp.float64
        # Sharding's premise: the statistics of two parts of the population add up to all's.
        _assert_parts_add_up(summed, whole, told, new)
        # Again with a non-finite row, which is replaced by the best member with weight zero.
        _assert_parts_add_up(*pieces(state, population.at[9, 0].set(jnp.inf), fitness))


def test_nan_fitness_is_harmless_and_all_nan_moves_nothing():
    state, population, pieces = _float64_generation("clipup")
    with jax.enable_x64(True):
        fitness = sphere(population).at[jnp.array([0, 5])].set(jnp.nan).at[6].set(-jnp.inf)
        *_, new = pieces(state, population, fitness)
        chex.assert_tree_all_finite((new.mean, new.sigma, new.opt_state))
        *_, untouched = pieces(state, population, jnp.full_like(fitness, jnp.nan))
        # All tied (every member ranks worst): zero gradient, so ClipUp adds nothing to the
        # velocity (momentum and the speed limit act alone) and σ does not move.
        coasting = 0.9 * np.asarray(state.opt_state)
        coasting *= min(1.0, 0.3 / np.linalg.norm(coasting))
        np.testing.assert_allclose(untouched.opt_state, coasting, rtol=1e-14)
        np.testing.assert_array_equal(untouched.sigma, state.sigma)


def test_members_are_mirrored_and_depend_only_on_key_and_index(key):
    es = pgpe(population_size=8, sigma=0.1)
    state = es.init(key, jnp.ones(5))
    state = state.replace(sigma=jnp.linspace(0.1, 0.5, 5))  # per-coordinate σ
    population, _ = jax.jit(es.ask)(key, state)
    steps = population - state.mean
    np.testing.assert_allclose(steps[4:], -steps[:4], atol=1e-6)  # up to rounding of μ ± σ z
    # What one device of a sharded run draws: its members only, from (key, i).
    rows = jax.jit(es.capabilities.decomposition.sample)(key, state, jnp.array([6, 1]))
    np.testing.assert_allclose(rows, population[jnp.array([6, 1])], rtol=1e-6)
    spread = jnp.std(steps[:4], axis=0)
    assert float(spread[-1]) > float(spread[0])  # each coordinate's σ scales its noise


def test_sigma_adapts_per_coordinate():
    # f depends on x_0, x_1 only: near their optimum the ranks favour small steps there, while
    # x_2, x_3 carry no signal. Measured after 150 generations over 8 seeds: σ = 0.0056-0.0082
    # on the first two coordinates, 0.080-0.111 on the others (largest ratio 0.094), and
    # Σ μ_0..1² = 1.5e-5 to 2.4e-4 (from 0.5; ClipUp's fixed step α = 0.02 sets that floor).
    es = pgpe(population_size=32, sigma=0.1, center_learning_rate=0.02)
    state = es.init(jax.random.key(0), jnp.full(4, 0.5))

    def first_two(x):
        return jnp.sum(x[:2] ** 2)

    run = jax.jit(
        lambda state: esjax.evolve(es, first_two, jax.random.key(1), state, 150),
        compiler_options=LIGHT_COMPILE,
    )
    state, _ = run(state)
    assert float(jnp.max(state.sigma[:2])) < 0.2 * float(jnp.min(state.sigma[2:]))
    assert float(jnp.sum(state.mean[:2] ** 2)) < 1e-3


def test_hyperparameters_are_state_leaves_that_vmap(key):
    es = pgpe(population_size=8)

    def run(learning_rate, sigma_rate):
        params = es.default_params.replace(
            center_learning_rate=learning_rate,
            max_speed=2 * learning_rate,
            sigma_learning_rate=sigma_rate,
        )
        state = es.init(key, jnp.ones(4), params)
        state, _ = esjax.evolve(es, sphere, key, state, 5)
        return state.mean, state.sigma

    # Each row of one vmapped program follows its own hyperparameters (none is a constant baked
    # into the program): η_σ = 0 keeps σ at 0.1, and the larger ClipUp step moves μ further.
    rates, sigma_rates = jnp.array([0.02, 0.2]), jnp.array([0.0, 0.5])
    means, sigmas = jax.jit(jax.vmap(run), compiler_options=LIGHT_COMPILE)(rates, sigma_rates)
    np.testing.assert_array_equal(sigmas[0], jnp.full((4,), 0.1, jnp.float32))
    assert not np.allclose(sigmas[1], 0.1)
    moved = np.linalg.norm(np.asarray(means) - 1.0, axis=1)
    # ClipUp moves at most max_speed = 2 α per generation: 5 generations, at most 10 α.
    assert moved[0] <= 10 * 0.02 + 1e-6 and moved[1] > 10 * 0.02, moved


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"population_size": 7}, "population_size"),
        ({"population_size": 0}, "population_size"),
        ({"sigma": 0.0}, "sigma"),
        ({"center_learning_rate": -0.1}, "center_learning_rate"),
        ({"max_speed": 0.0}, "max_speed"),
        ({"momentum": 1.0}, "momentum"),
        ({"sigma_learning_rate": -1.0}, "sigma_learning_rate"),
        ({"sigma_max_change": 1.0}, "sigma_max_change"),
        ({"fitness_shaping": "softmax"}, "fitness_shaping"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        pgpe(**{"population_size": 8, **kwargs})


def test_optimizer_must_be_optax():
    with pytest.raises(TypeError, match="optimizer"):
        pgpe(population_size=8, optimizer="adam")


def test_default_max_speed_is_twice_the_step():
    state = pgpe(population_size=8, center_learning_rate=0.05).init(jax.random.key(0), jnp.ones(2))
    assert isinstance(state, PGPEState)
    assert float(state.params.max_speed) == pytest.approx(0.1)  # Toklu et al.: v_max = 2 α


# The digits comparison: an MLP 64 → 16 tanh → 10 (1,210 parameters), cross-entropy on shared
# minibatches of 64 training images, population 64, 200 generations: 819,200 forward passes per
# run for either strategy, 4 seeds each, both at their factory defaults (PGPE: σ = 0.1, ClipUp
# α = 0.1; OpenAI-ES: σ = 0.05, Adam 0.01).
DIGITS_POPULATION, DIGITS_GENERATIONS, DIGITS_BATCH, DIGITS_SEEDS = 64, 200, 64, 4


def _digits_accuracies(es, model, data):
    fitness = nn.dataset_fitness(model, "cross_entropy", data.x_train, data.y_train, DIGITS_BATCH)

    def one(seed):
        state = es.init(jax.random.key(seed), model.params)
        state, _ = esjax.evolve(
            es,
            fitness,
            jax.random.key(1000 + seed),
            state,
            DIGITS_GENERATIONS,
            fitness_takes_key=True,
        )
        params = model.spec.unflatten(state.mean)
        return nn.evaluate_classifier(model, params, data.x_test, data.y_test)["accuracy"]

    return np.asarray(
        jax.jit(jax.vmap(one), compiler_options=LIGHT_COMPILE)(jnp.arange(DIGITS_SEEDS))
    )


def test_digits_mlp_pgpe_at_least_matches_openai_es_at_the_same_budget():
    data = load_digits(seed=1)  # the split of configs/digits_compare.yaml: 359 test images
    model = nn.mlp(data.num_features, data.num_classes, (16,), "tanh", key=jax.random.key(0))
    accuracy = {
        "pgpe": _digits_accuracies(pgpe(population_size=DIGITS_POPULATION), model, data),
        "openai_es": _digits_accuracies(
            esjax.openai_es(population_size=DIGITS_POPULATION), model, data
        ),
    }
    # Measured test accuracy (mean of the 4 seeds): PGPE 92.8%, OpenAI-ES 89.4% (one seed's
    # spread ≈ 0.6-0.9 points, so the gap is ~5 standard errors). A tuned OpenAI-ES closes it:
    # with Adam 0.03 it reaches 92.1% here, and at minibatch 128, where Adam 0.03 was the best of
    # a 12-point grid (σ ∈ {0.03, 0.05, 0.1} × Adam 0.01, 0.03, 0.1, 0.03 decaying), it ties
    # PGPE's defaults within seed noise (94.4% vs 94.05%, 8 seeds). So PGPE out of the box is as
    # good as a tuned OpenAI-ES, not better. The floor is the PGPE mean less ~5 standard errors.
    assert accuracy["pgpe"].mean() >= accuracy["openai_es"].mean(), accuracy
    assert accuracy["pgpe"].mean() >= 0.91, accuracy
