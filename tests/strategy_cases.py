"""The table of strategies every cross-cutting test runs over (one row per strategy).

Each row is a :class:`Case`: ``factory()`` builds a small instance for ``NUM_DIMS``-dimensional
problems; the strategy must bring its row's ``fitness`` (the sphere, or for a strategy that
takes residual vectors, residuals whose ``½‖r‖²`` is a sphere) from ``x0 = ones`` below
``target`` within ``budget`` generations. ``valley`` and ``problem`` are the row's
Rosenbrock-valley problem, as a function and as the config problem name ``esjax run`` knows,
for the multi-device, determinism and checkpoint tests. Tests for the strategy table,
determinism, multi-device runs, validation and checkpoints import this list, so a new strategy
is covered everywhere by adding its row here.

Fitness functions take one member or a batch (leading axes): ``fitness(population)`` gives
what ``tell`` consumes.
"""

from collections.abc import Callable
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import esjax
from esjax.experiments.setup import ProblemSetup, register_problem
from esjax.problems import rosenbrock, sphere

NUM_DIMS = 4


def key_data(tree):
    """``tree`` with typed PRNG key leaves (EKI's state key) replaced by their raw key data,
    which chex's finiteness and closeness checks can read."""

    def plain(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return leaf

    return jax.tree_util.tree_map(plain, tree)


def shifted_residuals(x):
    """``x - 0.5`` per member: residual vectors whose ``½‖r‖²`` is a sphere (0.5 at ones)."""
    return x - 0.5


def rosenbrock_residuals(x):
    """Rosenbrock as residual vectors: ``‖r‖²`` is :func:`esjax.problems.rosenbrock`."""
    return jnp.concatenate([10 * (x[..., 1:] - x[..., :-1] ** 2), 1 - x[..., :-1]], axis=-1)


def _rosenbrock_residuals_problem(key, num_dims: int = NUM_DIMS, x0: float = 0.5):
    del key  # nothing random
    return ProblemSetup(rosenbrock_residuals, jnp.full(num_dims, x0, jnp.float32))


# `esjax run` configs name problems; residual strategies need one that returns vectors.
register_problem("rosenbrock_residuals", _rosenbrock_residuals_problem)


class Case(NamedTuple):
    """One strategy of the table (see the module docstring).

    ``size_argument`` is the factory's population-size argument and ``options`` the factory
    arguments every build of the row shares (the small instance, :meth:`sized` and the config
    :meth:`section`); the row's other hyperparameters are the factory's defaults there.
    ``sharded_tolerance`` is ``(rtol, atol)`` for comparing a sharded run on ``valley`` with
    the one-device run (tests/test_distributed.py).
    """

    id: str
    factory: Callable[[], Any]
    budget: int
    target: float
    fitness: Callable = sphere
    valley: Callable = rosenbrock
    problem: str = "rosenbrock"
    size_argument: str = "population_size"
    options: Any = MappingProxyType({})
    sharded_tolerance: tuple[float, float] = (1e-5, 0.0)

    def sized(self, population_size: int, **kwargs) -> Any:
        """The registered factory at ``population_size``, with the row's options and
        ``kwargs``, every other hyperparameter at its default."""
        factory = esjax.get_strategy(self.id)
        return factory(**{self.size_argument: population_size, **self.options, **kwargs})

    def section(self) -> dict:
        """The config ``strategy`` section of the row: its population size and options."""
        return {"name": self.id, self.size_argument: self.factory().population_size, **self.options}


# EKI: stochastic (perturbed observations), so its state's PRNG key matters to every run.
# A long step h = 1e4 is nearly a Gauss-Newton step within the ensemble's span, with
# observation perturbations of std h^-1/2 = 0.01: ½‖r‖² < 1e-4 by generation 2 or 3 on 20 of
# 20 seeds measured, in float32 and float64 (1e-6 is not reached reliably: the perturbations
# keep the ensemble spread).
EKI_OPTIONS = MappingProxyType({"init_std": 0.5, "step_size": 1e4, "perturb_observations": True})

STRATEGY_CASES = [
    Case(
        "openai_es",
        lambda: esjax.openai_es(population_size=16, sigma=0.1, learning_rate=0.05),
        300,
        1e-2,
    ),
    # CMA-ES and sep-CMA-ES (λ = 8) pass 1e-6 around generation 50 on this sphere.
    Case("cma_es", lambda: esjax.cma_es(num_dims=NUM_DIMS, sigma=0.5), 100, 1e-6),
    Case("sep_cma_es", lambda: esjax.sep_cma_es(num_dims=NUM_DIMS, sigma=0.5), 100, 1e-6),
    # SA (16 chains, nearly greedy) passes 1e-2 at generation ~90; PSO (16 particles, ring)
    # passes 1e-4 at ~50.
    Case(
        "simulated_annealing",
        lambda: esjax.simulated_annealing(
            population_size=16, initial_temperature=1e-3, step_size=0.3
        ),
        300,
        1e-2,
    ),
    Case("pso", lambda: esjax.pso(population_size=16), 150, 1e-6),
    Case(
        "eki",
        lambda: esjax.eki(ensemble_size=8, **EKI_OPTIONS),
        20,
        1e-4,
        fitness=shifted_residuals,
        valley=rosenbrock_residuals,
        problem="rosenbrock_residuals",
        size_argument="ensemble_size",
        options=EKI_OPTIONS,
        # Sharded runs compile ask/tell into another program, so ulp differences appear (the
        # padded population of 10); EKI magnifies them: its ensemble collapses to ~1e-3 of
        # |u|, so an ulp of u is ~1e-4 of an anomaly. (The Kalman step's SVD no longer lets
        # the long step amplify rounding through the Gram matrix; see
        # tests/test_eki.py::test_kalman_step_stays_bounded_for_large_residuals.) Measured
        # after 20 generations: 2.2e-6 on the members (|u| ~ 1), 8e-8 on a spread of 4e-3,
        # 5e-9 on a best misfit of 1.2e-5 (4e-4 relative: the best misfit still needs the
        # atol); with the Gram-matrix eigh it was 3.3e-5, 1.8e-6 and 2e-8. A different
        # trajectory (key, member order) differs by the perturbations' 1e-2 per generation.
        sharded_tolerance=(1e-4, 1e-5),
    ),
    # Budgets below: measured generations to the target on this sphere, with about 2x margin.
    Case("nelder_mead", lambda: esjax.nelder_mead(num_dims=NUM_DIMS), 200, 1e-6),
    Case(
        "differential_evolution",
        lambda: esjax.differential_evolution(population_size=16),
        150,
        1e-6,
    ),
    Case(
        "simple_ga",
        lambda: esjax.simple_ga(population_size=16, sigma=0.05),
        100,
        1e-2,
        options=MappingProxyType({"sigma": 0.05}),
    ),
    Case(
        "random_search",
        lambda: esjax.random_search(population_size=16, sigma=1.0),
        200,
        0.3,
    ),
    Case(
        "hill_climbing",
        lambda: esjax.hill_climbing(population_size=8, sigma=0.5),
        150,
        1e-6,
        options=MappingProxyType({"sigma": 0.5}),
    ),
    Case(
        "lm_ma_es",
        lambda: esjax.lm_ma_es(num_dims=NUM_DIMS, sigma=0.5),
        100,
        1e-6,
        options=MappingProxyType({"sigma": 0.5}),
    ),
    Case("pgpe", lambda: esjax.pgpe(population_size=16), 100, 1e-2),
    Case("snes", lambda: esjax.snes(num_dims=NUM_DIMS, sigma=0.5), 100, 1e-6),
    Case("xnes", lambda: esjax.xnes(num_dims=NUM_DIMS, sigma=0.5), 150, 1e-6),
    Case(
        "low_rank_es",
        lambda: esjax.low_rank_es(population_size=16, sigma=0.1, learning_rate=0.05),
        300,
        1e-2,
    ),
]
