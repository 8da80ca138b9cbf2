"""Seconds and forward passes to 95% test accuracy on the digits MLP: esjax vs Adam vs evosax.

The model is ``configs/digits_compare.yaml``'s (64 → 32 tanh → 10, 2,410 parameters, scikit-learn's
bundled 8×8 digits, split seed 1) and so are the methods: every esjax strategy with that config's
settings, optax Adam, and evosax 0.3's ``Open_ES`` run on the same flat parameter vector from the
same initial parameters, with the same Adam schedule, σ, population, antithetic sampling and
centred ranks as esjax's OpenAI-ES, on the same minibatches (generation ``t`` of every method
draws its batch from the same key). Every method runs through
:func:`esjax.experiments.compare.run_method` / :func:`esjax.baselines.timed_run`, so wall-clock
excludes compilation and the periodic test evaluation, and a backprop step counts as three
forward passes. Runs stop at the target; the minibatch is 1,024 images (the evosax reference
setting: ``Open_ES`` with population 256 and batch 1,024 reaches 95% in 2.39 s on an H100, Adam
in 0.69 s). evosax is skipped cleanly when it is not installed.

Time to target depends on each run's random trajectory; ``ms_per_step`` (wall-clock over steps)
is the pure throughput comparison of the two OpenAI-ES implementations.

    python benchmarks/train.py                                # all methods (~3 minutes on 2 cores)
    python benchmarks/train.py --methods openai_es,evosax_open_es,adam

Writes ``benchmarks/results/train-<platform>-<device>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import os
from pathlib import Path

import jax
import yaml
from common import environment, write_result

import esjax
from esjax.baselines import classifier_metrics
from esjax.experiments.compare import build_method, load_task, parse_comparison, run_method
from esjax.experiments.config import build_optimizer
from esjax.loop import evaluate_population

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_compare.yaml"
EVOSAX_LABEL = "evosax_open_es"
BATCH_SIZE = 1024


def benchmark_config(eval_every: int) -> dict:
    """``digits_compare.yaml`` with the reference minibatch, frequent evaluation, stop at 95%."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(
        name="train_benchmark",
        batch_size=BATCH_SIZE,
        eval_every=eval_every,
        stop_at_target=True,
    )
    for method in raw["methods"]:
        method.pop("eval_every", None)
    return raw


def run_evosax_open_es(openai_es_method, dataset, config) -> dict:
    """evosax's ``Open_ES`` with the settings of esjax's ``openai_es`` method, measured alike:
    :func:`run_method` trains it in place of the method's own step function and state."""
    from evosax.algorithms import Open_ES
    from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn

    strategy = openai_es_method.strategy
    # The same model, initial parameters, fitness (minibatch sampler) and evaluation as esjax.
    setup = build_method(openai_es_method, dataset, config.model, config.seed)
    model = setup.model
    fitness = esjax.nn.dataset_fitness(
        model,
        openai_es_method.loss,
        dataset.x_train,
        dataset.y_train,
        openai_es_method.batch_size,
    )
    metrics = classifier_metrics(model, dataset)
    es = Open_ES(
        population_size=strategy["population_size"],
        solution=model.x0,
        use_antithetic_sampling=True,
        optimizer=build_optimizer(copy.deepcopy(strategy["optimizer"])),
        std_schedule=lambda _: strategy["sigma"],
        fitness_shaping_fn=centered_rank_fitness_shaping_fn,
    )
    params = es.default_params

    def generation(key, state):
        # esjax.loop.make_generation's split: the batch key equals esjax's and Adam's.
        ask_key, batch_key = jax.random.split(key)
        population, state = es.ask(ask_key, state, params)
        losses = evaluate_population(fitness, population, model.spec, key=batch_key)
        state, _ = es.tell(ask_key, population, losses, state, params)
        return state, {}

    evosax_setup = setup._replace(
        step_fn=generation,
        # run_method's strategies start from fold_in(seed key, 1) too.
        state=es.init(jax.random.fold_in(jax.random.key(config.seed), 1), model.x0, params),
        counter=lambda state: state.generation_counter,
        evaluate=lambda state: metrics(model.spec.unflatten(state.mean)),
        description=f"evosax Open_ES, population {es.population_size}",
    )
    return _run(
        dataclasses.replace(openai_es_method, label=EVOSAX_LABEL), dataset, config, evosax_setup
    )


