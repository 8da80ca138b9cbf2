"""The benchmark scripts run (tiny settings) and write the JSON the README section is built from."""

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts import ``common`` by path)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _script(name: str, *args: str, timeout: int = 300) -> str:
    """Run ``benchmarks/<name>`` with ``args``; fail with its stderr unless it exits 0."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


class FakeClock:
    """A clock that only moves when a fake loop runs: exact timings, whatever the host does."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_steady_state_cancels_a_known_setup_cost_exactly():
    common = _benchmark_module("common")
    clock = FakeClock()
    costs = {"a": (0.050, 0.002), "b": (0.300, 0.0005)}  # (setup, per iteration) seconds

    def loop(name):
        def run(length, repeat):
            setup, per_iteration = costs[name]
            # A slow spell of the host in some rounds slows both lengths of the round alike.
            clock.now += (setup + length * per_iteration) * (1 + 0.5 * (repeat % 2))

        return run

    timed = common.steady_state(
        {name: loop(name) for name in costs},
        {"a": (10, 40), "b": (5, 25)},
        repeats=5,
        clocks={"wall": clock},
        wait=lambda result: result,
    )
    for name, (setup, per_iteration) in costs.items():
        wall = timed[name]["wall"]
        assert len(wall["per_iteration"]) == len(wall["setup"]) == 5
        for repeat, (estimate, setup_estimate) in enumerate(
            zip(wall["per_iteration"], wall["setup"], strict=True)
        ):
            slow = 1 + 0.5 * (repeat % 2)
            assert estimate == pytest.approx(per_iteration * slow, rel=1e-9)
            assert setup_estimate == pytest.approx(setup * slow, rel=1e-9)
        assert common.spread(wall["per_iteration"])["min"] == pytest.approx(per_iteration)
    # Dividing the long run by its length (no steady state) would count the setup: 1.6x for "a".
    assert timed["a"]["wall"]["long"][0] / 40 > 1.5 * costs["a"][1]
    with pytest.raises(ValueError, match="short < long"):
        common.steady_state({"a": loop("a")}, (5, 5), 1, clocks={"wall": clock})


def test_interleaving_rotates_the_order_of_the_calls():
    common = _benchmark_module("common")
    order = []
    common.interleaved_seconds(
        {name: (lambda repeat, name=name: order.append(name)) for name in "abc"},
        3,
        wait=lambda result: result,
    )
    assert order == list("abcbcacab")


def test_time_loops_times_a_compiled_loop_with_a_known_setup_cost():
    """A jitted loop that sleeps 300 ms once and 5 ms per generation (host callbacks): the
    steady-state figure is the per-generation cost, not (setup + n · cost) / n."""
    throughput = _benchmark_module("throughput")
    setup_s, per_generation_s = 0.300, 0.005

    def sleep(seconds):
        def callback(x):
            time.sleep(seconds)
            return x

        return callback

    def loop(key, generations):
        x = jax.random.uniform(key)
        shape = jax.ShapeDtypeStruct((), x.dtype)
        x = jax.pure_callback(sleep(setup_s), shape, x)
        body = lambda i, x: jax.pure_callback(sleep(per_generation_s), shape, x + 1)
        return jax.lax.fori_loop(0, generations, body, x)

    (result,) = throughput.time_loops({"sleepy": loop}, 5, target_seconds=0.1).values()
    short, long = result["short_generations"], result["long_generations"]
    assert long - short >= throughput.MIN_DELTA and short >= throughput.MIN_SHORT
    assert len(result["ms_per_generation_per_repeat"]) == 5
    low, high = result["ms_per_generation_range"]
    assert low <= result["ms_per_generation"] <= high
    # Dividing by the length would add setup / long (over 10 ms here); a sleep and a callback
    # overshoot by a little on a busy host, so the bound above is looser than the one below.
    spread_setup = 1e3 * setup_s / long
    assert 0.9 * 1e3 * per_generation_s < result["ms_per_generation"]
    assert result["ms_per_generation"] < 1e3 * per_generation_s + 0.4 * spread_setup
    assert result["setup_ms"] == pytest.approx(1e3 * setup_s, rel=0.3)
    naive = 1e3 * min(result["seconds_long"]) / long
    assert naive > 1e3 * per_generation_s + 0.9 * spread_setup


