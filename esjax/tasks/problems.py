"""Config problem builders for tasks: ``digits_mlp``, ``mnist_mlp``, ``cartpole``, ``pendulum``.

Each builder is ``(key, **kwargs) -> TaskProblem``; ``esjax.experiments.setup`` registers them so
``esjax run`` configs can name them. ``key`` seeds the model's initial parameters. ``TaskProblem``
has the fields of ``esjax.experiments.setup.ProblemSetup`` (tasks sit below the experiments
layer, so they do not import it). ``report`` takes a flat parameter vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from esjax import nn
from esjax.tasks import control
from esjax.tasks.supervised import Dataset, load_digits, load_mnist


class TaskProblem(NamedTuple):
    """``fitness_fn(params, key=None)``, ``x0`` (a params pytree), ``fitness_takes_key``,
    ``report(flat_vector) -> dict``."""

    fitness_fn: Callable
    x0: Any
    fitness_takes_key: bool = True
    report: Callable[[jax.Array], dict] | None = None


def supervised_problem(
    dataset: Dataset,
    key: jax.Array,
    hidden: Sequence[int] = (32,),
    activation: str = "tanh",
    loss: str = "cross_entropy",
    batch_size: int | None = 256,
    api: str = "linen",
) -> TaskProblem:
    """An MLP classifier on ``dataset``: minibatch ``loss`` as fitness, test metrics as report."""
    model = nn.mlp(dataset.num_features, dataset.num_classes, hidden, activation, key=key, api=api)
    fitness = nn.dataset_fitness(model, loss, dataset.x_train, dataset.y_train, batch_size)

    @jax.jit
    def metrics(vector):
        params = model.spec.unflatten(vector)
        test = nn.evaluate_classifier(model, params, dataset.x_test, dataset.y_test)
        train = nn.evaluate_classifier(model, params, dataset.x_train, dataset.y_train)
        return {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "train_accuracy": train["accuracy"],
        }

    def report(vector: jax.Array) -> dict:
        values = {name: float(value) for name, value in metrics(vector).items()}
        return {**values, "num_params": model.num_params}

    return TaskProblem(fitness, model.params, batch_size is not None, report)


def digits_mlp(
    key: jax.Array,
    hidden: Sequence[int] = (32,),
    activation: str = "tanh",
    loss: str = "cross_entropy",
    batch_size: int | None = 256,
    test_fraction: float = 0.2,
    data_seed: int = 0,
    api: str = "linen",
) -> TaskProblem:
    """An MLP on scikit-learn's bundled 8×8 digits (see :func:`supervised_problem`)."""
    dataset = load_digits(test_fraction=test_fraction, seed=data_seed)
    return supervised_problem(dataset, key, hidden, activation, loss, batch_size, api)


def mnist_mlp(
    key: jax.Array,
    path: str,
    hidden: Sequence[int] = (64,),
    activation: str = "tanh",
    loss: str = "cross_entropy",
    batch_size: int | None = 256,
    api: str = "linen",
) -> TaskProblem:
    """An MLP on MNIST read from ``path`` (see :func:`esjax.tasks.supervised.load_mnist`)."""
    dataset = load_mnist(path)
    return supervised_problem(dataset, key, hidden, activation, loss, batch_size, api)


def control_problem(
    env_name: str,
    key: jax.Array,
    hidden: Sequence[int],
    activation: str,
    num_episodes: int,
    backend: str,
) -> TaskProblem:
    """A policy network on a control task: fitness ``-mean return``, report on 32 new episodes."""
    env = control.make_env(env_name, backend)
    model = nn.mlp(env.observation_size, env.action_size, hidden, activation, key=key, api="linen")
    fitness = control.control_fitness(env, model, num_episodes)
    evaluate = jax.jit(
        lambda vector: control.mean_return(
            env, model, model.spec.unflatten(vector), jax.random.key(12345), 32
        )
    )

    def report(vector: jax.Array) -> dict:
        return {"mean_return_32_episodes": float(evaluate(vector)), "num_params": model.num_params}

    return TaskProblem(fitness, model.params, True, report)


def cartpole(
    key: jax.Array,
    hidden: Sequence[int] = (),
    activation: str = "tanh",
    num_episodes: int = 8,
    backend: str = "jax",
) -> TaskProblem:
    """CartPole-v1; the default policy is linear (4 → 2 logits, 10 parameters)."""
    return control_problem("CartPole-v1", key, hidden, activation, num_episodes, backend)


def pendulum(
    key: jax.Array,
    hidden: Sequence[int] = (16,),
    activation: str = "tanh",
    num_episodes: int = 8,
    backend: str = "jax",
) -> TaskProblem:
    """Pendulum-v1 with a small tanh MLP policy (torque = 2 tanh(output))."""
    return control_problem("Pendulum-v1", key, hidden, activation, num_episodes, backend)


TASK_PROBLEMS: dict[str, Callable[..., TaskProblem]] = {
    "digits_mlp": digits_mlp,
    "mnist_mlp": mnist_mlp,
    "cartpole": cartpole,
    "pendulum": pendulum,
}


__all__ = [
    "TASK_PROBLEMS",
    "TaskProblem",
    "cartpole",
    "control_problem",
    "digits_mlp",
    "mnist_mlp",
    "pendulum",
    "supervised_problem",
]
