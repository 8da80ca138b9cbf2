"""The benchmark scripts run (tiny settings) and write the JSON the README section is built from."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_throughput_script_writes_its_json_and_performance_md_renders_it(tmp_path):
    output = tmp_path / "throughput.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "throughput.py"),
            "--only",
            "simulated_annealing",
            "--generations",
            "2",
            "--repeats",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["benchmark"] == "throughput" and {"jax", "esjax"} <= set(result["versions"])
    (row,) = result["rows"]
    assert row["strategy"] == "simulated_annealing" and row["esjax"]["ms_per_generation"] > 0
    rendered = subprocess.run(
        [sys.executable, str(BENCHMARKS / "performance_md.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert rendered.stdout.startswith("## Performance") and "evosax / esjax" in rendered.stdout


def test_prng_script_measures_every_generator_against_the_default(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "prng.py"),
            "--shape",
            "16x64",
            "--repeats",
            "1",
            "--output",
            str(tmp_path / "prng.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "prng.json").read_text())
    generators = {row["generator"]: row for row in result["rows"]}
    assert len(generators) == 9 and {row["kind"] for row in result["rows"]} == {"bits", "normal"}
    for kind in ("bits", "normal"):
        default = generators[f"jax.random.{kind}[threefry2x32]"]
        assert default["materialised_vs_default"] == default["fused_vs_default"] == 1.0
    assert all(row["fused_million_per_second"] > 0 for row in result["rows"])
    rendered = subprocess.run(
        [sys.executable, str(BENCHMARKS / "performance_md.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert "**Random numbers**" in rendered.stdout
    assert "esjax.prng.standard_normal" in rendered.stdout
