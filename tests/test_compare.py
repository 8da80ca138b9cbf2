"""`esjax compare`: the shipped configs run (shrunken budgets), write every output, and measure
what the issue asks: ES >= 95% and Adam >= 97% test accuracy on digits, identical accounting."""

import contextlib
import csv
import inspect
import io
import json
from pathlib import Path

import chex
import jax
import pytest
import yaml
from strategy_cases import STRATEGY_CASES

from esjax.cli import main
from esjax.experiments.compare import (
    build_method,
    load_comparison,
    load_task,
    parse_comparison,
    run_comparison,
)
from esjax.experiments.config import RESIDUAL_STRATEGIES
from esjax.strategies import STRATEGIES, get_strategy

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STEPS = 400
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _compare(argv: list[str]) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["compare", *argv, "--quiet"]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def digits_comparison(tmp_path_factory):
    # The shipped README comparison, OpenAI-ES and EKI against Adam, with the budget cut from
    # 1,000 to 400 steps (the other methods are built from the same config in the tests below).
    output = tmp_path_factory.mktemp("compare")
    printed = _compare(
        [
            str(CONFIGS / "digits_compare.yaml"),
            "--output-dir",
            str(output),
            "--steps",
            str(STEPS),
            "--methods",
            "openai_es,eki,adam",
        ]
    )
    run_dir = output / "digits_compare"
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, {m["label"]: m for m in summary["methods"]}, printed


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_compare_writes_every_output(digits_comparison):
    run_dir, methods, printed = digits_comparison
    assert set(methods) == {"openai_es", "eki", "adam"}
    for label in methods:
        rows = _rows(run_dir / label / "metrics.csv")
        assert len(rows) == STEPS // 25 + 1  # evaluated every 25 steps, plus the start
        assert {"step", "wall_clock_s", "forward_passes", "test_accuracy"} <= set(rows[0])
    for name in ("accuracy_vs_wall_clock.png", "accuracy_vs_forward_passes.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    markdown = (run_dir / "comparison.md").read_text()
    assert "| openai_es | gradient-free | 2,410 |" in markdown
    assert "| adam | gradient | 2,410 |" in markdown
    assert "backward pass counted as 2 forward passes" in markdown
    assert "| openai_es |" in printed and "time to 95%" in printed  # the summary table


def test_openai_es_reaches_95_and_adam_97_percent_on_digits(digits_comparison):
    # The acceptance bars, met here at 400 of the shipped 1,000 steps (split seed 1, 359 test
    # images: one image is 0.28%). Measured: ES about 96-97%, Adam about 98%.
    _, methods, _ = digits_comparison
    assert methods["openai_es"]["final_test_accuracy"] >= 0.95
    assert methods["adam"]["final_test_accuracy"] >= 0.97
    assert methods["openai_es"]["num_params"] == methods["adam"]["num_params"] == 2410


def test_budgets_are_accounted_identically(digits_comparison):
    _, methods, _ = digits_comparison
    es, adam = methods["openai_es"], methods["adam"]
    assert es["forward_passes"] == STEPS * 256 * 256  # population × batch per generation
    assert adam["forward_passes"] == STEPS * 3 * 256  # forward + backward (= 2 forwards)
    for method in (es, adam):
        assert method["steps"] == STEPS and method["compile_s"] > 0.0
        assert 0.0 < method["wall_clock_s"]
        assert method["target"] is not None  # both reach 95% within 400 steps
    # ES spends 256 forward passes per example where backprop spends 3: to reach the same
    # accuracy it needs over an order of magnitude more of them.
    assert es["target"]["forward_passes"] > 10 * adam["target"]["forward_passes"]


def test_eki_reaches_95_percent_with_fewer_forward_passes_than_openai_es(digits_comparison):
    # Issue 10's claim, measured on the shipped config: EKI (50 members, the same 256-image
    # minibatches, fitting softmax outputs to one-hot labels) reaches 95% at generation ~150,
    # about 1.9M forward passes; OpenAI-ES (256 members) needs ~5M. Per generation EKI costs
    # 50 × 256 forward passes.
    _, methods, _ = digits_comparison
    eki, es = methods["eki"], methods["openai_es"]
    assert eki["forward_passes"] == STEPS * 50 * 256
    assert eki["loss"] == "softmax_residual" and eki["num_params"] == 2410
    assert eki["final_test_accuracy"] >= 0.95
    assert eki["target"] is not None and es["target"] is not None
    assert eki["target"]["forward_passes"] < es["target"]["forward_passes"]


def test_step_activation_config_shows_where_gradients_fail(tmp_path):
    methods = "openai_es,adam,adam_zero_one"  # the straight-through run: test_baselines.py
    _compare(
        [
            str(CONFIGS / "digits_step_activation.yaml"),
            "--output-dir",
            str(tmp_path),
            "--steps",
            "100",
            "--methods",
            methods,
        ]
    )
    run_dir = tmp_path / "digits_step_activation"
    final = {m: _rows(run_dir / m / "metrics.csv") for m in methods.split(",")}
    # The 0-1 loss has a zero gradient everywhere: Adam's network is exactly its initial one.
    assert final["adam_zero_one"][-1]["test_accuracy"] == final["adam_zero_one"][0]["test_accuracy"]
    # Through the steps only the output layer gets a gradient; ES (forward passes only) trains
    # the hidden layer too and does clearly better.
    assert final["openai_es"][-1]["test_accuracy"] > final["adam"][-1]["test_accuracy"] + 0.1
    assert "| adam_zero_one | gradient |" in (run_dir / "comparison.md").read_text()


def test_scaling_config_writes_its_study(tmp_path):
    raw = yaml.safe_load((CONFIGS / "scaling.yaml").read_text())
    raw["scaling"]["hidden"] = [[4], [8]]  # the shipped widths reach 101k parameters
    # Adam alone keeps it cheap; ES runs through the same run_method in the comparison above.
    config = parse_comparison(raw, steps=10, methods=["adam"])
    result = run_comparison(config, output_dir=tmp_path, progress=False)
    run_dir = tmp_path / "digits_scaling"
    # 64 → w → 10 has 75 w + 10 parameters.
    assert [(r["label"], r["num_params"]) for r in result["scaling"]] == [
        ("adam", 310),
        ("adam", 610),
    ]
    with (run_dir / "scaling.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (run_dir / "scaling.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "forward passes to target" in (run_dir / "scaling.md").read_text()
    assert (run_dir / "scaling" / "adam_hidden_8" / "metrics.csv").is_file()


# The scalar-loss comparison below plugs in every table row but those that take residual vectors.
SCALAR_STRATEGIES = [
    case.id
    for case in STRATEGY_CASES
    if case.id in STRATEGIES and case.id not in RESIDUAL_STRATEGIES
]


def test_shipped_comparison_builds_every_method():
    config = load_comparison(CONFIGS / "digits_compare.yaml")
    labels = {m.label: m for m in config.methods}
    assert {"openai_es", "cma_es", "sep_cma_es", "simulated_annealing", "pso", "adam"} <= set(
        labels
    )
    dataset = load_task(config.task)
    for method in config.methods:  # every method builds (uncompiled) from its section
        setup = build_method(method, dataset, config.model, config.seed)
        assert setup.model.num_params == 2410
    # Annealing and the swarm score members on the whole training set (see the config).
    assert labels["pso"].batch_size is None and labels["openai_es"].batch_size == 256


@pytest.mark.parametrize("name", SCALAR_STRATEGIES)
def test_every_registered_strategy_plugs_in_by_name(name):
    # Built from its config name alone, on the Flax model's params, with the shared-minibatch
    # fitness; one generation is traced (not compiled: the real runs above compile one) and must
    # keep the state's structure, so timed_run can scan it.
    section = {"name": name}
    # Nelder-Mead's fixed-size ask needs num_dims + 4 members: given num_dims, its default
    # population size is that.
    if name == "nelder_mead":
        section["num_dims"] = 64 * 4 + 4 + 4 * 10 + 10
    elif "population_size" in inspect.signature(get_strategy(name)).parameters:
        section["population_size"] = 8
    config = parse_comparison(
        {
            "name": "plug",
            "task": {"name": "digits", "seed": 1},
            "model": {"hidden": [4]},
            "batch_size": 32,
            "methods": [{"strategy": section, "generations": 3}],
        }
    )
    setup = build_method(config.methods[0], load_task(config.task), config.model, 0)
    assert setup.model.num_params == 64 * 4 + 4 + 4 * 10 + 10
    assert setup.forward_passes_per_step % 32 == 0  # population × batch
    state, metrics = jax.eval_shape(setup.step_fn, jax.random.key(0), setup.state)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, jax.eval_shape(lambda: setup.state))
    assert metrics["generation"].shape == ()


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"sede": 1}, ValueError, "valid keys"),
        ({"methods": [{"label": "x", "steps": 3}]}, ValueError, "exactly one of"),
        (
            {"methods": [{"strategy": {"name": "nes"}, "generations": 3}]},
            ValueError,
            "openai_es",
        ),
        ({"methods": [{"optimizer": {"name": "adam"}}]}, ValueError, "generations"),
        ({"model": {"hidden": [4], "width": 3}}, ValueError, "valid keys"),
        ({"target_accuracy": 1.5}, ValueError, "target_accuracy"),
        ({"batch_size": "big"}, TypeError, "batch_size"),
        (
            {"methods": [{"optimizer": {"name": "adam"}, "steps": 3, "eval_every": 0}]},
            ValueError,
            "eval_every",
        ),
        (  # EKI fits residual vectors: a scalar loss cannot drive it ...
            {"methods": [{"strategy": {"name": "eki", "ensemble_size": 4}, "generations": 3}]},
            ValueError,
            "softmax_residual",
        ),
        (  # ... and a residual loss cannot drive a scalar-fitness method
            {
                "methods": [
                    {"strategy": {"name": "pso"}, "loss": "softmax_residual", "generations": 3}
                ]
            },
            ValueError,
            "only EKI can train on",
        ),
    ],
)
def test_bad_comparison_configs_name_the_problem(change, error, words):
    base = {
        "name": "bad",
        "task": {"name": "digits"},
        "methods": [{"optimizer": {"name": "adam"}, "steps": 3}],
    }
    with pytest.raises(error, match=words):
        parse_comparison({**base, **change})


