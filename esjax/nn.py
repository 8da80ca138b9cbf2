"""Flax models as population fitness functions: one vmapped ``apply`` over a flat population.

A :class:`FlaxModel` holds a model's ``apply(params, inputs)``, its initial parameters and the
:class:`~esjax.flatten.FlatSpec` that maps a flat ``(num_params,)`` vector to those parameters,
for either API:

- ``flax.linen``: :func:`from_linen` (``module.init`` / ``module.apply``);
- ``flax.nnx``: :func:`from_nnx` (``nnx.split`` into graphdef, ``nnx.Param`` state and the rest;
  only the parameters are searched, other state is held fixed).

A fitness function scores **one** member (its parameters pytree) on a data set; the loop
(:func:`esjax.loop.evaluate_population`) vmaps it over the population, so a generation is one
batched ``apply``: for a dense layer, ``x @ W_i`` for all members ``i`` is a single batched matmul,
with no Python loop. ``batch_size`` there evaluates the population in chunks to cap activation
memory (``population × examples × width`` floats per layer).

:func:`dataset_fitness` returns a :class:`DatasetFitness`: such a function, which also keeps its
model, loss and data. That is what selects the fused population forward of low-rank ES
(:mod:`esjax.lowrank`: shared ``x W`` plus per-member low-rank terms, no member weights) when
the generation is built by :func:`esjax.lowrank.make_generation`; a plain black-box fitness
function, or any other strategy, is evaluated member by member as above.

Losses (all minimised, all means over examples):

- ``cross_entropy``: softmax cross-entropy of logits against integer labels;
- ``mse``: mean squared error (integer labels are one-hot encoded against the outputs);
- ``zero_one``: the 0-1 error ``mean(argmax(logits) != label)``: piecewise constant, so its
  gradient is zero almost everywhere; gradient-free methods can still optimise it.

Activations for :class:`MLP` include ``step`` (Heaviside, zero gradient almost everywhere: a
network gradients cannot train through) and ``step_straight_through``: the same forward values,
with the straight-through estimator of Bengio, Léonard & Courville, "Estimating or Propagating
Gradients Through Stochastic Neurons for Conditional Computation", 2013, arXiv:1308.3432, whose
backward pass uses the derivative of the hard sigmoid ``clip((x + 1) / 2, 0, 1)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen, nnx

from esjax.base import check_int
from esjax.flatten import FlatSpec, flatten
from esjax.loop import evaluate_population

PyTree = Any


@jax.custom_jvp
def step(x: jax.Array) -> jax.Array:
    """Heaviside step ``1[x > 0]``; its derivative is zero wherever it is defined."""
    return (x > 0).astype(x.dtype)


@step.defjvp
def _step_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return step(x), jnp.zeros_like(dx)


@jax.custom_jvp
def step_straight_through(x: jax.Array) -> jax.Array:
    """Heaviside step forward; straight-through (hard-sigmoid) derivative backward."""
    return (x > 0).astype(x.dtype)


@step_straight_through.defjvp
def _step_straight_through_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # d/dx clip((x + 1) / 2, 0, 1): a surrogate slope, so the forward values stay exactly 0/1.
    slope = jnp.where(jnp.abs(x) <= 1.0, 0.5, 0.0).astype(x.dtype)
    return step_straight_through(x), slope * dx


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "step": step,
    "step_straight_through": step_straight_through,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation registered under ``name`` (ValueError listing the valid names otherwise)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class MLP(linen.Module):
    """A ``flax.linen`` multilayer perceptron: Dense → activation, repeated, then a Dense head.

    ``hidden=()`` gives a linear model.
    """

    hidden: tuple[int, ...] = (32,)
    num_outputs: int = 10
    activation: str = "tanh"

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        activation = get_activation(self.activation)
        for width in self.hidden:
            x = activation(linen.Dense(width)(x))
        return linen.Dense(self.num_outputs)(x)


class NnxMLP(nnx.Module):
    """The ``flax.nnx`` twin of :class:`MLP` (same layers, same flat parameter order)."""

    def __init__(
        self,
        num_inputs: int,
        hidden: Sequence[int],
        num_outputs: int,
        activation: str = "tanh",
        *,
        rngs: nnx.Rngs,
    ):
        sizes = [num_inputs, *hidden, num_outputs]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        get_activation(activation)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        activation = get_activation(self.activation)
        for layer in self.layers[:-1]:
            x = activation(layer(x))
        return self.layers[-1](x)


@dataclasses.dataclass(frozen=True)
class FlaxModel:
    """A Flax model as a function of its parameters, with a flat view of them.

    Attributes:
      apply: ``(params, inputs) -> outputs`` with ``params`` shaped like :attr:`params`.
      params: the initial parameters (a pytree); pass it to ``es.init`` as ``x0``.
      spec: maps a flat ``(num_params,)`` vector to a ``params`` pytree.
    """

    apply: Callable[[PyTree, jax.Array], jax.Array]
    params: PyTree
    spec: FlatSpec

    @property
    def num_params(self) -> int:
        return self.spec.num_dims

    @property
    def x0(self) -> jax.Array:
        """The initial parameters as one flat ``(num_params,)`` vector."""
        return flatten(self.params)[0]

    def apply_flat(self, vector: jax.Array, inputs: jax.Array) -> jax.Array:
        """``apply`` for a flat ``(num_params,)`` parameter vector."""
        return self.apply(self.spec.unflatten(vector), inputs)


def from_linen(module: linen.Module, key: jax.Array, sample_inputs: jax.Array) -> FlaxModel:
    """Wrap a ``flax.linen`` module: ``params = module.init(key, sample_inputs)``."""
    params = module.init(key, sample_inputs)
    return FlaxModel(apply=module.apply, params=params, spec=flatten(params)[1])


def from_nnx(module: nnx.Module) -> FlaxModel:
    """Wrap a ``flax.nnx`` module; its ``nnx.Param`` variables are the searched parameters.

    Other state (batch statistics, RNG counters) is held at its current value.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply(params: PyTree, inputs: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(inputs)

    return FlaxModel(apply=apply, params=params, spec=flatten(params)[1])


def mlp(
    num_inputs: int,
    num_outputs: int,
    hidden: Sequence[int] = (32,),
    activation: str = "tanh",
    *,
    key: jax.Array,
    api: str = "linen",
) -> FlaxModel:
    """An :class:`MLP` (``api="linen"``) or :class:`NnxMLP` (``api="nnx"``) as a FlaxModel.

    ``key`` seeds the initial parameters (LeCun-normal weights, zero biases).
    """
    hidden = tuple(int(width) for width in hidden)
    get_activation(activation)
    if api == "linen":
        module = MLP(hidden=hidden, num_outputs=num_outputs, activation=activation)
        return from_linen(module, key, jnp.zeros((1, num_inputs)))
    if api == "nnx":
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        return from_nnx(NnxMLP(num_inputs, hidden, num_outputs, activation, rngs=nnx.Rngs(seed)))
    raise ValueError(f"api must be 'linen' or 'nnx', got {api!r}")


def cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits ``(n, classes)`` against int ``labels`` ``(n,)``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, labels))


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error; integer class labels are one-hot encoded to ``outputs``' width."""
    if jnp.issubdtype(targets.dtype, jnp.integer) and targets.ndim == outputs.ndim - 1:
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.mean(jnp.square(outputs - targets.reshape(outputs.shape)))


