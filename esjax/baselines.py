"""The optax gradient baseline, and the budgeted loop every method is timed with.

:func:`optax_trainer` trains a model by backpropagation with any optax optimizer (default Adam)
on the same fitness ES uses, ``loss_fn(params, key)``, where ``key`` picks the minibatch. Step
``t`` of a run with key ``K`` draws its minibatch from ``split(fold_in(K, t))[1]``, the same key
:func:`esjax.loop.make_generation` hands a fitness function in generation ``t``: with the same run
key and batch size, ES generation ``t`` and gradient step ``t`` see the same examples.

:func:`timed_run` drives both ES strategies and gradient trainers, so their budgets are measured
identically; it is the chunked driver ``esjax.run`` also runs (:func:`esjax.loop.run_chunks`),
with an evaluation row after each chunk:

- **wall-clock** of training only, excluding compilation (every scanned chunk is compiled ahead
  of time with ``jax.jit(...).lower(...).compile()``; compile time is reported separately) and
  excluding the periodic evaluation (the same for every method);
- **forward passes**: per-example network evaluations. ES: the strategy's own count of fitness
  evaluations (``state.evaluations``: ``population_size`` per generation for most strategies,
  what the sequential rule would have evaluated for Nelder-Mead) × the examples each member is
  scored on. Backpropagation: ``3 × batch_size`` per step, counting the backward pass as two
  forward passes (the usual cost estimate of reverse-mode differentiation of a matmul network);
- **steps**: generations or optimizer steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from esjax import nn
from esjax.base import check_int, check_range
from esjax.loop import Chunks, run_chunks
from esjax.tasks.supervised import Dataset

PyTree = Any

BACKWARD_COST_IN_FORWARDS = 2


@struct.dataclass
class GradientState:
    """Parameters, optimizer state and the number of completed steps."""

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array


class GradientTrainer(NamedTuple):
    """An optax training step as pure functions: ``init(params)``, ``step(key, state)``."""

    name: str
    init: Callable[[PyTree], GradientState]
    step: Callable[[jax.Array, GradientState], tuple[GradientState, dict]]


def optax_trainer(
    loss_fn: Callable[[PyTree, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation | None = None,
    name: str = "adam",
) -> GradientTrainer:
    """Backpropagation on ``loss_fn(params, key)`` (minimised) with an optax ``optimizer``.

    Args:
      loss_fn: the loss of one parameter set on the minibatch ``key`` selects (e.g. the
        fitness from :func:`esjax.nn.dataset_fitness`).
      optimizer: any optax transformation (default ``optax.adam(1e-3)``).
      name: label for reports.

    Returns:
      A :class:`GradientTrainer`; ``step(key, state) -> (state, {"loss", "grad_norm"})``.
    """
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer

    def init(params: PyTree) -> GradientState:
        return GradientState(
            params=params, opt_state=optimizer.init(params), step=jnp.array(0, jnp.int32)
        )

    def step(key: jax.Array, state: GradientState) -> tuple[GradientState, dict]:
        # The same split as esjax.loop.make_generation: ES generation t and step t share a batch.
        _, batch_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = GradientState(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return GradientTrainer(name=name, init=init, step=step)


class TimedRun(NamedTuple):
    """What :func:`timed_run` measured.

    Attributes:
      state: the final state.
      history: one dict per evaluation: ``step``, ``wall_clock_s`` (training only),
        ``forward_passes`` and whatever ``evaluate`` returned. Row 0 is the initial state.
      compile_seconds: time spent compiling the scanned chunks (not in ``wall_clock_s``).
      steps: steps actually run (fewer than asked if ``stop`` ended the run).
    """

    state: Any
    history: list[dict]
    compile_seconds: float
    steps: int


def timed_run(
    step_fn: Callable[[jax.Array, Any], tuple[Any, dict]],
    state: Any,
    key: jax.Array,
    num_steps: int,
    *,
    counter: Callable[[Any], jax.Array],
    evaluate: Callable[[Any], dict],
    eval_every: int,
    forward_passes_per_step: int,
    stop: Callable[[dict], bool] | None = None,
    progress: bool = True,
    description: str | None = None,
    history: list[dict] | None = None,
    on_chunk: Callable[[Any, list[dict], float], None] | None = None,
    count_forward_passes: Callable[[Any], int] | None = None,
    compiled: dict | None = None,
) -> TimedRun:
    """Run ``num_steps`` steps in AOT-compiled ``lax.scan`` chunks of ``eval_every`` steps.

    Step ``t`` gets ``fold_in(key, counter(state))`` (as in :func:`esjax.run`). After each chunk
    the state is evaluated (outside the timed region) and a history row is recorded.

    Resuming: pass the checkpointed ``state`` (``counter(state)`` steps done, a multiple of
    ``eval_every`` or the end) and the ``history`` recorded up to it; the run continues from
    there with the same keys and chunk boundaries as an uninterrupted run, and ``wall_clock_s``
    continues from the last row's.

    Args:
      step_fn: ``(key, state) -> (state, metrics)``: an ES generation
        (:func:`esjax.loop.make_generation`) or a :class:`GradientTrainer` step.
      state: the initial state.
      key: the run's key.
      num_steps: steps to run (>= 1).
      counter: ``state -> int`` completed steps (``state.generation`` or ``state.step``).
      evaluate: ``state -> dict`` of scalars (e.g. test accuracy); also run on the initial state.
      eval_every: steps per chunk between evaluations (>= 1).
      forward_passes_per_step: the per-step cost added to ``forward_passes``.
      stop: ``row -> bool``; ``True`` ends the run after that chunk (e.g. target reached).
      progress: show a tqdm bar.
      description: the bar's label.
      history: rows recorded before ``state`` (resuming); row 0 is then not re-evaluated.
      on_chunk: ``(state, history, compile_seconds) -> None`` called after every chunk's row
        (e.g. to save a checkpoint), outside the timed region.
      count_forward_passes: ``state -> int``, the forward passes spent up to ``state`` (e.g.
        ``state.evaluations × examples`` for a strategy whose evaluations per generation vary);
        default ``steps × forward_passes_per_step``. Read outside the timed region.
      compiled: a dict this call stores its compiled chunks in (keyed by chunk length) and takes
        them from when present (the ``cache`` of :class:`esjax.loop.Chunks`): pass the same dict
        to runs of the *same* ``step_fn`` from states of the same structure (e.g. the seeds of
        one method) to compile once; ``compile_seconds`` then counts only what this call
        compiled.
    """
    num_steps = check_int("num_steps", num_steps, 1)
    eval_every = check_int("eval_every", eval_every, 1)
    done = int(counter(state))
    consistent = (
        history is None
        if done == 0
        else bool(history)
        and history[-1]["step"] == done
        and (done % eval_every == 0 or done == num_steps)
    )
    if done > num_steps or not consistent:
        raise ValueError(
            f"cannot resume at step {done} of num_steps={num_steps} with "
            f"{'no' if not history else len(history)} history rows: resume from a state saved "
            f"by this run at an evaluation boundary (a multiple of eval_every={eval_every}), "
            "with the history recorded up to it"
        )

    chunks = Chunks(
        step_fn, key, counter=counter, metrics=False, ahead_of_time=True, cache=compiled
    )

    def row(state, steps: int, seconds: float) -> dict:
        values = {name: float(value) for name, value in jax.device_get(evaluate(state)).items()}
        return {
            "step": steps,
            "wall_clock_s": seconds,
            "forward_passes": steps * forward_passes_per_step
            if count_forward_passes is None
            else int(count_forward_passes(state)),
            **values,
        }

    # A resumed run whose last row already met ``stop`` had ended there.
    stopped = done > 0 and stop is not None and bool(stop(history[-1]))
    if done < num_steps and not stopped:
        chunks.compile(state, min(eval_every, num_steps - done))  # before row 0: keep it untimed
    history = [row(state, 0, 0.0)] if history is None else list(history)

    def after(start, state, metrics, length, seconds):
        steps = history[-1]["step"] + length
        history.append(row(state, steps, history[-1]["wall_clock_s"] + seconds))
        if on_chunk is not None:
            on_chunk(state, history, chunks.compile_seconds)
        return state, length, stop is not None and bool(stop(history[-1]))

    if not stopped:
        state, ran = run_chunks(
            chunks,
            state,
            num_steps - done,
            eval_every,
            after,
            progress=progress,
            description=description,
            initial=done,
            postfix=lambda state: {
                k: f"{v:.4g}" for k, v in history[-1].items() if k.startswith("test_")
            },
        )
        done += ran
    return TimedRun(
        state=state, history=history, compile_seconds=chunks.compile_seconds, steps=done
    )


@struct.dataclass
class ELMState:
    """An extreme learning machine's parameters and whether its readout has been solved."""

    params: PyTree
    step: jax.Array


