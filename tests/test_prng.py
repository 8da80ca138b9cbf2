"""esjax.prng: Threefry-2x32 in jnp, checked against the reference and for its distributions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.prng import (
    random_bits,
    random_pairs,
    standard_normal,
    threefry_2x32,
    uniform_from_bits,
)


@pytest.fixture
def key():
    return jax.random.key(0)


def test_threefry_matches_the_known_answer_vectors():
    # Salmon et al. (2011), Random123's kat_vectors for threefry2x32_20: (key, counter) -> output.
    vectors = [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, counter, expected in vectors:
        words = threefry_2x32(tuple(jnp.uint32(k) for k in key), *(jnp.uint32(c) for c in counter))
        assert tuple(int(w) for w in words) == expected


def test_random_bits_vmap_prefix_and_wide_words(key):
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: random_bits(k, (4, 5))))(keys)
    for i in range(3):  # every key its own stream under vmap, equal to the unbatched call
        np.testing.assert_array_equal(batched[i], random_bits(keys[i], (4, 5)))
    assert len(np.unique(np.asarray(batched))) == batched.size
    # Row i depends on (key, i, last dimension) only: a larger population extends a smaller one.
    np.testing.assert_array_equal(random_bits(key, (7, 5))[:4], random_bits(key, (4, 5)))
    with jax.enable_x64(True):
        wide = random_bits(key, (3, 2), jnp.uint64)
        assert wide.dtype == jnp.uint64 and len(np.unique(np.asarray(wide))) == 6
        chex.assert_shape(standard_normal(key, (3, 2), jnp.float64), (3, 2))


def test_standard_normal_and_uniform_have_the_right_moments(key):
    # 2e5 draws: standard errors ~0.002 (mean) and ~0.003 (variance).
    z = np.asarray(jax.jit(standard_normal, static_argnums=1)(key, (400, 500)), np.float64)
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1.0) < 0.02
    assert abs(np.mean(z**4) - 3.0) < 0.1
    # Rows are independent: the correlation of neighbouring rows is ~0.
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 0.01
    u = np.asarray(uniform_from_bits(random_bits(key, (1000, 200)), jnp.float32), np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
    chex.assert_type(standard_normal(key, (2, 3), jnp.bfloat16), jnp.bfloat16)


def test_explicit_rows_equal_those_rows_of_the_full_draw(key):
    # What a device of a sharded population uses to draw only its own members.
    full = standard_normal(key, (6, 7))
    rows = jnp.array([4, 1, 1])
    np.testing.assert_array_equal(standard_normal(key, (3, 7), rows=rows), full[rows])
    with pytest.raises(ValueError, match="rows must have shape"):
        random_bits(key, (2, 7), rows=jnp.arange(3))


def test_random_pairs_are_the_blocks_random_bits_splits(key):
    # random_bits puts the two words of block (r, j) in columns j and j + ceil(d / 2) of row r;
    # random_pairs gives them at index (r, j) of its two arrays. Same cipher, same counters.
    words = np.asarray(random_bits(key, (3, 10)))
    w0, w1 = (np.asarray(w) for w in random_pairs(key, (3, 5)))
    np.testing.assert_array_equal(w0, words[:, :5])
    np.testing.assert_array_equal(w1, words[:, 5:])
    rows = jnp.array([2, 0])
    picked_pairs = random_pairs(key, (2, 5), rows=rows)
    for full, picked in zip(random_pairs(key, (3, 5)), picked_pairs, strict=True):
        np.testing.assert_array_equal(picked, np.asarray(full)[np.asarray(rows)])
    chex.assert_shape(random_pairs(key, (2, 3, 4)), (2, 3, 4))


def test_narrow_floats_stay_finite_and_below_one(key):
    # Rounded to nearest, about 1 in 500 bfloat16 uniforms would be 1.0 and 1 in 250 of the
    # symmetric uniforms ±1 (erf⁻¹ = ±inf): 64,000 normals had ~120 infinities before the fix.
    z = np.asarray(standard_normal(key, (64, 1000), jnp.bfloat16), np.float32)
    assert np.all(np.isfinite(z)) and np.abs(z).max() > 3.5  # the tails survive, too
    u = np.asarray(uniform_from_bits(random_bits(key, (1000, 1000)), jnp.bfloat16), np.float32)
    assert u.max() < 1.0 and u.min() >= 0.0
    assert np.mean(u == u.max()) < 0.01  # the kept-off-1 values form no visible spike
    u16 = uniform_from_bits(random_bits(key, (1000, 1000)), jnp.float16)
    assert float(jnp.max(u16)) < 1.0
