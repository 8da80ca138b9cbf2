"""One module per algorithm; ``STRATEGIES`` maps config names to factories."""

from collections.abc import Callable

from esjax.base import Strategy
from esjax.strategies.openai_es import openai_es

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "openai_es": openai_es,
}


def get_strategy(name: str) -> Callable[..., Strategy]:
    """The factory registered under ``name`` (ValueError listing the valid names otherwise)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy name must be one of {sorted(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "get_strategy", "openai_es"]
