"""The hyperparameter sweep behind ``configs/ten_k_question.yaml``, on a validation split.

For every method in :data:`SWEEP`, the shipped config's method is run once per candidate value
of its one swept hyperparameter, with everything else as shipped: the full forward-pass budget,
seed 0, and the config's ``validation`` option (a stratified 20% of the *training* images held
out, split seed 0), so the test split is never loaded. The value with the best final validation
accuracy is chosen (ties: the earlier value in the list). When the best value is at an end of
the list, the list is extended past that end by the same ratio as its two end values (up to
:data:`MAX_EXTENSIONS` times), so a chosen value is never a grid edge the sweep stopped at. The
config cites the chosen values; ``tests/test_ten_k.py`` checks that it sets them.

    python benchmarks/ten_k_tune.py                     # ~10 minutes on 2 CPU cores
    python benchmarks/ten_k_tune.py --methods pso,adam --budget 65536   # a quick look

Writes ``benchmarks/results/ten_k_tune-<platform>-<device>-<date>.json`` (``--output``) and
prints one line per run and the chosen values.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

from common import environment, write_result

from esjax.experiments.compare import parse_comparison, run_comparison
from esjax.experiments.outputs import read_yaml

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ten_k_question.yaml"
VALIDATION = {"fraction": 0.2, "seed": 0}
TUNING_SEED = 0
MAX_EXTENSIONS = 2

# label -> (key path inside the method section, candidate values)
SWEEP: dict[str, tuple[tuple[str, ...], list]] = {
    "simulated_annealing": (("strategy", "step_size"), [0.003, 0.01, 0.03]),
    "simple_ga": (("strategy", "sigma"), [0.003, 0.01, 0.03]),
    "differential_evolution": (("strategy", "init_spread"), [0.03, 0.1, 0.3]),
    "pso": (("strategy", "init_spread"), [0.03, 0.1, 0.3]),
    "random_search": (("strategy", "sigma"), [0.01, 0.03, 0.1]),
    "hill_climbing": (("strategy", "sigma"), [0.003, 0.01, 0.03]),
    "openai_es": (("strategy", "optimizer", "learning_rate"), [0.01, 0.03, 0.1]),
    "low_rank_es": (("strategy", "optimizer", "learning_rate"), [0.01, 0.03, 0.1]),
    "pgpe": (("strategy", "center_learning_rate"), [0.01, 0.03, 0.1]),
    "snes": (("strategy", "sigma"), [0.02, 0.05, 0.1]),
    "sep_cma_es": (("strategy", "sigma"), [0.02, 0.05, 0.1]),
    "lm_ma_es": (("strategy", "sigma"), [0.02, 0.05, 0.1]),
    "eki": (("strategy", "step_size"), [1.0, 3.0, 10.0]),
    "elm": (("elm", "ridge"), [0.0001, 0.001, 0.01]),
    "adam": (("optimizer", "learning_rate"), [0.001, 0.003, 0.01]),
}


def get_path(section: dict, path: tuple[str, ...]):
    for key in path:
        section = section[key]
    return section


def set_path(section: dict, path: tuple[str, ...], value) -> dict:
    section = copy.deepcopy(section)
    inner = section
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return section


def tuning_config(raw: dict, method: dict, budget: int | None) -> dict:
    """The shipped config with one method, seed 0 and the validation split."""
    tuned = {k: v for k, v in raw.items() if k not in ("seeds", "seed", "answer", "methods")}
    tuned.update(name="ten_k_tune", seed=TUNING_SEED, validation=VALIDATION, methods=[method])
    if budget is not None:
        tuned["forward_pass_budget"] = budget
    return tuned


def sweep(labels: list[str], budget: int | None, output_dir: Path) -> dict:
    raw = read_yaml(CONFIG)
    methods = {m["label"]: m for m in raw["methods"]}
    results = {}
    for label in labels:
        path, values = SWEEP[label]
        values, rows, extensions = list(values), [], 0
        pending = list(values)
        while pending:
            value = pending.pop(0)
            method = set_path(methods[label], path, value)
            config = parse_comparison(tuning_config(raw, method, budget))
            start = time.perf_counter()
            result = run_comparison(config, output_dir=output_dir, progress=False, overwrite=True)
            summary = result["methods"][0]
            rows.append(
                {
                    "value": value,
                    "validation_accuracy": summary["final_test_accuracy"],
                    "validation_loss": summary["final_test_loss"],
                    "forward_passes": summary["forward_passes"],
                    "steps": summary["steps"],
                    "wall_clock_s": summary["wall_clock_s"],
                    "seconds_with_compile": time.perf_counter() - start,
                }
            )
            print(
                f"{label:24s} {'.'.join(path)}={value:<8g} validation accuracy "
                f"{summary['final_test_accuracy']:.2%}  ({summary['wall_clock_s']:.1f} s)",
                flush=True,
            )
            if pending or extensions >= MAX_EXTENSIONS:
                continue
            ordered = sorted(rows, key=lambda r: r["value"])
            best = max(ordered, key=lambda r: r["validation_accuracy"])
            if best is ordered[-1] and best is not ordered[0]:
                pending.append(float(f"{ordered[-1]['value'] ** 2 / ordered[-2]['value']:.3g}"))
            elif best is ordered[0] and best is not ordered[-1]:
                pending.append(float(f"{ordered[0]['value'] ** 2 / ordered[1]['value']:.3g}"))
            if pending:
                extensions += 1
                values.append(pending[0])
        best = max(rows, key=lambda r: r["validation_accuracy"])  # first of equals wins
        results[label] = {
            "key": ".".join(path),
            "values": values,
            "runs": rows,
            "chosen": best["value"],
            "shipped": get_path(methods[label], path),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--budget", type=int, default=None, help="forward passes per method")
    parser.add_argument("--output", default=None, help="results JSON path")
    args = parser.parse_args(argv)
    labels = list(SWEEP) if not args.methods else args.methods.split(",")
    unknown = sorted(set(labels) - set(SWEEP))
    if unknown:
        print(f"unknown method(s) {unknown}; swept: {sorted(SWEEP)}", file=sys.stderr)
        return 2
    result = environment("ten_k_tune")
    result["host_load_at_start"] = [round(v, 2) for v in os.getloadavg()]
    raw = read_yaml(CONFIG)
    result.update(
        config=str(CONFIG.relative_to(CONFIG.parent.parent)),
        seed=TUNING_SEED,
        validation=VALIDATION,
        forward_pass_budget=args.budget or raw["forward_pass_budget"],
        selection="the value with the best final validation accuracy (ties: the earlier one)",
    )
    with tempfile.TemporaryDirectory() as scratch:
        result["sweeps"] = sweep(labels, args.budget, Path(scratch))
    result["host_load_at_end"] = [round(v, 2) for v in os.getloadavg()]
    for label, entry in result["sweeps"].items():
        note = "" if entry["chosen"] == entry["shipped"] else f" (config has {entry['shipped']})"
        print(f"chosen {label}: {entry['key']} = {entry['chosen']}{note}")
    write_result(result, "ten_k_tune", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
