"""step/run: chunked evaluation, metrics, resumable key schedule, callbacks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import esjax
from esjax.loop import evaluate_population
from esjax.problems import sphere


def test_chunked_and_vmapped_evaluation_agree(key):
    es = esjax.openai_es(population_size=10)
    state = es.init(key, jnp.ones(4))
    population, _ = es.ask(key, state)
    full = evaluate_population(sphere, population, state.spec)
    chunked = jax.jit(lambda p: evaluate_population(sphere, p, state.spec, batch_size=3))(
        population
    )
    np.testing.assert_allclose(chunked, full, rtol=1e-6)


def test_step_metrics_are_small_scalars(key):
    es = esjax.openai_es(population_size=8)
    state = es.init(key, jnp.ones(50))
    state, metrics = esjax.step(es, sphere)(key, state)
    for name, value in metrics.items():
        chex.assert_shape(value, (), custom_message=name)
    assert int(metrics["generation"]) == 1 and int(metrics["num_nonfinite"]) == 0


def test_run_chunking_and_resume_give_identical_results(key):
    es = esjax.openai_es(population_size=8, sigma=0.1)
    state = es.init(key, jnp.ones(3))
    straight, metrics = esjax.run(es, sphere, key, state, 12, log_every=12, progress=False)
    first, _ = esjax.run(es, sphere, key, state, 5, log_every=2, progress=False)
    resumed, _ = esjax.run(es, sphere, key, first, 7, log_every=4, progress=False)
    chex.assert_trees_all_equal(straight, resumed)
    chex.assert_shape(metrics["best_fitness"], (12,))
    np.testing.assert_array_equal(metrics["generation"], np.arange(1, 13))


def test_callback_can_stop_early(key):
    es = esjax.openai_es(population_size=8)
    state = es.init(key, jnp.ones(3))
    seen = []
    state, metrics = esjax.run(
        es,
        sphere,
        key,
        state,
        100,
        log_every=10,
        progress=False,
        callback=lambda s, m: seen.append(int(s.generation)) or len(seen) == 3,
    )
    assert seen == [10, 20, 30] and int(state.generation) == 30 and len(metrics["generation"]) == 30


def test_fitness_with_key_gets_one_key_per_generation(key):
    es = esjax.openai_es(population_size=4)
    state = es.init(key, jnp.zeros(2))

    def noisy(x, k):
        return jnp.sum(x**2) + jax.random.uniform(k)

    state, metrics = esjax.step(es, noisy, fitness_takes_key=True)(key, state)
    # One shared key per generation: the noise term is identical across members.
    assert np.isfinite(float(metrics["fitness_mean"]))


def test_run_and_timed_run_drive_the_same_chunks(key):
    """esjax.run and the comparisons' timed run are one driver (loop.Chunks + run_chunks): the
    same generation from the same state and key ends in the identical state whatever the chunk
    length, and a shared cache compiles each chunk length once."""
    from esjax import baselines
    from esjax.loop import Chunks, make_generation, run_chunks

    es = esjax.openai_es(population_size=8, sigma=0.1)
    start = es.init(key, jnp.ones(3))
    ran, _ = esjax.run(es, sphere, key, start, 10, log_every=3, progress=False)
    cache = {}
    timed = [
        baselines.timed_run(
            make_generation(es, sphere),
            start,
            key,
            10,
            counter=lambda state: state.generation,
            evaluate=lambda state: {"best_fitness": state.best_fitness},
            eval_every=4,
            forward_passes_per_step=es.population_size,
            progress=False,
            compiled=cache,
        )
        for _ in range(2)
    ]
    chex.assert_trees_all_equal(timed[0].state, ran)
    chex.assert_trees_all_equal(timed[1].state, ran)
    assert sorted(cache) == [2, 4]  # the chunk lengths 4, 4, 2: compiled once, reused
    assert timed[0].compile_seconds > 0 and timed[1].compile_seconds == 0
    assert [row["step"] for row in timed[0].history] == [0, 4, 8, 10]

    # A hook that keeps fewer steps than a chunk ran, then stops: run_chunks counts what it kept.
    chunks = Chunks(make_generation(es, sphere), key)
    seen = []

    def after(first, state, metrics, length, seconds):
        seen.append((int(first.generation), length, len(metrics["generation"]), seconds >= 0))
        kept, _, _ = chunks(first, 1)
        return kept, 1, len(seen) == 2

    state, done = run_chunks(chunks, start, 10, 4, after)
    assert seen == [(0, 4, 4, True), (1, 4, 4, True)] and done == 2
    assert int(state.generation) == 2
