"""The 24 noiseless BBOB functions (COCO's ``bbob`` suite) in JAX, instance for instance.

References: N. Hansen, S. Finck, R. Ros & A. Auger, "Real-Parameter Black-Box Optimization
Benchmarking 2009: Noiseless Functions Definitions", INRIA research report RR-6829 (the
functions and transformations); the COCO platform's C code (``code-experiments/src``: the legacy
random generators of ``suite_bbob_legacy_code.c`` and the composition of each ``f_*.c``), which
fixes the details the report leaves open. Values agree with ``cocoex.Suite("bbob", "", "")``
to ~1e-12 relative at random points (1e-9 for f19, whose ``cos`` of values ~1e5 amplifies
rounding; tests/test_bbob.py).

**Instances.** Function ``f`` of instance ``k`` draws its randomness from the seed
``s = f + 10000 k`` (``3 + 10000 k`` for f4, ``17 + 10000 k`` for f18, which reuse the
instances of f3 and f17). COCO's generators are reproduced exactly (in NumPy, float64):

- uniforms: a Park-Miller minimal standard generator (``x ← 16807 x mod 2³¹ - 1`` by Schrage's
  method) with 40 warm-up draws and a 32-entry Bays-Durham shuffle table, ``u = x / 2147483647``;
- normals: Box-Muller, ``g_i = √(-2 ln u_i) cos(2π u_{N+i})`` from ``2N`` uniforms;
- rotations: ``D²`` normals read column by column into a ``D×D`` matrix, then Gram-Schmidt on
  its columns (``R`` uses seed ``s + 10⁶`` and ``Q`` seed ``s``);
- ``x_opt = 8 ⌊10⁴ u⌋ / 10⁴ - 4`` (a zero becomes ``-10⁻⁵``);
- ``f_opt = clip(round(100 g₁/g₂, 2), -1000, 1000)`` with ``g₁, g₂`` the first normal of seeds
  ``f + 10000 k`` and ``f + 10000 k + 1``.

**Transformations** (RR-6829, Section 0), with ``i = 0..D-1``:

- ``T_osz``: ``x ↦ sign(x) exp(x̂ + 0.049 (sin c₁x̂ + sin c₂x̂))``, ``x̂ = ln|x|``,
  ``(c₁, c₂) = (10, 7.9)`` for ``x > 0`` and ``(5.5, 3.1)`` for ``x < 0``; smooth, monotone
  oscillations (applied to variables and, in f6, f21, f22, to the value);
- ``T_asy^β``: ``x_i ↦ x_i^(1 + β i/(D-1) √x_i)`` for ``x_i > 0`` (breaks symmetry);
- ``Λ^α``: diagonal ``α^(i / (2(D-1)))`` (condition ``α``);
- ``f_pen(x) = Σ max(0, |x_i| - 5)²`` (a penalty outside the box ``[-5, 5]^D``).

**Functions** (``z`` the transformed variable, ``f_opt`` added to every one):

==== ============================ ===================================================
f1   sphere                       ``z = x - x_opt``, ``‖z‖²``
f2   separable ellipsoid          ``z = T_osz(x - x_opt)``, ``Σ 10^(6i/(D-1)) z_i²``
f3   separable Rastrigin          ``z = Λ¹⁰ T_asy^0.2(T_osz(x - x_opt))``
f4   Büche-Rastrigin              ``z = s T_osz(x - x_opt)``, ``+ 100 f_pen``
f5   linear slope                 ``Σ 5|s_i| - s_i x_i``, ``s_i = sign(x_opt,i) 10^(i/(D-1))``
f6   attractive sector            ``T_osz(Σ (s_i z_i)²)^0.9``, ``z = R Λ¹⁰ Q (x - x_opt)``
f7   step ellipsoid               rounding of ``Λ¹⁰ Q (x - x_opt)``, then ``R``, ``+ f_pen``
f8   Rosenbrock                   ``z = max(1, √D/8)(x - x_opt) + 1``
f9   rotated Rosenbrock           ``z = max(1, √D/8) R x + 1/2``
f10  ellipsoid                    ``z = T_osz(R (x - x_opt))``
f11  discus                       ``10⁶ z₁² + Σ_{i>1} z_i²``, ``z = T_osz(R (x - x_opt))``
f12  bent cigar                   ``z₁² + 10⁶ Σ_{i>1} z_i²``, ``z = R T_asy^0.5(R (x - x_opt))``
f13  sharp ridge                  ``z₁² + 100 ‖z_{2:D}‖``, ``z = R Λ¹⁰ Q (x - x_opt)``
f14  different powers             ``√(Σ |z_i|^(2 + 4i/(D-1)))``, ``z = R (x - x_opt)``
f15  Rastrigin                    ``z = R Λ¹⁰ Q T_asy^0.2(T_osz(R (x - x_opt)))``
f16  Weierstrass                  ``z = R Λ^(1/100) Q T_osz(R (x - x_opt))``, ``+ 10/D f_pen``
f17  Schaffer F7 (condition 10)   ``z = Λ¹⁰ Q T_asy^0.5(R (x - x_opt))``, ``+ 10 f_pen``
f18  Schaffer F7 (condition 1000) as f17 with ``Λ¹⁰⁰⁰``
f19  Griewank-Rosenbrock F8F2     ``z = max(1, √D/8) R x + 1/2``
f20  Schwefel x sin(√|x|)         ``x̂ = 2 (±1) ⊗ x``, ``z = 100 (Λ¹⁰ (ẑ - 2|x_opt|) + 2|x_opt|)``
f21  Gallagher, 101 peaks         ``T_osz(10 - max_i w_i exp(-‖C_i^½ (R x - y_i)‖² / 2D))²``
f22  Gallagher, 21 peaks          as f21 with 21 peaks and condition up to 1000
f23  Katsuura                     ``z = R Λ¹⁰⁰ Q (x - x_opt)``, ``+ f_pen``
f24  Lunacek bi-Rastrigin         two spheres at ``±μ`` plus Rastrigin on ``R Λ¹⁰⁰ Q (x̂ - μ₀)``
==== ============================ ===================================================

Where the report and COCO's code differ, the code wins (it is what COCO computes): f4 makes the
even-indexed (0-based) coordinates of ``x_opt`` positive; f12 draws ``x_opt`` from seed
``s + 10⁶``; f20's reported optimum uses ``4.2096874633`` while its transformation uses
``4.2096874637``; f21/f22 apply ``T_osz`` to ``10 - max`` before squaring.

Every fitness works on ``(..., D)`` arrays and is jittable and vmappable; it computes in the
dtype of ``x``. BBOB targets (``f - f_opt < 1e-8`` with ``|f_opt|`` up to 1000) need float64:
run under ``jax.enable_x64(True)`` with a float64 ``x``. The instance data are NumPy float64
arrays, passed explicitly to :attr:`BBOBProblem.evaluate`, so one compiled program serves every
instance of a function in a dimension (and instances can be vmapped over).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from esjax.base import check_int

NUM_FUNCTIONS = 24

NAMES = {
    1: "sphere",
    2: "ellipsoid_separable",
    3: "rastrigin_separable",
    4: "bueche_rastrigin",
    5: "linear_slope",
    6: "attractive_sector",
    7: "step_ellipsoid",
    8: "rosenbrock",
    9: "rosenbrock_rotated",
    10: "ellipsoid",
    11: "discus",
    12: "bent_cigar",
    13: "sharp_ridge",
    14: "different_powers",
    15: "rastrigin",
    16: "weierstrass",
    17: "schaffers_f7",
    18: "schaffers_f7_ill_conditioned",
    19: "griewank_rosenbrock",
    20: "schwefel",
    21: "gallagher_101",
    22: "gallagher_21",
    23: "katsuura",
    24: "lunacek_bi_rastrigin",
}


class BBOBProblem(NamedTuple):
    """One BBOB problem (function, dimension, instance); its first five fields are
    :class:`esjax.problems.Problem`'s.

    Attributes:
      name: COCO's id, e.g. ``"bbob_f015_i01_d10"``.
      num_dims: dimension ``D``.
      fitness: ``(..., D) -> (...)``, minimised: ``evaluate`` with this instance's data bound,
        as a ``jax.tree_util.Partial`` (a pytree whose leaves are the data), so it can be passed
        into jitted functions as an argument and one program serves every instance.
      x_opt: ``(D,)`` float64 NumPy array, the optimum COCO reports.
      f_opt: the optimal value (a float; ``fitness(x_opt) == f_opt`` up to rounding).
      function_id: 1..24.
      instance: the instance number (>= 1).
      evaluate: ``(data, x) -> f``: the same function with the instance data explicit, so one
        jitted program serves all instances of this function and dimension.
      data: the instance data (a dict of float64 NumPy arrays).
    """

    name: str
    num_dims: int
    fitness: Callable[[jax.Array], jax.Array]
    x_opt: np.ndarray
    f_opt: float
    function_id: int
    instance: int
    evaluate: Callable[[dict, jax.Array], jax.Array]
    data: dict


# --- COCO's legacy random generators (bit-for-bit: integer arithmetic in Python) -------------

_MODULUS = 2147483647  # 2³¹ - 1


def _park_miller(state: int) -> int:
    """One step ``16807 · state mod (2³¹ - 1)`` by Schrage's factorisation (no overflow in C)."""
    high = state // 127773
    state = 16807 * (state - high * 127773) - 2836 * high
    return state + _MODULUS if state < 0 else state


