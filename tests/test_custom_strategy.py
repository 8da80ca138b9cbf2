"""The README's "Writing your own strategy" snippet, run exactly as printed, gets validation,
best tracking, the evaluation counter, ``run``/``evolve`` and checkpoints from the contract (the
8-device run equal to one device is in ``test_distributed.py``)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from readme_snippets import custom_strategy_definitions, python_block

import esjax


def test_readme_snippet_runs_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes mu_lambda.msgpack
    namespace: dict = {}
    exec(python_block("Writing your own strategy"), namespace)  # noqa: S102
    state, restored, es = namespace["state"], namespace["restored"], namespace["es"]
    # Sphere from f = 10: a (8, 32)-ES with σ = 0.1 settles near its noise floor (~0.02).
    assert float(state.best_fitness) < 0.1
    assert int(state.evaluations) == 100 * es.population_size
    chex.assert_trees_all_equal(restored, state)
    assert "best" in capsys.readouterr().out


@pytest.fixture(scope="module")
def mu_lambda_es():
    return custom_strategy_definitions()["mu_lambda_es"]


def test_contract_checks_and_non_finite_handling(mu_lambda_es):
    with pytest.raises(ValueError, match=r"sigma must lie in \(0.0, inf"):
        mu_lambda_es(population_size=8, num_parents=2, sigma=-1.0)
    es = mu_lambda_es(population_size=8, num_parents=2)
    state = es.init(jax.random.key(0), jnp.ones(3))
    population, state = es.ask(jax.random.key(1), state)
    with pytest.raises(ValueError, match="fitness must have shape"):
        es.tell(state, population, jnp.zeros(7))
    with pytest.raises(TypeError, match="x0 leaf"):
        es.init(jax.random.key(0), jnp.ones(3, jnp.int32))
    # A NaN row with a finite (even the best) fitness contributes nothing and is never best.
    fitness = esjax.problems.sphere(population).at[0].set(-1.0)
    told = es.tell(state, population.at[0, 1].set(jnp.nan), fitness)
    assert float(told.best_fitness) > 0 and bool(jnp.all(jnp.isfinite(told.mean)))
    clean = es.tell(state, population, fitness.at[0].set(jnp.nan))
    np.testing.assert_allclose(told.mean, clean.mean, rtol=1e-6)


def test_evolve_vmapped_over_seeds_equals_separate_runs(mu_lambda_es):
    es = mu_lambda_es(population_size=8, num_parents=2)
    keys = jax.random.split(jax.random.key(3), 4)
    states = jax.vmap(lambda k: es.init(k, jnp.ones(3)))(keys)
    traces = 0

    def sweep(keys, states):
        nonlocal traces
        traces += 1
        return jax.vmap(lambda k, s: esjax.evolve(es, esjax.problems.sphere, k, s, 20))(
            keys, states
        )

    compiled = jax.jit(sweep)
    swept, metrics = compiled(keys, states)
    compiled(jax.random.split(jax.random.key(4), 4), states)  # new keys: no retrace
    assert metrics["best_fitness"].shape == (4, 20)
    for i in range(4):
        alone, _ = esjax.evolve(
            es, esjax.problems.sphere, keys[i], es.init(keys[i], jnp.ones(3)), 20
        )
        # vmap changes how XLA vectorises the reductions, so the two programs may round
        # differently (measured: 1.1e-8 on a 0.0099 coordinate after 20 generations, under
        # --xla_backend_optimization_level=0); a wrong key or a mixed-up state is off by ~1e-2.
        chex.assert_trees_all_close(
            jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], swept), alone, rtol=1e-5, atol=1e-6
        )
    assert traces == 1