def zero_one_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction misclassified, ``mean(argmax(outputs) != labels)``: gradient zero a.e."""
    return jnp.mean(jnp.argmax(outputs, axis=-1) != labels).astype(outputs.dtype)


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction classified correctly (``1 - zero_one_error``)."""
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


def _one_hot_like(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    return jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)


def softmax_residual(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Residual **vector** ``softmax(outputs) - one_hot(labels)``, flattened to ``(n·classes,)``.

    For :func:`esjax.eki`, which fits predictions to targets in least squares (Kovachki & Stuart
    2019 use this form for classification); not a scalar loss.
    """
    return (jax.nn.softmax(outputs, axis=-1) - _one_hot_like(outputs, labels)).ravel()


def output_residual(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Residual **vector** ``outputs - one_hot(labels)`` of the raw outputs, flattened (for EKI)."""
    return (outputs - _one_hot_like(outputs, labels)).ravel()


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "zero_one": zero_one_error,
}

# Losses that return a residual vector per member instead of a scalar: only strategies whose
# ``tell`` takes residuals (EKI) can train on them; accepted by :func:`get_loss` like the rest.
RESIDUAL_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax_residual": softmax_residual,
    "output_residual": output_residual,
}


def check_loss_kind(loss: str | Callable, *, takes_residuals: bool, where: str) -> None:
    """Refuse a residual loss for a scalar-fitness method, and a scalar loss for EKI.

    ``where`` names the parameter in the message (e.g. ``"method 'adam' loss"``); callables are
    not checked (their output shape is the caller's business).
    """
    if callable(loss):
        return
    if takes_residuals and loss not in RESIDUAL_LOSSES:
        raise ValueError(
            f"{where}: EKI fits residual vectors, so the loss must be one of "
            f"{sorted(RESIDUAL_LOSSES)}, got {loss!r}"
        )
    if not takes_residuals and loss in RESIDUAL_LOSSES:
        raise ValueError(
            f"{where}: {loss!r} is a residual vector, which only EKI can train on; use one of "
            f"{sorted(LOSSES)}"
        )