def legacy_uniform(count: int, seed: int) -> np.ndarray:
    """COCO's ``bbob2009_unif``: ``count`` uniforms in (0, 1] from ``seed``.

    A Park-Miller generator, warmed up by 40 draws whose last 32 fill a shuffle table; each
    output is the table entry picked by the previous output (Bays-Durham shuffle).
    """
    state = max(abs(int(seed)), 1)
    table = [0] * 32
    for i in range(39, -1, -1):
        state = _park_miller(state)
        if i < 32:
            table[i] = state
    previous = table[0]
    out = np.empty(count)
    for i in range(count):
        state = _park_miller(state)
        slot = previous // 67108865  # 32 slots of 2³¹ / 32
        previous = table[slot]
        table[slot] = state
        out[i] = previous / 2.147483647e9
    out[out == 0.0] = 1e-99
    return out


def legacy_normal(count: int, seed: int) -> np.ndarray:
    """COCO's ``bbob2009_gauss``: Box-Muller on ``2 count`` legacy uniforms."""
    u = legacy_uniform(2 * count, seed)
    g = np.sqrt(-2.0 * np.log(u[:count])) * np.cos(2.0 * math.pi * u[count:])
    g[g == 0.0] = 1e-99
    return g


def legacy_rotation(num_dims: int, seed: int) -> np.ndarray:
    """COCO's ``bbob2009_compute_rotation``: Gram-Schmidt on normal columns.

    Entry ``(i, j)`` starts as normal number ``j D + i``; column ``i`` is then made orthogonal to
    columns ``0..i-1`` (in that order, with the updated column) and normalised.
    """
    b = legacy_normal(num_dims * num_dims, seed).reshape(num_dims, num_dims).T.copy()
    for i in range(num_dims):
        for j in range(i):
            b[:, i] -= np.dot(b[:, i], b[:, j]) * b[:, j]
        b[:, i] /= math.sqrt(np.dot(b[:, i], b[:, i]))
    return b