def _run(method, dataset, config, setup=None) -> dict:
    """:func:`run_method` as every row of this benchmark runs it: stop at the target, no files."""
    return run_method(
        method,
        dataset,
        config.model,
        config.seed,
        target_accuracy=config.target_accuracy,
        stop_at_target=True,
        progress=False,
        setup=setup,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per method; the fastest is kept (trajectories are identical, only time varies)",
    )
    parser.add_argument("--output", default=None, help="JSON path (default: results/train-...)")
    args = parser.parse_args(argv)
    config = parse_comparison(benchmark_config(args.eval_every))
    dataset = load_task(config.task)
    wanted = set(args.methods.split(",")) if args.methods else None
    have_evosax = importlib.util.find_spec("evosax") is not None

    summaries = []
    for method in config.methods:
        if wanted is None or method.label in wanted:
            summary = _fastest(args.repeats, lambda method=method: _run(method, dataset, config))
            summaries.append(_row("esjax", summary))
            _print_row(summaries[-1])
        if method.label == "openai_es" and (wanted is None or EVOSAX_LABEL in wanted):
            if have_evosax:
                evosax_summary = _fastest(
                    args.repeats, lambda method=method: run_evosax_open_es(method, dataset, config)
                )
                summaries.append(_row("evosax", evosax_summary))
                _print_row(summaries[-1])
            else:
                print(f"{EVOSAX_LABEL}: skipped (evosax is not installed)")

    by_label = {row["label"]: row for row in summaries}
    comparison = {}
    if "openai_es" in by_label and EVOSAX_LABEL in by_label:
        ours, theirs = by_label["openai_es"], by_label[EVOSAX_LABEL]
        comparison["evosax_over_esjax_ms_per_step"] = theirs["ms_per_step"] / ours["ms_per_step"]
        if ours["seconds_to_target"] and theirs["seconds_to_target"]:
            comparison["evosax_over_esjax_seconds_to_target"] = (
                theirs["seconds_to_target"] / ours["seconds_to_target"]
            )
        print(
            "evosax/esjax OpenAI-ES: "
            + ", ".join(f"{name} {value:.2f}x" for name, value in comparison.items())
        )
    result = {
        **environment("train"),
        "host_load_average_at_end": os.getloadavg()[0],
        "task": dataset.name,
        "num_train": dataset.num_train,
        "num_params": summaries[0]["num_params"] if summaries else None,
        "target_accuracy": config.target_accuracy,
        "batch_size": BATCH_SIZE,
        "eval_every": args.eval_every,
        "repeats": args.repeats,
        "config": str(CONFIG.relative_to(ROOT)),
        "rows": summaries,
        "comparison": comparison,
        "evosax_reference_h100": {"Open_ES_seconds_to_95": 2.39, "adam_seconds_to_95": 0.69},
    }
    write_result(result, "train", args.output)
    return result


def _fastest(repeats: int, run) -> dict:
    """The run with the least training wall-clock of ``repeats`` (>= 1) identical runs."""
    return min((run() for _ in range(max(repeats, 1))), key=lambda s: s["wall_clock_s"])


def _row(library: str, summary: dict) -> dict:
    target = summary["target"]
    return {
        "label": summary["label"],
        "library": library,
        "kind": summary["kind"],
        "description": summary["description"],
        "num_params": summary["num_params"],
        "batch_size": summary["batch_size"],
        "steps": summary["steps"],
        "ms_per_step": 1e3 * summary["wall_clock_s"] / max(summary["steps"], 1),
        "wall_clock_s": summary["wall_clock_s"],
        "compile_s": summary["compile_s"],
        "forward_passes": summary["forward_passes"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "steps_to_target": None if target is None else target["step"],
        "seconds_to_target": None if target is None else target["wall_clock_s"],
        "forward_passes_to_target": None if target is None else target["forward_passes"],
    }


def _print_row(row: dict) -> None:
    reached = row["seconds_to_target"] is not None
    to_target = (
        f"{row['seconds_to_target']:7.2f} s {row['steps_to_target']:>5} steps "
        f"{row['forward_passes_to_target'] / 1e6:8.2f}M fwd"
        if reached
        else f"{'not reached':>34}"
    )
    print(
        f"{row['label']:>20} ({row['library']}) | to 95%: {to_target} | "
        f"best {100 * row['best_test_accuracy']:5.1f}% | {row['ms_per_step']:7.2f} ms/step, "
        f"{row['steps']} steps, compile {row['compile_s']:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
