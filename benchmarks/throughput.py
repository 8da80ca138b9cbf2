"""Steady-state time per generation of ask → sphere → tell: esjax vs evosax, row by row.

Both libraries run in the same process on the same device. Each loop is compiled once with the
number of generations as an argument, and run for ``--short`` and for ``--long`` generations;
``(T_long - T_short) / (long - short)`` is the time of one generation in the steady state, with
``init``, the first evaluation (evosax's population-based strategies take an evaluated swarm)
and the call's fixed costs cancelled (:func:`common.steady_state`). Every loop of a row group
runs at both lengths in each of ``--repeats`` rounds, the libraries taking turns, so each round
gives one estimate per loop and one evosax/esjax ratio; the table reports the median and range
over rounds, and the host's load average is recorded. Memory is the working set XLA assigns to
each compiled loop. evosax rows are skipped cleanly when evosax (the ``bench`` extra) is not
installed, and a row whose esjax strategy does not import yet is skipped with the reason.

What a row compares (see ``NOTES``): esjax's default beside, where they differ, the variant that
runs evosax's algorithm (CMA-ES with ``eigen_interval=1``; PSO with evosax's update rule), and
the same esjax strategy with its ``esjax.prng`` sampling swapped for ``jax.random`` (done here,
by rebinding the sampling functions while the loop is traced; the library has no such option),
so the table shows how much of a speed-up is the generator and how much the algorithm.

    python benchmarks/throughput.py                         # the CPU grid
    python benchmarks/throughput.py --grid cpu-large --short 1 --long 4 --repeats 5 \
        --evaluation-seeds 0
    python benchmarks/throughput.py --grid gpu              # the full grid (issue targets are GPU)

Writes ``benchmarks/results/throughput-<platform>-<device>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import os

# One OpenBLAS thread unless the caller says otherwise, set before numpy loads it. jax's CPU eigh
# (CMA-ES's decomposition, in both libraries) calls LAPACK from scipy's OpenBLAS, whose threads
# spin while waiting: on a shared 2-core host that made CMA-ES at d = 100 10-100x slower and
# erratic (0.4 ms per generation single-threaded, 5-90 ms with the default threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from common import CLOCKS, environment, host_load, spread, steady_state, write_result  # noqa: E402

import esjax  # noqa: E402
from esjax.problems import ellipsoid, random_rotation, sphere  # noqa: E402

SIGMA = 0.05
LEARNING_RATE = 0.01
DEFAULT_GENERATOR = "esjax.prng"
HALF_POPULATION = "population_size // 2"  # an option value resolved per row
NOISE_TABLE = "NoiseTable(2**25, seed=0)"  # likewise: the table, built once per process


@dataclasses.dataclass(frozen=True)
class Variant:
    """One esjax row of a group: a label, factory options, the noise generator, a footnote."""

    label: str
    options: tuple = ()  # (name, value) pairs, hashable
    generator: str = DEFAULT_GENERATOR
    note: str | None = None
    guard: bool = True  # False: without make_strategy's non-finite row check (a diagnosis)


@dataclasses.dataclass(frozen=True)
class Group:
    """Rows timed together: esjax variants of one strategy and evosax's strategy of that name
    (timed once, the denominator of every variant's ratio)."""

    strategy: str
    population_size: int | None  # None: λ = 4 + ⌊3 ln n⌋, the default of both libraries
    num_dims: int
    variants: tuple[Variant, ...]


def _options(**kwargs) -> tuple:
    return tuple(sorted(kwargs.items()))


# esjax options under which a strategy runs evosax 0.3.2's update (and its constants).
SAME_AS_EVOSAX = {
    # Global best, the classic inertia-weight update, one (r1, r2) per particle, its constants.
    "pso": _options(
        topology="global",
        update="classic",
        coefficients="per_particle",
        inertia=0.75,
        cognitive=1.5,
        social=2.0,
    ),
    # ClipUp with evosax's default constants (learning rate 0.01, speed limit 0.02).
    "pgpe": _options(center_learning_rate=0.01, max_speed=0.02),
    # evosax's default: best/1/bin, F = 0.8 (no dither), CR = 0.9.
    "differential_evolution": _options(variant="best1bin", mutation=0.8, recombination=0.9),
}

NOTES = {
    "pso": (
        "Different algorithms. evosax 0.3's PSO is the classic global-best inertia-weight update "
        "with one pair of uniforms (r1, r2) per particle, shared by all dimensions: 2 random "
        "numbers per particle per generation. esjax's default is SPSO-2011 (ring topology, "
        "per-dimension U1, U2 and a uniform point in a hypersphere around the centre of "
        "gravity): 3d + 1 random numbers per particle (30,001 at d = 10,000), and drawing them "
        "dominates the cost of a generation. The next row runs evosax's update rule in esjax."
    ),
    "pso_same": (
        "The same algorithm: evosax 0.3's update rule and constants, esjax.pso(topology='global', "
        "update='classic', coefficients='per_particle', inertia=0.75, cognitive=1.5, "
        "social=2.0). What still differs: evosax starts from a swarm the caller passes with zero "
        "velocities (esjax draws both in a box: setup, which the steady-state timing excludes) "
        "and replaces a personal best on a tie; esjax checks every population row for NaN/inf "
        "each generation (the strategy contract; the next row shows its cost). Neither "
        "library's generator dominates here (2 uniforms per particle): this is the "
        "like-for-like PSO row."
    ),
    "noise_table": (
        "esjax.openai_es(noise=esjax.prng.NoiseTable(2**25, seed=0)): the same estimator with "
        "each generation's 512 antithetic rows read as one block of a shared 2^25-float "
        "Gaussian table (128 MiB, built once, outside the timing) instead of generated. The "
        "first row of the group is the same strategy with generated (Threefry) normals."
    ),
    "cma_lazy": (
        "esjax's default refreshes the eigendecomposition of C lazily, as pycma does: every "
        "⌈1 / (10 n (c_1 + c_μ))⌉ generations (shown in the row), evosax every generation. "
        "That O(n³) step dominates at these sizes, so this row measures mostly the lazy rule; "
        "the eigen_interval=1 row below is the like-for-like comparison, and the evaluations "
        "table shows the lazy rule costs no evaluations."
    ),
    "cma_every": (
        "The same algorithm as evosax's CMA-ES: esjax.cma_es(eigen_interval=1) decomposes C "
        "every generation, as evosax does, and both run active CMA (negative weights for the "
        "worst members) by default."
    ),
    "sa": (
        "Different algorithms. evosax 0.3.2's simulated annealing is one chain: it samples the "
        "population around one point and moves that point to the generation's best proposal "
        "(Metropolis test on it alone, one uniform per generation). esjax runs population_size "
        "independent Metropolis chains, each with its own test and adaptive step size (a "
        "uniform per chain). Both draw population × d normals per generation."
    ),
    "jax_random": (
        "The esjax strategy of the row above with its noise drawn by jax.random (one "
        "jax.random.normal / uniform / bits call for the whole population, as evosax draws it) "
        "instead of esjax.prng, swapped in by this script only (the library has no such option). "
        "Its ratio is the algorithm's share of the speed-up; the gap to the row above is the "
        "generator's."
    ),
    "pgpe": (
        "The same algorithm (Sehnke et al.'s symmetric sampling and σ update, centred-rank "
        "fitness, ClipUp for the centre with evosax's default constants). What differs: evosax "
        "applies ClipUp's learning rate after the speed clip, so step lengths differ (an O(d) "
        "detail, not a cost)."
    ),
    "no_guard": (
        "A diagnosis, not a configuration: the row above with esjax.base.mask_non_finite (the "
        "strategy contract's check that replaces population rows holding NaN/inf by the best "
        "solution, two passes over the population per generation) replaced by a no-op in this "
        "script. On a strategy whose own update is a few elementwise passes, as this PSO rule "
        "is, the check is most of the gap to evosax, which has no such check."
    ),
    "snes": "The same algorithm (Schaul et al. 2011: NES utilities, η_μ = 1, η_σ of Table 1).",
    "xnes": (
        "Different updates of the shape B. evosax 0.3.2 multiplies B elementwise by "
        "exp(η_B / 2 · G_B) and samples z @ B; xNES (and esjax) multiplies by the matrix "
        "exponential, B ← B expm(η_B / 2 · G_B), an extra O(d³) per generation, and forms "
        "Σ u_k s_k s_kᵀ as one matrix product where evosax builds λ outer products."
    ),
    "simple_ga": (
        "The same selection and mutation (truncation to the best half, parents uniform among "
        "them, Gaussian mutation, no crossover): esjax.simple_ga(truncation_size=N/2). What "
        "differs: esjax carries its best member over unmutated (num_elites=1, at least one); "
        "evosax mutates every member and still draws its crossover uniforms at crossover rate 0."
    ),
    "differential_evolution": (
        "The same algorithm, evosax's default DE/best/1/bin with F = 0.8 and CR = 0.9: "
        "esjax.differential_evolution(variant='best1bin', mutation=0.8, recombination=0.9). "
        "evosax draws each member's indices with jax.random.choice over the population (O(N) "
        "per member); esjax draws 2d + 4 uniforms per member."
    ),
    "lm_ma_es": (
        "The same sampling and direction-vector update (Loshchilov et al. 2019); evosax takes "
        "CMA-ES's step-size constants (c_σ, d_σ, ‖p_σ‖ / E‖N(0, I)‖), esjax the paper's "
        "(c_σ = 2λ/n, ‖p_σ‖² / n): the same cost."
    ),
}


def _group(strategy, population_size, num_dims, *variants) -> Group:
    return Group(strategy, population_size, num_dims, tuple(variants))


def _default(strategy: str, note: str | None = None) -> Variant:
    return Variant(strategy, note=note)


def _jax_random(strategy: str, options: tuple = ()) -> Variant:
    return Variant(f"{strategy}, jax.random noise", options, "jax.random", "jax_random")


def _cma(num_dims: int) -> Group:
    return _group(
        "cma_es",
        None,
        num_dims,
        _default("cma_es", "cma_lazy"),
        Variant("cma_es, eigen_interval=1", _options(eigen_interval=1), note="cma_every"),
    )


def _distribution(strategy: str, population_size, num_dims, options: tuple = ()) -> Group:
    """A new strategy's group: evosax's settings where they differ, and the jax.random twin."""
    return _group(
        strategy,
        population_size,
        num_dims,
        Variant(strategy, options, note=strategy),
        _jax_random(strategy, options),
    )


def _new_strategies(big: bool) -> list[Group]:
    """Issue 18's strategies against evosax's same algorithm (rows skip if not importable)."""
    n = 100_000 if big else 10_000
    population = 4096 if big else 256
    return [
        _distribution("pgpe", population, n, SAME_AS_EVOSAX["pgpe"]),
        _distribution("snes", population, n),
        _group("xnes", None, 1_000 if big else 100, Variant("xnes", note="xnes")),
        _distribution("simple_ga", population, n, (("truncation_size", HALF_POPULATION),)),
        _distribution(
            "differential_evolution", population, n, SAME_AS_EVOSAX["differential_evolution"]
        ),
        _distribution("lm_ma_es", None, n),
    ]


GRIDS: dict[str, list[Group]] = {
    "cpu": [
        _group("openai_es", 256, 1_000, _default("openai_es"), _jax_random("openai_es")),
        _group("openai_es", 1024, 10_000, _default("openai_es"), _jax_random("openai_es")),
        _cma(100),
        _cma(400),
        _cma(1_000),
        _group("sep_cma_es", 256, 10_000, _default("sep_cma_es"), _jax_random("sep_cma_es")),
        _group(
            "simulated_annealing",
            256,
            10_000,
            _default("simulated_annealing", "sa"),
            _jax_random("simulated_annealing"),
        ),
        _group(
            "pso",
            256,
            10_000,
            _default("pso", "pso"),
            Variant("pso, evosax's update rule", SAME_AS_EVOSAX["pso"], note="pso_same"),
            Variant(
                "pso, evosax's update rule, no non-finite row check",
                SAME_AS_EVOSAX["pso"],
                note="no_guard",
                guard=False,
            ),
        ),
        *_new_strategies(big=False),
    ],
    # OpenAI-ES with a noise table against its own generated noise and evosax's Open_ES:
    # python benchmarks/throughput.py --grid noise-table --repeats 15
    "noise-table": [
        _group(
            "openai_es",
            1024,
            10_000,
            _default("openai_es"),
            Variant("openai_es, noise table", _options(noise=NOISE_TABLE), note="noise_table"),
        )
    ],
    # CMA-ES where evosax's eigendecomposition every generation dominates (~3.5 s on 2 cores):
    # python benchmarks/throughput.py --grid cpu-large --short 1 --long 4 --repeats 5
    #     --evaluation-seeds 0
    "cpu-large": [_cma(4_000)],
    "gpu": [
        _group("openai_es", 4096, 100_000, _default("openai_es"), _jax_random("openai_es")),
        _group("openai_es", 256, 1_000_000, _default("openai_es"), _jax_random("openai_es")),
        _cma(1_000),
        _cma(4_000),
        _group("sep_cma_es", 4096, 100_000, _default("sep_cma_es"), _jax_random("sep_cma_es")),
        _group(
            "simulated_annealing",
            4096,
            100_000,
            _default("simulated_annealing", "sa"),
            _jax_random("simulated_annealing"),
        ),
        _group(
            "pso",
            4096,
            100_000,
            _default("pso", "pso"),
            Variant("pso, evosax's update rule", SAME_AS_EVOSAX["pso"], note="pso_same"),
        ),
        *_new_strategies(big=True),
    ],
}


def default_population_size(num_dims: int) -> int:
    """``λ = 4 + ⌊3 ln n⌋``: the default of CMA-ES, SNES, xNES and LM-MA-ES in both libraries."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def esjax_factory(name: str) -> tuple[Callable | None, str | None]:
    """``(factory, None)`` from ``esjax.strategies.<name>``, or ``(None, why)`` if it does not
    import (a strategy being written)."""
    try:
        module = importlib.import_module(f"esjax.strategies.{name}")
        return getattr(module, name), None
    except Exception as error:  # an unfinished module can fail in any way
        return None, f"{type(error).__name__}: {error}"


def esjax_kwargs(name: str, population_size: int, num_dims: int, options: dict) -> dict:
    """The factory's arguments: the row's options on top of the benchmark's σ and optimizer."""
    kwargs = {"population_size": population_size}
    if name == "openai_es":
        kwargs.update(sigma=SIGMA, optimizer=optax.adam(LEARNING_RATE))
    elif name in ("cma_es", "sep_cma_es", "pgpe", "snes", "xnes", "lm_ma_es", "simple_ga"):
        kwargs.update(sigma=SIGMA)
    for key, value in options.items():
        if value == HALF_POPULATION:
            value = population_size // 2
        elif value == NOISE_TABLE:
            value = noise_table()
        kwargs[key] = value
    return kwargs


@functools.cache
def noise_table() -> esjax.prng.NoiseTable:
    """The table of the ``NOISE_TABLE`` rows, built (and its values computed) once."""
    table = esjax.prng.NoiseTable(2**25, seed=0)
    table.values.block_until_ready()
    return table


# --- jax.random in place of esjax.prng (this script only) -------------------------------------


def _rows(indices) -> int:
    return int(jnp.shape(indices)[0])


def _jax_random_normals(key, indices, num_dims, dtype=jnp.float32, table=None, rows=None):
    if table is not None:  # a noise table is its own generator: left as it is
        return esjax.prng.member_normals(key, indices, num_dims, dtype, table, rows)
    return jax.random.normal(key, (_rows(indices), num_dims), dtype)


def _jax_random_uniforms(key, indices, num_dims, dtype=jnp.float32):
    return jax.random.uniform(key, (_rows(indices), num_dims), dtype)


def _jax_random_bits(key, indices, width, dtype=jnp.float32):
    uint = esjax.prng.float_bits_type(dtype)[0]
    return jax.random.bits(key, (_rows(indices), width), uint)


def _jax_random_chain_draws(key, num_chains, num_dims, dtype=jnp.float32):
    noise_key, draw_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, (num_chains, num_dims), dtype)
    return noise, 1.0 - jax.random.uniform(draw_key, (num_chains,), dtype)


