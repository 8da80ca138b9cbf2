"""Checkpoints: exact kill-and-resume for every strategy (Python API and ``esjax run --resume``),
damaged files, atomic writes and refusing a checkpoint of another strategy or dimension.

Compilation dominates the cost, so each strategy's uninterrupted reference run is computed once
(:func:`reference_run`) with the very keys, problem and chunk length ``esjax run`` uses for
``CONFIG``; the resumed runs, API and CLI, must reproduce it bit for bit.
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import struct
from strategy_cases import NUM_DIMS, STRATEGY_CASES, key_data

import esjax
from esjax import checkpoint
from esjax.base import StrategyState
from esjax.cli import main
from esjax.experiments.config import build_strategy
from esjax.experiments.runner import write_metrics_csv
from esjax.experiments.setup import build_problem
from esjax.loop import Chunks, make_generation
from esjax.problems import sphere

CASE_IDS = [case.id for case in STRATEGY_CASES]
CASES = {case.id: case for case in STRATEGY_CASES}
FACTORIES = {case.id: case.factory for case in STRATEGY_CASES}
GENERATIONS, KILLED_AT, CHUNK = 32, 12, 4
# `esjax run` killed and resumed in chunks of other lengths than the reference's CHUNK (its
# log_every may change on resume), so a loop that keyed generations by their index within a
# chunk, not by state.generation, would draw other keys than the reference does. (Each CLI run
# compiles its own chunks anyway, so this costs no extra compilation.)
KILLED_LOG_EVERY, RESUMED_LOG_EVERY = 3, 5
CONFIG = {
    "name": "resumable",
    "seed": 7,
    "generations": GENERATIONS,
    "log_every": CHUNK,
    "checkpoint_every": CHUNK,
    # Rosenbrock's curved valley rather than the sphere: a wrong key or a lost state field (an
    # evolution path, an optimizer moment) visibly changes the trajectory. (The row's own
    # valley problem: residual vectors for EKI, see strategy_cases.)
    "problem": {"name": "rosenbrock", "num_dims": NUM_DIMS, "x0": 0.5},
}


def _strategy_section(name):
    return CASES[name].section()


def _problem_section(name):
    return {**CONFIG["problem"], "name": CASES[name].problem}


def runner_setup(name):
    """What ``esjax run CONFIG`` builds for strategy ``name``: ``(es, fitness_fn, key, start)``.

    The strategy comes from the config section ``esjax run`` sees (the row's population size and
    options, every other hyperparameter at its default) and the runner's keys: problem
    ``fold_in(seed, 0)``, init ``fold_in(seed, 1)``, generations ``fold_in(seed, 2)``.
    """
    es = build_strategy(_strategy_section(name))
    seed_key = jax.random.key(CONFIG["seed"])
    problem = build_problem(_problem_section(name), jax.random.fold_in(seed_key, 0))
    start = es.init(jax.random.fold_in(seed_key, 1), problem.x0)
    return es, problem.fitness_fn, jax.random.fold_in(seed_key, 2), start


@functools.cache
def reference_run(name):
    """``esjax run CONFIG`` for strategy ``name`` without interruption, via the Python API.

    Returns ``(es, chunk, start, final, metrics)`` where ``chunk`` is the compiled
    ``CHUNK``-generation scan ``esjax.run`` runs (:class:`esjax.loop.Chunks`; generation g reads
    its key from ``state.generation``).
    """
    es, fitness_fn, key, start = runner_setup(name)
    chunks = Chunks(make_generation(es, fitness_fn), key)

    def chunk(state):
        return chunks(state, CHUNK)[:2]

    state, history = start, []
    for _ in range(GENERATIONS // CHUNK):
        state, metrics = chunk(state)
        history.append(jax.device_get(metrics))
    metrics = {key: np.concatenate([m[key] for m in history]) for key in history[0]}
    return es, chunk, start, state, metrics


@pytest.fixture(params=CASE_IDS)
def name(request):
    return request.param


def _advance(chunk, state, generations):
    for _ in range(generations // CHUNK):
        state, _ = chunk(state)
    return state


def test_kill_and_resume_equals_straight_run_exactly(name, tmp_path):
    """32 generations straight == 12, save, load into a fresh state, 20 more (bit for bit)."""
    es, chunk, start, straight, _ = reference_run(name)
    killed = _advance(chunk, start, KILLED_AT)
    path = checkpoint.save(tmp_path / "checkpoint.msgpack", killed, {"note": "kill"}, strategy=es)
    # A new process knows only the config: its like-state comes from a fresh init, here with
    # another key, x0 and hyperparameters (the table's row) to show that none of them leak in.
    like = FACTORIES[name]().init(jax.random.key(99), jnp.full(NUM_DIMS, 3.0))
    loaded = checkpoint.load(path, like, strategy=es)
    chex.assert_trees_all_equal(loaded, killed)
    if es.capabilities.state_holds_key:
        # The saved key, not the template's (which a fresh init with another seed gave `like`).
        assert not np.array_equal(key_data(like.key), key_data(killed.key))
        np.testing.assert_array_equal(key_data(loaded.key), key_data(killed.key))
        assert loaded.key.dtype == killed.key.dtype  # still a typed key, same implementation
    # `like` may also be abstract (jax.eval_shape): nothing needs materialising to restore.
    abstract = jax.eval_shape(es.init, jax.random.key(0), jnp.ones(NUM_DIMS))
    chex.assert_trees_all_equal(checkpoint.load(path, abstract), killed)
    resumed = _advance(chunk, loaded, GENERATIONS - KILLED_AT)
    chex.assert_trees_all_equal(resumed, straight)
    assert int(resumed.generation) == GENERATIONS
    header = checkpoint.read_header(path)
    assert header["strategy"] == es.name and header["generation"] == KILLED_AT
    assert header["num_dims"] == NUM_DIMS and header["metadata"] == {"note": "kill"}
    assert header["esjax_version"] == esjax.__version__


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Bytes of an OpenAI-ES checkpoint at generation 2 (then rotated to previous) and 4."""
    es = esjax.openai_es(population_size=8, sigma=0.1)
    state = es.init(jax.random.key(0), jnp.ones(NUM_DIMS))
    step = esjax.step(es, sphere)
    path = tmp_path_factory.mktemp("two") / "checkpoint.msgpack"
    states = []
    for generation in range(4):
        state, _ = step(jax.random.key(generation), state)
        if generation % 2:
            checkpoint.save(path, state, strategy=es)
            states.append(state)
    return es, path.read_bytes(), checkpoint.previous_path(path).read_bytes(), states


