"""Low-rank ES (EGGROLL): OpenAI-ES whose weight-matrix perturbations are rank-``r`` products.

Reference: Sarkar, Fellows, Duque et al., "Evolution Strategies at the Hyperscale", 2025,
arXiv:2511.16652 (EGGROLL). The estimator and the optimizer step are those of OpenAI-ES
(Salimans, Ho, Chen, Sidor & Sutskever 2017, arXiv:1703.03864; :mod:`esjax.strategies.openai_es`).

Noise. Member ``i`` is ``x_i = θ + σ ε_i``. For every 2-D leaf of ``x0`` (a Dense kernel
``W ∈ R^{m×n}``) the block of ``ε_i`` is the rank-``r`` matrix::

    E_i = A_i B_iᵀ / √r,       A_i ∈ R^{m×r}, B_i ∈ R^{n×r} with i.i.d. N(0, 1) entries

(``r = min(rank, m, n)``), whose entries have mean 0 and variance 1 like full-rank noise; every
other leaf (biases, scales, and kernels of 3 or more dimensions such as convolution kernels) gets
full-rank ``N(0, I)`` noise. With ``antithetic`` member ``i + n/2`` uses ``-A_i`` (so
``ε_{i+n/2} = -ε_i``). All factors of member ``i`` are one row of
:func:`esjax.prng.member_normals` under the generation's key (or a slice of a shared
:class:`esjax.prng.NoiseTable`): a function of ``(key, i)``.

Update. As in OpenAI-ES, ``g = 1 / (n σ) Σ_i u_i ε_i`` with ``u = centered_ranks(f)`` (or
z-scores, or raw fitness), handed to an optax optimizer that descends it. For a matrix leaf
``Σ_i u_i A_i B_iᵀ`` is formed as one product ``(A diag(u)) Bᵀ`` of the ``(m, n·r)`` and
``(n, n·r)`` stacks of factors: a full-rank ``m × n`` update, and no ``(population, m, n)``
array. ``σ`` decays geometrically to ``sigma_limit``. (No weight-decay term: use
``optimizer=optax.adamw(...)`` for decoupled weight decay.)

Two evaluation paths.

* **Generic** (black-box ``fitness_fn``, ``ask``/``tell``, any driver): the decomposition's
  ``sample`` materialises full member rows ``θ + σ ε_i``, and the sum ``Σ u_i (x_i - θ)`` is
  taken over them, exactly as OpenAI-ES does; any fitness function works.
* **Fused** (:mod:`esjax.lowrank`): a fitness built by :func:`esjax.nn.dataset_fitness` is
  evaluated from ``(θ, factors)`` without member weights (``x W + σ (x A_i) B_iᵀ``), and the
  sum is taken from the factors (:meth:`LowRankNoise.weighted_sum`).

The strategy declares its sharded decomposition (:class:`esjax.base.Decomposition`), so
:mod:`esjax.distributed` runs the generic path sharded moving only fitness values and one
``(num_dims,)`` sum; the fused path does the same in :mod:`esjax.lowrank`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from esjax import shaping
from esjax.base import (
    Capabilities,
    Decomposition,
    Strategy,
    StrategyState,
    check_int,
    make_strategy,
)
from esjax.flatten import FlatSpec
from esjax.prng import NoiseTable, member_normals
from esjax.strategies.openai_es import (
    check_estimator_arguments,
    estimator_step,
    shaped_fitness,
    weighted_deviation_sum,
)


@struct.dataclass
class LowRankESParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    Attributes:
      sigma: initial noise standard deviation ``σ`` (> 0).
      sigma_decay: multiplicative decay of ``σ`` per generation, in (0, 1].
      sigma_limit: floor for ``σ`` (>= 0).
    """

    sigma: float | jax.Array
    sigma_decay: float | jax.Array
    sigma_limit: float | jax.Array


PARAM_RANGES = {
    "sigma": (0.0, None, False, True),
    "sigma_decay": (0.0, 1.0, False, True),
    "sigma_limit": (0.0, None),
}


@struct.dataclass
class LowRankESState(StrategyState):
    """Low-rank ES state: search mean, current σ, optimizer state and hyperparameters."""

    mean: jax.Array
    sigma: jax.Array
    opt_state: optax.OptState
    params: LowRankESParams


class LowRankFactor(NamedTuple):
    """The factors of ``k`` members' perturbations of one ``(m, n)`` leaf: ``E_i = a_i b_iᵀ``.

    Attributes:
      a: ``(k, m, r)``, already scaled by ``1/√r`` and by the antithetic sign.
      b: ``(k, n, r)``.
    """

    a: jax.Array
    b: jax.Array


def leaf_ranks(spec: FlatSpec, rank: int) -> tuple[int | None, ...]:
    """Per leaf of ``spec``: the rank ``min(rank, m, n)`` of a 2-D leaf, None for full noise."""
    return tuple(min(rank, *shape) if len(shape) == 2 else None for shape in spec.shapes)


