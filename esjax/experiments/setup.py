"""Config ``problem`` sections → fitness functions and initial solutions.

``PROBLEMS`` maps a problem name to a builder ``(kwargs, key) -> ProblemSetup``; tasks beyond the
classic functions (Flax models on data, control) register builders here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from esjax.base import check_int
from esjax.experiments.resolve import resolve_callable
from esjax.experiments.schema import check_keys
from esjax.problems.functions import FUNCTIONS, make_problem
from esjax.tasks.problems import TASK_PROBLEMS


class ProblemSetup(NamedTuple):
    """What a run needs from its problem.

    Attributes:
      fitness_fn: scores one member shaped like ``x0`` (minimised).
      x0: the initial solution (flat vector or pytree).
      fitness_takes_key: whether ``fitness_fn`` takes a per-generation key.
      report: ``best_params -> dict`` of final numbers for ``summary.json`` (e.g. test accuracy).
    """

    fitness_fn: Callable
    x0: Any
    fitness_takes_key: bool = False
    report: Callable[[Any], dict] | None = None


def build_function_problem(
    name: str,
    key: jax.Array,
    num_dims: int,
    x0: float | list[float] = 1.0,
    shift_scale: float = 0.0,
    rotate: bool = False,
) -> ProblemSetup:
    """A classic test function from :mod:`esjax.problems.functions`.

    ``x0`` is a scalar (filled to ``num_dims``) or a list of ``num_dims`` numbers.
    """
    problem = make_problem(name, num_dims, key=key, shift_scale=shift_scale, rotate=rotate)
    start = jnp.asarray(x0, jnp.float32)
    if start.ndim > 1 or (start.ndim == 1 and start.shape[0] != problem.num_dims):
        raise ValueError(
            f"problem.x0 must be a number or a list of num_dims={problem.num_dims} numbers, got "
            f"{x0!r}"
        )
    start = jnp.broadcast_to(start, (problem.num_dims,))

    def report(best_solution) -> dict:
        return {"distance_to_optimum": float(jnp.linalg.norm(best_solution - problem.x_opt))}

    return ProblemSetup(fitness_fn=problem.fitness, x0=start, report=report)


PROBLEMS: dict[str, Callable[..., ProblemSetup]] = {
    name: (lambda key, _name=name, **kwargs: build_function_problem(_name, key, **kwargs))
    for name in FUNCTIONS
}
_PROBLEM_SIGNATURES: dict[str, Callable] = {name: build_function_problem for name in FUNCTIONS}
# Flax models on data and control tasks; their builders return esjax.tasks.TaskProblem, which
# has ProblemSetup's fields.
PROBLEMS.update(TASK_PROBLEMS)
_PROBLEM_SIGNATURES.update(TASK_PROBLEMS)


def build_callable_problem(
    key: jax.Array,
    function: str,
    num_dims: int | None = None,
    x0: float | list[float] = 1.0,
    fitness_takes_key: bool = False,
    config_dir: str | None = None,
) -> ProblemSetup:
    """Your own objective: ``function: "module:attribute"`` scores one flat ``(num_dims,)``
    member and returns a scalar to minimise (``fitness_fn(x, key)`` with ``fitness_takes_key``).

    ``x0`` is a number (filled to ``num_dims``) or a list of numbers (``num_dims`` optional then).
    """
    del key
    fitness_fn = resolve_callable(function, "problem.function", config_dir)
    start = jnp.asarray(x0, jnp.float32)
    if start.ndim == 0:
        if num_dims is None:
            raise ValueError("problem.num_dims is required when problem.x0 is a number")
        start = jnp.full((check_int("problem.num_dims", num_dims, 1),), start)
    elif start.ndim > 1 or (num_dims is not None and start.shape[0] != num_dims):
        raise ValueError(
            f"problem.x0 must be a number or a list of num_dims={num_dims} numbers, got {x0!r}"
        )
    if not isinstance(fitness_takes_key, bool):
        raise TypeError(
            f"problem.fitness_takes_key must be true or false, got {fitness_takes_key!r}"
        )
    return ProblemSetup(fitness_fn=fitness_fn, x0=start, fitness_takes_key=fitness_takes_key)


def register_problem(name: str, builder: Callable[..., ProblemSetup]) -> None:
    """Register ``builder(key, **kwargs) -> ProblemSetup`` under ``name`` for configs."""
    PROBLEMS[name] = builder
    _PROBLEM_SIGNATURES[name] = builder


def check_problem_section(section: dict) -> tuple[str, dict]:
    """``(name, builder arguments)`` of a config's ``problem`` section, its name and keys
    checked without building anything (configs call it when they are parsed, so a typo fails
    before a run folder is made); unknown names/keys list the valid ones."""
    if ("name" in section) == ("function" in section):
        raise ValueError(
            "config section 'problem' needs exactly one of 'name' (a built-in problem) or "
            "'function' (your own, 'module:attribute')"
        )
    if "function" in section:
        section = {"name": "function", **section}
    name = section.get("name")
    if name not in PROBLEMS:
        raise ValueError(f"problem.name must be one of {sorted(PROBLEMS)}, got {name!r}")
    kwargs = {k: v for k, v in section.items() if k != "name"}
    valid = [
        p
        for p in inspect.signature(_PROBLEM_SIGNATURES[name]).parameters
        if p not in ("name", "key", "config_dir")
    ]
    check_keys(f"problem {name!r}", kwargs, valid)
    return name, kwargs


def build_problem(section: dict, key: jax.Array, config_dir: str | None = None) -> ProblemSetup:
    """Build the problem a config section names (or ``function:``, your own objective, searched
    from ``config_dir``); unknown names/keys list the valid ones."""
    name, kwargs = check_problem_section(section)
    if name == "function":
        kwargs = {**kwargs, "config_dir": config_dir}
    return PROBLEMS[name](key, **kwargs)


register_problem("function", build_callable_problem)


__all__ = [
    "PROBLEMS",
    "ProblemSetup",
    "build_callable_problem",
    "build_function_problem",
    "build_problem",
    "check_problem_section",
    "register_problem",
]
