"""The simple genetic algorithm of Such et al.: truncation selection, Gaussian mutation, elitism.

Reference: Such, Madhavan, Conti, Lehman, Stanley & Clune, "Deep Neuroevolution: Genetic
Algorithms Are a Competitive Alternative for Training Deep Neural Networks for Reinforcement
Learning", 2017, arXiv:1712.06567 (Section 3, Algorithm 1).

The state holds the ``T = truncation_size`` best members of the last generation, ``θ_1..θ_T``
(best first). A generation of ``N = population_size`` members is::

    members 0 .. E-1:  θ_1 .. θ_E                         (unmutated elite candidates)
    members E .. N-1:  θ_k + σ ε_i,   k ~ U{1..T},  ε_i ~ N(0, I)

and ``tell`` keeps the ``T`` best of all ``N`` (truncation selection) as the next parents. There
is no crossover, as in the paper (Such et al. found mutation alone sufficient for deep networks).

Elitism and re-evaluation. The paper keeps the best individual unmutated and picks it by
re-evaluating the top candidates on extra episodes, because one noisy evaluation flatters
whichever member was lucky. In a fixed-size generation the candidates are re-evaluated by being
part of it: the ``E = num_elites`` best of the last generation reappear unmutated and are scored
again under the current generation's minibatch or episode key; the reported solution ``elite``
is the candidate with the best *fresh* score. So a member becomes the elite only after an
evaluation independent of the one that selected it, and the best individual always survives
(it is among the candidates and competes for a parent slot). With a deterministic fitness and
``E = 1`` this is plain elitism: the elite is the best member found up to the previous
generation. (``best_solution``, kept by :func:`esjax.base.make_strategy`, is the member with the
best single score ever, lucky or not.)

Non-finite fitness ranks last. A parent slot that would go to a member without a finite fitness
(fewer than ``T`` finite members) gets a copy of the best new parent instead; a generation
without any finite fitness leaves the parents and the elite as they were.

Sharded decomposition. Member ``i`` is a function of ``(key, i)`` and the state alone (its parent
index and its noise come from :func:`esjax.prng.member_bits` / :func:`~esjax.prng.member_normals`
under two keys split from the generation's). Selection is written as a sum: each member's weight
is its rank + 1 when it is among the ``T`` best (0 otherwise), and the statistic scatters member
rows into ``T`` slots by that rank. Each slot receives exactly one member, so the sum over
devices is exact and a sharded run moves fitness values and ``T`` rows, never the population.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
from esjax.prng import member_bits, member_normals


@struct.dataclass
class SimpleGAParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    Attributes:
      sigma: mutation standard deviation ``σ`` (> 0).
    """

    sigma: float | jax.Array


PARAM_RANGES = {"sigma": (0.0, None, False, True)}


@struct.dataclass
class SimpleGAState(StrategyState):
    """GA state.

    Attributes:
      parents: ``(T, num_dims)`` the last generation's ``T`` best members, best first.
      parent_fitness: ``(T,)`` their fitness (the largest finite float before the first tell).
      elite: ``(num_dims,)`` the reported solution: the elite candidate with the best fresh score.
      elite_fitness: that score (the largest finite float until one is finite).
    """

    parents: jax.Array
    parent_fitness: jax.Array
    elite: jax.Array
    elite_fitness: jax.Array
    params: SimpleGAParams


