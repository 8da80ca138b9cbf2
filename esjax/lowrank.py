"""Population forward without member weights, and the fused low-rank ES generation.

Reference: Sarkar, Fellows, Duque et al., "Evolution Strategies at the Hyperscale", 2025,
arXiv:2511.16652 (EGGROLL), section on batched low-rank evaluation.

Low-rank ES (:func:`esjax.strategies.low_rank_es.low_rank_es`) perturbs a dense kernel
``W (m×n)`` of member ``i`` by ``σ E_i = σ A_i B_iᵀ`` (``1/√r`` folded into ``A_i``). A dense
layer's output for member ``i`` is then::

    y_i = h_i W + σ (h_i A_i) B_iᵀ + b_i

so :func:`population_apply` never forms ``W + σ A_i B_iᵀ``. In the first layer every member
sees the same batch ``x`` and ``x W`` is computed once; in later layers ``h_i`` differs per
member but all members share ``W``, so the layer is one ``(population · batch, m) × (m, n)``
product; the low-rank terms cost ``batch · (m + n) · r`` per member.

How the model is read. The model's ``apply`` is traced once to a jaxpr with its parameter
leaves as inputs, then re-evaluated under ``jax.vmap`` over members by a small interpreter
that replaces each 2-D leaf by a :class:`LowRankKernel`. A ``dot_general`` that contracts the
kernel's first axis with the last axis of its other operand (what ``linen.Dense``,
``nnx.Linear`` and ``x @ W`` emit) is rewritten as above; ``jit``-wrapped sub-computations are
entered. Everything else runs as written, vmapped: full-rank-noise leaves (biases, scales,
convolution kernels) are ``θ + σ ε_i`` per member, so a convolution becomes a batched
convolution, as in :func:`esjax.nn.population_apply`. Any other use of a 2-D kernel
(``linen.Embed``'s lookup, ``DenseGeneral``'s reshaped kernel, a kernel transposed before the
product, weight normalisation) materialises that member's ``W + σ A_i Bᵀ_i``: correct, but
``population × m × n`` numbers; ``strict=True`` raises there instead. Supported without
materialising: models built from ``linen.Dense`` / ``nnx.Linear`` (any activations,
normalisation and residual connections in between), e.g. :class:`esjax.nn.MLP` and
:class:`esjax.nn.NnxMLP`.

The fused generation (:func:`make_generation`) runs low-rank ES on an
:func:`esjax.nn.dataset_fitness` with this forward: factors from ``(key, i)``, fitness from the
forward, weights from the whole generation's fitness, ``Σ_i u_i ε_i`` from the factors
(:meth:`~esjax.strategies.low_rank_es.LowRankNoise.weighted_sum`) and the strategy's own step;
best tracking rebuilds one member row from ``(key, best)``. With ``mesh=`` each device
evaluates its own members and only the fitness values and one ``(num_dims,)`` sum cross
devices, as :mod:`esjax.distributed` does for declared decompositions. The key use (split into
ask and evaluation keys, ``fold_in(key, g)`` per generation under :func:`esjax.loop
.scan_generations`) and the metrics (:func:`esjax.loop.generation_metrics`) are the loop's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
from jax.sharding import PartitionSpec as P

from esjax import distributed, shaping
from esjax.base import (
    Strategy,
    StrategyState,
    check_fitness,
    check_int,
    member_weights,
    record,
)
from esjax.flatten import FlatSpec
from esjax.loop import FitnessFn, Generation, generation_metrics
from esjax.loop import make_generation as loop_generation
from esjax.nn import DatasetFitness, FlaxModel
from esjax.strategies.low_rank_es import LowRankFactor, low_rank_noise

PyTree = Any

# Members the fused generation evaluates at a time when given no batch_size. Per-member
# activations (population × batch × width) dominate the fused forward's memory traffic; in
# chunks of 8 they stay near cache. Measured on 2 CPU cores, population 1,024, batch 256:
# 784 -> 1,024 -> 10 ran 4.3x faster (1.81 -> 0.42 s) with 1/21 of the temporaries (1,053 ->
# 49 MiB); 784 -> 256 -> 256 -> 10 1.8x faster (1.79 -> 0.97 s), 528 -> 33 MiB. The shared
# x W does not depend on the chunk, and XLA hoists it out of the loop over chunks.
DEFAULT_MEMBER_CHUNK = 8

# Sub-computations the interpreter enters when a kernel flows into them (their bodies are
# plain jaxprs called with the operands as they are).
_CALL_PRIMITIVES = ("jit", "pjit", "closed_call", "core_call")


class LowRankKernel(NamedTuple):
    """One member's perturbed kernel ``W + a bᵀ``, kept as its parts.

    Attributes:
      w: ``(m, n)`` the shared kernel.
      a: ``(m, r)`` this member's left factor, already scaled by ``σ / √r`` and its sign.
      b: ``(n, r)`` this member's right factor.
    """

    w: jax.Array
    a: jax.Array
    b: jax.Array

    def dense(self) -> jax.Array:
        """The materialised kernel ``W + a bᵀ`` (``m × n`` numbers per member)."""
        return self.w + (self.a @ self.b.T).astype(self.w.dtype)


class MaterialisedKernelError(ValueError):
    """Raised under ``strict=True`` where a kernel is used other than in a fused product."""


def _fused_product(eqn, lhs: jax.Array, kernel: LowRankKernel) -> jax.Array | None:
    """``lhs W + (lhs a) bᵀ`` for a ``dot_general`` contracting ``lhs``'s last axis with the
    kernel's first (None when the dimension numbers are anything else)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    if tuple(lhs_batch) or tuple(rhs_batch) or tuple(rhs_contract) != (0,):
        return None
    if tuple(lhs_contract) != (jnp.ndim(lhs) - 1,):
        return None
    shared = eqn.primitive.bind(lhs, kernel.w, **eqn.primitive.get_bind_params(eqn.params))
    precision = eqn.params.get("precision")
    preferred = eqn.params.get("preferred_element_type")
    last = jnp.ndim(lhs) - 1
    projected = jax.lax.dot_general(
        lhs,
        kernel.a.astype(kernel.w.dtype),
        (((last,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred,
    )
    low_rank = jax.lax.dot_general(
        projected,
        kernel.b.astype(projected.dtype),
        (((last,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred,
    )
    return shared + low_rank.astype(shared.dtype)


def _interpret(jaxpr: Jaxpr, consts: Sequence, args: Sequence, strict: bool) -> list:
    """Evaluate ``jaxpr`` on ``args`` where some arguments are :class:`LowRankKernel` s."""
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        values = [read(var) for var in eqn.invars]
        kernels = [isinstance(value, LowRankKernel) for value in values]
        outs = None
        if any(kernels):
            name = eqn.primitive.name
            if name == "dot_general" and kernels == [False, True]:
                outs = _fused_product(eqn, values[0], values[1])
            elif name in _CALL_PRIMITIVES and isinstance(eqn.params.get("jaxpr"), ClosedJaxpr):
                inner = eqn.params["jaxpr"]
                outs = _interpret(inner.jaxpr, inner.consts, values, strict)
            if outs is None:
                if strict:
                    raise MaterialisedKernelError(
                        f"a 2-D parameter enters `{name}` (not a product contracting its first "
                        "axis): the fused forward would materialise each member's kernel"
                    )
                values = [v.dense() if isinstance(v, LowRankKernel) else v for v in values]
        if outs is None:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(var) for var in jaxpr.outvars]


def _check_factors(spec: FlatSpec, factors: Sequence) -> None:
    if len(factors) != len(spec.shapes):
        raise ValueError(
            f"factors must have one entry per parameter leaf ({len(spec.shapes)}), got "
            f"{len(factors)}"
        )
    for shape, factor in zip(spec.shapes, factors, strict=True):
        if isinstance(factor, LowRankFactor):
            if len(shape) != 2 or factor.a.shape[1] != shape[0] or factor.b.shape[1] != shape[1]:
                raise ValueError(
                    f"a LowRankFactor with a {factor.a.shape} and b {factor.b.shape} does not "
                    f"match a leaf of shape {shape}"
                )
        elif tuple(jnp.shape(factor)[1:]) != tuple(shape):
            raise ValueError(
                f"full-rank noise of shape {jnp.shape(factor)} does not match a leaf of "
                f"shape {shape} (expected (k, *{shape}))"
            )


def population_apply(
    model: FlaxModel,
    mean: jax.Array,
    factors: Sequence,
    sigma: jax.Array | float,
    inputs: jax.Array,
    *,
    population_chunk: int | None = None,
    strict: bool = False,
) -> jax.Array:
    """Outputs of every member ``θ + σ ε_i`` on the same ``inputs``, without member weights.

    Args:
      model: a :class:`esjax.nn.FlaxModel` (linen or nnx).
      mean: ``(num_params,)`` flat mean ``θ`` (``model.spec`` order).
      factors: one entry per parameter leaf, as
        :meth:`~esjax.strategies.low_rank_es.LowRankNoise.factors` returns: a
        :class:`~esjax.strategies.low_rank_es.LowRankFactor` (``a: (k, m, r)``, ``b: (k, n,
        r)``, ``ε_i``'s block ``a_i b_iᵀ``) for 2-D leaves, ``(k, *shape)`` noise otherwise.
      sigma: the scale ``σ``.
      inputs: one batch shared by every member.
      population_chunk: members per chunk (``lax.map`` over chunks) to cap activation memory.
      strict: raise :class:`MaterialisedKernelError` instead of materialising a kernel that is
        used other than in a fused product.

    Returns:
      ``(k, *output_shape)``: member ``i``'s outputs equal ``model.apply`` of its materialised
      parameters ``θ + σ ε_i`` (to float rounding).

    Example:
      >>> factors = noise.factors(key, state, jnp.arange(es.population_size))
      >>> logits = population_apply(model, state.mean, factors, state.sigma, images)
    """
    spec = model.spec
    _check_factors(spec, factors)
    if population_chunk is not None:
        population_chunk = check_int("population_chunk", population_chunk, 1)
    params = spec.unflatten(mean)
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def apply_leaves(leaves, inputs):
        return model.apply(jax.tree_util.tree_unflatten(treedef, leaves), inputs)

    closed = jax.make_jaxpr(apply_leaves)(
        [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves],
        jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), inputs),
    )
    out_tree = jax.tree_util.tree_structure(jax.eval_shape(apply_leaves, leaves, inputs))
    flat_inputs = jax.tree_util.tree_leaves(inputs)
    sigma = jnp.asarray(sigma)

    def member(member_factors):
        args = []
        for leaf, factor in zip(leaves, member_factors, strict=True):
            if isinstance(factor, LowRankFactor):
                scaled = (sigma * factor.a).astype(leaf.dtype)
                args.append(LowRankKernel(leaf, scaled, factor.b.astype(leaf.dtype)))
            else:
                args.append(leaf + (sigma * factor).astype(leaf.dtype))
        outs = _interpret(closed.jaxpr, closed.consts, [*args, *flat_inputs], strict)
        return jax.tree_util.tree_unflatten(out_tree, outs)

    factors = tuple(factors)
    size = jax.tree_util.tree_leaves(factors)[0].shape[0]
    if population_chunk is None or population_chunk >= size:
        return jax.vmap(member)(factors)
    return jax.lax.map(member, factors, batch_size=population_chunk)


def population_losses(
    fitness: DatasetFitness,
    state: StrategyState,
    factors: Sequence,
    key: jax.Array | None,
    *,
    population_chunk: int | None = None,
    strict: bool = False,
) -> jax.Array:
    """``(k,)`` losses of the members whose ``factors`` are given, on ``fitness``'s minibatch
    for ``key`` (all of its data for None), through :func:`population_apply`."""
    inputs, targets = fitness.batch(key)
    outputs = population_apply(
        fitness.model,
        state.mean,
        factors,
        state.sigma,
        inputs,
        population_chunk=population_chunk,
        strict=strict,
    )
    losses = jax.vmap(lambda out: fitness.loss_fn(out, targets))(outputs)
    if losses.ndim != 1:
        raise ValueError(
            f"the loss must be a scalar per member for low-rank ES, got shape {losses.shape[1:]}"
        )
    return losses.astype(state.mean.dtype)


def supports_fused(es: Strategy, fitness_fn: FitnessFn) -> bool:
    """Whether :func:`make_generation` takes the fused path for ``es`` and ``fitness_fn``."""
    return low_rank_noise(es) is not None and isinstance(fitness_fn, DatasetFitness)


def _finish(es, noise, state, ask_key, fitness, told):
    """Best tracking from ``(key, best)`` and the shared bookkeeping."""
    best = jnp.argmin(shaping.sanitize(fitness))
    best_member = noise(ask_key, state, best[None])
    evaluations = es.capabilities.evaluations_per_generation
    return record(state, told, best_member, fitness[best][None], evaluations)


def _fused_generation(es, fitness_fn, population_chunk, fitness_takes_key, strict) -> Generation:
    noise = low_rank_noise(es)
    decomposition = es.capabilities.decomposition
    population_size = es.population_size

    def generation(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        ask_key, eval_key = jax.random.split(key)  # the split esjax.loop.make_generation uses
        factors = noise.population_factors(ask_key, state)
        fitness = population_losses(
            fitness_fn,
            state,
            factors,
            eval_key if fitness_takes_key else None,
            population_chunk=population_chunk,
            strict=strict,
        )
        fitness = check_fitness(fitness, population_size)
        # Members θ + σ ε_i are finite rows (finite mean, σ and noise): only the fitness
        # can be non-finite, and NaN gives it zero weight / the worst rank.
        fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.nan)
        rows_finite = jnp.ones(population_size, bool)
        weights = member_weights(decomposition, state, fitness, None, rows_finite)
        if noise.antithetic:
            # ε_{j+h} = -ε_j: Σ_i u_i ε_i = Σ_{j<h} (u_j - u_{j+h}) ε_j, half the work.
            half = population_size // 2
            factors = jax.tree_util.tree_map(lambda x: x[:half], factors)
            weights = weights[:half] - weights[half:]
        totals = state.sigma * noise.weighted_sum(state.spec, factors, weights)
        told = decomposition.apply(state, totals, fitness)
        state = _finish(es, noise, state, ask_key, fitness, told)
        return state, generation_metrics(es, state, fitness)

    return generation


def _fused_sharded_generation(
    es, fitness_fn, mesh, population_chunk, fitness_takes_key, strict
) -> Generation:
    noise = low_rank_noise(es)
    decomposition = es.capabilities.decomposition
    axis = distributed.mesh_axis(mesh)
    population_size = es.population_size
    per_device = distributed.padded_size(population_size, mesh.size) // mesh.size
    padding = per_device * mesh.size - population_size

    def local(ask_key, eval_key, state):
        indices = jax.lax.axis_index(axis) * per_device + jnp.arange(per_device)
        # Padding members (indices >= n) repeat the last member; their weight is zero below.
        factors = noise.factors(ask_key, state, jnp.minimum(indices, population_size - 1))
        fitness = population_losses(
            fitness_fn, state, factors, eval_key, population_chunk=population_chunk, strict=strict
        )
        fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.nan)
        fitness = jax.lax.all_gather(fitness, axis, tiled=True, to="invarying")[:population_size]
        rows_finite = jnp.ones(population_size, bool)
        weights = member_weights(decomposition, state, fitness, None, rows_finite)
        local_weights = jnp.concatenate([weights, jnp.zeros(padding, weights.dtype)])[indices]
        # The only reduction over members: one (num_dims,) sum across devices.
        totals = jax.lax.psum(
            state.sigma * noise.weighted_sum(state.spec, factors, local_weights), axis
        )
        told = decomposition.apply(state, totals, fitness)
        return _finish(es, noise, state, ask_key, fitness, told), fitness

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P()), out_specs=(P(), P()))

    def generation(key: jax.Array, state: StrategyState) -> tuple[StrategyState, dict]:
        ask_key, eval_key = jax.random.split(key)
        state, fitness = sharded(ask_key, eval_key if fitness_takes_key else None, state)
        return state, generation_metrics(es, state, fitness)

    return generation


