"""The benchmark scripts run (tiny settings) and write the JSON the README section is built from."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


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


def test_throughput_script_writes_its_json_and_performance_md_renders_it(tmp_path):
    output = tmp_path / "throughput.json"
    _script(
        "throughput.py",
        *("--only", "simulated_annealing", "--generations", "2", "--repeats", "1"),
        *("--output", str(output)),
    )
    result = json.loads(output.read_text())
    assert result["benchmark"] == "throughput" and {"jax", "esjax"} <= set(result["versions"])
    (row,) = result["rows"]
    assert row["strategy"] == "simulated_annealing" and row["esjax"]["ms_per_generation"] > 0
    rendered = _script("performance_md.py", timeout=120)
    assert rendered.startswith("## Performance") and "evosax / esjax" in rendered


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
