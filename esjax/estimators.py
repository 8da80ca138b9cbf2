"""Gradient estimators as plain functions, for your own optax loops.

``es_gradient`` is the antithetic Gaussian-smoothing estimator that OpenAI-ES uses (Salimans et
al. 2017, arXiv:1703.03864; Nesterov & Spokoiny 2017 for the smoothed objective): for
``f_σ(x) = E[f(x + σ ε)]``, ``ε ~ N(0, I)``,

    ∇f_σ(x) ≈ 1/(2σ m) Σ_{j ≤ m} (f(x + σ ε_j) - f(x - σ ε_j)) ε_j,    m = population_size / 2

an unbiased estimate of ``∇f_σ`` (which tends to ``∇f`` as ``σ → 0`` for smooth ``f``) that
needs only ``population_size`` evaluations of ``f`` and no derivative of it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from esjax.base import PyTree, check_int, check_key, check_range
from esjax.flatten import flatten_x0
from esjax.prng import member_normals


def es_gradient(
    fun: Callable[[PyTree], jax.Array],
    x: PyTree,
    key: jax.Array,
    sigma: float = 0.05,
    population_size: int = 64,
) -> PyTree:
    """The antithetic ES estimate of the gradient of ``fun`` at ``x`` (same pytree shape as x).

    Args:
      fun: scalar function of one point shaped like ``x``; not differentiated, only evaluated.
      x: the point (a flat vector or any pytree of float arrays).
      key: PRNG key; pair ``j``'s noise is ``esjax.prng.member_normals`` of ``(key, j)``.
      sigma: smoothing scale ``σ`` (> 0).
      population_size: evaluations (even, >= 2): ``population_size / 2`` mirrored pairs.

    Returns:
      The estimate of ``∇ E[fun(x + σ ε)]``, shaped like ``x``; jittable and vmappable.

    Example:
      >>> grad = esjax.es_gradient(loss, params, jax.random.key(0), sigma=0.02)
      >>> updates, opt_state = optimizer.update(grad, opt_state, params)
    """
    key = check_key(key)
    population_size = check_int("population_size", population_size, 2)
    if population_size % 2:
        raise ValueError(f"population_size must be even (mirrored pairs), got {population_size}")
    check_range("sigma", sigma, 0.0, None, low_inclusive=False)
    flat, spec = flatten_x0(x)
    pairs = population_size // 2
    noise = member_normals(key, jnp.arange(pairs), spec.num_dims, flat.dtype)

    def value(vector):
        return jnp.asarray(fun(spec.unflatten(vector)), flat.dtype)

    plus = jax.vmap(value)(flat + sigma * noise)
    minus = jax.vmap(value)(flat - sigma * noise)
    gradient = (plus - minus) @ noise / (2 * sigma * pairs)
    return spec.unflatten(gradient)


__all__ = ["es_gradient"]
