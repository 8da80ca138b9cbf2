"""esjax: gradient-free training in JAX — evolution strategies and nature-inspired optimisers
as pure functions, jitted and vmapped over whole populations, on test functions or Flax models.

Every strategy minimises. See the README for the ask/tell loop and ``esjax.run``.
"""

from esjax import (
    baselines,
    checkpoint,
    distributed,
    lowrank,
    nn,
    prng,
    problems,
    restarts,
    shaping,
    tasks,
)
from esjax.base import Capabilities, Decomposition, Strategy, StrategyState, make_strategy
from esjax.driver import evolve, run, step
from esjax.estimators import es_gradient
from esjax.flatten import FlatSpec, flatten
from esjax.loop import evaluate_population
from esjax.optimize import MinimizeResult, minimize
from esjax.restarts import bipop, ipop
from esjax.strategies import (
    STRATEGIES,
    cma_es,
    differential_evolution,
    eki,
    get_strategy,
    hill_climbing,
    lm_ma_es,
    low_rank_es,
    nelder_mead,
    openai_es,
    pgpe,
    pso,
    random_search,
    sep_cma_es,
    simple_ga,
    simulated_annealing,
    snes,
    xnes,
)

__version__ = "0.2.0"

__all__ = [
    "STRATEGIES",
    "Capabilities",
    "Decomposition",
    "FlatSpec",
    "MinimizeResult",
    "Strategy",
    "StrategyState",
    "baselines",
    "bipop",
    "checkpoint",
    "cma_es",
    "differential_evolution",
    "distributed",
    "es_gradient",
    "eki",
    "evaluate_population",
    "evolve",
    "flatten",
    "get_strategy",
    "hill_climbing",
    "ipop",
    "lm_ma_es",
    "low_rank_es",
    "lowrank",
    "make_strategy",
    "minimize",
    "nelder_mead",
    "nn",
    "openai_es",
    "pgpe",
    "problems",
    "prng",
    "pso",
    "random_search",
    "restarts",
    "run",
    "sep_cma_es",
    "simple_ga",
    "shaping",
    "simulated_annealing",
    "snes",
    "step",
    "tasks",
    "xnes",
]