def get_loss(loss: str | Callable) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A loss by name from :data:`LOSSES` or :data:`RESIDUAL_LOSSES`, or ``loss`` if callable."""
    if callable(loss):
        return loss
    known = {**LOSSES, **RESIDUAL_LOSSES}
    if loss not in known:
        raise ValueError(f"loss must be one of {sorted(known)} or a callable, got {loss!r}")
    return known[loss]


def minibatch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """``(batch_size,)`` example indices drawn uniformly with replacement from ``key``.

    ES fitness and the gradient baseline both draw their minibatches with this function.
    """
    return jax.random.randint(key, (batch_size,), 0, num_examples)


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetFitness:
    """The loss of a :class:`FlaxModel` on a data set, as a fitness function that also says
    what it computes (made by :func:`dataset_fitness`).

    Called as ``fitness(params, key=None)`` it scores one member, like any fitness function.
    Because it keeps the model, loss and data, a driver can also evaluate a whole population
    another way: :func:`esjax.lowrank.make_generation` runs low-rank ES on it with the fused
    population forward (shared ``x W`` plus per-member low-rank terms, no member weights);
    every other strategy, and low-rank ES through ``ask``/``tell``, calls it member by member.

    Attributes:
      model: the :class:`FlaxModel`.
      loss_fn: ``(outputs, targets) -> loss`` (from :func:`get_loss`).
      inputs, targets: the data set.
      batch_size: examples per minibatch, or None for the whole set.
    """

    model: FlaxModel
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    inputs: jax.Array
    targets: jax.Array
    batch_size: int | None = None

    def batch(self, key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """``(inputs, targets)`` of the minibatch ``key`` draws (all of the data for None)."""
        if key is None or self.batch_size is None:
            return self.inputs, self.targets
        index = minibatch_indices(key, self.inputs.shape[0], self.batch_size)
        return self.inputs[index], self.targets[index]

    def __call__(self, params: PyTree, key: jax.Array | None = None) -> jax.Array:
        inputs, targets = self.batch(key)
        return self.loss_fn(self.model.apply(params, inputs), targets)


def dataset_fitness(
    model: FlaxModel,
    loss: str | Callable,
    inputs: jax.Array,
    targets: jax.Array,
    batch_size: int | None = None,
) -> DatasetFitness:
    """``fitness(params, key=None) -> scalar`` loss of one member, minimised.

    With a ``key`` and ``batch_size``, the loss is on the minibatch :func:`minibatch_indices`
    draws from that key; run it with ``fitness_takes_key=True`` so all members of a generation
    share the key, hence the minibatch. Without a key it is the loss on all of ``inputs``.
    With a loss from :data:`RESIDUAL_LOSSES` it returns that residual vector instead (for EKI).

    The result is a :class:`DatasetFitness`: a plain fitness function for every strategy, and
    the description :func:`esjax.lowrank.make_generation` needs to evaluate low-rank ES's
    population without materialising member weights.
    """
    loss_fn = get_loss(loss)
    inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    return DatasetFitness(model, loss_fn, inputs, targets, batch_size)


def population_fitness(
    model: FlaxModel,
    loss: str | Callable,
    population: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    *,
    batch_size: int | None = None,
) -> jax.Array:
    """Loss of every row of a flat ``(population_size, num_params)`` population on the data.

    One vmapped ``apply`` (or ``lax.map`` over chunks of ``batch_size`` members).

    Returns:
      ``(population_size,)`` losses, minimised.
    """
    fitness = dataset_fitness(model, loss, inputs, targets)
    return evaluate_population(fitness, population, model.spec, batch_size=batch_size)


def evaluate_classifier(
    model: FlaxModel, params: PyTree, inputs: jax.Array, labels: jax.Array
) -> dict[str, jax.Array]:
    """``{"loss": cross-entropy, "accuracy": ...}`` of one parameter set on a labelled set."""
    outputs = model.apply(params, inputs)
    return {"loss": cross_entropy(outputs, labels), "accuracy": accuracy(outputs, labels)}


def population_apply(
    model: FlaxModel,
    population: jax.Array,
    inputs: jax.Array,
    *,
    population_chunk: int | None = None,
    dtype: Any = None,
) -> jax.Array:
    """``model``'s outputs for every member of a flat population on the same ``inputs``.

    Row ``i`` of ``population`` (``(population_size, num_params)``) holds member ``i``'s
    parameters, unflattened with ``model.spec``; the result stacks ``model.apply(params_i,
    inputs)`` into ``(population_size, *output_shape)``.

    Memory. A vmapped ``apply`` holds every member's activations at once, ``population ×
    examples × width`` floats per layer; a convolution whose kernel is batched over members
    becomes one grouped convolution with ``population × features`` channels (about 5 GB for the
    first layer of an 8-filter ConvNet with population 256 on 1,024 28×28 images).
    ``population_chunk = c`` evaluates ``c`` members at a time (``lax.map`` over chunks, each one
    vmapped ``apply``), which divides that peak by ``population_size / c`` and keeps a chunk's
    activations closer to cache; ``population_size`` need not be a multiple of ``c``.

    Precision. ``dtype`` (e.g. ``jnp.bfloat16``) casts the parameters and floating inputs for
    the forward pass, halving its memory traffic; outputs are cast back to the population's
    dtype, so losses are still computed in it.

    Args:
      model: a :class:`FlaxModel`.
      population: ``(population_size, num_params)`` flat parameter vectors.
      inputs: one batch, shared by every member, as ``model.apply`` takes it.
      population_chunk: members per chunk (>= 1); None evaluates all at once.
      dtype: forward-pass dtype; None keeps the parameters' own dtypes.

    Returns:
      ``(population_size, *output_shape)`` outputs in ``population.dtype``.

    Example:
      >>> logits = population_apply(model, population, images, population_chunk=32)
    """
    if population_chunk is not None:
        population_chunk = check_int("population_chunk", population_chunk, 1)
    if population.ndim != 2 or population.shape[1] != model.num_params:
        raise ValueError(
            f"population must have shape (population_size, {model.num_params}), got "
            f"{population.shape}"
        )
    output_dtype = population.dtype

    def cast(leaf: jax.Array) -> jax.Array:
        floating = dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating)
        return leaf.astype(dtype) if floating else leaf

    inputs = jax.tree_util.tree_map(cast, inputs)

    def member(vector: jax.Array) -> jax.Array:
        params = jax.tree_util.tree_map(cast, model.spec.unflatten(vector))
        return model.apply(params, inputs).astype(output_dtype)

    if population_chunk is None or population_chunk >= population.shape[0]:
        return jax.vmap(member)(population)
    return jax.lax.map(member, population, batch_size=population_chunk)


__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "DatasetFitness",
    "MLP",
    "RESIDUAL_LOSSES",
    "FlaxModel",
    "NnxMLP",
    "accuracy",
    "check_loss_kind",
    "cross_entropy",
    "dataset_fitness",
    "evaluate_classifier",
    "from_linen",
    "from_nnx",
    "get_activation",
    "get_loss",
    "minibatch_indices",
    "mlp",
    "mse",
    "output_residual",
    "population_apply",
    "population_fitness",
    "softmax_residual",
    "step",
    "step_straight_through",
]
