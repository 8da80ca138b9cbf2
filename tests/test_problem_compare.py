"""``esjax compare`` of a config with a ``problem`` section (esjax.experiments.problem_compare)."""

import csv
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from esjax import checkpoint, cli
from esjax.experiments import compare
from esjax.experiments.config import parse_config
from esjax.experiments.problem_compare import (
    load_problem_comparison,
    parse_problem_comparison,
    run_problem_comparison,
)
from esjax.experiments.runner import run_experiment

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = {"name": "rastrigin", "num_dims": 3, "x0": 2.0}
CMA = {"name": "cma_es", "population_size": 6, "sigma": 1.0}
PSO = {"name": "pso", "population_size": 8}


def config(**changes) -> dict:
    raw = {
        "name": "tiny",
        "problem": PROBLEM,
        "seeds": [0, 1],
        "eval_every": 4,
        "target_fitness": 5.0,
        "methods": [
            {"label": "cma_es", "strategy": CMA, "generations": 12},
            {"label": "pso", "strategy": PSO, "generations": 12},
        ],
    }
    raw.update(changes)
    return raw


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "problem, seeds",
    [
        (PROBLEM, [3]),
        # A problem drawn from the key: every seed builds and compiles its own.
        ({**PROBLEM, "shift_scale": 1.0, "rotate": True}, [0, 3]),
    ],
)
def test_one_method_reproduces_esjax_run(tmp_path, problem, seeds):
    run = parse_config(
        {
            "name": "single",
            "seed": 3,
            "generations": 12,
            "log_every": 4,
            "strategy": CMA,
            "problem": problem,
        }
    )
    expected = run_experiment(run, progress=False, output_dir=tmp_path / "run")
    raw = config(
        problem=problem,
        seeds=seeds,
        methods=[{"label": "cma_es", "strategy": CMA, "generations": 12}],
    )
    result = run_problem_comparison(
        parse_problem_comparison(raw), output_dir=tmp_path / "cmp", progress=False
    )
    (summary,) = result["methods"]
    mine = summary["per_seed"][-1]
    assert mine["seed"] == 3
    assert mine["best_fitness"] == expected["best_fitness"]
    assert mine["evaluations"] == expected["evaluations"]
    assert mine["compile_s"] > 0  # the last seed compiled its own chunk: not shared
    solution = checkpoint.load_solution(Path(result["run_dir"]) / "cma_es/seed_3/solution.msgpack")
    np.testing.assert_array_equal(
        solution, checkpoint.load_solution(Path(expected["run_dir"]) / "solution.msgpack")
    )


