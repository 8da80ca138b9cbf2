"""The dimension sweep (``esjax sweep``, issue 19 part 2): the shipped config's smoke run covers
every gradient-free method at three dimensions and writes every output; the problems, the
Moré-Wild measures and the config errors are checked on their own."""

import argparse
import csv
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from esjax.experiments import sweep
from esjax.experiments.outputs import OutputExistsError, read_yaml
from esjax.problems import functions
from esjax.strategies import STRATEGIES

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dimension_sweep.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    output = tmp_path_factory.mktemp("sweep")
    config = sweep.load_sweep(CONFIG, smoke=True)
    summary = sweep.run_sweep(config, output_dir=output, progress=False)
    return config, summary, output / config.name


def test_smoke_run_covers_every_method_and_three_dimensions(smoke):
    config, summary, run_dir = smoke
    # Every gradient-free strategy but low_rank_es (on a flat vector it is openai_es).
    expected = set(STRATEGIES) - {"low_rank_es"}
    assert {m["strategy"]["name"] for m in summary["methods"]} == expected
    assert len(summary["dimensions"]) >= 3
    for budget in ("fixed", "growing"):
        for label in expected:
            assert set(summary["results"][budget][label]) == {str(d) for d in config.dimensions}
    for name in sweep.OUTPUTS:
        assert (run_dir / name).is_file()
    assert (run_dir / "data_profiles.png").read_bytes().startswith(PNG_SIGNATURE)
    rows = list(csv.DictReader((run_dir / "sweep.csv").open()))
    per_cell = len(config.functions) * config.instances * 2
    assert len(rows) == len(expected) * len(config.dimensions) * per_cell
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["answer"] == summary["answer"]
    markdown = (run_dir / "sweep.md").read_text()
    assert summary["answer"] in markdown
    assert "fraction solved" in markdown and "median final value" in markdown


def test_budgets_are_respected_and_fractions_are_fractions(smoke):
    config, summary, run_dir = smoke
    for row in csv.DictReader((run_dir / "sweep.csv").open()):
        d, allowed = int(row["num_dims"]), int(row["evaluations_allowed"])
        assert allowed == min(config.budget(row["budget"], d), int(row["budget_evaluations"]))
        assert int(row["evaluations_used"]) <= allowed
        assert float(row["final_value"]) >= 0.0
        if row["solved"] == "True":
            assert float(row["final_value"]) <= config.tolerance * float(row["f_x0"]) + 1e-12
    for budget in summary["results"].values():
        for cells in budget.values():
            for cell in cells.values():
                assert 0.0 <= cell["solved"] <= 1.0
    for profile in summary["data_profiles"]["profiles"].values():
        for values in profile.values():
            assert all(
                a <= b for a, b in zip(values[:-1], values[1:], strict=True)
            )  # non-decreasing in α


def test_run_folder_is_never_overwritten_silently(tmp_path):
    raw = _raw()
    raw["methods"] = [{"strategy": {"name": "random_search", "population_size": 8}}]
    raw["smoke"] = {"dimensions": [2], "instances": 1, "budgets": {"fixed": 16, "per_dim": 8}}
    config = sweep.parse_sweep(raw, smoke=True)
    sweep.run_sweep(config, output_dir=tmp_path, progress=False)
    keep = tmp_path / config.name / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        sweep.run_sweep(config, output_dir=tmp_path, progress=False)
    sweep.run_sweep(config, output_dir=tmp_path, progress=False, overwrite=True)
    assert keep.read_text() == "mine"


@pytest.mark.parametrize("name", sweep.FUNCTIONS)
@pytest.mark.parametrize("num_dims", [2, 7, 45, 100])
def test_problems_match_their_definitions(name, num_dims):
    config = sweep.load_sweep(CONFIG)
    data = sweep.problem_data(config, name, num_dims, instance=1)
    x = np.random.default_rng(0).uniform(-4, 4, num_dims).astype(np.float32)
    shift = data["shift"]
    if name == "rosenbrock":
        expected = functions.rosenbrock(jnp.asarray(x - shift + 1.0))
    elif name == "rastrigin":
        expected = functions.rastrigin(jnp.asarray(x - shift))
    else:
        # block-diagonal rotation after a permutation, blocks of 40 beyond d = 40
        z = np.concatenate(
            [
                block @ part
                for block, part in zip(data["blocks"], _blocks(x - shift, data), strict=True)
            ]
        )[:num_dims]
        expected = functions.ellipsoid(jnp.asarray(z), 1e6)
        rotation = data["blocks"][0]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(len(rotation)), atol=1e-5)
        assert data["blocks"].shape[1] == min(40, num_dims)
    np.testing.assert_allclose(sweep.value(data, jnp.asarray(x)), expected, rtol=2e-4)
    r = sweep.residuals(data, jnp.asarray(x))
    np.testing.assert_allclose(jnp.sum(r**2), expected, rtol=2e-4)
    assert float(sweep.value(data, jnp.asarray(shift))) == pytest.approx(0.0, abs=1e-6)