def simple_ga(
    population_size: int,
    sigma: float = 0.01,
    truncation_size: int | None = None,
    num_elites: int = 1,
) -> Strategy:
    """Build the simple GA of Such et al. (2017).

    Args:
      population_size: ``N`` members per generation (>= 2), elite candidates included.
      sigma: mutation standard deviation ``σ`` (> 0). Such et al. used 0.002–0.005 for Atari
        networks of millions of weights; small networks tolerate larger steps.
      truncation_size: ``T`` parents kept per generation, in ``[num_elites, N]``; default
        ``max(num_elites, ⌈N / 10⌉)`` (Such et al. kept 20 of 1,000 on Atari).
      num_elites: ``E`` elite candidates carried over unmutated and re-evaluated each
        generation, in ``[1, N - 1]`` (Such et al. re-evaluated their top 10).

    Returns:
      A :class:`~esjax.base.Strategy` that minimises and reports ``elite``.

    Example:
      >>> es = simple_ga(population_size=64, sigma=0.02)
      >>> state = es.init(jax.random.key(0), jnp.zeros(10))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, jnp.sum(population**2, axis=1))
      >>> state.elite  # the reported solution
    """
    population_size = check_int("population_size", population_size, 2)
    num_elites = check_int("num_elites", num_elites, 1, population_size - 1)
    if truncation_size is None:
        truncation_size = max(num_elites, -(-population_size // 10))
    truncation_size = check_int("truncation_size", truncation_size, num_elites, population_size)

    def init(key: jax.Array, mean: jax.Array, params: SimpleGAParams) -> dict:
        del key  # generation 0 mutates copies of x0
        worst = jnp.finfo(mean.dtype).max  # finite, so the state is finite before evaluation
        return {
            "parents": jnp.tile(mean, (truncation_size, 1)),
            "parent_fitness": jnp.full((truncation_size,), worst, mean.dtype),
            "elite": mean,
            "elite_fitness": jnp.array(worst, mean.dtype),
        }

    def sample(key: jax.Array, state: SimpleGAState, indices: jax.Array) -> jax.Array:
        dtype, num_dims = state.elite.dtype, state.num_dims
        # Separate keys: with one key a member's parent index and its first noise coordinate
        # would come from the same random word.
        parent_key, noise_key = jax.random.split(key)
        bits = member_bits(parent_key, indices, 1, dtype)[:, 0]
        # Uniform over the T parents (the modulo bias is below 2^-32 T).
        chosen = (bits % truncation_size).astype(jnp.int32)
        elite_candidate = indices < num_elites
        which = jnp.where(elite_candidate, indices, chosen)
        noise = member_normals(noise_key, indices, num_dims, dtype)
        step = jnp.where(elite_candidate[:, None], 0, state.params.sigma * noise)
        return state.parents[which] + step.astype(dtype)

    def weights(state: SimpleGAState, fitness: jax.Array, scalars: None) -> jax.Array:
        """Rank + 1 for the ``T`` best members (NaN ranks last, ties by index), else 0."""
        order = jnp.argsort(shaping.sanitize(fitness), stable=True)
        rank = (
            jnp.zeros(population_size, jnp.int32)
            .at[order]
            .set(jnp.arange(population_size, dtype=jnp.int32))
        )
        return jnp.where(rank < truncation_size, rank + 1, 0).astype(state.elite.dtype)

    def statistics(state: SimpleGAState, members: jax.Array, weights: jax.Array) -> jax.Array:
        # Slot r receives the member of rank r; unselected members go to a discarded slot T.
        # A scatter-add into zeros copies each row exactly (no rounding, unlike a matmul).
        slot = jnp.round(weights).astype(jnp.int32) - 1
        slot = jnp.where(slot < 0, truncation_size, slot)
        rows = jax.ops.segment_sum(members, slot, num_segments=truncation_size + 1)
        return rows[:truncation_size]

    def apply(state: SimpleGAState, rows: jax.Array, fitness: jax.Array) -> SimpleGAState:
        dtype = state.parent_fitness.dtype
        safe = shaping.sanitize(fitness).astype(dtype)
        ranked = jnp.sort(safe)[:truncation_size]  # the selected members' fitness, by slot
        finite = jnp.isfinite(ranked)
        any_finite = finite[0]
        # Slots whose member has no finite fitness get a copy of the best new parent.
        parents = jnp.where(finite[:, None], rows, rows[0])
        parent_fitness = jnp.where(finite, ranked, ranked[0])
        parents = jnp.where(any_finite, parents, state.parents)
        parent_fitness = jnp.where(any_finite, parent_fitness, state.parent_fitness)

        # The elite: the re-evaluated candidate (members 0..E-1 are parents 0..E-1 unmutated)
        # with the best fresh score.
        candidate_fitness = safe[:num_elites]
        best = jnp.argmin(candidate_fitness)
        found = jnp.isfinite(candidate_fitness[best])
        return state.replace(
            parents=parents,
            parent_fitness=parent_fitness.astype(dtype),
            elite=jnp.where(found, state.parents[best], state.elite),
            elite_fitness=jnp.where(found, candidate_fitness[best], state.elite_fitness),
        )

    def info(state: SimpleGAState) -> dict:
        return {
            "elite_fitness": state.elite_fitness,
            "best_parent_fitness": state.parent_fitness[0],
            "worst_parent_fitness": state.parent_fitness[-1],
        }

    return make_strategy(
        name="simple_ga",
        population_size=population_size,
        default_params=SimpleGAParams(sigma=sigma),
        param_checks=PARAM_RANGES,
        state_type=SimpleGAState,
        init=init,
        info=info,
        capabilities=Capabilities(
            solution="elite",
            # Unselected members (weight 0, non-finite rows among them) are summed into the
            # discarded slot, so a non-finite row never reaches a selected one.
            decomposition=Decomposition(
                sample, weights, statistics, apply, needs_finite_rows=False
            ),
        ),
    )


__all__ = ["PARAM_RANGES", "SimpleGAParams", "SimpleGAState", "simple_ga"]
