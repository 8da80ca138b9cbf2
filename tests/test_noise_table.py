"""The shared noise table (esjax.prng.NoiseTable): a function of its seed, per-member slices at
offsets drawn from (key, i), N(0, 1) statistics, the stated overlap, ES gradient accuracy equal
to generated noise, and no table in states or checkpoints."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import esjax
from esjax import checkpoint
from esjax.prng import NoiseTable, member_normals
from esjax.strategies.low_rank_es import low_rank_es
from esjax.strategies.openai_es import openai_es

# One jitted program per test, compiled cheaply (see tests/test_low_rank_es.py).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn):
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS)


def test_table_is_a_function_of_size_and_seed():
    first, again, other = NoiseTable(2**12, 1), NoiseTable(2**12, 1), NoiseTable(2**12, 2)
    assert first == again and hash(first) == hash(again) and first != other
    np.testing.assert_array_equal(first.values, again.values)  # rebuilt, not stored
    assert not np.array_equal(first.values, other.values)
    assert first.values.shape == (2**12,) and first.values.dtype == jnp.float32
    assert first.nbytes == 4 * 2**12
    values = np.asarray(first.values, np.float64)
    # 4,096 i.i.d. N(0, 1): mean within 5 standard errors (5/64), variance within 5·√(2/n).
    assert abs(values.mean()) < 5 / math.sqrt(values.size)
    assert abs(values.var() - 1) < 5 * math.sqrt(2 / values.size)


def test_member_slices_are_table_slices_with_unit_statistics():
    table, width = NoiseTable(2**16, seed=0), 1000

    def draw():
        key = jax.random.key(3)
        everyone = member_normals(key, jnp.arange(64), width, table=table)
        some = member_normals(key, jnp.array([41, 7]), width, table=table)
        other_key = member_normals(jax.random.key(4), jnp.arange(64), width, table=table)
        return everyone, some, other_key, table.offsets(key, jnp.arange(64), width)

    everyone, some, other_key, offsets = _jit(draw)()
    # Row i depends on (key, i) alone: a sharded device drawing its own members agrees.
    np.testing.assert_array_equal(some, everyone[np.array([41, 7])])
    assert not np.array_equal(other_key, everyone)
    values = np.asarray(table.values)
    offsets = np.asarray(offsets)
    assert offsets.min() >= 0 and offsets.max() <= table.size - width
    for row, start in zip(np.asarray(everyone), offsets, strict=True):
        np.testing.assert_array_equal(row, values[start : start + width])
    # Every member's slice of 1,000 entries: mean within 5 standard errors of 0 (5/√1000) and
    # variance within 5·√(2/1000) of 1.
    rows = np.asarray(everyone, np.float64)
    assert np.max(np.abs(rows.mean(axis=1))) < 5 / math.sqrt(width)
    assert np.max(np.abs(rows.var(axis=1) - 1)) < 5 * math.sqrt(2 / width)


def test_overlap_matches_the_stated_formula():
    # 512 slices of 10,000 in the default 2²⁵ table (the 1,024 × 10k antithetic case);
    # only offsets are drawn, the 128 MiB table is never built.
    table, count, width, draws = NoiseTable(), 512, 10_000, 4
    keys = jax.random.split(jax.random.key(0), draws)
    offsets = _jit(jax.vmap(lambda key: table.offsets(key, jnp.arange(count), width)))(keys)
    fractions = []
    for starts in np.asarray(offsets):
        coverage = np.zeros(table.size + 1, np.int32)
        np.add.at(coverage, starts, 1)
        np.add.at(coverage, starts + width, -1)
        coverage = np.cumsum(coverage)[:-1]  # slices holding each table entry
        fractions.append(np.mean([np.mean(coverage[o : o + width] > 1) for o in starts]))
    expected = table.overlap(count, width)
    assert expected == pytest.approx(0.1413, abs=1e-4)
    # One generation's mean shared fraction has sd 0.013 across keys (40 simulated
    # generations with uniform offsets: 0.145 ± 0.013, the formula ignores the table's ends);
    # the mean of 4 generations is within 0.03 (~4.5 sd) of the formula.
    assert abs(np.mean(fractions) - expected) < 0.03
    assert table.overlap(2, 10) == pytest.approx(10 / (table.size - 9))


def _gradient_errors(noise, keys, dims=20, population=512):
    """Squared relative errors ‖g - ∇f‖² / ‖∇f‖² of OpenAI-ES's raw-fitness estimate on
    f(x) = Σ a_j x_j² / 2 at x = 1, one per key (SGD with rate 1: g = θ - θ')."""
    scales = jnp.linspace(1.0, 10.0, dims)
    es = openai_es(
        population, sigma=0.1, optimizer=optax.sgd(1.0), fitness_shaping="raw", noise=noise
    )

    def one(key):
        state = es.init(jax.random.key(0), jnp.ones(dims))
        population, state = es.ask(key, state)
        told = es.tell(state, population, 0.5 * jnp.sum(scales * population**2, axis=1))
        error = (state.mean - told.mean) - scales
        return jnp.sum(error**2) / jnp.sum(scales**2)

    return np.asarray(_jit(jax.vmap(one))(keys))


def test_es_gradient_accuracy_matches_generated_noise():
    # Antithetic pairs on a quadratic: f(θ+σε) - f(θ-σε) = 2σ ∇f·ε exactly, so g is the mean
    # over h = n/2 pairs of (∇f·ε)ε, whose squared error has expectation ‖∇f‖²(d + 1)/h for
    # N(0, I) noise: (20 + 1)/256 here. Both generators must meet it.
    keys = jax.random.split(jax.random.key(1), 100)
    expected = 21 / 256
    generated = _gradient_errors(None, keys)
    table = _gradient_errors(NoiseTable(2**20, seed=5), keys)
    # One key's squared error has a relative sd of ~0.35 (measured: 0.33 generated, 0.40
    # table); the mean of 100 is within 20% (~5 standard errors) of the expectation.
    assert generated.mean() == pytest.approx(expected, rel=0.2)
    assert table.mean() == pytest.approx(expected, rel=0.2)
    # And the table is not worse than generated noise beyond that same sampling error.
    assert table.mean() / generated.mean() == pytest.approx(1.0, abs=0.3)


def test_states_and_checkpoints_never_hold_the_table(tmp_path):
    table = NoiseTable(2**16, seed=0)
    for es in (openai_es(8, noise=table), low_rank_es(8, noise=table)):

        def generation(es=es):
            state = es.init(jax.random.key(0), {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)})
            population, state = es.ask(jax.random.key(1), state)
            return es.tell(state, population, jnp.sum(population**2, axis=1))

        state = _jit(generation)()
        # Every leaf is O(num_dims = 15): nothing of the table's 65,536 floats.
        assert max(np.size(leaf) for leaf in jax.tree_util.tree_leaves(state)) <= 15
        path = checkpoint.save(tmp_path / f"{es.name}.msgpack", state)
        assert path.stat().st_size < table.nbytes / 10
        restored = checkpoint.load(path, es.init(jax.random.key(0), state.best_params))
        np.testing.assert_array_equal(restored.mean, state.mean)