def legacy_xopt(num_dims: int, seed: int) -> np.ndarray:
    """COCO's ``bbob2009_compute_xopt``: uniform on a 10⁻⁴ grid in [-4, 4), never exactly 0."""
    x = 8.0 * np.floor(1e4 * legacy_uniform(num_dims, seed)) / 1e4 - 4.0
    x[x == 0.0] = -1e-5
    return x


def legacy_fopt(function_id: int, instance: int) -> float:
    """COCO's ``bbob2009_compute_fopt``: a Cauchy-like offset rounded to 0.01, in [-1000, 1000]."""
    base = {4: 3, 18: 17}.get(function_id, function_id)
    seed = base + 10000 * instance
    ratio = legacy_normal(1, seed)[0] / legacy_normal(1, seed + 1)[0]
    return float(min(1000.0, max(-1000.0, math.floor(100.0 * 100.0 * ratio + 0.5) / 100.0)))


def _scales(alpha: float, num_dims: int) -> np.ndarray:
    """The diagonal of ``Λ^α``: ``√α^(i/(D-1))``."""
    return math.sqrt(alpha) ** (np.arange(num_dims) / (num_dims - 1))


def _rotations(num_dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R, Q)``: COCO's two rotations of a seed (``R`` from ``seed + 10⁶``)."""
    return legacy_rotation(num_dims, seed + 1_000_000), legacy_rotation(num_dims, seed)


