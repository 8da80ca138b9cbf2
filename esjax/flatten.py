"""Pytrees (Flax linen params, nnx states, dicts of arrays) <-> flat parameter vectors.

Strategies work on flat ``(num_dims,)`` vectors. :func:`flatten` turns any pytree of arrays into
one vector plus a hashable :class:`FlatSpec`; ``spec.unflatten(vector)`` reverses it exactly.
Because the spec is hashable and static, a strategy state that carries it jits and caches like any
other pytree: a new ``init`` with the same structure does not recompile.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class FlatSpec:
    """Static, hashable description of a pytree's structure, leaf shapes and dtypes."""

    __slots__ = ("treedef", "shapes", "dtypes", "dtype")

    def __init__(self, treedef, shapes: tuple, dtypes: tuple, dtype: Any):
        self.treedef = treedef
        self.shapes = tuple(tuple(int(n) for n in s) for s in shapes)
        self.dtypes = tuple(np.dtype(d) for d in dtypes)
        self.dtype = np.dtype(dtype)

    @property
    def num_dims(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def _key(self):
        return (self.treedef, self.shapes, self.dtypes, self.dtype)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlatSpec) and self._key() == other._key()

    def __repr__(self) -> str:
        return f"FlatSpec(num_dims={self.num_dims}, leaves={len(self.shapes)}, dtype={self.dtype})"

    def unflatten(self, vector: jax.Array) -> PyTree:
        """Rebuild the pytree from a ``(num_dims,)`` vector (exact inverse of :func:`flatten`)."""
        vector = jnp.asarray(vector)
        if vector.shape != (self.num_dims,):
            raise ValueError(
                f"vector must have shape (num_dims,) = ({self.num_dims},), got {vector.shape}"
            )
        leaves, offset = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            size = math.prod(shape)
            leaves.append(vector[offset : offset + size].reshape(shape).astype(dtype))
            offset += size
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def flatten(tree: PyTree, dtype: Any = None) -> tuple[jax.Array, FlatSpec]:
    """Flatten a pytree of arrays into ``(vector, spec)``.

    Args:
      tree: any pytree whose leaves are arrays or scalars (a 1-D array is returned unchanged).
      dtype: dtype of the flat vector; default: the leaves' common floating dtype.

    Returns:
      ``vector`` of shape ``(num_dims,)`` and the :class:`FlatSpec` that unflattens it.

    Example:
      >>> vector, spec = flatten({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
      >>> vector.shape, spec.num_dims
      ((9,), 9)
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        raise ValueError("x0 must contain at least one array leaf, got an empty pytree")
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    if dtype is None:
        dtype = jnp.result_type(*[leaf.dtype for leaf in leaves])
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.result_type(float)
    spec = FlatSpec(
        treedef, [leaf.shape for leaf in leaves], [leaf.dtype for leaf in leaves], dtype
    )
    vector = jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])
    return vector, spec


def _is_nnx_module(tree: Any) -> bool:
    from flax import nnx  # flax is loaded already by esjax.base

    return isinstance(tree, nnx.Module)


def search_dtype(x0: PyTree) -> Any:
    """The dtype a strategy searches ``x0`` in: its leaves' common floating type, at least
    float32 (float16/bfloat16 leaves are searched in float32 and handed back in their own dtype).

    Integer and bool leaves are refused (TypeError naming the leaf): a real-valued search whose
    members are cast back to integers for the fitness function would silently stall.
    """
    if _is_nnx_module(x0):
        raise TypeError(
            f"x0 is a flax.nnx module ({type(x0).__name__}): its batch statistics and RNG state "
            "are not parameters to search; pass esjax.nn.from_nnx(module).params as x0 (only "
            "nnx.Param leaves) and build the fitness with esjax.nn"
        )
    leaves = jax.tree_util.tree_leaves_with_path(x0)
    if not leaves:
        raise ValueError("x0 must contain at least one array leaf, got an empty pytree")
    for path, leaf in leaves:
        dtype = jnp.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "x0"
            raise TypeError(
                f"x0 leaf {where} has dtype {dtype}: strategies search real values, so every "
                f"leaf must be floating (e.g. x0.astype(jnp.float32)); an integer parameter "
                f"searched as a float and rounded back would stall"
            )
    dtype = jnp.result_type(*[jnp.asarray(leaf).dtype for _, leaf in leaves])
    return jnp.promote_types(dtype, jnp.float32)


def flatten_x0(x0: PyTree) -> tuple[jax.Array, FlatSpec]:
    """Flatten an initial solution in its :func:`search_dtype` and reject NaN/inf entries when
    they are concrete."""
    vector, spec = flatten(x0, search_dtype(x0))
    if spec.num_dims < 1:
        raise ValueError("x0 must have at least one entry (num_dims >= 1)")
    if not isinstance(vector, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(vector))):
        raise ValueError("x0 must be finite: it contains NaN or inf entries")
    return vector, spec


__all__ = [
    "FlatSpec",
    "PyTree",
    "flatten",
    "flatten_x0",
    "search_dtype",
]
