"""Restart drivers: BIPOP's regime schedule against Hansen (2009)'s rules, both drivers with a
strategy that is not CMA-ES, and BIPOP-CMA-ES solving a multimodal BBOB function.

The schedule tests use a toy strategy that stops itself after a fixed number of generations:
every run then spends a known number of evaluations, so the schedule is checked exactly, and
its programs compile in a fraction of CMA-ES's time.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import esjax
from esjax.base import Capabilities, StrategyState, make_strategy
from esjax.problems import sphere
from esjax.problems.bbob import bbob_function
from esjax.restarts import BIPOPStage, bipop, ipop, small_population_size

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LIFETIME = 5  # generations each run of the toy strategy lasts


@struct.dataclass
class ToyParams:
    sigma: float | jax.Array
    lifetime: float | jax.Array


@struct.dataclass
class ToyState(StrategyState):
    mean: jax.Array
    sigma: jax.Array
    params: ToyParams


def toy_es(population_size: int, sigma: float = 1.0, lifetime: int = LIFETIME):
    """(1, λ) random search around the mean with a fixed step, stopping after ``lifetime``
    generations (its declared termination signal)."""

    def init(key, mean, params):
        return {"mean": mean, "sigma": params.sigma}

    def ask(key, state):
        noise = esjax.prng.member_normals(
            key, jnp.arange(population_size), state.num_dims, state.mean.dtype
        )
        return state.mean + state.sigma * noise, state

    def update(state, population, fitness):
        best = jnp.argmin(jnp.where(jnp.isnan(fitness), jnp.inf, fitness))
        return state.replace(mean=population[best])

    return make_strategy(
        name="toy_es",
        population_size=population_size,
        default_params=ToyParams(sigma=sigma, lifetime=lifetime),
        state_type=ToyState,
        init=init,
        ask=ask,
        update=update,
        capabilities=Capabilities(
            termination=lambda state: state.generation >= state.params.lifetime
        ),
    )


def check_schedule(stages, default_size, sigma0, budget, total):
    """Assert Hansen (2009)'s rules on a BIPOP schedule; return the evaluations of each regime."""
    spent = {"large": 0, "small": 0}
    large_sizes, latest_large = [], None
    for index, stage in enumerate(stages):
        assert isinstance(stage, BIPOPStage)
        assert 0 < stage.evaluations <= stage.max_evaluations
        if stage.regime == "large":
            # IPOP's sequence from the default population and σ0. The first run is large; later
            # a large run follows once the small regime has caught up, or when no small run
            # could take a generation (its cap below the largest possible λ_s).
            assert stage.population_size == default_size * 2 ** len(large_sizes)
            assert stage.sigma == sigma0 and stage.uniforms is None
            caught_up = spent["small"] >= spent["large"]
            assert index == 0 or caught_up or latest_large.evaluations // 2 < large_sizes[-1]
            large_sizes.append(stage.population_size)
            latest_large = stage
        else:
            # The small regime only runs while it has spent less than the large one.
            assert index > 0 and spent["small"] < spent["large"]
            u1, u2 = stage.uniforms
            assert 0.0 <= u1 < 1.0 and 0.0 <= u2 < 1.0
            next_large = 2 * large_sizes[-1]  # λ_l: the population of the next large restart
            expected = math.floor(default_size * (next_large / (2 * default_size)) ** (u1**2))
            assert stage.population_size == expected
            assert default_size <= stage.population_size <= large_sizes[-1]
            np.testing.assert_allclose(stage.sigma, sigma0 * 10.0 ** (-2.0 * u2), rtol=1e-12)
            assert sigma0 / 100 <= stage.sigma <= sigma0
            # Each small run: at most half of what the latest large run spent.
            assert stage.max_evaluations == latest_large.evaluations // 2
        spent[stage.regime] += stage.evaluations
    assert spent["large"] + spent["small"] == total <= budget
    return spent


