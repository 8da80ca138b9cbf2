"""Classic continuous test functions, vectorised over any leading (population) axes.

Each function maps ``x`` of shape ``(..., num_dims)`` to fitness ``(...)``, minimum 0:

- ``sphere``      Σ x_i²                                          min at 0
- ``ellipsoid``   Σ 10^(6 (i-1)/(n-1)) x_i²  (condition 1e6)      min at 0
- ``rosenbrock``  Σ 100 (x_{i+1} - x_i²)² + (1 - x_i)²            min at 1
- ``rastrigin``   10 n + Σ x_i² - 10 cos(2π x_i)                  min at 0
- ``ackley``      -20 exp(-0.2 √(mean x²)) - exp(mean cos 2πx) + 20 + e    min at 0

:func:`make_problem` adds an optional random shift of the optimum and a random rotation
``f(R (x - s))``, which makes separable functions non-separable without changing their spectrum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from esjax.base import check_int, check_range


def sphere(x: jax.Array) -> jax.Array:
    """Σ x_i²."""
    return jnp.sum(jnp.square(x), axis=-1)


def ellipsoid(x: jax.Array, condition: float = 1e6) -> jax.Array:
    """Σ condition^((i-1)/(n-1)) x_i², the axis-scaled sphere of condition number ``condition``."""
    n = x.shape[-1]
    exponents = jnp.arange(n) / max(n - 1, 1)
    return jnp.sum(condition**exponents * jnp.square(x), axis=-1)


def rosenbrock(x: jax.Array) -> jax.Array:
    """Σ 100 (x_{i+1} - x_i²)² + (1 - x_i)² (needs n >= 2); minimum 0 at all-ones."""
    head, tail = x[..., :-1], x[..., 1:]
    return jnp.sum(100.0 * jnp.square(tail - head**2) + jnp.square(1.0 - head), axis=-1)


def rastrigin(x: jax.Array) -> jax.Array:
    """10 n + Σ x_i² - 10 cos(2π x_i): ~10ⁿ local minima, global minimum 0 at the origin."""
    n = x.shape[-1]
    return 10.0 * n + jnp.sum(jnp.square(x) - 10.0 * jnp.cos(2 * jnp.pi * x), axis=-1)


def ackley(x: jax.Array) -> jax.Array:
    """Ackley's function: a nearly flat outer region with a deep hole at the origin."""
    mean_square = jnp.mean(jnp.square(x), axis=-1)
    mean_cos = jnp.mean(jnp.cos(2 * jnp.pi * x), axis=-1)
    return -20.0 * jnp.exp(-0.2 * jnp.sqrt(mean_square)) - jnp.exp(mean_cos) + 20.0 + jnp.e


FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sphere": sphere,
    "ellipsoid": ellipsoid,
    "rosenbrock": rosenbrock,
    "rastrigin": rastrigin,
    "ackley": ackley,
}

# Where each base function attains its minimum (per coordinate).
_OPTIMUM_COORDINATE = {"rosenbrock": 1.0}


class Problem(NamedTuple):
    """A test function with its known optimum.

    Attributes:
      fitness: ``(..., num_dims) -> (...)``, minimised.
      x_opt: ``(num_dims,)`` the global minimiser.
      f_opt: the minimum value (0 for every built-in function).
    """

    name: str
    num_dims: int
    fitness: Callable[[jax.Array], jax.Array]
    x_opt: jax.Array
    f_opt: float


def random_rotation(key: jax.Array, num_dims: int) -> jax.Array:
    """A Haar-random orthogonal ``(num_dims, num_dims)`` matrix (QR with sign correction)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (num_dims, num_dims)))
    return q * jnp.sign(jnp.diag(r))


def make_problem(
    name: str,
    num_dims: int,
    *,
    key: jax.Array | None = None,
    shift_scale: float = 0.0,
    rotate: bool = False,
) -> Problem:
    """Build ``f(x) = base(R (x - s) + x*_base)`` with optional random shift and rotation.

    Args:
      name: one of ``sphere, ellipsoid, rosenbrock, rastrigin, ackley``.
      num_dims: dimension ``n`` (>= 1; >= 2 for rosenbrock).
      key: PRNG key for the shift and rotation (needed when either is requested).
      shift_scale: the optimum moves to ``s ~ U[-shift_scale, shift_scale]^n`` (>= 0).
      rotate: apply a random orthogonal ``R``.

    Returns:
      A :class:`Problem` whose ``fitness`` is vectorised over leading axes.
    """
    if name not in FUNCTIONS:
        raise ValueError(f"problem name must be one of {sorted(FUNCTIONS)}, got {name!r}")
    num_dims = check_int("num_dims", num_dims, 2 if name == "rosenbrock" else 1)
    check_range("shift_scale", shift_scale, 0.0, None)
    if (rotate or shift_scale > 0) and key is None:
        raise ValueError("key is required when rotate=True or shift_scale > 0")
    base = FUNCTIONS[name]
    base_opt = jnp.full((num_dims,), _OPTIMUM_COORDINATE.get(name, 0.0))
    if key is not None:
        shift_key, rotation_key = jax.random.split(key)
    shift = (
        jax.random.uniform(shift_key, (num_dims,), minval=-shift_scale, maxval=shift_scale)
        if shift_scale > 0
        else jnp.zeros(num_dims)
    )
    rotation = random_rotation(rotation_key, num_dims) if rotate else None

    def fitness(x: jax.Array) -> jax.Array:
        z = x - shift
        if rotation is not None:
            z = z @ rotation.T
        return base(z + base_opt)

    # base(R (x - s) + x*_base) is minimal where R (x - s) = 0, i.e. at x = s.
    return Problem(name=name, num_dims=num_dims, fitness=fitness, x_opt=shift, f_opt=0.0)


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
