"""The 10k-parameter question (configs/ten_k_question.yaml): the shipped study runs shrunken,
lists every esjax method, and gives every shared-budget method the same forward passes."""

import copy
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from esjax.experiments.compare import (
    aggregate_seeds,
    build_method,
    fitness_subset_indices,
    load_task,
    parse_comparison,
    resolve_steps,
    run_comparison,
    run_method,
)
from esjax.experiments.outputs import read_yaml
from esjax.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ten_k_question.yaml"
EXAMPLES = 16  # per member and per step in the shrunken run (the shipped config: 256)
GENERATIONS = 3  # of the shared budget, for a population of 64


def shrunken(raw: dict) -> dict:
    """The shipped config with one seed, 16 examples per member, a budget of three population-64
    generations, and the two own-budget methods cut to one generation."""
    raw = copy.deepcopy(raw)
    raw.pop("seeds")
    raw["seed"] = 0
    raw["batch_size"] = EXAMPLES
    raw["forward_pass_budget"] = GENERATIONS * 64 * EXAMPLES
    for method in raw["methods"]:
        if "fitness_subset" in method:
            method["fitness_subset"] = EXAMPLES
        if "generations" in method:
            method["generations"] = 1
            method["eval_every"] = 1
    return raw


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    raw = shrunken(read_yaml(CONFIG))
    config = parse_comparison(raw)
    result = run_comparison(config, output_dir=tmp_path_factory.mktemp("ten_k"), progress=False)
    run_dir = Path(result["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    return raw, run_dir, summary, {m["label"]: m for m in summary["methods"]}


def test_the_shipped_study_covers_every_method(study):
    raw, run_dir, summary, methods = study
    strategies = {m["strategy"]["name"] for m in raw["methods"] if "strategy" in m}
    assert strategies == set(STRATEGIES)  # every registered esjax strategy ...
    assert {"elm", "adam"} <= set(methods)  # ... plus ELM and Adam
    assert list(methods) == [m["label"] for m in raw["methods"]]
    assert methods["xnes"]["skipped"].startswith("one generation took")
    for label, method in methods.items():
        if label != "xnes":
            assert method["num_params"] == 9610 and (run_dir / label / "metrics.csv").is_file()
    markdown = (run_dir / "comparison.md").read_text()
    assert "## Answer" in markdown and summary["answer"] in markdown
    assert "adam reached" in summary["answer"] and "nelder_mead spent 9,611" in summary["answer"]
    for label in methods:
        assert f"| {label} |" in markdown


def test_every_shared_budget_method_spends_the_same_forward_passes(study):
    raw, _, summary, methods = study
    budget = raw["forward_pass_budget"]
    assert summary["forward_pass_budget"] == budget
    shared = {label: m for label, m in methods.items() if m.get("own_budget") is False}
    own = {"nelder_mead", "cma_es", "elm"}
    assert set(shared) == set(methods) - own - {"xnes"}
    for label, method in shared.items():
        # Counted forward passes, within one generation (or step) of the stated budget.
        per_step = method["forward_passes_per_step"]
        assert budget - per_step < method["forward_passes"] <= budget, label
    assert methods["openai_es"]["steps"] == GENERATIONS
    assert methods["adam"]["steps"] == budget // (3 * EXAMPLES)  # a backprop counts as 3
    # The subset methods score on the fixed subset, the others on minibatches.
    assert methods["pso"]["evaluation"] == f"fixed subset of {EXAMPLES}"
    assert methods["openai_es"]["evaluation"] == f"minibatch of {EXAMPLES}"
    # Nelder-Mead's passes are its sequential rule's count: the initial simplex of n + 1
    # points, not the n + 4 rows it asks for.
    assert methods["nelder_mead"]["forward_passes"] == (9610 + 1) * EXAMPLES
    assert methods["elm"]["forward_passes"] == 1438  # the training set, once


def test_seeds_share_one_compile_and_reproduce_single_seed_runs(tmp_path):
    raw = shrunken(read_yaml(CONFIG))
    raw["methods"] = [m for m in raw["methods"] if m["label"] in ("openai_es", "hill_climbing")]
    del raw["seed"], raw["answer"]
    config = parse_comparison(raw, seeds=[0, 1])
    two = run_comparison(config, output_dir=tmp_path / "two", progress=False)
    dataset = load_task(config.task)
    for method, both in zip(config.methods, two["methods"], strict=True):
        first, second = both["per_seed"]
        assert first["compile_s"] > 0.0 and second["compile_s"] == 0.0  # compiled once
        # Seed 1 on its own compile (the fixed subset is the first seed's in both runs).
        alone = run_method(
            dataclasses.replace(method, steps=both["steps"]),
            dataset,
            config.model,
            1,
            target_accuracy=config.target_accuracy,
            progress=False,
            subset_seed=0,
        )
        assert alone["compile_s"] > 0.0
        assert second["final_test_accuracy"] == alone["final_test_accuracy"]
        assert second["forward_passes"] == alone["forward_passes"]
        accuracies = [first["final_test_accuracy"], second["final_test_accuracy"]]
        assert both["final_test_accuracy"] == pytest.approx(np.mean(accuracies))
        assert both["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert both["seeds"] == [0, 1]
    assert (tmp_path / "two" / "ten_k_question" / "openai_es" / "seed_1" / "metrics.csv").is_file()


def test_aggregate_of_one_seed_is_that_seed():
    row = {"step": 0, "wall_clock_s": 0.0, "forward_passes": 0, "test_accuracy": 0.5}
    summary = {
        "label": "x",
        "steps": 1,
        "forward_passes": 10,
        "wall_clock_s": 1.0,
        "compile_s": 2.0,
        "final_test_accuracy": 0.5,
        "final_test_loss": 1.0,
        "best_test_accuracy": 0.5,
        "target": None,
        "history": [row],
        "seed": 3,
    }
    aggregate = aggregate_seeds([summary], 0.9)
    assert aggregate["final_test_accuracy"] == 0.5 and aggregate["test_accuracy_std"] == 0.0
    assert aggregate["history"] == [row] and aggregate["seeds"] == [3]


def test_validation_split_holds_out_training_images_and_drops_the_test_split():
    task = {"name": "digits", "seed": 1}
    full = load_task(task)
    tuned = load_task(task, {"fraction": 0.2, "seed": 0})
    assert tuned.num_train + tuned.x_test.shape[0] == full.num_train
    assert abs(tuned.x_test.shape[0] - 0.2 * full.num_train) <= 10  # stratified rounding
    train = {row.tobytes() for row in np.asarray(full.x_train)}
    assert all(row.tobytes() in train for row in np.asarray(tuned.x_test))
    assert "validation split" in tuned.name


def test_fixed_subset_is_one_draw_shared_by_every_method():
    first = fitness_subset_indices(1438, 256, seed=0)
    assert np.array_equal(first, fitness_subset_indices(1438, 256, seed=0))
    assert len(set(np.asarray(first).tolist())) == 256
    assert not np.array_equal(first, fitness_subset_indices(1438, 256, seed=1))
    with pytest.raises(ValueError, match="fitness_subset=2000 exceeds"):
        fitness_subset_indices(1438, 2000, seed=0, label="pso")


def test_tuning_results_are_the_values_the_config_sets():
    results = sorted((ROOT / "benchmarks" / "results").glob("ten_k_tune-*.json"))
    assert results, "run benchmarks/ten_k_tune.py"
    tuned = json.loads(results[-1].read_text())
    assert tuned["validation"]["fraction"] > 0 and tuned["seed"] == 0
    assert tuned["forward_pass_budget"] == read_yaml(CONFIG)["forward_pass_budget"]
    methods = {m["label"]: m for m in read_yaml(CONFIG)["methods"]}
    for label, entry in tuned["sweeps"].items():
        section = methods[label]
        for key in entry["key"].split("."):
            section = section[key]
        assert section == entry["chosen"], (label, entry["key"])
        assert len(entry["runs"]) == len(entry["values"]) >= 3


BASE = {
    "name": "bad",
    "task": {"name": "digits"},
    "methods": [{"optimizer": {"name": "adam"}, "steps": 3}],
}


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"seeds": [0, 0]}, ValueError, "must not repeat"),
        ({"seeds": []}, TypeError, "non-empty list"),
        ({"seed": 1, "seeds": [0]}, ValueError, "either 'seed' or 'seeds'"),
        ({"validation": {"fraction": 1.5}}, ValueError, "validation.fraction"),
        ({"validation": {"share": 0.2}}, ValueError, "valid keys"),
        ({"answer": {"reference": "sgd"}}, ValueError, "answer.reference"),
        ({"forward_pass_budget": 0}, ValueError, "forward_pass_budget"),
        (
            {
                "methods": [
                    {
                        "strategy": {"name": "pso", "population_size": 4},
                        "fitness_subset": 8,
                        "batch_size": 8,
                        "steps": 3,
                    }
                ]
            },
            ValueError,
            r"methods\[0\] sets both fitness_subset",
        ),
        (
            {"methods": [{"strategy": {"name": "pso"}, "fitness_subset": "all", "steps": 3}]},
            TypeError,
            r"methods\[0\].fitness_subset",
        ),
        ({"methods": [{"strategy": {"name": "pso"}, "skip": 3, "steps": 3}]}, TypeError, "skip"),
        ({"methods": [{"optimizer": {"name": "adam"}}]}, ValueError, "forward_pass_budget"),
    ],
)
def test_bad_study_keys_name_the_key(change, error, words):
    with pytest.raises(error, match=words):
        parse_comparison({**BASE, **change})


def test_a_budget_cannot_fix_the_generations_of_a_strategy_that_counts_as_it_goes():
    config = parse_comparison(
        {
            **BASE,
            "model": {"hidden": [2]},
            "forward_pass_budget": 10_000,
            "methods": [{"strategy": {"name": "nelder_mead", "num_dims": 160}}],
        }
    )
    method = config.methods[0]
    setup = build_method(method, load_task(config.task), config.model, 0)
    with pytest.raises(ValueError, match="give it 'generations'"):
        resolve_steps(method, setup, config.forward_pass_budget)
    assert jax.numpy.ndim(setup.state.simplex) == 2
