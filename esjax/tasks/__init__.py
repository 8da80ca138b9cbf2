"""Tasks for Flax models: supervised data sets (digits, arrays, MNIST) and control (CartPole,
Pendulum), plus the config problem builders that turn them into fitness functions."""

from esjax.tasks import control, supervised
from esjax.tasks.control import Env, control_fitness, episode_return, make_env, mean_return
from esjax.tasks.problems import TASK_PROBLEMS, TaskProblem, supervised_problem
from esjax.tasks.supervised import Dataset, from_arrays, load_dataset, load_digits, load_mnist

__all__ = [
    "TASK_PROBLEMS",
    "Dataset",
    "Env",
    "TaskProblem",
    "control",
    "control_fitness",
    "episode_return",
    "from_arrays",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "make_env",
    "mean_return",
    "supervised",
    "supervised_problem",
]