def _blocks(y, data):
    permuted = y[data["perm"]]
    size = data["blocks"].shape[1]
    padded = np.pad(permuted, (0, data["blocks"].shape[0] * size - len(y)))
    return padded.reshape(-1, size)


def test_more_wild_measures():
    evaluations = np.array([10, 20, 30, 40])
    best = np.array([50.0, 9.0, 0.5, 0.01])
    assert sweep.best_within(evaluations, best, 35, 100.0) == 0.5
    assert sweep.best_within(evaluations, best, 5, 100.0) == 100.0  # nothing evaluated yet
    # f(x0) − f ≥ (1 − τ)(f(x0) − 0)  ⇔  f ≤ τ f(x0)
    assert sweep.evaluations_to_solve(evaluations, best, 100.0, 1e-1) == 20
    assert sweep.evaluations_to_solve(evaluations, best, 100.0, 1e-3) == 40
    assert sweep.evaluations_to_solve(evaluations, best, 100.0, 1e-5) is None


def test_caps_and_budgets():
    config = sweep.load_sweep(CONFIG)
    assert config.budget("fixed", 1000) == 2500
    assert config.budget("growing", 50) == 50_000
    assert config.budget("growing", 1000) == 50_000  # capped by budgets.max
    cma = next(m for m in config.methods if m.label == "cma_es")
    assert config.run_budget(cma, 1000) == 0  # not run
    assert config.run_budget(cma, 300) == 0
    assert config.run_budget(cma, 100) == 5000
    assert config.run_budget(cma, 20) == 20_000


def _raw():
    return read_yaml(CONFIG)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda r: r.update(dimenson=[2]), ValueError, r"unknown key\(s\) \['dimenson'\]"),
        (lambda r: r["budgets"].update(fixd=3), ValueError, r"in budgets"),
        (lambda r: r["budgets"].update(fixed="many"), TypeError, r"budgets.fixed"),
        (lambda r: r.update(dimensions=[2, 1]), ValueError, r"dimensions\[1\]"),
        (lambda r: r.update(functions=["sphere"]), ValueError, r"functions\[0\]"),
        (lambda r: r.update(tolerance=2.0), ValueError, r"tolerance"),
        (lambda r: r["methods"][1]["strategy"].update(sigmaa=1), ValueError, r"methods\[1\]"),
        (lambda r: r["methods"][3].update(cap={2: 1}), ValueError, r"in methods\[3\]"),
        (lambda r: r["methods"][0]["caps"].update({300: -1}), ValueError, r"methods\[0\].caps.300"),
        (
            lambda r: r["methods"].append({"strategy": {"name": "low_rank_es"}}),
            ValueError,
            "openai_es",
        ),
        (lambda r: r["smoke"].update(dimension=[2]), ValueError, r"in smoke"),
        (lambda r: r["smoke"].update(instances=0), ValueError, r"smoke.instances"),
        (lambda r: r.pop("methods"), ValueError, r"'methods'"),
    ],
)
def test_config_errors_name_the_key(change, error, message):
    raw = _raw()
    change(raw)
    with pytest.raises(error, match=message):
        sweep.parse_sweep(raw, smoke="smoke" in message)


def test_cli_hook_parses_the_documented_command():
    parser = argparse.ArgumentParser(prog="esjax")
    sweep.add_sweep_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", str(CONFIG), "--smoke", "--output-dir", "d", "--overwrite"])
    assert (args.smoke, args.output_dir, args.overwrite) == (True, "d", True)
    assert args.handler is sweep._sweep_command
