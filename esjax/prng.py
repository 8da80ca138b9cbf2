"""Fast counter-based random numbers for whole populations: Threefry-2x32 written with ``jnp``.

``jax.random`` runs the same cipher (Threefry-2x32, 20 rounds), but on CPU its bit generator
lowers to a loop that writes the whole array back to memory every four rounds, and its
partitionable form keeps one of the two output words per block. Written with ``jnp`` instead,
XLA fuses the 20 rounds into one kernel and both output words are used (measured in
``benchmarks/prng.py``).

Every draw is a function of the key alone, and row ``i`` of a ``(rows, d)`` draw depends only on
``(key, i, d)``, so a larger population extends a smaller one and ``vmap`` over keys works as for
``jax.random``. :func:`random_pairs` hands out both words of each block at the same index, for
consumers that need two numbers per element (PSO's per-dimension coefficients). OpenAI-ES,
sep-CMA-ES, simulated annealing and PSO sample through this module; the known-answer vectors of
the reference (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011) are in ``tests/test_prng.py``.

**A shared noise table** (:class:`NoiseTable`) is the other generator :func:`member_normals`
offers: Salimans, Ho, Chen, Sidor & Sutskever ("Evolution Strategies as a Scalable Alternative to
Reinforcement Learning", 2017, arXiv:1703.03864, section 2.1) draw one large block of Gaussian
numbers once and give each member a slice ``table[o_i : o_i + d]`` at a random offset, so a
generation reads noise from memory instead of computing it. Here ``o_i`` is a function of
``(key, i)`` (a Threefry word of :func:`member_bits` reduced to a valid offset), so a sharded
run still reproduces a single-device run, and the table itself is a function of its seed alone:
it is rebuilt from ``(size, seed)``, never stored in a strategy state or a checkpoint.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Threefry-2x32's rotation constants (Salmon et al. 2011, Table 4), four rounds each, alternating.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = 0x1BD11BDA


def threefry_2x32(
    key: tuple[jax.Array, jax.Array], x0: jax.Array, x1: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds: the block cipher of ``jax.random``'s default PRNG.

    Encrypts the ``uint32`` counter pairs ``(x0, x1)`` (any broadcastable shapes) under the key
    words ``key = (k0, k1)``; returns both output words. Reference: Salmon, Moraes, Dror & Shaw,
    "Parallel random numbers: as easy as 1, 2, 3", SC 2011 (its known-answer vectors are in the
    tests).
    """
    k0, k1 = key
    schedule = (k0, k1, k0 ^ k1 ^ jnp.uint32(_KEY_PARITY))
    x0, x1 = x0 + k0, x1 + k1
    for injection in range(1, 6):
        for rotation in _ROTATIONS[(injection - 1) % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(rotation)) | (x1 >> jnp.uint32(32 - rotation))
            x1 = x1 ^ x0
        x0 = x0 + schedule[injection % 3]
        x1 = x1 + schedule[(injection + 1) % 3] + jnp.uint32(injection)
    return x0, x1


def random_bits(
    key: jax.Array, shape: tuple[int, ...], dtype=jnp.uint32, rows: jax.Array | None = None
) -> jax.Array:
    """Uniform random ``uint32`` or ``uint64`` bits of ``shape``, a function of ``key`` alone.

    Threefry-2x32 in counter mode under two key words drawn from ``key``, written with ``jnp``
    so that XLA compiles it into fused kernels that use both output words of every block.
    Row ``r`` of the flattened leading dimensions takes
    block ``(r, j)`` (counter words ``(j, r)``) for column ``j`` and, in ``uint32``, its second
    word for column ``j + ⌈d / 2⌉``: no shape overflows the counter, and row ``r`` depends on
    ``(key, r, shape[-1])`` alone.

    ``rows`` (a ``(shape[0],)`` integer array, for 2-D shapes) draws those row numbers instead of
    ``0, 1, ...``: e.g. one device of a sharded population draws just its own members' rows, equal
    to the same rows of the whole population's draw.
    """
    wide = jnp.dtype(dtype) == jnp.uint64
    *leading, last = shape
    blocks = last if wide else (last + 1) // 2
    column, row = _counters((math.prod(leading), blocks), rows, shape)
    # The barrier asks for the 20 rounds to be computed once, not fused into every consumer of
    # either word. XLA's CPU backend drops it before fusion (the compiled program is the same
    # with and without it, jax 0.10); it matters only where a backend keeps it.
    w0, w1 = jax.lax.optimization_barrier(threefry_2x32(_key_words(key), column, row))
    if wide:
        words = (w0.astype(jnp.uint64) << 32) | w1.astype(jnp.uint64)
    else:
        words = jnp.concatenate([w0, w1], axis=1)[:, :last]
    return words.reshape(shape)