def _sampling_functions() -> dict[str, tuple[Callable, Callable]]:
    """``name -> (esjax's function, its jax.random stand-in)``."""
    functions = {
        "member_normals": (esjax.prng.member_normals, _jax_random_normals),
        "member_uniforms": (esjax.prng.member_uniforms, _jax_random_uniforms),
        "member_bits": (esjax.prng.member_bits, _jax_random_bits),
    }
    annealing = sys.modules.get("esjax.strategies.simulated_annealing")
    if annealing is not None:
        functions["chain_draws"] = (annealing.chain_draws, _jax_random_chain_draws)
    return functions


@contextlib.contextmanager
def noise_generator(generator: str) -> Iterator[int]:
    """While tracing under this context, esjax strategies draw noise from ``generator``.

    ``"jax.random"`` rebinds every loaded ``esjax`` module's name for a per-member sampling
    function (``member_normals``, ``member_uniforms``, ``member_bits``, simulated annealing's
    ``chain_draws``) to a stand-in that makes one ``jax.random`` call for the rows asked for, and
    restores them on exit; it yields how many names it rebound. The stand-ins number rows
    ``0, 1, ...`` of each call, not by member index, which is all an unsharded loop needs.
    """
    if generator == DEFAULT_GENERATOR:
        yield 0
        return
    if generator != "jax.random":
        raise ValueError(f"generator must be 'esjax.prng' or 'jax.random', got {generator!r}")
    functions = _sampling_functions()
    saved = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("esjax") or module_name == "esjax.prng":
            continue
        for attribute, (original, stand_in) in functions.items():
            if getattr(module, attribute, None) is original:
                saved.append((module, attribute, original))
                setattr(module, attribute, stand_in)
    try:
        yield len(saved)
    finally:
        for module, attribute, original in saved:
            setattr(module, attribute, original)