def test_every_shipped_comparison_config_parses():
    # A dimension sweep (`esjax sweep`) also lists methods; it has dimensions, not a task. A
    # problem comparison has a problem (tests/test_problem_compare.py parses those).
    raw = {p: yaml.safe_load(p.read_text()) for p in CONFIGS.glob("*.yaml")}
    comparisons = [
        p for p, d in raw.items() if "methods" in d and "dimensions" not in d and "problem" not in d
    ]
    assert {p.name for p in comparisons} >= {
        "digits_compare.yaml",
        "digits_step_activation.yaml",
        "scaling.yaml",
        "ten_k_question.yaml",
        "mnist_compare.yaml",
    }
    for path in comparisons:
        load_comparison(path)


def test_cli_reports_unknown_methods_cleanly(capsys):
    code = main(["compare", str(CONFIGS / "digits_compare.yaml"), "--methods", "sgd", "--quiet"])
    assert code == 2
    assert "unknown method" in capsys.readouterr().err


def test_a_method_keeps_its_colour_whatever_else_is_drawn():
    from esjax.experiments import report

    assert report.method_colour("adam") == report.METHOD_COLOURS["adam"]
    assert report.method_colour("adam_zero_one") != report.method_colour("adam")
    assert report.method_colour("my_variant") == report.method_colour("my_variant")
    colours = {report.method_colour(name) for name in report.METHOD_COLOURS}
    assert len(colours) == len(report.METHOD_COLOURS)  # no two methods share one