def _sandwich(num_dims: int, seed: int, alpha: float) -> np.ndarray:
    """``R Λ^α Q``, the rotated ill-conditioning several functions share."""
    r, q = _rotations(num_dims, seed)
    return (r * _scales(alpha, num_dims)) @ q


# --- transformations (on the last axis) ------------------------------------------------------


def t_osz(x: jax.Array) -> jax.Array:
    """``T_osz``: smooth, monotone, symmetric-breaking oscillations of each entry (0 stays 0)."""
    positive = x > 0
    log_abs = jnp.log(jnp.where(x == 0, 1.0, jnp.abs(x)))
    c1 = jnp.where(positive, 10.0, 5.5)
    c2 = jnp.where(positive, 7.9, 3.1)
    y = jnp.exp(log_abs + 0.049 * (jnp.sin(c1 * log_abs) + jnp.sin(c2 * log_abs)))
    return jnp.where(x == 0, 0.0, jnp.where(positive, y, -y))


def t_asy(x: jax.Array, beta: float) -> jax.Array:
    """``T_asy^β``: positive entries ``x_i`` become ``x_i^(1 + β i/(D-1) √x_i)``."""
    n = x.shape[-1]
    slope = beta * jnp.arange(n, dtype=x.dtype) / (n - 1)
    safe = jnp.where(x > 0, x, 1.0)
    return jnp.where(x > 0, safe ** (1.0 + slope * jnp.sqrt(safe)), x)


def f_pen(x: jax.Array) -> jax.Array:
    """``Σ max(0, |x_i| - 5)²``: zero inside ``[-5, 5]^D``."""
    return jnp.sum(jnp.square(jnp.maximum(jnp.abs(x) - 5.0, 0.0)), axis=-1)


def _round(x: jax.Array) -> jax.Array:
    """Half-up rounding ``⌊x + 1/2⌋`` as COCO does (``jnp.round`` rounds half to even)."""
    return jnp.floor(x + 0.5)


def _rastrigin(z: jax.Array) -> jax.Array:
    n = z.shape[-1]
    return 10.0 * (n - jnp.sum(jnp.cos(2 * jnp.pi * z), axis=-1)) + jnp.sum(z * z, axis=-1)


def _powers(base: float, x: jax.Array) -> jax.Array:
    """``base^(i/(D-1))`` for the last axis of ``x``, in its dtype."""
    n = x.shape[-1]
    return jnp.asarray(base ** (np.arange(n) / (n - 1)), x.dtype)


def _apply(matrix: jax.Array, x: jax.Array) -> jax.Array:
    """``M x`` on the last axis (``x`` may have leading axes)."""
    return x @ matrix.T


# --- the functions: (data, x) -> f, with data cast to x's dtype ------------------------------


def _f1(d, x):
    return jnp.sum(jnp.square(x - d["xopt"]), axis=-1) + d["fopt"]


def _f2(d, x):
    z = t_osz(x - d["xopt"])
    return jnp.sum(_powers(1e6, x) * z * z, axis=-1) + d["fopt"]


def _f3(d, x):
    z = _powers(math.sqrt(10.0), x) * t_asy(t_osz(x - d["xopt"]), 0.2)
    return _rastrigin(z) + d["fopt"]


def _f4(d, x):
    y = t_osz(x - d["xopt"])
    n = x.shape[-1]
    even = jnp.asarray(np.arange(n) % 2 == 0)
    z = _powers(math.sqrt(10.0), x) * jnp.where((y > 0) & even, 10.0, 1.0) * y
    return _rastrigin(z) + d["fopt"] + 100.0 * f_pen(x)