def test_lengths_are_a_multiple_of_the_period_and_calibrated():
    throughput = _benchmark_module("throughput")
    assert throughput.fixed_lengths(2, 6, period=28) == (2, 30)
    assert throughput.fixed_lengths(10, 40) == (10, 40)
    short, long = throughput.calibrated_lengths(0.001, 1.0, period=9)
    assert (long - short) % 9 == 0 and long - short >= 1000 and short == (long - short) // 3
    assert throughput.calibrated_lengths(10.0, 1.0) == (throughput.MIN_SHORT + 1, 26)


def test_jax_random_noise_is_swapped_in_only_while_tracing():
    throughput = _benchmark_module("throughput")
    # (esjax.strategies.openai_es, the attribute, is the factory; the module is in sys.modules)
    openai_es = importlib.import_module("esjax.strategies.openai_es")
    annealing = importlib.import_module("esjax.strategies.simulated_annealing")

    original = openai_es.member_normals, annealing.chain_draws
    with throughput.noise_generator("jax.random") as rebound:
        assert rebound >= 2
        assert openai_es.member_normals is throughput._jax_random_normals
        assert annealing.chain_draws is throughput._jax_random_chain_draws
    assert (openai_es.member_normals, annealing.chain_draws) == original
    loop, _ = throughput.esjax_loop("openai_es", 8, 4, generator="jax.random")
    theirs, _ = throughput.esjax_loop("openai_es", 8, 4)
    key, n = jax.random.key(0), jnp.asarray(3, jnp.int32)
    assert jax.jit(loop)(key, n).tolist() != jax.jit(theirs)(key, n).tolist()


def test_a_row_whose_strategy_does_not_import_is_skipped():
    throughput = _benchmark_module("throughput")
    factory, why = throughput.esjax_factory("no_such_strategy")
    assert factory is None and "ModuleNotFoundError" in why
    group = throughput.Group("no_such_strategy", 8, 4, (throughput.Variant("no_such_strategy"),))
    (row,) = throughput.run_group(group, 5)
    assert row["esjax"] is None and "skipped" in row


def test_throughput_script_writes_its_json_and_performance_md_renders_it(tmp_path):
    output = tmp_path / "throughput.json"
    _script(
        "throughput.py",
        *("--only", "simulated_annealing", "--sizes", "16,64", "--repeats", "5"),
        *("--target-seconds", "0.01", "--output", str(output)),
    )
    result = json.loads(output.read_text())
    assert result["benchmark"] == "throughput" and {"jax", "esjax"} <= set(result["versions"])
    assert result["timing"] == "steady_state" and len(result["host_load_at_start"]) == 3
    default, jax_random = result["rows"]
    assert default["strategy"] == "simulated_annealing" and default["generator"] == "esjax.prng"
    assert jax_random["generator"] == "jax.random" and jax_random["noise_differs_from_esjax_prng"]
    for row in (default, jax_random):
        timing = row["esjax"]
        assert len(timing["ms_per_generation_per_repeat"]) == 5
        assert timing["long_generations"] - timing["short_generations"] >= 20
        assert "note" in row
        if row["evosax"]:  # evosax (the bench extra) installed
            assert len(row["speedup_per_repeat"]) == 5
    rendered = _script("performance_md.py", "--results", str(tmp_path), timeout=120)
    assert rendered.startswith("## Performance") and "**steady-state**" in rendered
    assert "simulated_annealing [1]" in rendered and "jax.random noise [2]" in rendered
    assert "[1] Different algorithms." in rendered and "[2] The esjax strategy" in rendered
    rendered = _script("performance_md.py", timeout=120)  # the committed results
    assert rendered.startswith("## Performance") and "evosax / esjax" in rendered


