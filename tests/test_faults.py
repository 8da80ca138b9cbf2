"""Bad inputs and faults (issue 16): one row per input; each must end in a clear one-line error
naming the culprit (or a documented behaviour), a non-zero exit where it failed, and earlier
outputs intact.

CLI rows go through the installed ``esjax`` entry point in a subprocess; Python API rows call the
functions directly. The full disk is a 16 KiB tmpfs when the tests run as root (CI does), else a
write that raises ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import esjax
from esjax.experiments import outputs
from esjax.experiments.config import parse_config
from esjax.experiments.runner import run_experiment

ENTRY_POINT = shutil.which("esjax", path=str(Path(sys.executable).parent)) or shutil.which("esjax")
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_COMPILE}

SPHERE = {
    "name": "tiny",
    "seed": 0,
    "generations": 4,
    "strategy": {"name": "openai_es", "population_size": 4, "sigma": 0.1},
    "problem": {"name": "sphere", "num_dims": 3, "x0": 1.0},
}
ADAM = {
    "name": "tiny_compare",
    "task": {"name": "digits", "seed": 1},
    "model": {"hidden": [4]},
    "eval_every": 2,
    "methods": [
        {"label": "adam", "optimizer": {"name": "adam", "learning_rate": 0.01}, "steps": 2}
    ],
}


def _esjax(*args, cwd=None) -> subprocess.CompletedProcess:
    command = [ENTRY_POINT] if ENTRY_POINT else [sys.executable, "-m", "esjax.cli"]
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env=ENV,
        cwd=cwd,
    )


def _config(tmp_path: Path, raw: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line_error(done: subprocess.CompletedProcess, *words: str, code: int = 2) -> None:
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("esjax: error:")]
    assert errors, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for word in words:
        assert word in errors[-1], errors[-1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- CLI rows -----------------------------------------------------------------------------------


def test_rerun_into_a_finished_run_is_refused_and_deletes_nothing(tmp_path):
    config = _config(tmp_path, SPHERE)
    out = tmp_path / "out"
    assert _esjax("run", config, "--output-dir", out, "--quiet").returncode == 0
    before = _snapshot(out)
    _one_line_error(
        _esjax("run", config, "--output-dir", out, "--quiet"), "--resume", "--overwrite"
    )
    assert _snapshot(out) == before
    assert _esjax("run", config, "--output-dir", out, "--quiet", "--overwrite").returncode == 0
    summary = _strict_json(out / "tiny" / "summary.json")
    # summary.json records the folder it was really written to, not the config's default.
    assert summary["output_dir"] == str(out) and summary["config"]["output_dir"] == str(out)


def test_compare_rerun_is_refused_and_deletes_nothing(tmp_path):
    config = _config(tmp_path, ADAM)
    out = tmp_path / "out"
    assert _esjax("compare", config, "--output-dir", out, "--quiet").returncode == 0
    before = _snapshot(out)
    done = _esjax("compare", config, "--output-dir", out, "--quiet")
    _one_line_error(done, "--resume", "--overwrite")
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "strategy, words",
    [
        ({"antithetic": "no"}, ["strategy.antithetic", "bool"]),
        ({"sigma": "abc"}, ["strategy.sigma", "float"]),
        ({"optimizer": {"name": "adam", "learning_rate": "abc"}}, ["learning_rate", "number"]),
    ],
    ids=["bool-as-string", "number-as-string", "optimizer-number-as-string"],
)
def test_wrong_yaml_types_name_the_key_path(tmp_path, strategy, words):
    raw = {**SPHERE, "strategy": {**SPHERE["strategy"], **strategy}}
    _one_line_error(_esjax("run", _config(tmp_path, raw), "--output-dir", tmp_path), *words)
    assert not (tmp_path / "tiny").exists()


def test_numbers_written_like_1e_minus_2_are_numbers(tmp_path):
    text = yaml.safe_dump(SPHERE).replace("sigma: 0.1", "sigma: 1e-1")
    assert "1e-1" in text
    (tmp_path / "config.yaml").write_text(text)
    assert outputs.read_yaml(tmp_path / "config.yaml")["strategy"]["sigma"] == 0.1
    done = _esjax("run", tmp_path / "config.yaml", "--output-dir", tmp_path, "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_diverged_run_is_not_reported_as_a_success(tmp_path):
    # x0 = 1e30: every member's sphere value overflows to inf, so no fitness is ever finite.
    raw = {
        **SPHERE,
        "generations": 50,
        "max_nonfinite_generations": 3,
        "problem": {**SPHERE["problem"], "x0": 1.0e30},
    }
    done = _esjax("run", _config(tmp_path, raw), "--output-dir", tmp_path, "--quiet")
    _one_line_error(done, "no finite fitness for 3 generations", code=3)
    summary = _strict_json(tmp_path / "tiny" / "summary.json")
    assert summary["best_fitness"] is None and "best_fitness" in summary["non_finite"]
    assert summary["stop_reason"] == "no finite fitness for 3 generations"
    assert summary["generations"] < 50
    rows = (tmp_path / "tiny" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    mean = [row.split(",")[header.index("fitness_mean")] for row in rows[1:]]
    assert set(mean) == {"nan"}  # never the optimum's 0.0


def test_a_name_that_leaves_the_output_folder_is_refused(tmp_path):
    raw = {**SPHERE, "name": "../../escape"}
    out = tmp_path / "a" / "b"
    _one_line_error(_esjax("run", _config(tmp_path, raw), "--output-dir", out), "'name'")
    assert not (tmp_path / "escape").exists() and not out.exists()


def test_invalid_yaml_is_one_line_naming_the_place(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: x\nstrategy: {name: openai_es\n")
    _one_line_error(_esjax("run", tmp_path / "broken.yaml"), "not valid YAML", "line")


def test_seed_too_large_names_seed(tmp_path):
    done = _esjax("run", _config(tmp_path, SPHERE), "--seed", 2**70, "--output-dir", tmp_path)
    _one_line_error(done, "seed must lie in")


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    done = _esjax("run", _config(tmp_path, SPHERE), "--output-dir", tmp_path / "file")
    _one_line_error(done, "is a file")
    assert (tmp_path / "file").read_text() == "mine"


def test_x0_of_the_wrong_length_names_x0(tmp_path):
    raw = {**SPHERE, "problem": {**SPHERE["problem"], "x0": [1.0, 2.0]}}
    _one_line_error(_esjax("run", _config(tmp_path, raw), "--output-dir", tmp_path), "problem.x0")


def test_resume_after_metrics_were_deleted_is_an_error(tmp_path):
    config = _config(tmp_path, {**SPHERE, "log_every": 2, "checkpoint_every": 2})
    assert _esjax("run", config, "--output-dir", tmp_path, "--quiet").returncode == 0
    (tmp_path / "tiny" / "metrics.csv").unlink()
    checkpoint_bytes = (tmp_path / "tiny" / "checkpoint.msgpack").read_bytes()
    done = _esjax("run", config, "--output-dir", tmp_path, "--resume", "--generations", 6)
    _one_line_error(done, "metrics.csv", "--overwrite")
    assert (tmp_path / "tiny" / "checkpoint.msgpack").read_bytes() == checkpoint_bytes


# --- file-system faults (in process) ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 KiB file system (tmpfs as root), or None where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)])
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)])


def test_full_disk_is_a_clear_error_with_no_half_written_outputs(small_disk, tmp_path, monkeypatch):
    raw = {**SPHERE, "generations": 2000, "log_every": 1, "checkpoint_every": 500}
    if small_disk is None:  # not root: a write that fails like a full disk after 16 KiB
        real_write = outputs.append_text

        def full(path, text, sync=False):
            if path.exists() and path.stat().st_size + len(text) > 16_384:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(path, text, sync)

        monkeypatch.setattr("esjax.experiments.runner.append_text", full)
        folder = tmp_path / "disk"
    else:
        folder = small_disk
    with pytest.raises(OSError) as raised:
        run_experiment(parse_config(raw), progress=False, output_dir=folder)
    assert raised.value.errno == errno.ENOSPC
    run_dir = folder / "tiny"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    width = len(rows[0].split(","))
    assert all(len(row.split(",")) == width for row in rows)  # no row cut mid-number
    assert not (run_dir / "summary.json").exists()  # no 0-byte summary
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_read_only_output_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: a read-only mount is read-only
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(folder)]
        ).returncode:
            pytest.skip("cannot mount a read-only file system here")
    else:
        folder.chmod(0o500)
    try:
        done = _esjax("run", _config(tmp_path, SPHERE), "--output-dir", folder)
        _one_line_error(done, str(folder))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)])
        else:
            folder.chmod(0o700)


# --- Python API rows ----------------------------------------------------------------------------

KEY = jax.random.key(0)


def test_integer_x0_is_refused_naming_the_leaf():
    with pytest.raises(TypeError, match=r"x0 leaf \['w'\] has dtype int32"):
        esjax.openai_es(4).init(KEY, {"w": jnp.array([3, 3, 3]), "b": jnp.zeros(2)})


@pytest.mark.parametrize(
    "make", [lambda: esjax.openai_es(8, sigma=0.1), lambda: esjax.cma_es(8, sigma=0.5)]
)
def test_a_nan_row_with_finite_fitness_never_reaches_the_mean(make):
    es = make()
    state = es.init(KEY, jnp.ones(3))
    population, state = es.ask(KEY, state)
    fitness = jnp.sum(population**2, axis=1).at[0].set(-1.0)  # the NaN row claims to be best
    told = es.tell(state, population.at[0, 0].set(jnp.nan), fitness)
    assert bool(jnp.all(jnp.isfinite(told.mean))) and bool(
        jnp.all(jnp.isfinite(told.best_solution))
    )
    assert float(told.best_fitness) > 0


def test_an_nnx_module_as_x0_is_refused_naming_from_nnx():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, rngs=rngs)

    with pytest.raises(TypeError, match="from_nnx"):
        esjax.openai_es(4).init(KEY, Net(nnx.Rngs(0)))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize(
    "make, fitness",
    [
        (lambda: esjax.cma_es(6, sigma=0.5), lambda p: jnp.sum(p**2, axis=1)),
        (lambda: esjax.eki(6), lambda p: p - 0.5),
    ],
    ids=["cma_es", "eki"],
)
def test_narrow_float_x0_is_searched_in_float32(make, fitness, dtype):
    es = make()
    state = es.init(KEY, jnp.ones(3, dtype))
    population, state = es.ask(KEY, state)
    told = es.tell(state, population, fitness(population))
    assert population.dtype == jnp.float32 and told.best_solution.dtype == jnp.float32
    assert state.best_params.dtype == dtype  # handed back in the leaf's own dtype
    assert bool(jnp.all(jnp.isfinite(told.best_solution)))


def test_bad_key_and_foreign_state_name_the_argument():
    es = esjax.openai_es(4)
    state = es.init(KEY, jnp.ones(3))
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        esjax.run(es, esjax.problems.sphere, 0, state, 2, progress=False)
    other = esjax.cma_es(4).init(KEY, jnp.ones(3))
    with pytest.raises(TypeError, match="state must be a OpenAIESState"):
        es.ask(KEY, other)


def test_integer_bounds_are_printed_as_integers():
    with pytest.raises(ValueError, match=r"population_size must lie in \[2, inf\], got 0$"):
        esjax.openai_es(0)


def test_episode_return_under_x64():
    # Its running total was float32 while x64 rewards are float64: the scan carry changed type.
    code = (
        "import jax, jax.numpy as jnp; jax.config.update('jax_enable_x64', True)\n"
        "from esjax import nn; from esjax.tasks import control\n"
        "env = control.make_env('CartPole-v1')\n"
        "model = nn.mlp(4, 2, (4,), key=jax.random.key(0))\n"
        "params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), model.params)\n"
        "total = control.episode_return(env, model, params, jax.random.key(1))\n"
        "assert total.dtype == jnp.float64 and float(total) >= 1, total\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]


def test_strict_json_replaces_non_finite_numbers(tmp_path):
    written = outputs.write_json(tmp_path / "s.json", {"a": float("inf"), "b": [1.0, float("nan")]})
    assert written["non_finite"] == ["a", "b[1]"]
    expected = {"a": None, "b": [1.0, None], "non_finite": ["a", "b[1]"]}
    assert _strict_json(tmp_path / "s.json") == expected


def test_batch_size_in_a_run_config_is_the_old_name_of_population_batch_size():
    # One meaning per key: compare configs' batch_size is examples per step, so a run config's
    # members-per-chunk setting is population_batch_size; the old name warns and still works.
    from esjax.experiments.config import parse_config

    with pytest.warns(FutureWarning, match="'batch_size' in a run config is deprecated"):
        config = parse_config({**SPHERE, "batch_size": 2})
    assert config.population_batch_size == 2
    assert parse_config({**SPHERE, "population_batch_size": 2}) == config
    with pytest.raises(ValueError, match="keep only 'population_batch_size'"):
        parse_config({**SPHERE, "batch_size": 2, "population_batch_size": 2})


def test_mask_non_finite_flags_exactly_the_rows_with_a_non_finite_entry():
    """The row check is a float reduction (Σ 0·x): a single inf, -inf or NaN anywhere in a row
    flags it, and rows of huge finite values (whose plain sum would overflow) stay finite."""
    from esjax.base import mask_non_finite

    es = esjax.openai_es(population_size=6)
    state = es.init(jax.random.key(0), jnp.ones(5))
    rows = np.ones((6, 5), np.float32)
    rows[1, 4] = np.inf
    rows[2, 0] = -np.inf
    rows[3, 2] = np.nan
    rows[4] = 3e38  # finite; the sum of the row overflows, Σ 0·x does not
    rows[5, 1] = -0.0
    for dtype in (jnp.float32, jnp.bfloat16):
        population = jnp.asarray(rows, dtype)
        masked, fitness, finite = jax.jit(mask_non_finite)(state, population, jnp.arange(6.0))
        np.testing.assert_array_equal(finite, [True, False, False, False, True, True])
        np.testing.assert_array_equal(np.isnan(fitness), [False, True, True, True, False, False])
        assert bool(jnp.all(jnp.isfinite(masked)))
        np.testing.assert_array_equal(masked[4], population[4])


WITHOUT_ROW_COPY = {
    "openai_es": lambda: esjax.openai_es(8, sigma=0.1, weight_decay=0.01),
    "openai_es_table": lambda: esjax.openai_es(
        8, sigma=0.1, noise=esjax.prng.NoiseTable(2**12, seed=0)
    ),
    "lm_ma_es": lambda: esjax.lm_ma_es(8, sigma=0.3),
    "low_rank_es": lambda: esjax.low_rank_es(8, sigma=0.1),
    "pgpe": lambda: esjax.pgpe(8, sigma=0.1),
    "snes": lambda: esjax.snes(8, sigma=0.1),
    "sep_cma_es": lambda: esjax.sep_cma_es(8, sigma=0.3),
    "simple_ga": lambda: esjax.simple_ga(8, sigma=0.1),
    "hill_climbing": lambda: esjax.hill_climbing(8, sigma=0.1),
    "random_search": lambda: esjax.random_search(8, sigma=0.1),
}


@pytest.mark.parametrize("name", sorted(WITHOUT_ROW_COPY))
def test_a_strategy_without_the_row_copy_ignores_non_finite_rows_exactly(name):
    """``needs_finite_rows=False``: ``tell`` hands the rows on as told (no masked copy of the
    population), so an inf or NaN row must add nothing: the state is bit for bit the one the
    copy gives (those rows replaced by the best solution, their weight zero)."""
    from esjax.base import decomposed_update, mask_non_finite, record

    es = WITHOUT_ROW_COPY[name]()
    decomposition = es.capabilities.decomposition
    assert decomposition.needs_finite_rows is False

    def tell_with_the_copy(state, population, fitness):
        population, fitness, finite = mask_non_finite(state, population, fitness, copy_rows=True)
        told = decomposed_update(decomposition, state, population, fitness, finite)
        return record(state, told, population, fitness, es.population_size)

    state = es.init(KEY, {"w": jnp.ones((3, 2)), "b": jnp.full(2, 0.5)})
    for generation in range(2):  # the second one has a best solution away from the mean
        population, state = es.ask(jax.random.key(generation), state)
        fitness = jnp.sum(population**2, axis=1).at[1].set(-5.0)  # a broken row claims to be best
        broken = population.at[1, 2].set(jnp.inf).at[5, 0].set(jnp.nan).at[6, 7].set(-jnp.inf)
        told = jax.jit(es.tell)(state, broken, fitness)
        expected = jax.jit(tell_with_the_copy)(state, broken, fitness)
        jax.tree.map(np.testing.assert_array_equal, told, expected)
        assert bool(jnp.all(jnp.isfinite(getattr(told, es.capabilities.solution))))
        assert 0 < float(told.best_fitness) < np.inf
        state = told