def test_bipop_schedule_follows_hansen_2009():
    # λ_def = 4 and toy runs of 5 generations: large runs of λ 4, 8, 16 and small ones of
    # λ in [4, 8) within 150 evaluations, so only a handful of programs are compiled.
    budget, default_size, sigma0 = 150, 4, 2.0
    result = bipop(
        sphere,
        jax.random.split(jax.random.key(0), 2),
        jnp.full(3, 2.0),
        sigma=sigma0,
        max_evaluations=budget,
        population_size=default_size,
        strategy=toy_es,
        compiler_options=FAST_COMPILE,
    )
    assert len(result.stages) == 2  # one schedule per key
    for run, stages in enumerate(result.stages):
        regimes = [stage.regime for stage in stages]
        print(run, [(s.regime[0], s.population_size, s.evaluations) for s in stages])
        spent = check_schedule(stages, default_size, sigma0, budget, int(result.evaluations[run]))
        assert spent["large"] == result.large_evaluations[run]
        assert spent["small"] == result.small_evaluations[run]
        # Both regimes got turns, and the small one followed the first run at once.
        assert regimes[0] == "large" and regimes[1] == "small" and "small" in regimes[2:]
        # A toy run lasts LIFETIME generations unless its cap (small) or the budget cuts it.
        first = stages[0]
        assert first.generations == LIFETIME and first.evaluations == LIFETIME * default_size
        # First small run: λ_l / 2 = λ_def, so λ_s = λ_def whatever U₁ (the paper's formula).
        assert stages[1].population_size == default_size
        # The run ended because the next one could not take a generation within the budget.
        assert budget - int(result.evaluations[run]) < 2 * max(s.population_size for s in stages)
        assert result.num_restarts[run] == len(stages) - 1
    # The two keys drew different uniforms (the schedule is per run).
    assert [s.uniforms for s in result.stages[0]] != [s.uniforms for s in result.stages[1]]


def test_small_population_size_formula():
    # ⌊λ_def (λ_l / (2 λ_def))^(U²)⌋ with λ_l / 2 = 80 the latest large population, λ_def = 10.
    assert small_population_size(10, 80, 0.0) == 10
    assert small_population_size(10, 80, 0.5) == math.floor(10 * 8**0.25)  # 16
    assert small_population_size(10, 80, 0.999) == 79
    assert small_population_size(10, 10, 0.7) == 10


def test_ipop_drives_a_strategy_that_is_not_cma_es():
    # The toy strategy stops after LIFETIME = 5 generations, so IPOP's stages double λ from 4:
    # 5 · 4 + 5 · 8 = 60 evaluations, then λ = 16 runs (130 - 60) // 16 = 4 generations before
    # the next would exceed the budget, and λ = 32 cannot take one.
    x0 = jnp.full(2, 0.5)
    result = ipop(
        sphere,
        jax.random.key(1),
        x0,
        sigma=0.5,
        max_evaluations=130,
        population_size=4,
        strategy=toy_es,
        compiler_options=FAST_COMPILE,
    )
    assert result.population_sizes == (4, 8, 16)
    assert [int(g) for g in result.stage_generations] == [5, 5, 4]
    assert int(result.evaluations) == 124 and int(result.num_restarts) == 2
    # 124 Gaussian samples around x0 include better points than x0 itself.
    assert float(result.best_fitness) < float(sphere(x0))


def test_sigma_param_must_name_a_params_field():
    with pytest.raises(ValueError, match="sigma_param must name a field of ToyParams"):
        bipop(
            sphere,
            jax.random.key(0),
            jnp.ones(2),
            sigma=1.0,
            max_evaluations=100,
            strategy=toy_es,
            sigma_param="step_size",
        )
    with pytest.raises(ValueError, match="max_evaluations"):
        bipop(sphere, jax.random.key(0), jnp.ones(2), sigma=1.0, max_evaluations=0)
    with pytest.raises(ValueError, match="sigma"):
        ipop(sphere, jax.random.key(0), jnp.ones(2), sigma=0.0, max_evaluations=10)
    with pytest.raises(ValueError, match="population_growth"):
        bipop(
            sphere,
            jax.random.key(0),
            jnp.ones(2),
            sigma=1.0,
            max_evaluations=10,
            population_growth=1,
        )


def test_bipop_cma_es_solves_bbob_f22_in_2d():
    # Gallagher's 21 peaks (f22), instance 1, d = 2, from x0 ~ U[-4, 4]², σ0 = 2, as in
    # Hansen's BBOB runs. With this key the first CMA-ES run (λ = 6) ends at a local peak and
    # BIPOP reaches f - f_opt < 1e-8 (the BBOB target) in its fourth run, after ~1500
    # evaluations; the budget of 4000 leaves room for a different trajectory on another backend.
    problem = bbob_function(22, 2, 1)
    with jax.enable_x64(True):
        result = bipop(
            problem.fitness,
            jax.random.key(0),
            lambda k: jax.random.uniform(k, (2,), jnp.float64, minval=-4.0, maxval=4.0),
            sigma=2.0,
            max_evaluations=4000,
            target_fitness=problem.f_opt + 1e-8,
            compiler_options=FAST_COMPILE,
        )
    print([(s.regime, s.population_size, s.evaluations) for s in result.stages])
    assert float(result.best_fitness) - problem.f_opt < 1e-8
    assert 0 < int(result.evaluations_to_target) == int(result.evaluations) <= 4000
    assert result.num_restarts >= 1  # the first run alone did not solve it
    check_schedule(result.stages, 6, 2.0, 4000, int(result.evaluations))