def _f5(d, x):
    s, xopt = d["slope"], d["xopt"]
    # Beyond the optimum's face of the box (x_opt,i x_i >= 25) the slope is flat at x_opt,i.
    z = jnp.where(xopt * x < 25.0, x, xopt)
    return jnp.sum(5.0 * jnp.abs(s) - s * z, axis=-1) + d["fopt"]


def _f6(d, x):
    z = _apply(d["M"], x - d["xopt"])
    raw = jnp.sum(jnp.where(z * d["xopt"] > 0, 1e4, 1.0) * z * z, axis=-1)
    return t_osz(raw) ** 0.9 + d["fopt"]


def _f7(d, x):
    z_hat = _apply(d["LQ"], x - d["xopt"])
    z_tilde = jnp.where(jnp.abs(z_hat) > 0.5, _round(z_hat), _round(10.0 * z_hat) / 10.0)
    z = _apply(d["R"], z_tilde)
    core = jnp.sum(_powers(100.0, x) * z * z, axis=-1)
    return 0.1 * jnp.maximum(1e-4 * jnp.abs(z_hat[..., 0]), core) + f_pen(x) + d["fopt"]


def _rosenbrock(z):
    head, tail = z[..., :-1], z[..., 1:]
    return 100.0 * jnp.sum(jnp.square(head * head - tail), axis=-1) + jnp.sum(
        jnp.square(head - 1.0), axis=-1
    )


def _f8(d, x):
    n = x.shape[-1]
    return _rosenbrock(max(1.0, math.sqrt(n) / 8.0) * (x - d["xopt"]) + 1.0) + d["fopt"]


def _f9(d, x):
    return _rosenbrock(_apply(d["M"], x) + 0.5) + d["fopt"]


def _f10(d, x):
    z = t_osz(_apply(d["R"], x - d["xopt"]))
    return jnp.sum(_powers(1e6, x) * z * z, axis=-1) + d["fopt"]


def _f11(d, x):
    z = t_osz(_apply(d["R"], x - d["xopt"]))
    return 1e6 * z[..., 0] ** 2 + jnp.sum(z[..., 1:] ** 2, axis=-1) + d["fopt"]


def _f12(d, x):
    z = _apply(d["R"], t_asy(_apply(d["R"], x - d["xopt"]), 0.5))
    return z[..., 0] ** 2 + 1e6 * jnp.sum(z[..., 1:] ** 2, axis=-1) + d["fopt"]


def _f13(d, x):
    z = _apply(d["M"], x - d["xopt"])
    ridge = jnp.sqrt(jnp.sum(z[..., 1:] ** 2, axis=-1))
    return z[..., 0] ** 2 + 100.0 * ridge + d["fopt"]


def _f14(d, x):
    z = _apply(d["R"], x - d["xopt"])
    n = x.shape[-1]
    exponents = jnp.asarray(2.0 + 4.0 * np.arange(n) / (n - 1), x.dtype)
    return jnp.sqrt(jnp.sum(jnp.abs(z) ** exponents, axis=-1)) + d["fopt"]


def _f15(d, x):
    z = _apply(d["M"], t_asy(t_osz(_apply(d["R"], x - d["xopt"])), 0.2))
    return _rastrigin(z) + d["fopt"]


# Weierstrass: a_k = 2⁻ᵏ, b_k = 3ᵏ, k = 0..11, and f0 = Σ a_k cos(π b_k) its value at z = 0.
_WEIERSTRASS_K = np.arange(12)
_WEIERSTRASS_F0 = float(np.sum(0.5**_WEIERSTRASS_K * np.cos(np.pi * 3.0**_WEIERSTRASS_K)))


