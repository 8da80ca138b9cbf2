"""A run ends at the generation its stop signal fires, whatever ``log_every`` is.

The strategy's own termination signal (CMA-ES on a 2-D sphere meets its tolerances within a
few hundred generations) and the runner's "no finite fitness" stop both end the run exactly
there: the state, ``metrics.csv`` and ``summary.json`` equal a run of that many generations,
for one chunk or many. ``--no-stop`` (``stop=False``) runs every generation.
"""

import csv
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import esjax
from esjax.experiments.config import parse_config
from esjax.experiments.runner import run_experiment
from esjax.problems import sphere

BUDGET = 600  # generations; CMA-ES (λ = 6, d = 2) terminates on the sphere well before
CMA = {"name": "cma_es", "num_dims": 2, "sigma": 0.5}


def _cma_run(log_every, stop=True):
    es = esjax.cma_es(num_dims=2, sigma=0.5)
    state = es.init(jax.random.key(0), jnp.ones(2))
    return esjax.run(
        es,
        sphere,
        jax.random.key(1),
        state,
        BUDGET,
        log_every=log_every,
        progress=False,
        stop_on_termination=stop,
    )


@pytest.fixture(scope="module")
def cma_runs():
    return {log_every: _cma_run(log_every) for log_every in (BUDGET, 37)}


def test_termination_ends_the_run_at_its_generation_for_any_chunking(cma_runs):
    (whole, whole_metrics), (chunked, chunked_metrics) = cma_runs[BUDGET], cma_runs[37]
    stopped_at = int(whole.generation)
    assert 0 < stopped_at < BUDGET
    es = esjax.cma_es(num_dims=2, sigma=0.5)
    assert bool(es.terminated(whole))
    chex.assert_trees_all_equal(whole, chunked)
    for metrics in (whole_metrics, chunked_metrics):
        # One row per generation run, none of them frozen after the signal.
        np.testing.assert_array_equal(metrics["generation"], np.arange(1, stopped_at + 1))
        assert not metrics["terminated"].any()
    # A run asked for exactly that many generations is the same run.
    exact, _ = esjax.run(
        es,
        sphere,
        jax.random.key(1),
        es.init(jax.random.key(0), jnp.ones(2)),
        stopped_at,
        progress=False,
    )
    chex.assert_trees_all_equal(whole, exact)


def test_no_stop_runs_every_generation(cma_runs):
    state, metrics = _cma_run(BUDGET, stop=False)
    assert int(state.generation) == BUDGET and len(metrics["generation"]) == BUDGET
    assert int(state.generation) > int(cma_runs[BUDGET][0].generation)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("log_every", [BUDGET, 50])
def test_esjax_run_stops_at_the_signal_and_says_which(tmp_path, cma_runs, log_every):
    raw = {
        "name": "cma_stop",
        "seed": 0,
        "generations": BUDGET,
        "log_every": log_every,
        "strategy": CMA,
        "problem": {"name": "sphere", "num_dims": 2, "x0": 1.0},
    }
    summary = run_experiment(parse_config(raw), progress=False, output_dir=tmp_path)
    assert summary["stop_reason"].startswith("terminated")
    assert summary["generations"] < BUDGET
    rows = _rows(tmp_path / "cma_stop" / "metrics.csv")
    assert [int(float(row["generation"])) for row in rows] == list(
        range(1, summary["generations"] + 1)
    )
    saved = json.loads((tmp_path / "cma_stop" / "summary.json").read_text())
    assert saved["stop_reason"] == summary["stop_reason"]
    assert saved["output_dir"] == str(tmp_path)


def test_esjax_run_no_stop_runs_the_budget(tmp_path):
    raw = {
        "name": "cma_no_stop",
        "generations": BUDGET,
        "log_every": BUDGET,
        "strategy": CMA,
        "problem": {"name": "sphere", "num_dims": 2, "x0": 1.0},
    }
    summary = run_experiment(parse_config(raw), progress=False, output_dir=tmp_path, stop=False)
    assert summary["generations"] == BUDGET and summary["stop_reason"] == "completed"


@pytest.mark.parametrize("log_every", [1, 10])
def test_no_finite_fitness_stops_at_exactly_the_limit(tmp_path, log_every):
    # x0 = 1e30: every member's sphere value overflows, so no generation has a finite fitness.
    raw = {
        "name": "diverged",
        "generations": 40,
        "log_every": log_every,
        "max_nonfinite_generations": 3,
        "strategy": {"name": "openai_es", "population_size": 4, "sigma": 0.1},
        "problem": {"name": "sphere", "num_dims": 3, "x0": 1.0e30},
    }
    summary = run_experiment(parse_config(raw), progress=False, output_dir=tmp_path)
    assert summary["stop_reason"] == "no finite fitness for 3 generations"
    assert summary["generations"] == 3
    assert len(_rows(tmp_path / "diverged" / "metrics.csv")) == 3