def test_bad_tables_are_refused_naming_the_size():
    table = NoiseTable(100)
    with pytest.raises(ValueError, match="size=100"):
        member_normals(jax.random.key(0), jnp.arange(2), 101, table=table)
    with pytest.raises(TypeError, match="NoiseTable"):
        member_normals(jax.random.key(0), jnp.arange(2), 10, table=np.zeros(100))
    with pytest.raises(ValueError, match="size must be an integer >= 2"):
        NoiseTable(1)
    with pytest.raises(TypeError, match="noise must be None or an esjax.prng.NoiseTable"):
        openai_es(8, noise="table")


def test_a_config_names_a_noise_table_by_size_and_seed():
    from esjax.experiments.config import build_strategy

    es = build_strategy(
        {"name": "openai_es", "population_size": 8, "noise": {"size": 4096, "seed": 3}}
    )
    state = es.init(jax.random.key(0), jnp.zeros(5))
    population, _ = es.ask(jax.random.key(1), state)
    table = esjax.prng.NoiseTable(4096, seed=3)
    expected = esjax.openai_es(population_size=8, noise=table)
    want, _ = expected.ask(jax.random.key(1), expected.init(jax.random.key(0), jnp.zeros(5)))
    np.testing.assert_array_equal(np.asarray(population), np.asarray(want))


@pytest.mark.parametrize(
    "noise, message",
    [
        ({"size": 1}, r"strategy\.noise\.size must be an integer in \[2"),
        ({"seed": -1}, r"strategy\.noise\.seed must be an integer in \[0"),
        ({"rows": 3}, r"unknown key\(s\) \['rows'\] in strategy\.noise"),
        ([4096, 0], r"strategy\.noise must be a mapping"),
    ],
)
def test_a_bad_noise_section_names_its_key_path(noise, message):
    from esjax.experiments.config import build_strategy

    with pytest.raises((TypeError, ValueError), match=message):
        build_strategy({"name": "low_rank_es", "population_size": 8, "noise": noise})


def test_block_layout_is_one_contiguous_disjoint_read_that_agrees_with_sample():
    """A draw that names its rows (OpenAI-ES: n/2 antithetic rows) reads them as consecutive,
    disjoint slices of one block: block == slices member by member, no entry is shared within
    the draw, and OpenAI-ES's ask (the block) equals its decomposition's sample (the sharded
    path, member by member) exactly, mirrored pairs included."""
    table, rows, width = NoiseTable(2**16, seed=2), 48, 1000
    population = 2 * rows
    es = openai_es(population, sigma=0.5, noise=table)
    state = es.init(jax.random.key(0), jnp.full(width, 2.0))
    members = jnp.array([0, 7, 47, 48, 60, 95])

    def draw():
        key = jax.random.key(5)
        block = table.block(key, rows, width)
        some = table.slices(key, jnp.array([31, 2]), width, rows=rows)
        offsets = table.offsets(key, jnp.arange(rows), width, rows=rows)
        asked, _ = es.ask(key, state)
        sampled = es.capabilities.decomposition.sample(key, state, members)
        return block, some, offsets, asked, sampled

    block, some, offsets, asked, sampled = _jit(draw)()
    offsets = np.asarray(offsets)
    np.testing.assert_array_equal(np.diff(offsets), width)  # consecutive, disjoint
    assert offsets[0] >= 0 and offsets[-1] + width <= table.size
    values = np.asarray(table.values)
    np.testing.assert_array_equal(
        block, values[offsets[0] : offsets[0] + rows * width].reshape(rows, width)
    )
    np.testing.assert_array_equal(some, np.asarray(block)[[31, 2]])
    np.testing.assert_array_equal(asked[members], sampled)
    # Mirrored: x_{i+n/2} - θ = -(x_i - θ), to the rounding of θ ± σε.
    np.testing.assert_allclose(asked[rows:] - 2.0, -(asked[:rows] - 2.0), atol=1e-6)
    # A draw too large for one block falls back to independent offsets, and block refuses it.
    assert not table.fits(100, 1000)
    with pytest.raises(ValueError, match="size=65536"):
        table.block(jax.random.key(0), 100, 1000)
