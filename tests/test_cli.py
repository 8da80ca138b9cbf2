"""Configs and the `esjax run` command."""

import json
from pathlib import Path

import pytest
import yaml

from esjax.cli import main
from esjax.experiments.config import load_config, parse_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_shipped_sphere_config_runs_and_writes_outputs(tmp_path, capsys):
    code = main(
        [
            "run",
            str(CONFIGS / "sphere_openai_es.yaml"),
            "--output-dir",
            str(tmp_path),
            "--generations",
            "40",
            "--quiet",
        ]
    )
    assert code == 0
    run_dir = tmp_path / "sphere_openai_es"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations"] == 40 and summary["evaluations"] == 40 * 64
    assert summary["best_fitness"] < 100.0  # f(x0) = 100: it moved downhill
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("generation,best_fitness") and len(lines) == 41
    assert "best fitness" in capsys.readouterr().out


def _minimal():
    return {
        "name": "t",
        "generations": 3,
        "strategy": {"name": "openai_es", "population_size": 8},
        "problem": {"name": "sphere", "num_dims": 3},
    }


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"genrations": 3}, ValueError, "valid keys"),
        ({"generations": "3"}, TypeError, "generations"),
        ({"generations": 0}, ValueError, "generations"),
        ({"strategy": {"name": "openai_es", "popsize": 8}}, ValueError, "population_size"),
        ({"strategy": {"name": "nes"}}, ValueError, "openai_es"),
        # Problem keys are checked when the config is parsed, before a run folder is made.
        ({"problem": {"name": "sphere", "num_dim": 3}}, ValueError, r"'num_dim' -> 'num_dims'"),
        ({"problem": {"name": "spheer", "num_dims": 3}}, ValueError, "problem.name must be"),
    ],
)
def test_bad_configs_name_the_problem(change, error, words):
    with pytest.raises(error, match=words):
        parse_config({**_minimal(), **change})


def test_cli_reports_config_errors_cleanly(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**_minimal(), "sede": 1}))
    assert main(["run", str(path)]) == 2
    assert "valid keys" in capsys.readouterr().err


def test_every_shipped_run_config_parses():
    # Comparison configs (a `methods` list) belong to `esjax compare`; test_compare parses them.
    for path in CONFIGS.glob("*.yaml"):
        if "methods" not in yaml.safe_load(path.read_text()):
            load_config(path)
