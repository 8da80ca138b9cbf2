"""Box bounds shared by the strategies that take them (PSO, DE, random search, hill climbing):
one check of ``lower_bound``/``upper_bound`` at construction, one broadcast at trace time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_bounds(lower, upper) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lower, upper)`` as float64 arrays, or None when neither is given.

    Raises ``ValueError`` naming the argument unless both or neither are given, both are finite
    scalars or 1-D lists of one length, and ``lower < upper`` in every coordinate.
    """
    if lower is None and upper is None:
        return None
    if lower is None or upper is None:
        missing = "lower_bound" if lower is None else "upper_bound"
        raise ValueError(f"{missing} is required when the other bound is given (both or neither)")
    bounds = []
    for name, bound in (("lower_bound", lower), ("upper_bound", upper)):
        try:
            array = np.asarray(bound, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a finite scalar or 1-D list, got {bound!r}") from None
        if array.ndim > 1 or not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must be a finite scalar or 1-D list, got {bound!r}")
        bounds.append(array)
    lower, upper = bounds
    if lower.shape and upper.shape and lower.shape != upper.shape:
        raise ValueError(
            f"lower_bound and upper_bound must have the same length, got {lower.shape} and "
            f"{upper.shape}"
        )
    if not np.all(lower < upper):
        raise ValueError("lower_bound must be smaller than upper_bound in every coordinate")
    return lower, upper


def bounds_like(
    bounds: tuple[np.ndarray, np.ndarray], vector: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The checked ``bounds`` broadcast to ``vector``'s shape and dtype (trace-time shape check)."""
    shape = vector.shape
    for name, bound in zip(("lower_bound", "upper_bound"), bounds, strict=True):
        if bound.ndim and bound.shape != shape:
            raise ValueError(f"{name} must be a scalar or have shape {shape}, got {bound.shape}")
    return tuple(jnp.broadcast_to(jnp.asarray(b, vector.dtype), shape) for b in bounds)


__all__ = ["bounds_like", "check_bounds"]