def noise_width(spec: FlatSpec, rank: int) -> int:
    """Normals one member draws: ``(m + n) r`` per 2-D leaf, the leaf's size for the others."""
    return sum(
        (shape[0] + shape[1]) * r if r is not None else math.prod(shape)
        for shape, r in zip(spec.shapes, leaf_ranks(spec, rank), strict=True)
    )


@dataclasses.dataclass(frozen=True)
class LowRankNoise:
    """How low-rank ES turns ``(key, i)`` into member ``i``'s perturbation.

    It is the decomposition's ``sample`` (call it as ``noise(key, state, indices)`` for full
    member rows) and carries the pieces the fused path needs: :meth:`factors` (what a member
    is, without its weights) and :meth:`weighted_sum` (the update's sum from the factors).
    A static object (hashable, no arrays), so the strategy can close over it.

    Attributes:
      population_size: members per generation.
      rank: the requested rank ``r`` (each 2-D leaf uses ``min(r, m, n)``).
      antithetic: mirrored pairs ``ε_{i+n/2} = -ε_i``.
      table: a :class:`~esjax.prng.NoiseTable` to read the normals from, or None to generate.
    """

    population_size: int
    rank: int
    antithetic: bool
    table: NoiseTable | None = None

    def factors(self, key: jax.Array, state: StrategyState, indices: jax.Array) -> tuple:
        """The perturbation factors of the members ``indices`` (a function of ``(key, i)``).

        Returns:
          One entry per leaf of ``state.spec``: a :class:`LowRankFactor` for 2-D leaves, else
          ``(k, *leaf_shape)`` full-rank noise; in the search dtype.
        """
        spec, dtype = state.spec, state.mean.dtype
        indices = jnp.asarray(indices)
        half = self.population_size // 2
        if self.antithetic:
            base, sign = indices % half, jnp.where(indices < half, 1.0, -1.0)
        else:
            base, sign = indices, jnp.ones(indices.shape)
        sign = sign.astype(dtype)
        ranks = leaf_ranks(spec, self.rank)
        draws = member_normals(key, base, noise_width(spec, self.rank), dtype, self.table)
        k, offset, out = indices.shape[0], 0, []
        for shape, r in zip(spec.shapes, ranks, strict=True):
            if r is None:
                size = math.prod(shape)
                block = draws[:, offset : offset + size] * sign[:, None]
                out.append(block.reshape((k, *shape)))
                offset += size
                continue
            m, n = shape
            # 1/√r keeps every entry of A Bᵀ / √r at unit variance, whatever the rank.
            scale = (sign / math.sqrt(r))[:, None, None]
            a = draws[:, offset : offset + m * r].reshape(k, m, r) * scale
            offset += m * r
            b = draws[:, offset : offset + n * r].reshape(k, n, r)
            offset += n * r
            out.append(LowRankFactor(a, b))
        return tuple(out)

    def deviations(self, spec: FlatSpec, factors: tuple) -> jax.Array:
        """``(k, num_dims)`` noise rows ``ε_i`` (materialised: ``k × num_dims`` numbers)."""
        blocks = []
        for factor in factors:
            if isinstance(factor, LowRankFactor):
                dense = jnp.einsum("kmr,knr->kmn", factor.a, factor.b)
                blocks.append(dense.reshape(dense.shape[0], -1))
            else:
                blocks.append(factor.reshape(factor.shape[0], -1))
        return jnp.concatenate(blocks, axis=1)

    def weighted_sum(self, spec: FlatSpec, factors: tuple, weights: jax.Array) -> jax.Array:
        """``Σ_i w_i ε_i`` as a flat ``(num_dims,)`` vector, straight from the factors.

        A matrix leaf's ``Σ_i w_i a_i b_iᵀ`` is one contraction over members and rank,
        ``(a · w)`` against ``b``: an ``(m, n)`` result and no ``(k, m, n)`` intermediate.
        """
        wide = jnp.promote_types(weights.dtype, jnp.float32)
        blocks = []
        for factor in factors:
            if isinstance(factor, LowRankFactor):
                weighted = factor.a * weights[:, None, None].astype(factor.a.dtype)
                total = jax.lax.dot_general(
                    weighted, factor.b, (((0, 2), (0, 2)), ((), ())), preferred_element_type=wide
                )
            else:
                flat = factor.reshape(factor.shape[0], -1)
                total = jnp.matmul(weights.astype(flat.dtype), flat, preferred_element_type=wide)
            blocks.append(total.reshape(-1))
        return jnp.concatenate(blocks).astype(weights.dtype)

    def population_factors(self, key: jax.Array, state: StrategyState) -> tuple:
        """:meth:`factors` of the whole population, each mirrored pair drawn once (generated
        noise) or read twice (a table: reading is cheaper than concatenating)."""
        if not self.antithetic or self.table is not None:
            return self.factors(key, state, jnp.arange(self.population_size))
        half = self.factors(key, state, jnp.arange(self.population_size // 2))
        return tuple(mirror(factor) for factor in half)

    def __call__(self, key: jax.Array, state: StrategyState, indices: jax.Array) -> jax.Array:
        """Full member rows ``θ + σ ε_i`` (the decomposition's ``sample``; generic path)."""
        deviations = self.deviations(state.spec, self.factors(key, state, indices))
        return state.mean + state.sigma * deviations


def mirror(factor: LowRankFactor | jax.Array) -> LowRankFactor | jax.Array:
    """Members ``0..h-1``'s factors followed by their antithetic twins ``h..2h-1``."""
    if isinstance(factor, LowRankFactor):
        return LowRankFactor(
            jnp.concatenate([factor.a, -factor.a]), jnp.concatenate([factor.b, factor.b])
        )
    return jnp.concatenate([factor, -factor])


def low_rank_noise(es: Strategy) -> LowRankNoise | None:
    """The :class:`LowRankNoise` of a low-rank ES strategy, None for any other strategy."""
    decomposition = es.capabilities.decomposition
    sample = None if decomposition is None else decomposition.sample
    return sample if isinstance(sample, LowRankNoise) else None


def low_rank_es(
    population_size: int,
    rank: int = 1,
    sigma: float = 0.05,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    sigma_decay: float = 1.0,
    sigma_limit: float = 0.0,
    antithetic: bool = True,
    fitness_shaping: str = "centered_ranks",
    noise: NoiseTable | None = None,
) -> Strategy:
    """Build low-rank ES (EGGROLL, Sarkar et al. 2025) with OpenAI-ES's estimator and step.

    Args:
      population_size: members per generation (>= 2; even when ``antithetic``).
      rank: rank ``r`` of each 2-D leaf's perturbation (>= 1; capped at ``min(m, n)``).
      sigma: initial noise scale ``σ`` (> 0). The default 0.05 suits neural-network weights.
      learning_rate: Adam learning rate when ``optimizer`` is not given (default 0.01).
      optimizer: any optax transformation; it receives the ES gradient estimate.
      sigma_decay: ``σ ← max(σ · sigma_decay, sigma_limit)`` after each generation, in (0, 1].
      sigma_limit: floor for ``σ`` (>= 0).
      antithetic: mirrored sampling ``ε_{i+n/2} = -ε_i``.
      fitness_shaping: ``"centered_ranks"`` (default), ``"z_score"`` or ``"raw"``.
      noise: ``None`` generates the factors from ``(key, i)``; an
        :class:`esjax.prng.NoiseTable` reads them as slices of that shared table.

    Returns:
      A :class:`~esjax.base.Strategy` that minimises. ``ask``/``tell`` and every driver work
      with any fitness function (materialised members); :func:`esjax.lowrank.make_generation`
      evaluates an :func:`esjax.nn.dataset_fitness` without member weights.

    Example:
      >>> es = low_rank_es(population_size=64, rank=1, sigma=0.05, learning_rate=0.01)
      >>> state = es.init(jax.random.key(0), {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
    """
    population_size, optimizer = check_estimator_arguments(
        population_size, learning_rate, optimizer, antithetic, fitness_shaping, noise
    )
    rank = check_int("rank", rank, 1)
    sampler = LowRankNoise(population_size, rank, antithetic, noise)

    def init(key: jax.Array, mean: jax.Array, params: LowRankESParams) -> dict:
        del key  # the initial state is deterministic
        return {"mean": mean, "sigma": params.sigma, "opt_state": optimizer.init(mean)}

    def ask(key: jax.Array, state: LowRankESState) -> tuple[jax.Array, LowRankESState]:
        # Generic path: full rows; each mirrored pair's factors drawn once.
        deviations = sampler.deviations(state.spec, sampler.population_factors(key, state))
        return state.mean + state.sigma * deviations, state

    def weights(state: LowRankESState, fitness: jax.Array, scalars: None) -> jax.Array:
        del scalars  # no per-member values besides fitness
        return shaped_fitness(shaping.sanitize(fitness), fitness_shaping, state.mean.dtype)

    def statistics(state: LowRankESState, members: jax.Array, weights: jax.Array) -> jax.Array:
        # Generic path: Σ u_i (x_i - θ) = σ Σ u_i ε_i over materialised rows, as OpenAI-ES.
        return weighted_deviation_sum(weights, members, state.mean)

    # OpenAI-ES's step; the fused path hands in the same σ Σ u_i ε_i, formed from the factors.
    apply = estimator_step(optimizer, population_size)

    return make_strategy(
        name="low_rank_es",
        population_size=population_size,
        default_params=LowRankESParams(
            sigma=sigma, sigma_decay=sigma_decay, sigma_limit=sigma_limit
        ),
        param_checks=PARAM_RANGES,
        state_type=LowRankESState,
        init=init,
        ask=ask,
        info=lambda state: {"sigma": state.sigma},
        capabilities=Capabilities(
            decomposition=Decomposition(
                sampler, weights, statistics, apply, needs_finite_rows=False
            )
        ),
    )


__all__ = [
    "LowRankESParams",
    "LowRankESState",
    "LowRankFactor",
    "LowRankNoise",
    "leaf_ranks",
    "low_rank_es",
    "low_rank_noise",
    "mirror",
    "noise_width",
]
