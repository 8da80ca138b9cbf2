"""Fitness shaping: plain functions from raw fitness to the weights strategies use.

Every strategy minimises, so *lower* fitness is better everywhere here. Non-finite fitness (NaN,
``+inf`` or ``-inf``: a diverged network, a crashed simulation) is mapped to the worst value by
:func:`sanitize` before any ranking, so it can never pull a mean or covariance towards itself.
Ties share the average of their ranks, so shaping never invents an order that is not there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sanitize(fitness: jax.Array) -> jax.Array:
    """Replace NaN and ±inf by ``+inf`` (the worst value when minimising)."""
    fitness = jnp.asarray(fitness)
    return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


def ranks(fitness: jax.Array) -> jax.Array:
    """0-based ranks, best (lowest) first; ties get the mean of their ranks; non-finite last.

    Returns a float array of the same shape as ``fitness`` with values in ``[0, n - 1]``.
    """
    return _rank_sums(fitness).astype(jnp.result_type(float)) / 2


def _rank_sums(fitness: jax.Array) -> jax.Array:
    # first + last rank of each member's tie group: an integer, twice the member's rank, so
    # every derived score is one correctly rounded division of exact integers.
    fitness = sanitize(fitness)
    ordered = jnp.sort(fitness)
    first = jnp.searchsorted(ordered, fitness, side="left")
    last = jnp.searchsorted(ordered, fitness, side="right") - 1
    return first + last


def centered_ranks(fitness: jax.Array) -> jax.Array:
    """Ranks scaled to ``[-0.5, 0.5]``: the best member gets -0.5, the worst +0.5.

    The shaping of Salimans et al. (2017): invariant to monotone transforms of the fitness and
    robust to outliers. The result sums to zero (a lone member, which has no rank, gets 0).
    """
    n = fitness.shape[-1]
    if n == 1:
        return jnp.zeros(fitness.shape, jnp.result_type(float))
    # (2 rank - (n - 1)) / (2 (n - 1)), from integers: tied members get the same score, and a
    # generation where all tie shapes to exactly 0. As rank / (n - 1) - 0.5 it left a rounding
    # residue (-2.8e-17 per member, measured), and one that differs between members is a
    # nonzero gradient, which ClipUp normalises into a full step (tests/test_pgpe.py's all-NaN
    # generation moved under XLA_FLAGS=--xla_cpu_use_fusion_emitters=false).
    centred = (_rank_sums(fitness) - (n - 1)).astype(jnp.result_type(float))
    return centred / (2 * (n - 1))


def z_score(fitness: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``(f - mean) / std`` over the finite entries; non-finite entries get the worst finite score.

    If no entry is finite, returns zeros.
    """
    fitness = jnp.asarray(fitness)
    finite = jnp.isfinite(fitness)
    count = jnp.maximum(jnp.sum(finite), 1)
    mean = jnp.sum(jnp.where(finite, fitness, 0.0)) / count
    var = jnp.sum(jnp.where(finite, (fitness - mean) ** 2, 0.0)) / count
    scores = jnp.where(finite, (fitness - mean) / jnp.sqrt(var + eps), 0.0)
    worst = jnp.max(jnp.where(finite, scores, -jnp.inf))
    return jnp.where(finite, scores, jnp.where(jnp.isfinite(worst), worst, 0.0))


def log_rank_weights(population_size: int, num_parents: int | None = None) -> jax.Array:
    """CMA-ES recombination weights ``w_i ∝ ln((λ+1)/2) - ln i`` for the best ``μ`` ranks.

    Positive, decreasing and summing to one over ``i = 1..μ``; zero beyond ``μ``.
    Default ``μ = ⌊λ/2⌋`` (Hansen 2016, eq. 49 without the negative part).
    """
    if num_parents is None:
        num_parents = population_size // 2
    i = jnp.arange(1, population_size + 1)
    raw = jnp.log((population_size + 1) / 2) - jnp.log(i)
    raw = jnp.where(i <= num_parents, raw, 0.0)
    return raw / jnp.sum(raw)


def rank_weights(fitness: jax.Array, weights: jax.Array) -> jax.Array:
    """Assign ``weights`` (sorted best-first) to members by their fitness rank.

    Member with the k-th lowest fitness gets ``weights[k]``; ties are broken by index and
    non-finite fitness counts as worst.
    """
    order = jnp.argsort(sanitize(fitness), stable=True)
    return jnp.zeros_like(weights).at[order].set(weights)


def l2_penalty(population: jax.Array, coeff: float | jax.Array) -> jax.Array:
    """Weight-decay term ``coeff * ||x||²`` per member, to add to a minimised fitness.

    Args:
      population: ``(population_size, num_dims)``.
      coeff: non-negative penalty coefficient.

    Returns:
      ``(population_size,)`` penalties.
    """
    return coeff * jnp.sum(jnp.square(population), axis=-1)


__all__ = [
    "centered_ranks",
    "l2_penalty",
    "log_rank_weights",
    "rank_weights",
    "ranks",
    "sanitize",
    "z_score",
]
