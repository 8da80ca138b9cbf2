"""Test problems: classic functions (``functions``); supervised and control tasks live beside."""

from esjax.problems.functions import (
    FUNCTIONS,
    Problem,
    ackley,
    ellipsoid,
    make_problem,
    random_rotation,
    rastrigin,
    rosenbrock,
    sphere,
)

__all__ = [
    "FUNCTIONS",
    "Problem",
    "ackley",
    "ellipsoid",
    "make_problem",
    "random_rotation",
    "rastrigin",
    "rosenbrock",
    "sphere",
]