def _f16(d, x):
    z = _apply(d["M"], t_osz(_apply(d["R"], x - d["xopt"])))
    a = jnp.asarray(0.5**_WEIERSTRASS_K, x.dtype)
    b = jnp.asarray(3.0**_WEIERSTRASS_K, x.dtype)
    terms = a * jnp.cos(2 * jnp.pi * (z[..., None] + 0.5) * b)
    n = x.shape[-1]
    mean = jnp.sum(terms, axis=(-2, -1)) / n
    return 10.0 * (mean - _WEIERSTRASS_F0) ** 3 + 10.0 / n * f_pen(x) + d["fopt"]


def _f17(d, x):
    z = _apply(d["M"], t_asy(_apply(d["R"], x - d["xopt"]), 0.5))
    s = z[..., :-1] ** 2 + z[..., 1:] ** 2
    n = x.shape[-1]
    core = jnp.sum(s**0.25 * (1.0 + jnp.sin(50.0 * s**0.1) ** 2), axis=-1) / (n - 1)
    return core**2 + 10.0 * f_pen(x) + d["fopt"]


def _f19(d, x):
    z = _apply(d["M"], x) + 0.5
    s = 100.0 * jnp.square(z[..., :-1] ** 2 - z[..., 1:]) + jnp.square(1.0 - z[..., :-1])
    n = x.shape[-1]
    return 10.0 + 10.0 * jnp.sum(s / 4000.0 - jnp.cos(s), axis=-1) / (n - 1) + d["fopt"]


def _f20(d, x):
    x_hat = 2.0 * d["signs"] * x
    two_abs = 2.0 * jnp.abs(d["xopt"])
    # ẑ_i = x̂_i + (x̂_{i-1} - 2|x_opt,i-1|) / 4 for i >= 1, ẑ_0 = x̂_0.
    coupling = 0.25 * (x_hat[..., :-1] - two_abs[:-1])
    z_hat = jnp.concatenate([x_hat[..., :1], x_hat[..., 1:] + coupling], axis=-1)
    z = 100.0 * (_powers(math.sqrt(10.0), x) * (z_hat - two_abs) + two_abs)
    n = x.shape[-1]
    penalty = jnp.sum(jnp.square(jnp.maximum(jnp.abs(z) - 500.0, 0.0)), axis=-1)
    core = jnp.sum(z * jnp.sin(jnp.sqrt(jnp.abs(z))), axis=-1) / n
    return 0.01 * (penalty + 418.9828872724339 - core) + d["fopt"]


def _f21(d, x):
    # Peaks y_i (rows of "peaks", already rotated) with weights w_i and diagonal scales C_i.
    rotated = _apply(d["R"], x)
    diff = rotated[..., None, :] - d["peaks"]
    n = x.shape[-1]
    heights = d["weights"] * jnp.exp(-0.5 / n * jnp.sum(d["scales"] * diff * diff, axis=-1))
    # COCO takes the max starting from 0 (all heights are positive, so the same max).
    value = t_osz(10.0 - jnp.maximum(jnp.max(heights, axis=-1), 0.0))
    return value**2 + f_pen(x) + d["fopt"]


def _f23(d, x):
    z = _apply(d["M"], x - d["xopt"])
    powers = jnp.asarray(2.0 ** np.arange(1, 33), x.dtype)
    scaled = z[..., None] * powers
    sums = jnp.sum(jnp.abs(scaled - _round(scaled)) / powers, axis=-1)
    n = x.shape[-1]
    factors = 1.0 + jnp.arange(1, n + 1, dtype=x.dtype) * sums
    product = jnp.prod(factors, axis=-1)
    return 10.0 / n**2 * (product ** (10.0 / n**1.2) - 1.0) + f_pen(x) + d["fopt"]


_LUNACEK_MU0 = 2.5


def _f24(d, x):
    n = x.shape[-1]
    s = 1.0 - 0.5 / (math.sqrt(n + 20) - 4.1)
    mu1 = -math.sqrt((_LUNACEK_MU0**2 - 1.0) / s)
    x_hat = 2.0 * jnp.sign(d["xopt"]) * x
    z = _apply(d["M"], x_hat - _LUNACEK_MU0)
    sphere0 = jnp.sum(jnp.square(x_hat - _LUNACEK_MU0), axis=-1)
    sphere1 = n + s * jnp.sum(jnp.square(x_hat - mu1), axis=-1)
    rastrigin = 10.0 * (n - jnp.sum(jnp.cos(2 * jnp.pi * z), axis=-1))
    return jnp.minimum(sphere0, sphere1) + rastrigin + 1e4 * f_pen(x) + d["fopt"]


