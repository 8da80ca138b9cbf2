"""Determinism: same seed and config → identical results, run to run and process to process,
whatever the chunking; eager runs repeat exactly; float64 mode works for every strategy.

A separate Python process (started first, so it runs alongside the in-process tests) redoes every
strategy's reference run from ``test_checkpoint`` with another chunking and reports a hash of the
final state, then switches on ``jax_enable_x64`` and runs every strategy in float64. x64
therefore never touches this test process.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from strategy_cases import NUM_DIMS, STRATEGY_CASES

# The uninterrupted runs of the checkpoint tests (cached: one compilation per strategy serves
# both files, and the fresh process recomputes them).
from test_checkpoint import GENERATIONS, reference_run, runner_setup

import esjax
from esjax.problems import sphere

CASE_IDS = [case.id for case in STRATEGY_CASES]
CASES = {case.id: case for case in STRATEGY_CASES}
FACTORIES = {case.id: case.factory for case in STRATEGY_CASES}
TESTS_DIR = Path(os.path.abspath(__file__)).parent  # where strategy_cases.py is


def state_digest(state) -> str:
    """sha256 over every leaf's dtype, shape and bytes (typed keys via their key data)."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        leaf = np.asarray(leaf)
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def rechunked_run(name) -> str:
    """The checkpoint tests' reference run redone with ``esjax.run`` in 8-generation chunks
    (theirs: 4); returns the final state's digest."""
    es, fitness_fn, key, start = runner_setup(name)
    state, _ = esjax.run(es, fitness_fn, key, start, GENERATIONS, log_every=8, progress=False)
    return state_digest(state)


def float64_run(name) -> dict:
    """The strategy-table sphere run (the row's fitness) with a float64 ``x0`` (call with
    jax_enable_x64 on)."""
    case = CASES[name]
    es, budget = case.factory(), case.budget
    start = es.init(jax.random.key(0), jnp.ones(NUM_DIMS, jnp.float64))
    population, _ = es.ask(jax.random.key(1), start)
    state, _ = esjax.run(
        es, case.fitness, jax.random.key(1), start, budget, log_every=budget, progress=False
    )
    floats = [
        leaf
        for leaf in jax.tree_util.tree_leaves(state)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    return {
        "float_dtypes": sorted({str(leaf.dtype) for leaf in floats}),
        "population_dtype": str(population.dtype),
        "finite": bool(all(np.all(np.isfinite(np.asarray(leaf))) for leaf in floats)),
        "best_fitness": float(state.best_fitness),
        "target": case.target,
    }


# Runs in a fresh interpreter: float32 digests first, then every strategy in float64.
CHILD = textwrap.dedent(
    """
    import json
    import jax
    from strategy_cases import STRATEGY_CASES
    from test_determinism import float64_run, rechunked_run

    report = {"digests": {case.id: rechunked_run(case.id) for case in STRATEGY_CASES}}
    jax.config.update("jax_enable_x64", True)
    report["x64"] = {case.id: float64_run(case.id) for case in STRATEGY_CASES}
    print("REPORT" + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def child_process():
    """The fresh-process run, started as soon as the module's first test asks for it."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("JAX_ENABLE_X64", None)
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=TESTS_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()


@pytest.fixture(scope="module")
def child_report(child_process):
    stdout, stderr = child_process.communicate(timeout=300)
    assert child_process.returncode == 0, stderr[-3000:]
    line = next(line for line in stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


def test_start_the_fresh_process(child_process):
    """Starts the child first so that it overlaps the in-process tests below."""
    assert child_process.poll() in (None, 0)


def test_eager_runs_repeat_exactly():
    """Un-jitted generations are reproducible too. One strategy stands for all: eager dispatch is
    strategy-agnostic, and each strategy's first eager pass costs seconds of per-primitive
    compilation. (Eager vs jit agree only to rounding, XLA fusing and reordering arithmetic
    under jit; tests/test_strategy_table.py checks that closeness for every strategy.)"""
    es = FACTORIES["openai_es"]()

    def two_generations():
        state = es.init(jax.random.key(0), jnp.ones(NUM_DIMS))
        for generation in range(2):
            population, state = es.ask(jax.random.key(generation), state)
            state = es.tell(state, population, sphere(population))
        return state

    chex.assert_trees_all_equal(two_generations(), two_generations())


@pytest.mark.parametrize("name", CASE_IDS)
def test_fresh_process_and_other_chunking_give_the_identical_state(name, child_report):
    """Same seed and config in a new interpreter, compiled as 8-generation chunks instead of 4:
    the final state is bit-identical (generation g's key is fold_in(key, g), and XLA on one
    backend compiles the same program to the same arithmetic)."""
    assert child_report["digests"][name] == state_digest(reference_run(name)[3])


@pytest.mark.parametrize("name", CASE_IDS)
def test_float64_mode_works(name, child_report):
    """With jax_enable_x64 and a float64 x0, every float in the state stays float64 (no silent
    float32 constant), the state is finite and the sphere is solved as in float32."""
    x64 = child_report["x64"][name]
    assert x64["float_dtypes"] == ["float64"], x64
    assert x64["population_dtype"] == "float64"
    assert x64["finite"]
    assert x64["best_fitness"] < x64["target"]  # the table's float32 target, same budget
    assert not jax.config.jax_enable_x64  # nothing leaked into this process
