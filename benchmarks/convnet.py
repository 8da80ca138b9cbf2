"""Population forward throughput of an MNIST ConvNet: esjax's population_apply vs a naive vmap.

The network is EvoJAX's MNIST ConvNet as a Flax linen module: conv 8@5×5 → ReLU → 2×2 max pool
→ conv 16@5×5 → ReLU → 2×2 max pool → dense 10 (SAME padding, 11,274 parameters). A population
of flat parameter vectors (``x0`` plus small noise) is evaluated on one batch of synthetic 28×28
images, every member on the same images, as an ES generation does. Two ways:

- ``naive``: ``jax.vmap(lambda v: model.apply(spec.unflatten(v), images))(population)``. A
  convolution whose kernel is batched over members becomes one grouped convolution with
  ``population × features`` channels: large activations (the guard below refuses to run it when
  its temporaries would not fit) and, on CPU, a slow kernel.
- ``esjax``: :func:`esjax.nn.population_apply` with ``population_chunk`` members per
  ``lax.map`` step (1 on CPU, where a plain convolution per member is fastest) and optionally
  ``dtype=bfloat16``.

Each variant is compiled ahead of time (not timed) and reported as images per second
(``population × batch`` forward passes over the best of ``--repeats`` calls), with XLA's
estimate of its temporary memory. A variant that fails to compile or run is recorded with its
error. Writes ``benchmarks/results/convnet-<platform>-<device>-<date>.json``.

    python benchmarks/convnet.py                         # CPU: ~3 minutes on 2 cores
    python benchmarks/convnet.py --chunks none,64,16     # an accelerator
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
from common import best_seconds, environment, write_result
from flax import linen

from esjax import nn


class ConvNet(linen.Module):
    """EvoJAX's MNIST ConvNet (11,274 parameters for 28×28×1 inputs and 10 classes)."""

    num_classes: int = 10

    @linen.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        for features in (8, 16):
            x = jax.nn.relu(linen.Conv(features, (5, 5), padding="SAME")(x))
            x = linen.max_pool(x, (2, 2), strides=(2, 2))
        return linen.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def naive_apply(model: nn.FlaxModel, population: jax.Array, images: jax.Array) -> jax.Array:
    """The straightforward population forward pass: one vmap over every member."""
    return jax.vmap(lambda vector: model.apply(model.spec.unflatten(vector), images))(population)


def measure(forward, population, images, repeats: int, max_temp_bytes: float | None) -> dict:
    """Compile ``forward`` ahead of time, then the best of ``repeats`` calls, as images/s."""
    result = {"population_size": population.shape[0], "batch_size": images.shape[0]}
    try:
        start = time.perf_counter()
        compiled = jax.jit(forward).lower(population, images).compile()
        result["compile_s"] = time.perf_counter() - start
        memory = compiled.memory_analysis()
        temp = None if memory is None else memory.temp_size_in_bytes
        result["temp_bytes"] = temp
        if max_temp_bytes is not None and temp is not None and temp > max_temp_bytes:
            result["status"] = (
                f"not run: needs {temp / 1e9:.1f} GB of temporaries, over the "
                f"{max_temp_bytes / 1e9:.1f} GB guard (--max-temp-gb)"
            )
            return result
        best = best_seconds({"forward": lambda _: compiled(population, images)}, repeats)["forward"]
    except Exception as error:  # noqa: BLE001 - any failure of the variant is the measurement
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        result["status"] = f"failed: {type(error).__name__}: {message[:300]}"
        return result
    result.update(
        status="ok",
        seconds=best,
        images_per_second=population.shape[0] * images.shape[0] / best,
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument(
        "--chunks",
        default=None,
        help="comma-separated population_chunk values, 'none' for one vmap "
        "(default: 1,8 on CPU, none,64,16 elsewhere)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default: 1 on CPU, else 3")
    parser.add_argument(
        "--naive-population",
        type=int,
        default=None,
        help="also time the naive vmap at this smaller population (default on CPU: 32)",
    )
    parser.add_argument(
        "--max-temp-gb",
        type=float,
        default=None,
        help="do not run a variant needing more temporary memory (default on CPU: half the RAM)",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    repeats = args.repeats or (1 if on_cpu else 3)
    chunks_text = args.chunks or ("1,8" if on_cpu else "none,64,16")
    chunks = [None if c.strip() == "none" else int(c) for c in chunks_text.split(",")]
    naive_population = args.naive_population or (32 if on_cpu else None)
    max_temp_bytes = args.max_temp_gb * 1e9 if args.max_temp_gb else None
    if max_temp_bytes is None and on_cpu:
        # Host memory is shared with everything else on the machine: past this, the kernel's
        # OOM killer, not an allocation error, would end the run.
        max_temp_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2

    model = nn.from_linen(ConvNet(), jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    noise = jax.random.normal(jax.random.key(1), (args.population, model.num_params))
    population = model.x0 + 0.01 * noise
    images = jax.random.uniform(jax.random.key(2), (args.batch, 28, 28, 1))

    variants = [("naive", "float32", None, population)]
    if naive_population and naive_population < args.population:
        variants.append(("naive", "float32", None, population[:naive_population]))
    for chunk in chunks:
        variants.append(("esjax", "float32", chunk, population))
    variants.append(("esjax", "bfloat16", chunks[0], population))

    rows = []
    for method, dtype, chunk, members in variants:
        if method == "naive":

            def forward(p, x):
                return naive_apply(model, p, x)
        else:

            def forward(p, x, chunk=chunk, dtype=dtype):
                return nn.population_apply(
                    model, p, x, population_chunk=chunk, dtype=jnp.dtype(dtype)
                )

        row = {"method": method, "dtype": dtype, "population_chunk": chunk}
        row.update(measure(forward, members, images, repeats, max_temp_bytes))
        rows.append(row)
        _print_row(row)

    naive_rate = max(
        (r["images_per_second"] for r in rows if r["method"] == "naive" and r["status"] == "ok"),
        default=None,
    )
    ours = [r for r in rows if r["method"] == "esjax" and r["status"] == "ok"]
    best = max(ours, key=lambda r: r["images_per_second"]) if ours else None
    summary = {"best_esjax": best}
    if best and naive_rate:
        ratio = best["images_per_second"] / naive_rate
        summary["esjax_over_naive_images_per_second"] = ratio
        print(f"best esjax / best naive images/s: {ratio:.2f}x")

    result = {
        **environment("convnet"),
        "host_load_average_at_end": os.getloadavg()[0],
        "model": "EvoJAX MNIST ConvNet: conv 8@5x5, pool, conv 16@5x5, pool, dense 10",
        "num_params": model.num_params,
        "population_size": args.population,
        "batch_size": args.batch,
        "repeats": repeats,
        "rows": rows,
        "summary": summary,
    }
    write_result(result, "convnet", args.output)
    return result


def _print_row(row: dict) -> None:
    chunk = "all" if row["population_chunk"] is None else row["population_chunk"]
    label = f"{row['method']} {row['dtype']} chunk {chunk} pop {row['population_size']}"
    if row["status"] == "ok":
        temp = "?" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 1e9:.2f}"
        outcome = (
            f"{row['images_per_second']:12,.0f} images/s ({row['seconds']:.2f} s, temp {temp} GB)"
        )
    else:
        outcome = row["status"]
    print(f"{label:>40} | {outcome}", flush=True)


if __name__ == "__main__":
    main()