_EVALUATE: dict[int, Callable] = {
    1: _f1,
    2: _f2,
    3: _f3,
    4: _f4,
    5: _f5,
    6: _f6,
    7: _f7,
    8: _f8,
    9: _f9,
    10: _f10,
    11: _f11,
    12: _f12,
    13: _f13,
    14: _f14,
    15: _f15,
    16: _f16,
    17: _f17,
    18: _f17,
    19: _f19,
    20: _f20,
    21: _f21,
    22: _f21,
    23: _f23,
    24: _f24,
}


# --- instance data: (data, x_opt) from COCO's generators -------------------------------------


def _gallagher(n: int, seed: int, num_peaks: int) -> tuple[dict, np.ndarray]:
    """Peaks, weights and scales of f21 (101 peaks) / f22 (21 peaks), as COCO draws them."""
    if num_peaks == 101:
        first_condition, spread, offset = math.sqrt(1000.0), 10.0, 5.0
    else:
        first_condition, spread, offset = 1000.0, 9.8, 4.9
    rotation = legacy_rotation(n, seed)
    # Conditions 1000^(j/(p-2)) assigned to peaks 1..p-1 in the order of sorted uniforms.
    order = np.argsort(legacy_uniform(num_peaks - 1, seed), kind="stable")
    conditions = np.concatenate([[first_condition], 1000.0 ** (order / (num_peaks - 2))])
    weights = np.concatenate([[10.0], 1.1 + 8.0 * np.arange(num_peaks - 1) / (num_peaks - 2)])
    scales = np.empty((num_peaks, n))
    for i in range(num_peaks):
        ranks = np.argsort(legacy_uniform(n, seed + 1000 * i), kind="stable")
        scales[i] = conditions[i] ** (ranks / (n - 1) - 0.5)
    centres = spread * legacy_uniform(n * num_peaks, seed).reshape(num_peaks, n) - offset
    centres[0] *= 0.8  # the global peak lies in [-4, 4]^D
    peaks = centres @ rotation.T
    return {"R": rotation, "peaks": peaks, "weights": weights, "scales": scales}, centres[0]


def _instance(function_id: int, n: int, instance: int) -> tuple[dict, np.ndarray]:
    """The instance data of ``function_id`` (without ``fopt``) and its ``x_opt``."""
    seed = {4: 3, 18: 17}.get(function_id, function_id) + 10000 * instance
    f = function_id
    if f in (1, 2, 3):
        xopt = legacy_xopt(n, seed)
        return {"xopt": xopt}, xopt
    if f == 4:
        xopt = legacy_xopt(n, seed)
        xopt[::2] = np.abs(xopt[::2])
        return {"xopt": xopt}, xopt
    if f == 5:
        sign = np.where(legacy_xopt(n, seed) < 0, -1.0, 1.0)
        slope = sign * 10.0 ** (np.arange(n) / (n - 1))
        return {"slope": slope, "xopt": 5.0 * sign}, 5.0 * sign
    if f in (6, 13):
        xopt = legacy_xopt(n, seed)
        return {"xopt": xopt, "M": _sandwich(n, seed, 10.0)}, xopt
    if f == 7:
        r, q = _rotations(n, seed)
        xopt = legacy_xopt(n, seed)
        return {"xopt": xopt, "LQ": _scales(10.0, n)[:, None] * q, "R": r}, xopt
    if f == 8:
        xopt = 0.75 * legacy_xopt(n, seed)
        return {"xopt": xopt}, xopt
    if f in (9, 19):
        factor = max(1.0, math.sqrt(n) / 8.0)
        rotation = legacy_rotation(n, seed)
        return {"M": factor * rotation}, rotation.sum(axis=0) / (2.0 * factor)
    if f in (10, 11, 14):
        xopt = legacy_xopt(n, seed)
        return {"xopt": xopt, "R": legacy_rotation(n, seed + 1_000_000)}, xopt
    if f == 12:
        xopt = legacy_xopt(n, seed + 1_000_000)
        return {"xopt": xopt, "R": legacy_rotation(n, seed + 1_000_000)}, xopt
    if f in (15, 16, 23):
        alpha = {15: 10.0, 16: 0.01, 23: 100.0}[f]
        xopt = legacy_xopt(n, seed)
        data = {"xopt": xopt, "M": _sandwich(n, seed, alpha)}
        if f != 23:
            data["R"] = legacy_rotation(n, seed + 1_000_000)
        return data, xopt
    if f in (17, 18):
        r, q = _rotations(n, seed)
        condition = 10.0 if f == 17 else 1000.0
        xopt = legacy_xopt(n, seed)
        return {"xopt": xopt, "M": _scales(condition, n)[:, None] * q, "R": r}, xopt
    if f == 20:
        signs = np.where(legacy_uniform(n, seed) < 0.5, -1.0, 1.0)
        # The transformation uses 4.2096874637; COCO reports the optimum with ...633.
        return {"xopt": signs * 0.5 * 4.2096874637, "signs": signs}, signs * 0.5 * 4.2096874633
    if f in (21, 22):
        return _gallagher(n, seed, 101 if f == 21 else 21)
    # f24: x_opt = ±μ₀/2 with the signs of normals (not uniforms) of the seed.
    xopt = np.where(legacy_normal(n, seed) < 0, -0.5, 0.5) * _LUNACEK_MU0
    return {"xopt": xopt, "M": _sandwich(n, seed, 100.0)}, xopt