def fused_generation(
    es: Strategy,
    fitness_fn: FitnessFn,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    strict: bool = False,
) -> Generation | None:
    """The fused generation when it applies (low-rank ES on a :class:`~esjax.nn.DatasetFitness`),
    else None. Arguments as in :func:`make_generation`."""
    if not supports_fused(es, fitness_fn):
        return None
    if batch_size is None:
        batch_size = DEFAULT_MEMBER_CHUNK
    batch_size = check_int("batch_size", batch_size, 1)
    if mesh is None:
        return _fused_generation(es, fitness_fn, batch_size, fitness_takes_key, strict)
    return _fused_sharded_generation(es, fitness_fn, mesh, batch_size, fitness_takes_key, strict)


def make_generation(
    es: Strategy,
    fitness_fn: FitnessFn,
    *,
    batch_size: int | None = None,
    fitness_takes_key: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    strict: bool = False,
) -> Generation:
    """The un-jitted generation ``(key, state) -> (state, metrics)``, fused where it can be.

    For low-rank ES (:func:`esjax.strategies.low_rank_es.low_rank_es`) on a fitness built by
    :func:`esjax.nn.dataset_fitness`, members are evaluated with :func:`population_apply`
    (no member weights) and the update is formed from the factors. Any other strategy or
    fitness function gets the generation :func:`esjax.loop.make_generation` (or, with
    ``mesh``, :func:`esjax.distributed.make_sharded_generation`) builds, so this is a drop-in
    replacement for them. Same key use as the loop: results are the same whichever chunking
    a driver runs.

    Args:
      es: the strategy.
      fitness_fn: a fitness function; a :class:`~esjax.nn.DatasetFitness` selects the fused
        path for low-rank ES.
      batch_size: members evaluated at a time (``lax.map`` over chunks), as in the loop; the
        fused path defaults to :data:`DEFAULT_MEMBER_CHUNK` (8), which keeps per-member
        activations near cache (4x faster on the wide MLP than all members at once).
      fitness_takes_key: draw each generation's minibatch from its evaluation key.
      mesh: a 1-D mesh (:func:`esjax.distributed.make_mesh`); the state must be replicated on
        it (:func:`esjax.distributed.replicate`).
      strict: in the fused path, raise where a kernel would be materialised.

    Returns:
      A generation for :func:`esjax.loop.scan_generations` or ``jax.jit``.

    Example:
      >>> fitness = esjax.nn.dataset_fitness(model, "cross_entropy", x, y, batch_size=256)
      >>> generation = esjax.lowrank.make_generation(es, fitness, fitness_takes_key=True)
      >>> state, metrics = jax.jit(esjax.loop.scan_generations(generation, key, 100))(state)
    """
    fused = fused_generation(
        es,
        fitness_fn,
        batch_size=batch_size,
        fitness_takes_key=fitness_takes_key,
        mesh=mesh,
        strict=strict,
    )
    if fused is not None:
        return fused
    if mesh is not None:
        return distributed.make_sharded_generation(
            es, fitness_fn, mesh, batch_size=batch_size, fitness_takes_key=fitness_takes_key
        )
    return loop_generation(
        es, fitness_fn, batch_size=batch_size, fitness_takes_key=fitness_takes_key
    )


def array_shapes(closed: ClosedJaxpr) -> list[tuple[int, ...]]:
    """Shapes of every array a jaxpr creates, nested jaxprs included (for memory checks)."""
    shapes = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            shapes.extend(tuple(var.aval.shape) for var in eqn.outvars if hasattr(var, "aval"))
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else (param,):
                    if isinstance(sub, ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, Jaxpr):
                        visit(sub)

    visit(closed.jaxpr)
    return shapes


__all__ = [
    "DEFAULT_MEMBER_CHUNK",
    "LowRankKernel",
    "MaterialisedKernelError",
    "array_shapes",
    "fused_generation",
    "make_generation",
    "population_apply",
    "population_losses",
    "supports_fused",
]
