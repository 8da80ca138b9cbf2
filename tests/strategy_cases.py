"""The table of strategies every cross-cutting test runs over (one row per strategy).

Each row is ``(id, factory, sphere_budget, sphere_target)``: ``factory()`` builds a small
instance for ``NUM_DIMS``-dimensional problems; the strategy must bring the sphere from
``x0 = ones`` (f = 4) below ``sphere_target`` within ``sphere_budget`` generations.
Tests for the strategy table, determinism, multi-device runs and checkpoints import this list,
so a new strategy is covered everywhere by adding its row here.
"""

import esjax

NUM_DIMS = 4

STRATEGY_CASES = [
    (
        "openai_es",
        lambda: esjax.openai_es(population_size=16, sigma=0.1, learning_rate=0.05),
        300,
        1e-2,
    ),
    # CMA-ES and sep-CMA-ES (λ = 8) pass 1e-6 around generation 50 on this sphere.
    ("cma_es", lambda: esjax.cma_es(num_dims=NUM_DIMS, sigma=0.5), 100, 1e-6),
    ("sep_cma_es", lambda: esjax.sep_cma_es(num_dims=NUM_DIMS, sigma=0.5), 100, 1e-6),
    # SA (16 chains, nearly greedy) passes 1e-2 at generation ~90; PSO (16 particles, ring)
    # passes 1e-4 at ~50.
    (
        "simulated_annealing",
        lambda: esjax.simulated_annealing(
            population_size=16, initial_temperature=1e-3, step_size=0.3
        ),
        300,
        1e-2,
    ),
    ("pso", lambda: esjax.pso(population_size=16), 150, 1e-6),
]