def random_pairs(
    key: jax.Array, shape: tuple[int, ...], rows: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Both ``uint32`` words of one Threefry block at every index of ``shape``.

    For a consumer that needs two random numbers per element, e.g. PSO's per-dimension
    coefficients ``U1, U2``: block ``(r, j)`` (counter words ``(j, r)``, as in
    :func:`random_bits`) gives element ``j`` of row ``r`` of both arrays, so a kernel that reads
    both at the same index evaluates the 20 rounds once per element, fused into it, with no
    concatenation and no random numbers written to memory. Row ``r`` depends on ``(key, r)``
    alone; ``rows`` as in :func:`random_bits`.
    """
    *leading, last = shape
    column, row = _counters((math.prod(leading), last), rows, shape)
    w0, w1 = threefry_2x32(_key_words(key), column, row)
    return w0.reshape(shape), w1.reshape(shape)


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    return k0, k1


def _counters(
    grid: tuple[int, int], rows: jax.Array | None, shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """Counter words ``(column, row)`` of a ``(rows, blocks)`` grid of Threefry blocks."""
    column = jax.lax.broadcasted_iota(jnp.uint32, grid, 1)
    if rows is None:
        return column, jax.lax.broadcasted_iota(jnp.uint32, grid, 0)
    if len(shape) != 2 or jnp.shape(rows) != (shape[0],):
        raise ValueError(
            f"rows must have shape (shape[0],) for a 2-D shape, got {jnp.shape(rows)} for "
            f"shape {shape}"
        )
    return column, jnp.broadcast_to(jnp.asarray(rows).astype(jnp.uint32)[:, None], grid)


def float_bits_type(dtype) -> tuple:
    """``(uint, float, mantissa bits)`` that draw ``dtype``: float64 for float64, else float32."""
    if jnp.finfo(dtype).bits > 32:
        return jnp.uint64, jnp.float64, 52
    return jnp.uint32, jnp.float32, 23


def uniform_from_bits(bits: jax.Array, dtype) -> jax.Array:
    """``U[0, 1)`` floats from random bits: the top mantissa bits under the exponent of 1.0.

    Drawn in float32 (float64 for float64); a narrower ``dtype`` keeps the values below 1.
    """
    uint, float_, mantissa = float_bits_type(dtype)
    one = jnp.array(1.0, float_).view(uint)
    shifted = bits >> (jnp.iinfo(uint).bits - mantissa)
    return _narrowed(jax.lax.bitcast_convert_type(shifted | one, float_) - 1, dtype)


def symmetric_from_bits(bits: jax.Array, dtype) -> jax.Array:
    """``U(-1, 1)`` floats, open and symmetric: ``(2 m + 1) / 2^k - 1`` for ``k``-bit ``m``.

    Every value is exact in float32 (float64 for float64) and none is ``±1``, so ``erf⁻¹`` of it
    stays finite; a narrower ``dtype`` keeps the values inside ``(-1, 1)``.
    """
    uint, float_, mantissa = float_bits_type(dtype)
    m = (bits >> (jnp.iinfo(uint).bits - mantissa)).astype(float_)
    return _narrowed((2 * m + 1) * 2.0**-mantissa - 1, dtype)


def _narrowed(values: jax.Array, dtype) -> jax.Array:
    """``values`` (float32/64, strictly inside ``(-1, 1)``) cast to ``dtype`` and kept off ``±1``.

    Rounding to nearest in bfloat16 or float16 takes the values closest to ``±1`` to ``±1``
    (about 1 in 500 uniforms for bfloat16); they go to the nearest representable values inside.
    """
    if jnp.finfo(dtype).bits >= jnp.finfo(values.dtype).bits:
        return values.astype(dtype)
    inside = 1.0 - float(jnp.finfo(dtype).epsneg)
    return jnp.clip(values, -inside, inside).astype(dtype)


def normal_from_bits(bits: jax.Array, dtype) -> jax.Array:
    """``N(0, 1)`` floats from random bits: ``√2 erf⁻¹(s)`` of the open uniform ``s`` of
    :func:`symmetric_from_bits` (the inverse-CDF construction of ``jax.random.normal``).

    Computed in float32 (float64 for float64) and then cast, so bfloat16 normals keep their
    tails instead of turning into ``±inf`` where ``s`` would round to ``±1``.
    """
    _, float_, _ = float_bits_type(dtype)
    normal = math.sqrt(2.0) * jax.lax.erf_inv(symmetric_from_bits(bits, float_))
    return normal.astype(dtype)


def standard_normal(
    key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32, rows: jax.Array | None = None
) -> jax.Array:
    """``N(0, 1)`` draws of ``shape`` from :func:`random_bits`: ``√2 erf⁻¹(s)``, ``s ~ U(-1, 1)``.

    The inverse-CDF construction of ``jax.random.normal``; row ``i`` of a ``(rows, d)`` draw
    depends on ``(key, i, d)`` alone, so a larger population extends a smaller one (``rows``: as
    in :func:`random_bits`).
    """
    uint, _, _ = float_bits_type(dtype)
    return normal_from_bits(random_bits(key, shape, uint, rows), dtype)


def member_bits(key: jax.Array, indices: jax.Array, width: int, dtype=jnp.float32) -> jax.Array:
    """Random bits for the members ``indices``: ``(k, width)`` words (uint32, or uint64 for a
    float64 ``dtype``), row ``j`` a function of ``(key, indices[j], width)`` alone.

    The one place a strategy's per-member random numbers come from, so every device of a
    sharded run can draw exactly its own members (and a larger population extends a smaller
    one). :func:`member_normals` and :func:`member_uniforms` are built on it.
    """
    uint, _, _ = float_bits_type(dtype)
    indices = jnp.asarray(indices)
    return random_bits(key, (indices.shape[0], width), uint, rows=indices)


class NoiseTable:
    """A shared table of ``size`` standard normals; member ``i`` reads a slice at an offset
    drawn from ``(key, i)`` (Salimans et al. 2017's noise table).

    The table is ``standard_normal(jax.random.key(seed), (size,), float32)``: a function of
    ``(size, seed)`` alone, built on first use and cached in this Python object (not in any
    strategy state, so checkpoints never carry it and a restored run rebuilds the same table).
    The object is hashable by ``(size, seed)``; strategies close over it.

    Offsets. Member ``i`` of a draw of width ``d`` reads ``table[o_i : o_i + d]``. Two layouts:

    * **Block** (a caller that says how many distinct rows ``R`` its draw has, and
      ``R · d <= size``; OpenAI-ES does): ``o_i = s + i · d`` with one start ``s`` uniform in
      ``[0, size - R · d]`` drawn from the key. The draw's rows are consecutive, disjoint slices:
      no entry is shared within a generation, and the whole draw is one contiguous read
      (:meth:`block`). Across generations the blocks start at independent offsets.
    * **Independent** (otherwise): ``o_i = w_i mod (size - d + 1)``, ``w_i`` the first
      :func:`member_bits` word of ``(key, i)``; the modulo bias is below ``size / 2³²`` (< 1%
      for ``size <= 2²⁵``).

    Either way ``o_i`` is a function of ``(key, i)`` (and ``R``), so a device drawing its own
    members agrees with a single-device draw.

    Overlap (independent layout). Two slices share entries when their offsets differ by less
    than ``d``; the shared entries sit at *different* coordinates of the two members (member
    ``j``'s entry ``t`` is member ``i``'s entry ``t + o_j - o_i``), so the two noise vectors are
    uncorrelated unless the offsets coincide exactly (probability ``1 / (size - d + 1)`` per
    pair). :meth:`overlap` gives the expected fraction of one member's entries that another
    member of the generation also reads: ``1 - (1 - d / (size - d + 1))^(k - 1)`` for ``k``
    slices, about 14% for 512 slices of 10,000 in a 2²⁵ table. The block layout has none.

    Memory and compilation. The table occupies ``4 · size`` bytes (128 MiB for the default
    2²⁵) on the default device. A jitted program closes over it as a constant, so each
    compiled program embeds its own copy: compiling takes longer (about 4 s more for 2²⁵ on 2
    CPU cores) and each compiled program holds the 128 MiB. Use a smaller table where many
    programs are compiled (tests use 2¹⁶ to 2²⁰).

    Precision. The values are float32 normals, cast to the requested dtype (a float64 search
    reads float32-precision noise from the table).

    Args:
      size: number of floats in the table (>= 2; default 2²⁵).
      seed: integer seed of the table (any int that ``jax.random.key`` takes).

    Example:
      >>> table = NoiseTable(2**20, seed=0)
      >>> noise = member_normals(jax.random.key(1), jnp.arange(8), 100, table=table)
      >>> noise.shape
      (8, 100)
    """

    __slots__ = ("size", "seed", "_values")

    def __init__(self, size: int = 2**25, seed: int = 0):
        if isinstance(size, bool) or not isinstance(size, int | jnp.integer) or size < 2:
            raise ValueError(f"size must be an integer >= 2, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | jnp.integer):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
        self.size = int(size)
        self.seed = int(seed)
        self._values = None

    @property
    def nbytes(self) -> int:
        """Memory of the table in bytes (float32)."""
        return 4 * self.size

    @property
    def values(self) -> jax.Array:
        """The ``(size,)`` float32 table (built from the seed on first use, then cached)."""
        if self._values is None:
            # Built eagerly, outside any trace, so a jit that closes over it sees a concrete
            # array (a tracer cached here would leak out of the trace that made it).
            with jax.ensure_compile_time_eval():
                self._values = jax.jit(standard_normal, static_argnums=(1, 2))(
                    jax.random.key(self.seed), (self.size,), jnp.float32
                )
        return self._values

    def offsets(
        self, key: jax.Array, indices: jax.Array, width: int, rows: int | None = None
    ) -> jax.Array:
        """``(k,)`` int32 start offsets of the members ``indices`` for slices of ``width``.

        With ``rows`` (the draw's number of distinct rows, members ``0 … rows - 1``) and
        :meth:`fits` ``(rows, width)``, the block layout: ``o_i = s + i · width`` with one start
        ``s`` uniform in ``[0, size - rows · width]`` drawn from ``key``, so the draw's rows are
        one contiguous, non-overlapping block of the table. Otherwise each member's offset is
        drawn on its own from ``(key, i)``.
        """
        width = self._check_width(width)
        if rows is not None and self.fits(rows, width):
            start = self._block_start(key, rows, width)
            return start + jnp.asarray(indices).astype(jnp.int32) * width
        words = member_bits(key, indices, 1, jnp.float32)[:, 0]
        return (words % jnp.uint32(self.size - width + 1)).astype(jnp.int32)

    def fits(self, rows: int, width: int) -> bool:
        """Whether a draw of ``rows`` rows of ``width`` fits the table as one block
        (``rows · width <= size``): then :meth:`block` reads it with one contiguous slice."""
        return int(rows) * int(width) <= self.size

    def _check_width(self, width: int) -> int:
        width = int(width)
        if not 1 <= width <= self.size:
            raise ValueError(
                f"a noise-table slice of num_dims={width} needs a table of at least that many "
                f"floats; this NoiseTable has size={self.size}"
            )
        return width

    def _block_start(self, key: jax.Array, rows: int, width: int) -> jax.Array:
        # Uniform over every start that keeps the block inside the table (no modulo bias).
        return jax.random.randint(key, (), 0, self.size - int(rows) * width + 1, jnp.int32)

    def slices(
        self,
        key: jax.Array,
        indices: jax.Array,
        width: int,
        dtype=jnp.float32,
        rows: int | None = None,
    ) -> jax.Array:
        """``(k, width)`` slices ``table[o_i : o_i + width]`` for the members ``indices``
        (offsets as :meth:`offsets` gives them, ``rows`` included)."""
        starts = self.offsets(key, indices, width, rows)
        table = self.values

        def one(start):
            return jax.lax.dynamic_slice_in_dim(table, start, width)

        return jax.vmap(one)(starts).astype(dtype)

    def block(self, key: jax.Array, rows: int, width: int, dtype=jnp.float32) -> jax.Array:
        """``(rows, width)``: the rows of members ``0 … rows - 1`` of a draw of ``rows`` rows, read
        as one contiguous slice; equal to ``slices(key, arange(rows), width, dtype, rows)``
        (needs :meth:`fits` ``(rows, width)``).

        One slice instead of a gather of ``rows`` slices: XLA then fuses the read into what
        consumes it (at 1,024 × 10,000 an OpenAI-ES generation runs about twice as fast).
        """
        width = self._check_width(width)
        if not self.fits(rows, width):
            raise ValueError(
                f"a block of {rows} rows of {width} needs {rows * width} floats; this NoiseTable "
                f"has size={self.size} (use slices, which draws each member's offset)"
            )
        start = self._block_start(key, rows, width)
        flat = jax.lax.dynamic_slice_in_dim(self.values, start, int(rows) * width)
        return flat.reshape(int(rows), width).astype(dtype)

    def overlap(self, num_slices: int, width: int) -> float:
        """Expected fraction of one slice's entries that some other of ``num_slices`` slices
        of ``width`` also reads (offsets uniform; see the class docstring)."""
        positions = self.size - width + 1
        if positions < 1:
            raise ValueError(f"width must be at most size={self.size}, got {width}")
        return 1.0 - (1.0 - min(width / positions, 1.0)) ** (num_slices - 1)

    def __hash__(self) -> int:
        return hash((NoiseTable, self.size, self.seed))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseTable) and (self.size, self.seed) == (other.size, other.seed)

    def __repr__(self) -> str:
        return f"NoiseTable(size={self.size}, seed={self.seed})"


def member_normals(
    key: jax.Array,
    indices: jax.Array,
    num_dims: int,
    dtype=jnp.float32,
    table: NoiseTable | None = None,
    rows: int | None = None,
) -> jax.Array:
    """``(k, num_dims)`` standard normals for the members ``indices``.

    Row ``j`` is a function of ``(key, indices[j], num_dims)`` alone, from one of two
    generators: Threefry bits turned into normals (:func:`member_bits`, the default), or,
    with ``table``, a slice of that shared :class:`NoiseTable` at an offset drawn from
    ``(key, indices[j])`` (read from memory instead of computed; see the class for its size,
    seed and overlap). ``rows``, the draw's number of distinct rows, selects the table's block
    layout (:meth:`NoiseTable.offsets`); generated normals ignore it.
    """
    if table is not None:
        if not isinstance(table, NoiseTable):
            raise TypeError(f"table must be an esjax.prng.NoiseTable, got {type(table).__name__}")
        return table.slices(key, indices, num_dims, dtype, rows)
    return normal_from_bits(member_bits(key, indices, num_dims, dtype), dtype)


def member_uniforms(
    key: jax.Array, indices: jax.Array, num_dims: int, dtype=jnp.float32
) -> jax.Array:
    """``(k, num_dims)`` uniforms on ``[0, 1)`` for the members ``indices``."""
    return uniform_from_bits(member_bits(key, indices, num_dims, dtype), dtype)


__all__ = [
    "NoiseTable",
    "float_bits_type",
    "member_bits",
    "member_normals",
    "member_uniforms",
    "normal_from_bits",
    "random_bits",
    "random_pairs",
    "standard_normal",
    "symmetric_from_bits",
    "threefry_2x32",
    "uniform_from_bits",
]
