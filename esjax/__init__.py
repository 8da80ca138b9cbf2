"""esjax: gradient-free training in JAX — evolution strategies and nature-inspired optimisers
as pure functions, jitted and vmapped over whole populations, on test functions or Flax models.

Every strategy minimises. See the README for the ask/tell loop and ``esjax.run``.
"""

from esjax import problems, shaping
from esjax.base import Strategy, StrategyState
from esjax.flatten import FlatSpec, flatten
from esjax.loop import evaluate_population, run, step
from esjax.strategies import STRATEGIES, get_strategy, openai_es

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "FlatSpec",
    "Strategy",
    "StrategyState",
    "evaluate_population",
    "flatten",
    "get_strategy",
    "openai_es",
    "problems",
    "run",
    "shaping",
    "step",
]