def _evaluate(function_id: int, data: dict, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    cast = {name: jnp.asarray(value, x.dtype) for name, value in data.items()}
    return _EVALUATE[function_id](cast, x)


# One evaluator object per function, so that the Partial fitness of every instance has the same
# tree structure (jit caches and the restart drivers then reuse one program for all instances).
_EVALUATORS = {f: partial(_evaluate, f) for f in _EVALUATE}


def bbob_function(function_id: int, num_dims: int, instance: int = 1) -> BBOBProblem:
    """COCO's BBOB problem ``f<function_id>`` in dimension ``num_dims``, instance ``instance``.

    Args:
      function_id: 1..24 (see the module docstring for the table).
      num_dims: ``D`` (>= 2; COCO's suite uses 2, 3, 5, 10, 20, 40).
      instance: COCO's instance number (>= 1; the suite's current instances are 1-5 and 71-80,
        earlier workshops used others); it seeds ``x_opt``, ``f_opt`` and the rotations.

    Returns:
      A :class:`BBOBProblem`; ``fitness`` maps ``(..., D)`` to ``(...)`` and is minimised.

    Example:
      >>> problem = bbob_function(15, 10, instance=1)
      >>> with jax.enable_x64(True):
      ...     value = problem.fitness(jnp.zeros(10, jnp.float64))
    """
    function_id = check_int("function_id", function_id, 1, NUM_FUNCTIONS)
    num_dims = check_int("num_dims", num_dims, 2)
    instance = check_int("instance", instance, 1)
    data, x_opt = _instance(function_id, num_dims, instance)
    f_opt = legacy_fopt(function_id, instance)
    data["fopt"] = np.float64(f_opt)
    evaluate = _EVALUATORS[function_id]
    return BBOBProblem(
        name=f"bbob_f{function_id:03d}_i{instance:02d}_d{num_dims:02d}",
        num_dims=num_dims,
        fitness=jax.tree_util.Partial(evaluate, data),
        x_opt=np.asarray(x_opt, np.float64),
        f_opt=f_opt,
        function_id=function_id,
        instance=instance,
        evaluate=evaluate,
        data=data,
    )


__all__ = [
    "NAMES",
    "NUM_FUNCTIONS",
    "BBOBProblem",
    "bbob_function",
    "f_pen",
    "legacy_fopt",
    "legacy_normal",
    "legacy_rotation",
    "legacy_uniform",
    "legacy_xopt",
    "t_asy",
    "t_osz",
]