@pytest.fixture
def saved_twice(two_checkpoints, tmp_path):
    """A fresh folder holding the two checkpoints: ``(es, path, (older, latest))``."""
    es, latest, older, states = two_checkpoints
    path = tmp_path / "checkpoint.msgpack"
    path.write_bytes(latest)
    checkpoint.previous_path(path).write_bytes(older)
    return es, path, states


def _like(es):
    return es.init(jax.random.key(0), jnp.ones(NUM_DIMS))


def test_save_rotates_the_previous_checkpoint(tmp_path, two_checkpoints):
    es, _, _, (older, latest) = two_checkpoints
    path = tmp_path / "checkpoint.msgpack"
    checkpoint.save(path, older)
    checkpoint.save(path, latest)
    chex.assert_trees_all_equal(checkpoint.load(path, _like(es)), latest)
    previous = checkpoint.previous_path(path)
    assert previous.name == "checkpoint.previous.msgpack"
    chex.assert_trees_all_equal(checkpoint.load(previous, _like(es)), older)
    # No temporary or staging files are left behind by a successful save.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([previous.name, path.name])


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:10], "truncated"),
        (lambda data: data + b"\x00", "expected .* bytes"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), "checksum"),
        (lambda data: data[:70] + bytes([data[70] ^ 0x01]) + data[71:], "checksum"),
        (lambda data: b"PK\x03\x04" + data[4:], "not an esjax checkpoint"),
        (lambda data: b"", "truncated"),
    ],
    ids=["half", "frame-only", "appended", "payload-bit", "header-bit", "bad-magic", "empty"],
)
def test_damaged_checkpoint_is_a_clear_error_and_previous_survives(saved_twice, damage, words):
    es, path, (older, _) = saved_twice
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=words) as error:
        checkpoint.load(path, _like(es))
    assert str(path) in str(error.value)  # the message names the file
    with pytest.raises(checkpoint.CorruptCheckpointError):
        checkpoint.read_header(path)
    chex.assert_trees_all_equal(checkpoint.load(checkpoint.previous_path(path), _like(es)), older)


