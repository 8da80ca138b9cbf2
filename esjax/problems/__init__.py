"""Test problems: classic functions (``functions``) and COCO's BBOB suite (``bbob``); supervised
and control tasks live beside."""

from esjax.problems import bbob
from esjax.problems.bbob import BBOBProblem, bbob_function
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
    "BBOBProblem",
    "FUNCTIONS",
    "Problem",
    "ackley",
    "bbob",
    "bbob_function",
    "ellipsoid",
    "make_problem",
    "random_rotation",
    "rastrigin",
    "rosenbrock",
    "sphere",
]