def _head(params: PyTree) -> tuple[tuple, tuple]:
    """Paths of the output layer's kernel and bias: the layer with the largest index among
    those holding a 2-D ``kernel`` (``Dense_3`` in linen, ``layers[3]`` in nnx)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    layers = {}
    for path, leaf in leaves:
        names = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
        if "kernel" in names and jnp.ndim(leaf) == 2:
            layer = tuple(path[: names.index("kernel")])
            digits = re.findall(r"\d+", str(names[names.index("kernel") - 1]))
            layers[layer] = (int(digits[-1]) if digits else -1, path)
    if not layers:
        raise ValueError("an ELM needs a model whose output layer is a Dense 'kernel' + 'bias'")
    layer, (_, kernel_path) = max(layers.items(), key=lambda item: item[1][0])
    bias = [p for p, _ in leaves if tuple(p[: len(layer)]) == layer and p != kernel_path]
    if len(bias) != 1:
        raise ValueError("the output layer of an ELM needs exactly one bias next to its kernel")
    return kernel_path, bias[0]


def elm_readout(
    model: nn.FlaxModel, params: PyTree, x: jax.Array, targets: jax.Array, ridge: float
) -> PyTree:
    """``params`` with the output layer replaced by the ridge least-squares readout.

    Extreme learning machine (Huang, Zhu & Siew, "Extreme learning machine: Theory and
    applications", Neurocomputing 70, 2006): every layer but the last keeps its random initial
    weights; with ``H`` the last hidden layer's outputs on the training set (a column of ones
    appended for the bias) and ``T`` the one-hot targets, the readout is
    ``β = (HᵀH + λ I)⁻¹ HᵀT`` (``λ = ridge``, relative to the mean diagonal of ``HᵀH``).

    ``H`` is read off the model itself: its output is affine in the output layer's kernel, so
    column ``i`` of ``H`` is the derivative of output 0 along kernel entry ``(i, 0)`` (one
    forward-mode pass per hidden unit, vmapped), which works for any Flax MLP-like model.
    """
    kernel_path, bias_path = _head(params)
    kernel = _get(params, kernel_path)

    def outputs(head_kernel):
        return model.apply(_set(params, kernel_path, head_kernel), x)

    def column(i):
        tangent = jnp.zeros_like(kernel).at[i, 0].set(1.0)
        return jax.jvp(outputs, (kernel,), (tangent,))[1][:, 0]

    hidden = jax.vmap(column, out_axes=1)(jnp.arange(kernel.shape[0]))
    features = jnp.concatenate([hidden, jnp.ones((hidden.shape[0], 1), hidden.dtype)], axis=1)
    gram = features.T @ features
    scale = jnp.trace(gram) / gram.shape[0]
    beta = jnp.linalg.solve(gram + ridge * scale * jnp.eye(gram.shape[0]), features.T @ targets)
    solved = _set(params, kernel_path, beta[:-1].astype(kernel.dtype))
    return _set(solved, bias_path, beta[-1].astype(kernel.dtype))


def _get(tree: PyTree, path: tuple) -> jax.Array:
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if leaf_path == path:
            return leaf
    raise KeyError(path)


def _set(tree: PyTree, path: tuple, value: jax.Array) -> PyTree:
    return jax.tree_util.tree_map_with_path(lambda p, leaf: value if p == path else leaf, tree)


def elm_trainer(
    model: nn.FlaxModel, dataset: Dataset, ridge: float = 1e-3
) -> tuple[Callable[[PyTree], ELMState], Callable[[jax.Array, ELMState], tuple[ELMState, dict]]]:
    """``(init, step)`` of the ELM baseline for :func:`timed_run`: step 0 solves the readout on
    the whole training set (one forward pass per training example); later steps keep it."""
    check_range("ridge", ridge, 0.0, None)
    num_classes = int(jnp.max(dataset.y_train)) + 1
    targets = jax.nn.one_hot(dataset.y_train, num_classes)

    def init(params: PyTree) -> ELMState:
        return ELMState(params=params, step=jnp.array(0, jnp.int32))

    def step(key: jax.Array, state: ELMState) -> tuple[ELMState, dict]:
        del key
        solved = elm_readout(model, state.params, dataset.x_train, targets, ridge)
        params = jax.tree_util.tree_map(
            lambda new, old: jnp.where(state.step == 0, new, old), solved, state.params
        )
        return ELMState(params=params, step=state.step + 1), {}

    return init, step


def classifier_metrics(model: nn.FlaxModel, dataset: Dataset) -> Callable[[PyTree], dict]:
    """A jitted ``params -> {train_loss, train_accuracy, test_loss, test_accuracy}``.

    Losses are cross-entropy on the full splits, whatever loss a method trains on.
    """

    @jax.jit
    def metrics(params: PyTree) -> dict:
        train = nn.evaluate_classifier(model, params, dataset.x_train, dataset.y_train)
        test = nn.evaluate_classifier(model, params, dataset.x_test, dataset.y_test)
        return {
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }

    return metrics


def train_optax(
    model: nn.FlaxModel,
    dataset: Dataset,
    key: jax.Array,
    num_steps: int,
    *,
    optimizer: optax.GradientTransformation | None = None,
    loss: str | Callable = "cross_entropy",
    batch_size: int = 256,
    eval_every: int = 50,
    progress: bool = False,
) -> TimedRun:
    """Train ``model`` from ``model.params`` on ``dataset`` with backprop; measured like ES.

    Minibatches are drawn as ES draws them (:func:`esjax.nn.minibatch_indices`), evaluation rows
    hold train/test loss and accuracy. Returns a :class:`TimedRun` whose ``state.params`` are
    the trained parameters.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    nn.check_loss_kind(loss, takes_residuals=False, where="loss")
    loss_fn = nn.dataset_fitness(model, loss, dataset.x_train, dataset.y_train, batch_size)
    trainer = optax_trainer(loss_fn, optimizer)
    metrics = classifier_metrics(model, dataset)
    return timed_run(
        trainer.step,
        trainer.init(model.params),
        key,
        num_steps,
        counter=lambda state: state.step,
        evaluate=lambda state: metrics(state.params),
        eval_every=eval_every,
        forward_passes_per_step=(1 + BACKWARD_COST_IN_FORWARDS) * batch_size,
        progress=progress,
        description=trainer.name,
    )


__all__ = [
    "ELMState",
    "elm_readout",
    "elm_trainer",
    "BACKWARD_COST_IN_FORWARDS",
    "GradientState",
    "GradientTrainer",
    "PyTree",
    "TimedRun",
    "classifier_metrics",
    "optax_trainer",
    "timed_run",
    "train_optax",
]
