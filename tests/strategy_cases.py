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
]
