"""One validator, one fingerprint and one metrics writer for every command (no compiles here)."""

import csv

import numpy as np
import pytest

from esjax import checkpoint
from esjax.experiments import schema
from esjax.experiments.compare import parse_comparison
from esjax.experiments.config import parse_config
from esjax.experiments.outputs import (
    append_metrics_csv,
    metrics_rows,
    trim_metrics_csv,
    write_metrics_csv,
)
from esjax.experiments.sweep import parse_sweep

RUN = {
    "name": "r",
    "generations": 3,
    "strategy": {"name": "openai_es", "population_size": 8},
    "problem": {"name": "sphere", "num_dims": 3},
}
COMPARE = {
    "name": "c",
    "task": {"name": "digits"},
    "methods": [{"optimizer": {"name": "adam"}, "steps": 3}],
}
SWEEP = {"name": "s", "dimensions": [2], "methods": [{"strategy": {"name": "cma_es"}}]}


@pytest.mark.parametrize(
    "parse, raw, label",
    [
        (parse_config, RUN, "the config"),
        (parse_comparison, COMPARE, "the comparison config"),
        (parse_sweep, SWEEP, "the sweep config"),
    ],
)
def test_every_command_reports_a_config_error_the_same_way(parse, raw, label):
    with pytest.raises(ValueError) as error:
        parse({**raw, "sede": 1})
    message = str(error.value)
    assert message.startswith(f"unknown key(s) ['sede'] in {label}; valid keys are [")
    assert "did you mean 'sede' -> 'seed'?" in message
    with pytest.raises(TypeError, match="config key 'seed' must be int, got bool True"):
        parse({**raw, "seed": True})  # YAML's `yes` is not a number
    with pytest.raises(ValueError, match=rf"{label} is missing required key\(s\) \['name'\]"):
        parse({k: v for k, v in raw.items() if k != "name"})


def test_check_section_names_the_key_path_and_allows_null_only_where_declared():
    types = {"size": (int, type(None)), "rate": (int, float), "on": bool}
    assert schema.check_section("strategy.noise", {"size": None, "rate": 1}, types) == {
        "size": None,
        "rate": 1,
    }
    with pytest.raises(
        TypeError, match=r"'strategy.noise.rate' must be int or float, got NoneType"
    ):
        schema.check_section("strategy.noise", {"rate": None}, types)
    with pytest.raises(TypeError, match=r"'strategy.noise.size' must be int or null, got str"):
        schema.check_section("strategy.noise", {"size": "16M"}, types)
    assert schema.check_section("x", {"on": True}, types) == {"on": True}
    with pytest.raises(TypeError, match="x must be a mapping, got list"):
        schema.check_section("x", [1], types)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['zzz'\] in x; valid keys are") as e:
        schema.check_section("x", {"zzz": 1}, types)
    assert "did you mean" not in str(e.value)  # nothing close: no guess


def test_fingerprint_check_names_every_differing_key(tmp_path):
    saved = schema.fingerprint({"seed": 0, "strategy": {"name": "pso", "sizes": (4, 8)}})
    assert saved["strategy"]["sizes"] == [4, 8]  # as JSON stores it: a tuple equals its list
    schema.check_fingerprint(
        tmp_path, saved, {"seed": 0, "strategy": {"name": "pso", "sizes": (4, 8)}}, remedy="-"
    )
    with pytest.raises(checkpoint.CheckpointError, match=r"differs in \['seed'\]; fix it"):
        schema.check_fingerprint(tmp_path, saved, {**saved, "seed": 1}, remedy="fix it")
    # A key only one side has differs too (a config that gained or lost a setting).
    with pytest.raises(checkpoint.CheckpointError, match=r"differs in \['extra'\]"):
        schema.check_fingerprint(tmp_path, {**saved, "extra": 1}, saved, remedy="-")
    with pytest.raises(checkpoint.CheckpointError, match=r"differs in \['seed', 'strategy'\]"):
        schema.check_fingerprint(tmp_path, None, saved, remedy="-")


def _read(path):
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_one_metrics_writer_for_runs_and_comparisons(tmp_path):
    # A run's columns (per-generation arrays) and a comparison's rows (one dict per evaluation)
    # go through the same writer: the leading columns first, the rest in their own order.
    run = {"best_fitness": np.array([3.0, 2.0]), "generation": np.array([1, 2]), "z": [0, 1]}
    write_metrics_csv(tmp_path / "run.csv", run)
    assert _read(tmp_path / "run.csv") == [
        ["generation", "best_fitness", "z"],
        ["1", "3.0", "0"],
        ["2", "2.0", "1"],
    ]
    rows = [
        {"test_accuracy": 0.1, "step": 0, "forward_passes": 0, "wall_clock_s": 0.0},
        {"test_accuracy": 0.5, "step": 5, "forward_passes": 40, "wall_clock_s": 0.25, "lr": 1},
    ]
    write_metrics_csv(tmp_path / "sub" / "compare.csv", rows)
    assert _read(tmp_path / "sub" / "compare.csv") == [
        ["step", "wall_clock_s", "forward_passes", "test_accuracy", "lr"],
        ["0", "0.0", "0", "0.1", ""],
        ["5", "0.25", "40", "0.5", "1"],
    ]
    assert not list(tmp_path.glob("**/.*.tmp"))  # written atomically: no temporary left


def test_appends_refuse_rows_of_another_run_and_trims_keep_whole_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    append_metrics_csv(path, {"generation": [], "best_fitness": []})  # no rows: the header
    assert _read(path) == [["generation", "best_fitness"]]
    append_metrics_csv(path, {"generation": [1, 2], "best_fitness": [5.0, 4.0]})
    append_metrics_csv(path, {"generation": [3], "best_fitness": [3.0]})
    assert metrics_rows(path) == 3
    before = path.read_text()
    with pytest.raises(ValueError, match=r"columns \['generation', 'best_fitness'\], the new"):
        append_metrics_csv(path, {"generation": [4], "fitness_mean": [1.0]})
    assert path.read_text() == before  # nothing written
    with path.open("a") as handle:
        handle.write("4")  # a crash mid-row
    trim_metrics_csv(path, 3)  # the half row goes, the checkpointed ones stay
    assert _read(path) == [["generation", "best_fitness"], ["1", "5.0"], ["2", "4.0"], ["3", "3.0"]]
    trim_metrics_csv(path, 2)  # rows after the checkpoint go too
    assert metrics_rows(path) == 2