@contextlib.contextmanager
def non_finite_check(enabled: bool) -> Iterator[None]:
    """While tracing with ``enabled=False``, ``esjax.base.mask_non_finite`` (the strategy
    contract's check of every population row for NaN/inf) is a no-op: what the check costs."""
    if enabled:
        yield
        return
    base = importlib.import_module("esjax.base")
    original = base.mask_non_finite

    def unchecked(state, population, fitness, copy_rows=True):
        return population, fitness, jnp.ones(population.shape[0], bool)

    base.mask_non_finite = unchecked
    try:
        yield
    finally:
        base.mask_non_finite = original


# --- the loops ---------------------------------------------------------------------------------


def state_checksum(state) -> jax.Array:
    """``[best fitness, sum of every float leaf of the state]``: what a loop returns, so that two
    runs with different noise can be told apart even when their best fitness is the same (e.g. a
    GA whose unmutated elite stays best)."""
    leaves = [
        jnp.sum(leaf.astype(jnp.float32))
        for leaf in jax.tree.leaves(state)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.stack([jnp.asarray(state.best_fitness, jnp.float32), sum(leaves)])


def esjax_loop(
    name: str,
    population_size: int,
    num_dims: int,
    options: dict | None = None,
    generator: str = DEFAULT_GENERATOR,
    guard: bool = True,
) -> tuple[Callable | None, dict]:
    """``((key, generations) -> best, info)`` for esjax's strategy built with ``options``, its
    noise from ``generator``; ``(None, {"skipped": why})`` if the strategy does not import."""
    factory, why = esjax_factory(name)
    if factory is None:
        return None, {"skipped": why}
    try:
        es = factory(**esjax_kwargs(name, population_size, num_dims, options or {}))
    except Exception as error:  # a strategy being written may not build yet
        return None, {"skipped": f"building it failed: {type(error).__name__}: {error}"}
    x0 = jnp.full((num_dims,), 0.5)
    info = {}
    if name == "cma_es":  # how often this row decomposes C
        interval = es.init(jax.random.key(0), x0).params.eigen_interval
        info["eigen_every_generations"] = max(1, math.ceil(float(interval)))

    def loop(key, generations):
        with noise_generator(generator) as rebound, non_finite_check(guard):
            if generator != DEFAULT_GENERATOR and rebound == 0:
                raise RuntimeError(f"{name}: no esjax sampling function to replace")
            state = es.init(key, x0)

            def body(generation, state):
                population, state = es.ask(jax.random.fold_in(key, generation), state)
                return es.tell(state, population, sphere(population))

            state = jax.lax.fori_loop(0, generations, body, state)
        return state_checksum(state)

    return loop, info


EVOSAX_NAMES = {
    "openai_es": "Open_ES",
    "cma_es": "CMA_ES",
    "sep_cma_es": "Sep_CMA_ES",
    "simulated_annealing": "SimulatedAnnealing",
    "pso": "PSO",
    "pgpe": "PGPE",
    "snes": "SNES",
    "xnes": "xNES",
    "simple_ga": "SimpleGA",
    "differential_evolution": "DifferentialEvolution",
    "lm_ma_es": "LM_MA_ES",
}


def evosax_loop(name: str, population_size: int, num_dims: int) -> Callable | None:
    """The same loop with evosax 0.3's strategy of the same name, or None if unavailable."""
    if importlib.util.find_spec("evosax") is None or name not in EVOSAX_NAMES:
        return None
    from evosax import algorithms
    from evosax.algorithms.population_based.base import PopulationBasedAlgorithm

    cls = getattr(algorithms, EVOSAX_NAMES[name])
    x0 = jnp.full((num_dims,), 0.5)
    if name == "openai_es":
        es = cls(
            population_size=population_size,
            solution=x0,
            optimizer=optax.adam(LEARNING_RATE),
            std_schedule=optax.constant_schedule(SIGMA),
        )
    elif name == "simple_ga":
        es = cls(population_size, x0, std_schedule=optax.constant_schedule(SIGMA))
    else:
        es = cls(population_size=population_size, solution=x0)
    params = es.default_params
    if hasattr(params, "std_init"):
        params = params.replace(std_init=SIGMA)
    population_based = isinstance(es, PopulationBasedAlgorithm)

    def loop(key, generations):
        if population_based:  # evosax's population-based init takes an evaluated swarm
            swarm = x0 + jax.random.normal(key, (population_size, num_dims))
            state = es.init(key, swarm, sphere(swarm), params)
        else:
            state = es.init(key, x0, params)

        def body(generation, state):
            k = jax.random.fold_in(key, generation)
            population, state = es.ask(k, state, params)
            state, _ = es.tell(k, population, sphere(population), state, params)
            return state

        state = jax.lax.fori_loop(0, generations, body, state)
        return state_checksum(state)

    return loop


# Calibration: each loop's two lengths are chosen so that the generations between them take
# about --target-seconds (at least MIN_DELTA generations, a multiple of the loop's period), the
# short run at least MIN_SHORT generations (past init and the first evaluation).
CALIBRATION_GENERATIONS = 10
MIN_DELTA, MAX_DELTA, MIN_SHORT = 20, 5_000, 5


def calibrated_lengths(seconds_per_generation: float, target_seconds: float, period: int = 1):
    """``(short, long)`` with ``long - short`` generations taking about ``target_seconds``."""
    delta = MIN_DELTA
    if seconds_per_generation > 0:
        delta = min(MAX_DELTA, max(MIN_DELTA, math.ceil(target_seconds / seconds_per_generation)))
    delta = period * math.ceil(delta / period)
    short = max(MIN_SHORT, delta // 3)
    return short, short + delta


def fixed_lengths(short: int, long: int, period: int = 1):
    """``(short, long)`` as asked, ``long`` moved up until ``long - short`` is a multiple of
    ``period`` (so a lazily repeated step, e.g. CMA-ES's decomposition, is counted whole)."""
    return short, short + period * math.ceil((long - short) / period)


def time_loops(
    loops: dict[str, Callable],
    repeats: int,
    *,
    lengths: tuple[int, int] | None = None,
    target_seconds: float = 1.0,
    periods: dict[str, int] | None = None,
) -> dict[str, dict]:
    """Compile each ``(key, generations)`` loop once, warm it up, choose its two lengths
    (``lengths``, or calibrated to ``target_seconds``), then time every loop at both lengths in
    ``repeats`` interleaved rounds (:func:`common.steady_state`): per loop, milliseconds per
    steady-state generation and of setup, wall-clock and CPU time, one value per round.

    The number of generations is an argument of the compiled program (a ``fori_loop`` with a
    traced bound), so both lengths run the same executable. ``periods[name]`` makes that loop's
    ``long - short`` a multiple of it. Memory is XLA's buffer assignment for each compiled loop
    (``memory_analysis``, on every backend): the allocator's ``peak_bytes_in_use`` is a maximum
    over the whole process, so it cannot tell two loops of one process apart.
    """
    periods = periods or {}
    key = jax.random.key(0)

    def count(n):
        return jnp.asarray(n, jnp.int32)

    compiled = {name: jax.jit(loop).lower(key, count(2)).compile() for name, loop in loops.items()}
    estimate, calibration_best = {}, {}
    for name, run in compiled.items():
        calibration_best[name] = jax.block_until_ready(run(key, count(2))).tolist()  # warm-up
        if lengths is None:  # calibration (fixed lengths skip it: slow loops, cpu-large)
            start = time.perf_counter()
            generations = count(CALIBRATION_GENERATIONS)
            calibration_best[name] = jax.block_until_ready(run(key, generations)).tolist()
            estimate[name] = (time.perf_counter() - start) / CALIBRATION_GENERATIONS
    chosen = {
        name: (
            fixed_lengths(*lengths, periods.get(name, 1))
            if lengths
            else calibrated_lengths(estimate[name], target_seconds, periods.get(name, 1))
        )
        for name in compiled
    }
    timed = steady_state(
        {
            name: lambda n, repeat, run=run: run(jax.random.key(repeat + 1), count(n))
            for name, run in compiled.items()
        },
        chosen,
        repeats,
        clocks=CLOCKS,
    )
    results = {}
    for name, run in compiled.items():
        memory = run.memory_analysis()
        wall, cpu = timed[name]["wall"], timed[name]["cpu"]
        per_generation = [1e3 * s for s in wall["per_iteration"]]
        cpu_per_generation = [1e3 * s for s in cpu["per_iteration"]]
        setup = [1e3 * s for s in wall["setup"]]
        results[name] = {
            "short_generations": chosen[name][0],
            "long_generations": chosen[name][1],
            # Median and range over the usable rounds (a round whose long run took no longer
            # than its short one, possible on a loaded host, is kept per repeat but not used).
            "ms_per_generation": spread(_usable(per_generation))["median"],
            "ms_per_generation_range": _range(_usable(per_generation)),
            "ms_per_generation_per_repeat": per_generation,
            "unusable_rounds": sum(v <= 0 for v in per_generation),
            "cpu_ms_per_generation": spread(_usable(cpu_per_generation))["median"],
            "cpu_ms_per_generation_range": _range(_usable(cpu_per_generation)),
            "cpu_ms_per_generation_per_repeat": cpu_per_generation,
            "setup_ms": spread(setup)["median"],
            "setup_ms_per_repeat": setup,
            "seconds_short": wall["short"],
            "seconds_long": wall["long"],
            "calibration_ms_per_generation": 1e3 * estimate[name] if estimate else None,
            # [best fitness, state checksum] after the warm-up or calibration run (key 0)
            "checksum_after_calibration": calibration_best[name],
            # The loop's working set: the strategy state and every temporary of a generation
            # (its arguments and outputs are a key, a count and a scalar).
            "temp_bytes": None if memory is None else memory.temp_size_in_bytes,
        }
    return results


def _usable(values: list[float]) -> list[float | None]:
    return [v if v > 0 else None for v in values]


def _range(values: list[float | None]) -> list[float | None]:
    s = spread(values)
    return [s["min"], s["max"]]


def ratios(numerators: list[float], denominators: list[float]) -> list[float | None]:
    """Per-round ratios; None where either estimate is not positive (a round so disturbed that
    its long run took no longer than its short one cannot be used)."""
    return [
        a / b if a > 0 and b > 0 else None for a, b in zip(numerators, denominators, strict=True)
    ]


# --- evaluations to a target: what the lazy eigendecomposition costs ---------------------------

EVALUATION_TARGET = 1e-8


def evaluation_problems(num_dims: int) -> dict[str, Callable]:
    rotation = random_rotation(jax.random.key(7), num_dims)
    return {
        "sphere": sphere,
        "rotated ellipsoid, condition 1e4": lambda x: ellipsoid(x @ rotation.T, condition=1e4),
    }


def evaluations_to_target(
    num_dims: int, seeds: int, max_generations: int, variants: dict[str, dict]
) -> dict:
    """Evaluations CMA-ES needs to reach ``f < 1e-8`` from ``x0 = 1``, ``σ0 = 1``, per problem,
    variant and seed (one ``lax.while_loop`` per run, unbatched, so the lazy rule skips work)."""
    rows = []
    for problem, fitness in evaluation_problems(num_dims).items():
        for label, options in variants.items():
            es = esjax.cma_es(num_dims=num_dims, sigma=1.0, **options)

            def run(key, es=es, fitness=fitness):
                def unfinished(carry):
                    state, generation = carry
                    return (state.best_fitness >= EVALUATION_TARGET) & (
                        generation < max_generations
                    )

                def body(carry):
                    state, generation = carry
                    population, state = es.ask(jax.random.fold_in(key, generation), state)
                    return es.tell(state, population, fitness(population)), generation + 1

                state = es.init(key, jnp.ones(num_dims))
                state, generations = jax.lax.while_loop(unfinished, body, (state, 0))
                return generations, state.best_fitness

            compiled = jax.jit(run)
            counts, seconds = [], []
            for seed in range(seeds):
                start = time.perf_counter()
                generations, best = jax.block_until_ready(compiled(jax.random.key(seed)))
                seconds.append(time.perf_counter() - start)
                reached = float(best) < EVALUATION_TARGET
                counts.append(int(generations) * es.population_size if reached else None)
            evaluations = spread(counts)
            rows.append(
                {
                    "problem": problem,
                    "variant": label,
                    "population_size": es.population_size,
                    "evaluations_per_seed": counts,
                    "median_evaluations": evaluations["median"],
                    "evaluations_range": [evaluations["min"], evaluations["max"]],
                    "seconds_per_seed": seconds,  # first includes compilation
                }
            )
            print(
                f"{problem:>34} {label:>26}: median {evaluations['median']} evaluations {counts}",
                flush=True,
            )
    return {
        "num_dims": num_dims,
        "target": EVALUATION_TARGET,
        "x0": 1.0,
        "sigma0": 1.0,
        "seeds": seeds,
        "max_generations": max_generations,
        "rows": rows,
    }


# --- the grid ----------------------------------------------------------------------------------


def run_group(
    group: Group,
    repeats: int,
    lengths: tuple[int, int] | None = None,
    target_seconds: float = 1.0,
) -> list[dict]:
    """Time one group's loops together; one row per esjax variant."""
    population_size = group.population_size or default_population_size(group.num_dims)
    loops, infos, periods = {}, {}, {}
    for variant in group.variants:
        loop, info = esjax_loop(
            group.strategy,
            population_size,
            group.num_dims,
            dict(variant.options),
            variant.generator,
            variant.guard,
        )
        infos[variant.label] = info
        if loop is not None:
            loops[variant.label] = loop
            periods[variant.label] = info.get("eigen_every_generations", 1)
    evosax = evosax_loop(group.strategy, population_size, group.num_dims)
    if evosax is not None and loops:
        loops["evosax"] = evosax
    load_before = host_load()
    started = time.perf_counter()
    timed = {}
    if loops:
        timed = time_loops(
            loops, repeats, lengths=lengths, target_seconds=target_seconds, periods=periods
        )
    group_seconds = time.perf_counter() - started
    theirs = timed.get("evosax")
    default_best = None
    rows = []
    for variant in group.variants:
        label = variant.label
        info = dict(infos[label])
        if variant.generator == DEFAULT_GENERATOR and label in timed:
            default_best = timed[label]["checksum_after_calibration"]
        if "eigen_every_generations" in info and "eigen_interval" not in dict(variant.options):
            label += f" (eigen every {info['eigen_every_generations']})"
        row = {
            "strategy": label,
            "base_strategy": group.strategy,
            "population_size": population_size,
            "num_dims": group.num_dims,
            "generator": variant.generator,
            "non_finite_check": variant.guard,
            **info,
        }
        if variant.options:
            row["esjax_options"] = dict(variant.options)
        ours = timed.get(variant.label)
        row["esjax"] = ours
        row["evosax"] = theirs
        if ours and variant.generator != DEFAULT_GENERATOR and default_best is not None:
            # The rebinding took: different noise, a different run.
            differs = ours["checksum_after_calibration"] != default_best
            row["noise_differs_from_esjax_prng"] = differs
            if not differs:
                print(f"WARNING {label}: the jax.random run equals the esjax.prng run", flush=True)
        if ours and theirs:
            for prefix, field in (("", "ms_per_generation"), ("cpu_", "cpu_ms_per_generation")):
                per_repeat = ratios(theirs[f"{field}_per_repeat"], ours[f"{field}_per_repeat"])
                row[f"{prefix}speedup"] = spread(per_repeat)["median"]
                row[f"{prefix}speedup_range"] = _range(per_repeat)
                row[f"{prefix}speedup_per_repeat"] = per_repeat
            if ours["temp_bytes"] is not None and theirs["temp_bytes"]:
                row["memory_ratio"] = ours["temp_bytes"] / theirs["temp_bytes"]
        if variant.note:
            row["note"] = NOTES[variant.note]
        row["host_load_before"] = load_before
        row["group_seconds"] = group_seconds
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None)
    parser.add_argument(
        "--short",
        type=int,
        default=None,
        help="generations of the short run (with --long; default: calibrated per loop)",
    )
    parser.add_argument("--long", type=int, default=None, help="generations of the long run")
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=0.25,
        help="calibration: seconds the generations between the two runs should take",
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (>= 5)")
    parser.add_argument("--only", default=None, help="comma-separated strategy names")
    parser.add_argument(
        "--sizes",
        default=None,
        help="POPULATION,DIMS for every row (smoke tests; default-λ rows keep their default)",
    )
    parser.add_argument(
        "--evaluation-seeds",
        type=int,
        default=5,
        help="seeds of the CMA-ES evaluations-to-target check (0: skip it); runs when the "
        "selection includes cma_es",
    )
    parser.add_argument("--evaluation-dims", type=int, default=100)
    parser.add_argument("--evaluation-max-generations", type=int, default=20_000)
    parser.add_argument(
        "--output", default=None, help="JSON path (default: results/throughput-...json)"
    )
    args = parser.parse_args(argv)
    if (args.short is None) != (args.long is None):
        parser.error("--short and --long go together")
    lengths = None if args.short is None else (args.short, args.long)
    device = jax.devices()[0]
    grid_name = args.grid or ("cpu" if device.platform == "cpu" else "gpu")
    only = set(args.only.split(",")) if args.only else None
    groups = [g for g in GRIDS[grid_name] if not only or g.strategy in only]
    if args.sizes:
        population, dims = (int(v) for v in args.sizes.split(","))
        groups = [
            dataclasses.replace(g, population_size=g.population_size and population, num_dims=dims)
            for g in groups
        ]

    started = time.time()
    context = environment("throughput")
    load_start = host_load()
    # The default grid of each platform writes throughput-...json; another grid its own file.
    stem = "throughput" if grid_name in ("cpu", "gpu") else f"throughput-{grid_name}"
    rows: list[dict] = []

    def assemble(evaluations: dict | None, complete: bool) -> dict:
        loads = [load_start[0], *(row["host_load_before"][0] for row in rows)]
        load_now = host_load()
        result = {
            **context,
            # False while the grid runs (the file is rewritten after every group, so a crash
            # keeps what was measured); performance_md.py skips incomplete files.
            "complete": complete,
            "timing": "steady_state",
            "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            # Other processes on the host inflate both libraries' times alike, but not exactly:
            # 1-, 5- and 15-minute load averages at the start and end, and before every group.
            "host_load_average_at_start": load_start[0],
            "host_load_at_start": load_start,
            "host_load_at_end": load_now,
            "host_load_range": [min(*loads, load_now[0]), max(*loads, load_now[0])],
            "grid": grid_name,
            "lengths": "calibrated" if lengths is None else list(lengths),
            "target_seconds": args.target_seconds if lengths is None else None,
            "repeats": args.repeats,
            "seconds": time.time() - started,
            "rows": rows,
        }
        if evaluations is not None:
            result["cma_evaluations_to_target"] = evaluations
        return result

    for group in groups:
        for row in run_group(group, args.repeats, lengths, args.target_seconds):
            rows.append(row)
            _print_row(row)
        write_result(assemble(None, complete=False), stem, args.output)

    evaluations = None
    if args.evaluation_seeds > 0 and any(g.strategy == "cma_es" for g in groups):
        evaluations = evaluations_to_target(
            args.evaluation_dims,
            args.evaluation_seeds,
            args.evaluation_max_generations,
            {"default (lazy)": {}, "eigen_interval=1": {"eigen_interval": 1}},
        )
        state = esjax.cma_es(num_dims=args.evaluation_dims, sigma=1.0).init(
            jax.random.key(0), jnp.ones(args.evaluation_dims)
        )
        evaluations["default_eigen_every_generations"] = max(
            1, math.ceil(float(state.params.eigen_interval))
        )
    result = assemble(evaluations, complete=True)
    write_result(result, stem, args.output)
    return result


def _print_row(row: dict) -> None:
    def ms(entry):
        if not entry:
            return "       -"
        low, high = entry["ms_per_generation_range"]
        return f"{entry['ms_per_generation']:8.3f} [{low:.3f}, {high:.3f}]"

    if "skipped" in row:
        print(f"{row['strategy']:>40}: skipped ({row['skipped']})", flush=True)
        return
    speedup = "     -"
    if row.get("speedup") is not None:
        low, high = row["speedup_range"]
        speedup = f"{row['speedup']:5.2f}x [{low:.2f}, {high:.2f}]"
    if row.get("cpu_speedup") is not None:
        speedup += f" (CPU time {row['cpu_speedup']:.2f}x)"
    memory = row.get("memory_ratio")
    memory = "" if memory is None else f" | memory {memory:4.2f}"
    print(
        f"{row['strategy']:>40} {row['population_size']:>5} x {row['num_dims']:>7} | "
        f"esjax {ms(row['esjax'])} ms | evosax {ms(row['evosax'])} ms | evosax/esjax {speedup}"
        + memory,
        flush=True,
    )


if __name__ == "__main__":
    main()
