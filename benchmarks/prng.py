"""Random numbers for a whole population: esjax.prng against jax.random's three implementations.

ES generations are dominated by drawing one number per member and coordinate, so the generator
is a design choice to measure, not assume. For a ``(rows, dim)`` draw this times, each compiled
ahead of time and as the best of ``--repeats`` calls:

- ``jax.random.bits`` / ``jax.random.normal`` under keys of each implementation:
  ``threefry2x32`` (the default), ``rbg`` and ``unsafe_rbg`` (XLA's RngBitGenerator; cheaper on
  some accelerators, but their streams are not guaranteed to be the same across backends or
  shardings);
- ``esjax.prng.random_bits`` / ``esjax.prng.standard_normal`` (Threefry-2x32 written with
  ``jnp``, the same cipher as the default, fused by XLA), and ``esjax.prng.random_pairs`` (both
  words of each block at one index, as PSO uses them; ``rows × dim/2`` pairs).

Each draw is consumed in two ways: written out (``materialised``) and summed inside the same
program (``fused``, the way a strategy's update uses it). All variants are compiled first and
their timed calls interleaved, so a slow spell of a shared host hits them alike. Rates are in
millions of numbers per second; ratios are against ``jax.random`` with the default Threefry.

    python benchmarks/prng.py                 # CPU: under a minute on 2 cores
    python benchmarks/prng.py --grid gpu      # an accelerator

Writes ``benchmarks/results/prng-<platform>-<device>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from common import best_seconds, environment, write_result

from esjax import prng

GRIDS = {
    # 7.7e6 numbers: one 256 × 10,000 PSO move's U1, U2 and z; 1024 × 10,000 OpenAI-ES normals.
    "cpu": [(768, 10_000), (512, 10_000)],
    "gpu": [(4096, 100_000), (2048, 100_000)],
}
IMPLEMENTATIONS = ("threefry2x32", "rbg", "unsafe_rbg")


def generators(rows: int, dim: int) -> dict[str, tuple[str, str | None, Callable]]:
    """``label -> (kind, key implementation or None for esjax's, key -> array)``, ``kind`` being
    ``"bits"`` or ``"normal"``."""
    shape = (rows, dim)
    draws = {
        "bits": (jax.random.bits, prng.random_bits),
        "normal": (jax.random.normal, prng.standard_normal),
    }
    found = {}
    for kind, (reference, ours) in draws.items():
        for impl in IMPLEMENTATIONS:
            found[f"jax.random.{kind}[{impl}]"] = (kind, impl, lambda k, f=reference: f(k, shape))
        found[f"esjax.prng.{ours.__name__}"] = (kind, None, lambda k, f=ours: f(k, shape))
    found["esjax.prng.random_pairs"] = (
        "bits",
        None,
        lambda k: jnp.stack(prng.random_pairs(k, (rows, dim // 2)), axis=-1),
    )
    return found


def measure(rows: int, dim: int, repeats: int) -> list[dict]:
    """One row per generator: millions of numbers per second, written out and fused into a sum."""
    compiled = {}
    for label, (kind, impl, draw) in generators(rows, dim).items():
        key = jax.random.key(0) if impl is None else jax.random.key(0, impl=impl)

        def fused(k, draw=draw):
            return jnp.sum(draw(k).astype(jnp.float32))

        for mode, function in (("materialised", draw), ("fused", fused)):
            run = jax.jit(function).lower(key).compile()
            jax.block_until_ready(run(key))
            compiled[label, mode] = (kind, key, run)
    best = best_seconds(
        {name: lambda _, run=run, key=key: run(key) for name, (_, key, run) in compiled.items()},
        repeats,
    )
    results = {}
    for (label, mode), (kind, _, _) in compiled.items():
        fields = {"generator": label, "kind": kind, "rows": rows, "dim": dim}
        row = results.setdefault(label, fields)
        row[f"{mode}_million_per_second"] = rows * dim / best[label, mode] / 1e6
    for row in results.values():  # ratios against jax.random's default generator of that kind
        baseline = results[f"jax.random.{row['kind']}[threefry2x32]"]
        for mode in ("materialised", "fused"):
            rate = f"{mode}_million_per_second"
            row[f"{mode}_vs_default"] = row[rate] / baseline[rate]
    return list(results.values())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None)
    parser.add_argument("--shape", default=None, help="one ROWSxDIM draw instead of the grid")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="JSON path (default: results/prng-...)")
    args = parser.parse_args(argv)
    grid = args.grid or ("cpu" if jax.devices()[0].platform == "cpu" else "gpu")
    shapes = GRIDS[grid]
    if args.shape:
        grid = "custom"
        shapes = [tuple(int(n) for n in args.shape.lower().split("x"))]
    load_average = os.getloadavg()[0]
    rows = []
    for num_rows, dim in shapes:
        for row in measure(num_rows, dim, args.repeats):
            rows.append(row)
            print(
                f"{row['generator']:>32} {num_rows:>6} x {dim:<8} | written "
                f"{row['materialised_million_per_second']:9.1f} M/s "
                f"({row['materialised_vs_default']:5.2f}x) | fused "
                f"{row['fused_million_per_second']:9.1f} M/s ({row['fused_vs_default']:5.2f}x)",
                flush=True,
            )
    result = {
        **environment("prng"),
        "host_load_average_at_start": load_average,
        "grid": grid,
        "repeats": args.repeats,
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "rows": rows,
    }
    write_result(result, "prng", args.output)
    return result


if __name__ == "__main__":
    main()
