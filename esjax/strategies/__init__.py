"""One module per algorithm; ``STRATEGIES`` maps config names to factories."""

from collections.abc import Callable

from esjax.base import Strategy
from esjax.strategies.cma_es import cma_es
from esjax.strategies.differential_evolution import differential_evolution
from esjax.strategies.eki import eki
from esjax.strategies.hill_climbing import hill_climbing
from esjax.strategies.lm_ma_es import lm_ma_es
from esjax.strategies.low_rank_es import low_rank_es
from esjax.strategies.nelder_mead import nelder_mead
from esjax.strategies.openai_es import openai_es
from esjax.strategies.pgpe import pgpe
from esjax.strategies.pso import pso
from esjax.strategies.random_search import random_search
from esjax.strategies.sep_cma_es import sep_cma_es
from esjax.strategies.simple_ga import simple_ga
from esjax.strategies.simulated_annealing import simulated_annealing
from esjax.strategies.snes import snes
from esjax.strategies.xnes import xnes

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "openai_es": openai_es,
    "pso": pso,
    "simulated_annealing": simulated_annealing,
    "eki": eki,
    "cma_es": cma_es,
    "sep_cma_es": sep_cma_es,
    "nelder_mead": nelder_mead,
    "differential_evolution": differential_evolution,
    "simple_ga": simple_ga,
    "random_search": random_search,
    "hill_climbing": hill_climbing,
    "lm_ma_es": lm_ma_es,
    "pgpe": pgpe,
    "snes": snes,
    "xnes": xnes,
    "low_rank_es": low_rank_es,
}


def get_strategy(name: str) -> Callable[..., Strategy]:
    """The factory registered under ``name`` (ValueError listing the valid names otherwise)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy name must be one of {sorted(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


__all__ = [
    "STRATEGIES",
    "cma_es",
    "differential_evolution",
    "eki",
    "get_strategy",
    "hill_climbing",
    "lm_ma_es",
    "low_rank_es",
    "nelder_mead",
    "openai_es",
    "pgpe",
    "pso",
    "random_search",
    "sep_cma_es",
    "simple_ga",
    "simulated_annealing",
    "snes",
    "xnes",
]