def test_crash_during_save_leaves_the_latest_checkpoint_intact(saved_twice, monkeypatch):
    """A crash before the final rename (simulated) keeps the old file complete and loadable."""
    es, path, (_, latest) = saved_twice
    before = path.read_bytes()
    newer = latest.replace(generation=latest.generation + 1)

    def crash(*args):
        raise KeyboardInterrupt  # e.g. SIGINT or pre-emption between write and rename

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, newer, keep_previous=False)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    chex.assert_trees_all_equal(checkpoint.load(path, _like(es)), latest)


@struct.dataclass
class OtherState(StrategyState):
    position: jax.Array


def test_loading_into_another_strategy_or_dimension_is_refused(saved_twice):
    es, path, _ = saved_twice
    with pytest.raises(checkpoint.CheckpointError, match="num_dims=4.*num_dims=5"):
        checkpoint.load(path, es.init(jax.random.key(0), jnp.ones(NUM_DIMS + 1)))
    base = _like(es)
    other = OtherState(
        best_solution=base.best_solution,
        best_fitness=base.best_fitness,
        generation=base.generation,
        evaluations=base.evaluations,
        spec=base.spec,
        position=base.mean,
    )
    with pytest.raises(checkpoint.CheckpointError, match="another strategy"):
        checkpoint.load(path, other)
    with pytest.raises(checkpoint.CheckpointError, match="'openai_es', not 'cma_es'"):
        checkpoint.load(path, base, strategy="cma_es")
    with pytest.raises(checkpoint.CheckpointError, match="x0 leaves"):
        checkpoint.load(path, es.init(jax.random.key(0), {"a": jnp.ones(2), "b": jnp.ones(2)}))
    with pytest.raises(checkpoint.CheckpointError, match="opt_state/0/mu"):
        # Same class and dimension, another optimizer: the leaf that differs is named.
        sgd = esjax.openai_es(population_size=8, optimizer=optax.sgd(0.1))
        checkpoint.load(path, _like(sgd))
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        checkpoint.load(path.with_name("missing.msgpack"), base)


def test_every_registered_strategy_refuses_the_others_checkpoints(tmp_path):
    """Each strategy's state class is distinct, so a cross-strategy load never succeeds."""
    if len(STRATEGY_CASES) < 2:
        pytest.skip("needs at least two strategies in tests/strategy_cases.py")
    states = {}
    for case in STRATEGY_CASES:
        name = case.id
        states[name] = case.factory().init(jax.random.key(0), jnp.ones(NUM_DIMS))
        checkpoint.save(tmp_path / f"{name}.msgpack", states[name], strategy=name)
    for saved in states:
        for target, like in states.items():
            if saved != target:
                with pytest.raises(checkpoint.CheckpointError, match=saved):
                    checkpoint.load(tmp_path / f"{saved}.msgpack", like)


def test_batched_states_round_trip(tmp_path):
    """States vmapped over seeds (or hyperparameters) save and load like any other."""
    es = esjax.openai_es(population_size=8)
    sigmas = jnp.array([0.05, 0.1, 0.2])
    params = jax.vmap(lambda sigma: es.default_params.replace(sigma=sigma))(sigmas)
    keys = jax.random.split(jax.random.key(0), 3)
    states = jax.vmap(es.init, (0, None, 0))(keys, jnp.ones(NUM_DIMS), params)
    path = checkpoint.save(tmp_path / "batched.msgpack", states)
    assert checkpoint.read_header(path)["generation"] == [0, 0, 0]
    like = jax.vmap(es.init, (0, None))(keys, jnp.ones(NUM_DIMS))
    loaded = checkpoint.load(path, like)
    chex.assert_trees_all_equal(loaded, states)
    np.testing.assert_array_equal(loaded.params.sigma, sigmas)  # per-member hyperparameters


def test_save_rejects_bad_arguments(saved_twice):
    _, path, (state, _) = saved_twice
    with pytest.raises(TypeError, match="state must be a strategy state"):
        checkpoint.save(path, {"mean": jnp.ones(3)})
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        checkpoint.save(path, state, {"array": jnp.ones(2)})


def test_checkpoint_file_is_msgpack_not_pickle(saved_twice):
    _, path, _ = saved_twice
    data = path.read_bytes()
    assert data[:8] == b"ESJAXCKP" and b"\x80\x04\x95" not in data  # pickle protocol-4 prefix
    assert len(data) < 4096  # O(num_dims) state: a few hundred bytes of arrays plus the header


# ---- esjax run --resume ------------------------------------------------------------------------


