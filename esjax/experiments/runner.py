"""Run one experiment from a config and write ``metrics.csv``, ``summary.json`` and the
reported solution, ``solution.msgpack`` (:func:`esjax.checkpoint.load_solution`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from esjax import checkpoint
from esjax.base import Strategy, StrategyState
from esjax.driver import run
from esjax.experiments import schema
from esjax.experiments.config import (
    RENAMED_KEYS,
    ExperimentConfig,
    build_strategy,
    config_to_dict,
)
from esjax.experiments.outputs import (
    append_metrics_csv,
    claim_run_dir,
    metrics_rows,
    trim_metrics_csv,
    write_json,
    write_metrics_csv,
)
from esjax.experiments.setup import build_problem

CHECKPOINT_FILE = "checkpoint.msgpack"
SOLUTION_FILE = "solution.msgpack"
# What a run writes into its folder: a folder holding any of them is an earlier run's.
RUN_OUTPUTS = ("metrics.csv", "summary.json", CHECKPOINT_FILE, SOLUTION_FILE)
# Config keys that change results: a checkpoint resumes only a run that agrees on all of them.
RESUME_KEYS = ("strategy", "problem", "seed", "population_batch_size")


def resume_fingerprint(config: dict) -> dict:
    """What a run's checkpoint must agree on to be resumed: its config's :data:`RESUME_KEYS`
    (a :func:`esjax.experiments.schema.fingerprint`)."""
    return schema.fingerprint({key: config.get(key) for key in RESUME_KEYS})


def load_resume_state(
    path: Path, like: StrategyState, es: Strategy, config: ExperimentConfig
) -> tuple[StrategyState, dict]:
    """The checkpointed state and its metadata; falls back to the previous checkpoint if the
    latest is damaged. Refuses a checkpoint of a config that differs in :data:`RESUME_KEYS`."""
    path, header = checkpoint.intact_header(path)
    metadata = header["metadata"] or {}
    saved = metadata.get("config", {})
    for old, new in RENAMED_KEYS.items():  # a checkpoint written before a key was renamed
        if old in saved and new not in saved:
            saved = {**saved, new: saved[old]}
    # Checked before the state is loaded: a changed config is reported as such, not as a
    # shape mismatch.
    schema.check_fingerprint(
        path,
        resume_fingerprint(saved),
        resume_fingerprint(config_to_dict(config)),
        remedy="resume with the config that wrote it (only generations, log_every, "
        "checkpoint_every, name and output_dir may change)",
    )
    state = checkpoint.load(path, like, strategy=es)
    return state, metadata


def _check_same_start(generation: int, run_dir: Path) -> None:
    # Every process of a multi-process run must resume from the same checkpoint; one that cannot
    # see the folder would otherwise start from scratch and deadlock or fail inside a collective.
    from jax.experimental import multihost_utils

    starts = np.asarray(multihost_utils.process_allgather(np.int32(generation))).ravel()
    if np.any(starts != generation):
        raise checkpoint.CheckpointError(
            f"the processes would start from generations {starts.tolist()}: with --resume, "
            f"{run_dir} must be a folder every process can read (a shared file system)"
        )


def _run_lengths(start: int, flags: np.ndarray) -> np.ndarray:
    """After each row, how many consecutive flagged rows end there (``start`` carried in)."""
    lengths, run = [], start
    for flag in flags:
        run = run + 1 if flag else 0
        lengths.append(run)
    return np.asarray(lengths, dtype=np.int64)


def _stop_reason(es: Strategy, state: StrategyState, nonfinite_stop: int | None) -> str:
    if nonfinite_stop is not None:
        return f"no finite fitness for {nonfinite_stop} generations"
    if bool(es.terminated(state)):
        info = jax.device_get(es.info(state))
        flags = [name for name, on in info.items() if name.startswith("stop_") and bool(on)]
        return "terminated: " + ", ".join(flags) if flags else "terminated"
    return "completed"


def run_experiment(
    config: ExperimentConfig,
    *,
    progress: bool = True,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    stop: bool = True,
) -> dict:
    """Run ``config`` and write ``<output_dir>/<name>/{metrics.csv,summary.json}``.

    ``mesh`` shards the population over its devices (:func:`esjax.run`); in a multi-process
    run every process calls this with the same arguments and only process 0 writes files,
    checkpoints included (``summary["writer"]`` says which process did), so ``resume`` needs an
    output folder every process can read.

    Keys: ``problem`` uses ``fold_in(seed_key, 0)``, ``init`` ``fold_in(seed_key, 1)`` and the
    generations ``fold_in(seed_key, 2)``, so every part is reproducible from ``seed`` alone.

    Checkpoints: with ``checkpoint_every = K > 0`` the state is saved to
    ``<run_dir>/checkpoint.msgpack`` at the first chunk boundary (``log_every``) at or after each
    multiple of K generations, and at the end. ``metrics.csv`` is appended chunk by chunk.
    ``resume=True`` continues from that checkpoint up to ``config.generations`` and appends to
    ``metrics.csv``; since generation g always uses ``fold_in(key, g)``, the result is
    bit-identical to an uninterrupted run. With no checkpoint yet, it starts from scratch.

    A folder that already holds a run's outputs is refused (nothing is deleted) unless
    ``resume`` or ``overwrite``. The run stops early when the strategy's termination signal comes
    on, or after ``config.max_nonfinite_generations`` generations without a finite fitness, at
    exactly that generation whatever ``log_every`` is (``metrics.csv``, the checkpoint and
    ``summary.json`` are those of a run of that many generations);
    ``summary["stop_reason"]`` says which (``"completed"`` otherwise). ``stop=False``
    (``esjax run --no-stop``) ignores both signals and runs every generation.

    Returns:
      The summary dict written to ``summary.json``.
    """
    run_dir = Path(output_dir or config.output_dir) / config.name
    writer = jax.process_index() == 0
    if writer:
        claim_run_dir(run_dir, RUN_OUTPUTS, resume=resume, overwrite=overwrite)
    seed_key = jax.random.key(config.seed)
    problem = build_problem(config.problem, jax.random.fold_in(seed_key, 0), config.config_dir)
    es = build_strategy(config.strategy, config.config_dir)
    state = es.init(jax.random.fold_in(seed_key, 1), problem.x0)
    metrics_path = run_dir / "metrics.csv"
    checkpoint_path = run_dir / CHECKPOINT_FILE
    earlier_seconds = 0.0
    has_checkpoint = checkpoint_path.exists() or checkpoint.previous_path(checkpoint_path).exists()
    if resume and has_checkpoint:
        state, metadata = load_resume_state(checkpoint_path, state, es, config)
        earlier_seconds = float(metadata.get("seconds", 0.0))
        if writer and metrics_rows(metrics_path) < int(state.generation):
            raise ValueError(
                f"{metrics_path} holds {metrics_rows(metrics_path)} rows but the checkpoint is "
                f"at generation {int(state.generation)}: resuming would leave a metrics file "
                "missing its first rows; restore it, or start over with --overwrite"
            )
        if writer:
            trim_metrics_csv(metrics_path, int(state.generation))
    elif resume and writer:
        if metrics_path.exists() or (run_dir / "summary.json").exists():
            raise ValueError(
                f"{run_dir} holds an earlier run's outputs but no checkpoint to resume from; "
                "pass --overwrite to start over"
            )
        print(f"esjax: no checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    resumed_from = int(state.generation)
    if jax.process_count() > 1:
        _check_same_start(resumed_from, run_dir)
    if resumed_from > config.generations:
        raise ValueError(
            f"generations={config.generations} is below the checkpoint's generation "
            f"{resumed_from}; pass at least that many to resume"
        )

    start = time.perf_counter()
    saved_at = [resumed_from]

    def save_checkpoint(state: StrategyState) -> None:
        seconds = earlier_seconds + time.perf_counter() - start
        metadata = {"config": config_to_dict(config), "seconds": seconds}
        if writer:
            checkpoint.save(checkpoint_path, state, metadata, strategy=es)
        saved_at[0] = int(state.generation)

    nonfinite = {"run": 0, "stop": None}

    def record(state: StrategyState, chunk: dict) -> int | None:
        counts = np.asarray(chunk.get("num_nonfinite", []))
        runs = _run_lengths(nonfinite["run"], counts == es.population_size)
        if stop and nonfinite["stop"] is None:
            over = np.flatnonzero(runs >= config.max_nonfinite_generations)
            if over.size:
                nonfinite["stop"] = int(runs[over[0]])
                at = int(np.asarray(chunk["generation"])[over[0]])
                if at < int(state.generation):
                    # esjax.run reruns the chunk to that generation and calls back with the
                    # shorter chunk, which is the one written.
                    return at
        # Metrics first: every row a checkpoint covers is on disk before the checkpoint is.
        every = config.checkpoint_every
        if writer:
            append_metrics_csv(metrics_path, chunk, sync=bool(every))
        if every and int(state.generation) // every > saved_at[0] // every:
            save_checkpoint(state)
        if runs.size:
            nonfinite["run"] = int(runs[-1])
        return int(state.generation) if nonfinite["stop"] is not None else None

    state, _ = run(
        es,
        problem.fitness_fn,
        jax.random.fold_in(seed_key, 2),
        state,
        config.generations - resumed_from,
        log_every=config.log_every,
        batch_size=config.population_batch_size,
        fitness_takes_key=problem.fitness_takes_key,
        progress=progress and writer,
        description=config.name,
        callback=record,
        mesh=mesh,
        stop_on_termination=stop,
    )
    jax.block_until_ready(state)
    if config.checkpoint_every and saved_at[0] != int(state.generation):
        save_checkpoint(state)
    seconds = earlier_seconds + time.perf_counter() - start

    run_config = {**config_to_dict(config), "output_dir": str(run_dir.parent)}
    summary = {
        "name": config.name,
        "strategy": config.strategy["name"],
        "problem": config.problem.get("name") or config.problem["function"],
        "num_dims": state.num_dims,
        "population_size": es.population_size,
        "generations": int(state.generation),
        "evaluations": int(state.evaluations),
        "best_fitness": float(state.best_fitness),
        "seconds_including_compile": seconds,
        "stop_reason": _stop_reason(es, state, nonfinite["stop"]) if stop else "completed",
        "output_dir": str(run_dir.parent),
        "config": run_config,
    }
    if resume:
        summary["resumed_from_generation"] = resumed_from
    # The solution each strategy declares it reports: the mean, or the best member seen.
    solution = es.solution(state)
    summary["reported_solution"] = es.capabilities.solution
    if es.capabilities.solution == "mean":
        # fitness_fn(member) without a key scores on the full data where the problem allows it.
        mean_fitness = jnp.asarray(problem.fitness_fn(state.unravel(state.mean)))
        if mean_fitness.ndim == 0:  # EKI-style problems return residual vectors instead
            summary["mean_fitness"] = float(mean_fitness)
    if problem.report is not None:
        summary.update(problem.report(solution))
    if mesh is not None:
        summary["num_devices"] = int(mesh.devices.size)
        summary["num_processes"] = jax.process_count()
    if writer:
        # The reported solution in the shape of x0: esjax.checkpoint.load_solution reads it.
        checkpoint.save_solution(
            run_dir / SOLUTION_FILE,
            state.unravel(solution),
            {"strategy": es.name, "reported_solution": es.capabilities.solution},
        )
        summary = write_json(run_dir / "summary.json", summary)
    summary["run_dir"] = str(run_dir)
    summary["writer"] = writer
    return summary


__all__ = [
    "CHECKPOINT_FILE",
    "RESUME_KEYS",
    "RUN_OUTPUTS",
    "SOLUTION_FILE",
    "append_metrics_csv",
    "load_resume_state",
    "resume_fingerprint",
    "run_experiment",
    "trim_metrics_csv",
    "write_metrics_csv",
]