def test_two_methods_two_seeds_write_every_output(tmp_path):
    result = run_problem_comparison(
        parse_problem_comparison(config()), output_dir=tmp_path, progress=False
    )
    run_dir = tmp_path / "tiny"
    assert result["run_dir"] == str(run_dir)
    for label in ("cma_es", "pso"):
        summary = json.loads((run_dir / label / "summary.json").read_text())
        assert summary["seeds"] == [0, 1] and len(summary["per_seed"]) == 2
        for seed in (0, 1):
            seed_dir = run_dir / label / f"seed_{seed}"
            metrics = rows(seed_dir / "metrics.csv")
            assert len(metrics) == 12 // 4 + 1
            assert [int(r["step"]) for r in metrics] == [0, 4, 8, 12]
            assert metrics[-1]["evaluations"] == metrics[-1]["forward_passes"]
            assert float(metrics[-1]["best_fitness"]) == pytest.approx(
                summary["per_seed"][seed]["best_fitness"]
            )
            assert checkpoint.load_solution(seed_dir / "solution.msgpack").shape == (3,)
        per_seed = [s["best_fitness"] for s in summary["per_seed"]]
        assert summary["best_fitness"] == pytest.approx(np.mean(per_seed))
        assert summary["best_fitness_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert summary["per_seed"][1]["compile_s"] == 0.0  # the seeds share one compiled chunk
    table = (run_dir / "comparison.md").read_text()
    assert "| cma_es | 2 |" in table and "| pso | 2 |" in table and "rastrigin" in table
    assert (run_dir / "fitness.png").stat().st_size > 0
    top = json.loads((run_dir / "summary.json").read_text())
    assert [m["label"] for m in top["methods"]] == ["cma_es", "pso"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_problem_comparison(
            parse_problem_comparison(config()), output_dir=tmp_path, progress=False
        )


def test_own_function_beside_the_config_through_the_cli(tmp_path, capsys):
    (tmp_path / "pc_own_objective.py").write_text(
        "import jax.numpy as jnp\n\n\ndef f(x):\n    return jnp.sum((x - 1.0) ** 2)\n"
    )
    raw = config(
        problem={"function": "pc_own_objective:f", "num_dims": 2, "x0": 0.0},
        seeds=[0],
        methods=[{"strategy": CMA, "generations": 8}],
    )
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    argv = ["compare", str(path), "--output-dir", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| cma_es | 1 |" in out
    summary = json.loads((tmp_path / "out/tiny/cma_es/summary.json").read_text())
    assert summary["best_fitness"] < 2.0  # fitness 2 at x0


@pytest.mark.parametrize(
    "change, error, words",
    [
        (
            {"methods": [{"strategy": CMA, "generations": 4, "eval_evry": 2}]},
            ValueError,
            ["methods[0]", "eval_evry", "eval_every"],
        ),
        (
            {"methods": [{"strategy": CMA, "generations": 4}, {"elm": {}, "steps": 4}]},
            ValueError,
            ["methods[1]", "'elm'", "a task and a model"],
        ),
        (
            {"methods": [{"strategy": CMA, "optimizer": {"name": "adam"}, "steps": 4}]},
            ValueError,
            ["methods[0]", "exactly one of 'strategy'", "'optimizer'"],
        ),
        (
            {"methods": [{"optimizer": {"name": "adamm"}, "steps": 4}]},
            ValueError,
            ["methods[0].optimizer", "adamm"],
        ),
        (
            {"methods": [{"optimizer": {"name": "adam"}, "steps": 4}]},
            TypeError,
            ["methods[0].optimizer", "learning_rate"],
        ),
        (
            {
                "problem": {"name": "cartpole"},
                "methods": [{"optimizer": {"name": "adam"}, "steps": 4}],
            },
            ValueError,
            ["methods[0].optimizer", "'cartpole' has no useful gradient", "discrete actions"],
        ),
        (
            {"methods": [{"strategy": CMA, "generations": 4, "steps": 4}]},
            ValueError,
            ["methods[0]", "both 'generations' and 'steps'"],
        ),
        (
            {"methods": [{"strategy": "cma_es", "generations": 4}]},
            TypeError,
            ["methods[0].strategy"],
        ),
        ({"target_fitness": "low"}, TypeError, ["target_fitness"]),
        ({"eval_every": True}, TypeError, ["eval_every"]),
        ({"seed": 1}, ValueError, ["seed", "seeds"]),
        (
            {"methods": [{"strategy": {**CMA, "sigmaa": 1.0}, "generations": 4}]},
            ValueError,
            ["methods[0].strategy", "sigmaa"],
        ),
        ({"methods": [{"strategy": CMA}]}, ValueError, ["methods[0]", "generations"]),
        ({"problem": {"name": "nope", "num_dims": 2}}, ValueError, ["problem.name"]),
        (
            {"problem": {"name": "rastrigin", "num_dim": 3}},
            ValueError,
            ["problem 'rastrigin'", "'num_dim' -> 'num_dims'"],
        ),
        ({"checkpoint_every": 0}, ValueError, ["checkpoint_every"]),
        (
            {"problem": {"name": "rastrigin", "function": "m:f", "num_dims": 3}},
            ValueError,
            ["'problem'", "exactly one of 'name'", "'function'"],
        ),
        ({"problem": {"num_dims": 3}}, ValueError, ["'problem'", "exactly one of 'name'"]),
    ],
)
def test_bad_configs_name_the_key_path(change, error, words):
    with pytest.raises(error) as raised:
        parse_problem_comparison(config(**change))
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("problem", [{"num_dims": 3}, {"name": "sphere", "function": "m:f"}])
def test_a_run_config_needs_exactly_one_of_name_and_function(problem):
    # The same parse-time check as a problem comparison's (setup.check_problem_section).
    raw = {"name": "r", "strategy": {"name": "pso"}, "problem": problem, "generations": 2}
    with pytest.raises(ValueError, match="'problem' needs exactly one of 'name'"):
        parse_config(raw)


def test_steps_and_methods_overrides():
    parsed = parse_problem_comparison(config(), steps=7, methods=["pso"])
    assert [(m.label, m.generations) for m in parsed.methods] == [("pso", 7)]
    with pytest.raises(ValueError, match="unknown method"):
        parse_problem_comparison(config(), methods=["adam"])


class Killed(Exception):
    pass


def _without_clock(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_clock_s"} for row in rows(path)]


def test_a_killed_comparison_resumes_exactly(tmp_path, capsys):
    raw = config(checkpoint_every=4)  # 2 methods x 2 seeds, 12 generations: saves at 4, 8, 12
    straight = run_problem_comparison(
        parse_problem_comparison(raw), output_dir=tmp_path / "straight", progress=False
    )
    real_save, saves = checkpoint.save, []

    def dying_save(path, state, metadata=None, **kwargs):
        real_save(path, state, metadata, **kwargs)
        saves.append(Path(path))
        if len(saves) == 8:  # pso, seed 0, generation 8: the process "dies" after the save
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", dying_save)
        with pytest.raises(Killed):
            run_problem_comparison(
                parse_problem_comparison(raw), output_dir=tmp_path / "killed", progress=False
            )
    assert saves[-1].parent == tmp_path / "killed/tiny/pso/seed_0"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    argv = ["compare", str(path), "--output-dir", str(tmp_path / "killed"), "--quiet"]
    assert cli.main(argv) == 2  # the folder holds a comparison: neither resumed nor deleted
    assert "--resume" in capsys.readouterr().err
    calls = []
    real_run = compare.timed_run

    def recording_run(*args, **kwargs):
        calls.append((kwargs["description"], len(kwargs["history"] or [])))
        return real_run(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "timed_run", recording_run)
        assert cli.main([*argv, "--resume"]) == 0
    # cma_es's seeds had finished (reused, not rerun); pso seed 0 continues from generation 8
    # (rows 0, 4, 8); seed 1 had not started.
    assert calls == [("pso seed 0", 3), ("pso seed 1", 0)]
    for label in ("cma_es", "pso"):
        for seed in (0, 1):
            part = f"tiny/{label}/seed_{seed}"
            assert _without_clock(tmp_path / "killed" / part / "metrics.csv") == _without_clock(
                tmp_path / "straight" / part / "metrics.csv"
            )
            np.testing.assert_array_equal(
                checkpoint.load_solution(tmp_path / "killed" / part / "solution.msgpack"),
                checkpoint.load_solution(tmp_path / "straight" / part / "solution.msgpack"),
            )
    resumed = json.loads((tmp_path / "killed/tiny/summary.json").read_text())
    for mine, theirs in zip(resumed["methods"], straight["methods"], strict=True):
        assert mine["best_fitness"] == theirs["best_fitness"]
        assert mine["evaluations"] == theirs["evaluations"]
    # Resuming under another config is refused, naming what differs.
    changed = {**raw, "methods": [{**raw["methods"][0], "generations": 16}, raw["methods"][1]]}
    path.write_text(yaml.safe_dump(changed))
    assert cli.main([*argv, "--resume"]) == 2
    assert "differs in ['method']" in capsys.readouterr().err


def test_shipped_config_parses():
    parsed = load_problem_comparison(ROOT / "configs/functions_compare.yaml")
    assert parsed.seeds == (0, 1, 2)
    assert [m.label for m in parsed.methods] == [
        "cma_es",
        "sep_cma_es",
        "openai_es",
        "pso",
        "differential_evolution",
        "nelder_mead",
        "adam",
    ]


def test_an_optax_baseline_on_the_problems_own_gradient(tmp_path):
    import jax
    import optax

    from esjax.problems import sphere

    raw = config(
        problem={"name": "sphere", "num_dims": 3, "x0": 2.0},
        methods=[
            {"label": "adam", "optimizer": {"name": "adam", "learning_rate": 0.1}, "steps": 12},
            {"label": "cma_es", "strategy": CMA, "generations": 12},
        ],
    )
    result = run_problem_comparison(
        parse_problem_comparison(raw), output_dir=tmp_path, progress=False
    )
    adam, cma = result["methods"]
    assert (adam["kind"], cma["kind"]) == ("gradient", "gradient-free")
    assert adam["evaluations"] == 12 * 3  # the backward pass counts as 2 forward passes
    # The iterate is exactly an optax loop on jax.grad of the fitness (no key: both seeds equal).
    params, optimizer = jnp.full(3, 2.0), optax.adam(0.1)
    state = optimizer.init(params)
    for _ in range(12):
        updates, state = optimizer.update(jax.grad(sphere)(params), state, params)
        params = optax.apply_updates(params, updates)
    for seed in (0, 1):
        seed_dir = tmp_path / "tiny" / "adam" / f"seed_{seed}"
        np.testing.assert_allclose(
            checkpoint.load_solution(seed_dir / "solution.msgpack"), params, rtol=1e-5
        )
        table = rows(seed_dir / "metrics.csv")
        assert [int(r["evaluations"]) for r in table] == [0, 12, 24, 36]
        fitness = [float(r["solution_fitness"]) for r in table]
        best = [float(r["best_fitness"]) for r in table]
        assert best == list(np.minimum.accumulate(fitness))  # lowest iterate so far
    assert "dashed in the plot" in (tmp_path / "tiny" / "comparison.md").read_text()