def _write_config(tmp_path, name, **changes):
    config = {
        **CONFIG,
        "strategy": _strategy_section(name),
        "problem": _problem_section(name),
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(config, output_dir, *extra):
    args = ["run", str(config), "--output-dir", str(output_dir), "--quiet", *extra]
    assert main(args) == 0


def _check_matches_reference(run_dir, name, tmp_path):
    """The run folder holds exactly the uninterrupted run: final state, metrics.csv, summary."""
    es, _, _, straight, metrics = reference_run(name)
    state = checkpoint.load(run_dir / "checkpoint.msgpack", _like_for(name))
    chex.assert_trees_all_equal(state, straight)
    expected_csv = tmp_path / "expected.csv"
    write_metrics_csv(expected_csv, metrics)
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines == expected_csv.read_text().splitlines()  # digit for digit, no duplicate rows
    assert len(lines) == GENERATIONS + 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations"] == GENERATIONS
    # Fixed-size strategies evaluate the population each generation; Nelder-Mead counts only
    # the points scipy would evaluate (its own count, carried in the state).
    if es.capabilities.count_evaluations is None:
        assert summary["evaluations"] == GENERATIONS * es.population_size
    assert summary["evaluations"] == int(straight.evaluations)
    assert summary["best_fitness"] == float(straight.best_fitness)
    return summary


def _like_for(name):
    return FACTORIES[name]().init(jax.random.key(0), jnp.ones(NUM_DIMS))


def test_cli_resume_is_bit_identical_to_an_uninterrupted_run(name, tmp_path):
    """`esjax run` killed after 12 generations, then `--resume` with the full budget of 32; the
    two runs go in 3- and 5-generation chunks, the reference in chunks of 4."""
    config = _write_config(tmp_path, name, log_every=KILLED_LOG_EVERY)
    _cli(config, tmp_path, "--generations", str(KILLED_AT))  # the "kill": budget cut at 12
    run_dir = tmp_path / "resumable"
    assert checkpoint.read_header(run_dir / "checkpoint.msgpack")["generation"] == KILLED_AT
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == KILLED_AT + 1
    config = _write_config(tmp_path, name, log_every=RESUMED_LOG_EVERY)  # may change on resume
    _cli(config, tmp_path, "--resume")
    summary = _check_matches_reference(run_dir, name, tmp_path)
    assert summary["resumed_from_generation"] == KILLED_AT


def test_cli_resume_falls_back_to_previous_checkpoint_and_trims_metrics(tmp_path, capsys):
    """Latest checkpoint torn and metrics.csv ahead of the checkpoint, its last row half-written:
    resume warns, restarts from the previous checkpoint and still matches exactly. The config
    has no checkpoint_every: the command-line flag turns checkpoints on."""
    config = _write_config(tmp_path, "openai_es", checkpoint_every=0)
    every = ["--checkpoint-every", str(CHUNK)]
    _cli(config, tmp_path, "--generations", str(KILLED_AT), *every)  # saves at 4, 8, 12
    run_dir = tmp_path / "resumable"
    latest = run_dir / "checkpoint.msgpack"
    assert checkpoint.read_header(checkpoint.previous_path(latest))["generation"] == 8
    latest.write_bytes(latest.read_bytes()[:-7])  # torn write of the generation-12 checkpoint
    with (run_dir / "metrics.csv").open("a") as handle:
        handle.write("13,0.5")  # a row cut off by the kill
    capsys.readouterr()
    _cli(config, tmp_path, "--resume", *every)
    assert "resuming from" in capsys.readouterr().err
    summary = _check_matches_reference(run_dir, "openai_es", tmp_path)
    assert summary["resumed_from_generation"] == 8


def test_cli_straight_run_matches_reference_and_resume_checks_config(tmp_path, capsys):
    """An uninterrupted `esjax run` equals the reference; resuming it with another seed, or with
    a budget below its generation count, is refused with a message naming the problem."""
    config = _write_config(tmp_path, "openai_es")
    _cli(config, tmp_path)
    _check_matches_reference(tmp_path / "resumable", "openai_es", tmp_path)
    capsys.readouterr()
    args = ["run", str(config), "--output-dir", str(tmp_path), "--resume"]
    assert main([*args, "--seed", "8"]) == 2
    assert "differs in ['seed']" in capsys.readouterr().err
    assert main([*args, "--generations", "3"]) == 2
    assert "generations=3 is below the checkpoint's generation 32" in capsys.readouterr().err