def test_performance_md_renders_steady_state_rows_footnotes_and_evaluations(tmp_path):
    performance_md = _benchmark_module("performance_md")

    def timing(ms):
        return {"ms_per_generation": ms, "ms_per_generation_range": [0.9 * ms, 1.2 * ms]}

    def row(name, note=None, **extra):
        entry = {"strategy": name, "population_size": 256, "num_dims": 1000}
        entry |= {"esjax": timing(1.0), "evosax": timing(2.0), "speedup": 2.0}
        entry |= {"speedup_range": [1.5, 2.5], "cpu_speedup": 1.9, "cpu_speedup_range": [1.8, 2.0]}
        return entry | ({"note": note} if note else {}) | extra

    result = {
        "benchmark": "throughput",
        "timing": "steady_state",
        "platform": "cpu",
        "device": "cpu",
        "grid": "cpu",
        "host_cpu_cores": 2,
        "host_load_range": [7.5, 10.0],
        "date": "2099-01-02",
        "lengths": "calibrated",
        "target_seconds": 1.0,
        "repeats": 7,
        "rows": [
            row("cma_es (eigen every 2)", "lazy note"),
            row("openai_es, jax.random noise", "generator note"),
            row("sep_cma_es, jax.random noise", "generator note"),
            {"strategy": "pgpe", "population_size": 8, "num_dims": 4, "skipped": "ImportError"},
        ],
        "cma_evaluations_to_target": {
            "num_dims": 100,
            "target": 1e-8,
            "x0": 1.0,
            "sigma0": 1.0,
            "seeds": 5,
            "default_eigen_every_generations": 2,
            "rows": [
                {
                    "problem": "sphere",
                    "variant": variant,
                    "median_evaluations": 11000,
                    "evaluations_range": [10500, 11500],
                }
                for variant in ("default (lazy)", "eigen_interval=1")
            ],
        },
    }
    older = {**result, "date": "2099-01-01", "rows": [row("stale row")]}
    (tmp_path / "throughput-new.json").write_text(json.dumps(result))
    (tmp_path / "throughput-old.json").write_text(json.dumps(older))
    text = performance_md.performance_markdown(tmp_path)
    assert "stale row" not in text  # the newest file of the grid
    assert "**steady-state**" in text and "median and range over 7 interleaved rounds" in text
    assert "| cma_es (eigen every 2) [1] | 256 | 1,000 | 1.00 (0.90–1.20) |" in text
    assert "2.00× (1.50–2.50) | 1.90× (1.80–2.00) |" in text
    # Rows sharing a note share its number; every footnote is printed once.
    assert "openai_es, jax.random noise [2]" in text and "sep_cma_es, jax.random noise [2]" in text
    assert text.count("[1] lazy note") == 1 and text.count("[2] generator note") == 1
    assert "Measured on a loaded host" in text and "7.5–10.0 on 2 cores" in text
    assert "Not measured (esjax strategy not importable then): pgpe (ImportError)" in text
    assert "| problem | default (lazy), every 2 | eigen_interval=1 |" in text
    assert "| sphere | 11,000 (10,500–11,500) | 11,000 (10,500–11,500) |" in text


def test_prng_script_measures_every_generator_against_the_default(tmp_path):
    _script(
        "prng.py", "--shape", "16x64", "--repeats", "1", "--output", str(tmp_path / "prng.json")
    )
    result = json.loads((tmp_path / "prng.json").read_text())
    generators = {row["generator"]: row for row in result["rows"]}
    assert len(generators) == 9 and {row["kind"] for row in result["rows"]} == {"bits", "normal"}
    for kind in ("bits", "normal"):
        default = generators[f"jax.random.{kind}[threefry2x32]"]
        assert default["materialised_vs_default"] == default["fused_vs_default"] == 1.0
    assert all(row["fused_million_per_second"] > 0 for row in result["rows"])
    rendered = _script("performance_md.py", "--results", str(tmp_path), timeout=120)
    assert "**Random numbers**" in rendered
    assert "esjax.prng.standard_normal" in rendered
