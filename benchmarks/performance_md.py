"""Print the README's "Performance" section from the newest JSON files in benchmarks/results/.

For every benchmark (``throughput``, ``train``, ``convnet``, ``distributed``, ``prng``) and every
device it was run on, the file with the latest date is read and turned into a Markdown table with
the ratios; the device, host load and library versions head each table. Nothing is measured here.

    python benchmarks/performance_md.py                   # print to stdout
    python benchmarks/performance_md.py > performance.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("throughput", "train", "convnet", "distributed", "prng")


def latest_results(results: Path) -> dict[str, list[dict]]:
    """``benchmark -> [result, ...]``: per benchmark and device, the newest file's contents."""
    newest: dict[tuple[str, ...], tuple[str, dict]] = {}
    for path in sorted(results.glob("*.json")):
        result = json.loads(path.read_text())
        benchmark = result.get("benchmark")
        if benchmark not in BENCHMARKS or result.get("complete") is False:
            continue  # another benchmark's file, or a run still going (or one that crashed)
        key = (benchmark, result.get("platform", "?"), result.get("device", "?"))
        key += (result.get("grid", ""),)  # e.g. throughput's cpu and cpu-large grids
        stamp = f"{result.get('date', '')} {path.stat().st_mtime:020.6f}"
        if key not in newest or stamp > newest[key][0]:
            newest[key] = (stamp, {**result, "file": path.name})
    grouped: dict[str, list[dict]] = {name: [] for name in BENCHMARKS}
    for (benchmark, *_), (_, result) in sorted(newest.items()):
        grouped[benchmark].append(result)
    return grouped


def _context(result: dict) -> str:
    versions = result.get("versions", {})
    parts = [f"Device `{result.get('device')}` ({result.get('platform')})"]
    if result.get("host_cpu_cores"):
        parts.append(f"{result['host_cpu_cores']} host CPU cores")
    load_range = result.get("host_load_range")
    load = result.get("host_load_average_at_start", result.get("host_load_average_at_end"))
    if load is None and result.get("host_load_at_start"):
        load = result["host_load_at_start"][0]
    if load_range:
        parts.append(f"host load average {load_range[0]:.1f}–{load_range[1]:.1f} during the run")
    elif load is not None:
        parts.append(f"host load average {load:.1f}")
    parts += [f"{name} {versions[name]}" for name in ("jax", "evosax") if name in versions]
    parts.append(f"{result.get('date')}, `benchmarks/results/{result['file']}`")
    return "; ".join(parts) + "."


def _table_head(intro: str, result: dict, columns: list[str], text_columns: int) -> list[str]:
    """A section's opening: ``intro`` and the run's context, then the table's header row and its
    alignment row (the first ``text_columns`` columns left-aligned, the numbers right-aligned)."""
    alignments = ["---"] * text_columns + ["---:"] * (len(columns) - text_columns)
    return [
        intro + _context(result),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(alignments) + "|",
    ]


def _number(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _with_range(value, bounds, digits: int = 2, suffix: str = "") -> str:
    """``value`` and its ``[low, high]`` range: ``2.65 (2.51–2.80)``."""
    if value is None:
        return "–"
    text = f"{_number(value, digits)}{suffix}"
    if bounds and None not in bounds:
        low, high = bounds
        text += f" ({_number(low, digits)}–{_number(high, digits)})"
    return text


def _footnote(notes: list[str], note: str) -> int:
    """The footnote number of ``note``, adding it if new (rows sharing a note share a number)."""
    if note not in notes:
        notes.append(note)
    return notes.index(note) + 1


def loaded_host(result: dict) -> str | None:
    """A sentence saying the host was loaded, if its load average exceeded its cores."""
    cores = result.get("host_cpu_cores")
    low, high = result.get("host_load_range") or [result.get("host_load_average_at_start")] * 2
    if not cores or high is None or high <= cores:
        return None
    return (
        f"**Measured on a loaded host**: the 1-minute load average was {low:.1f}–{high:.1f} on "
        f"{cores} cores (other jobs were running), so the wall-clock times are inflated several "
        "times over and spread widely. Each ratio is per round, from both libraries' runs back "
        "to back; the CPU-time ratio (CPU seconds of the process, all its threads: the work "
        "done) is disturbed far less by other processes and is the steadier comparison here. "
        "Rerun on an idle host for absolute times."
    )


def throughput_section(result: dict) -> list[str]:
    if result.get("timing") != "steady_state":
        return _throughput_best_of_section(result)
    lengths = result.get("lengths")
    if lengths == "calibrated":
        how = (
            "lengths calibrated per loop: the generations between the two runs take about "
            f"{result.get('target_seconds', 1.0):g} s, at least 20, for lazy CMA-ES a multiple "
            "of its decomposition interval; JSON: `short_generations`, `long_generations`"
        )
    else:
        how = (
            f"{lengths[0]} and {lengths[1]} generations; for lazy CMA-ES the longer one moved up "
            "to a multiple of its decomposition interval"
        )
    lines = _table_head(
        f"**Throughput** (`benchmarks/throughput.py`, grid `{result.get('grid')}`): "
        "**steady-state** milliseconds per generation of ask → sphere → tell, "
        "`(T_long − T_short) / (long − short)` from two runs of the same compiled loop "
        f"({how}), so `init` and the first evaluation are excluded; median and range over "
        f"{result.get('repeats')} interleaved rounds, both libraries in the same process"
        + (
            ", OpenBLAS (the LAPACK of CPU `eigh`) on " + _threads(result["openblas_num_threads"])
            if result.get("openblas_num_threads")
            else ""
        )
        + ". Ratios are per round, evosax / esjax (above 1: esjax faster). ",
        result,
        [
            "strategy",
            "population",
            "dimensions",
            "esjax ms",
            "evosax ms",
            "evosax / esjax",
            "CPU time evosax / esjax",
            "memory esjax / evosax",
        ],
        text_columns=1,
    )
    notes: list[str] = []
    skipped = []
    for row in result["rows"]:
        if "skipped" in row:
            skipped.append(f"{row['strategy']} ({row['skipped']})")
            continue
        ours, theirs = row.get("esjax") or {}, row.get("evosax") or {}
        name = row["strategy"]
        if "note" in row:
            name += f" [{_footnote(notes, row['note'])}]"
        memory = row.get("memory_ratio")
        lines.append(
            f"| {name} | {row['population_size']:,} | {row['num_dims']:,} | "
            f"{_with_range(ours.get('ms_per_generation'), ours.get('ms_per_generation_range'))} | "
            f"{_with_range(theirs.get('ms_per_generation'), theirs.get('ms_per_generation_range'))}"
            f" | {_with_range(row.get('speedup'), row.get('speedup_range'), suffix='×')} | "
            f"{_with_range(row.get('cpu_speedup'), row.get('cpu_speedup_range'), suffix='×')} | "
            f"{'–' if memory is None else f'{memory:.2f}'} |"
        )
    lines.append("")
    memory_note = (
        "Memory: the working set XLA assigns to each compiled loop (strategy state and a "
        "generation's temporaries, `memory_analysis().temp_size_in_bytes`); below 1, esjax needs "
        "less."
    )
    if any(row.get("generator") == "jax.random" for row in result["rows"]):
        memory_note += (
            " A row named `…, jax.random noise` is the row above it with esjax's sampling "
            "swapped for `jax.random` in the benchmark script."
        )
    lines.append(memory_note)
    warning = loaded_host(result)
    if warning:
        lines += ["", warning]
    if skipped:
        lines += ["", "Not measured (esjax strategy not importable then): " + "; ".join(skipped)]
    evaluations = result.get("cma_evaluations_to_target")
    if evaluations:
        lines += ["", *_evaluations_table(evaluations)]
    if notes:
        lines += ["", *(f"[{i}] {note}" for i, note in enumerate(notes, 1))]
    return lines


def _threads(count: str) -> str:
    return "one thread" if str(count) == "1" else f"{count} threads"


def _power(value: float) -> str:
    """``1e-8`` rather than ``1e-08``."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _evaluations_table(evaluations: dict) -> list[str]:
    variants = list(dict.fromkeys(row["variant"] for row in evaluations["rows"]))
    every = evaluations.get("default_eigen_every_generations")
    heading = {
        name: (f"{name}, every {every}" if name.startswith("default") and every else name)
        for name in variants
    }
    lines = [
        f"**CMA-ES evaluations to f < {_power(evaluations['target'])}** (same file; d = "
        f"{evaluations['num_dims']:,}, x0 = {evaluations['x0']:g}, σ0 = "
        f"{evaluations['sigma0']:g}, median and range over {evaluations['seeds']} seeds; "
        "– : not reached): the lazy decomposition against one every generation.",
        "",
        "| problem | " + " | ".join(heading[v] for v in variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    by_problem: dict[str, dict[str, dict]] = {}
    for row in evaluations["rows"]:
        by_problem.setdefault(row["problem"], {})[row["variant"]] = row
    for problem, rows in by_problem.items():
        cells = [
            _with_range(rows[v]["median_evaluations"], rows[v]["evaluations_range"])
            if v in rows
            else "–"
            for v in variants
        ]
        lines.append(f"| {problem} | " + " | ".join(cells) + " |")
    return lines


def _throughput_best_of_section(result: dict) -> list[str]:
    """The table of a results file written before steady-state timing (best of n runs)."""
    lines = _table_head(
        f"**Throughput** (`benchmarks/throughput.py`, grid `{result.get('grid')}`): "
        "milliseconds per generation of "
        f"ask → sphere → tell in a jitted `lax.scan`, {result.get('generations')} generations "
        "including `init` and the first evaluation (not steady state), "
        f"best of {result.get('repeats')}; both libraries in the same process. ",
        result,
        [
            "strategy",
            "population",
            "dimensions",
            "esjax ms",
            "evosax ms",
            "evosax / esjax",
            "memory esjax / evosax",
        ],
        text_columns=1,
    )
    notes: list[str] = []
    for row in result["rows"]:
        esjax_ms = (row.get("esjax") or {}).get("ms_per_generation")
        evosax_ms = (row.get("evosax") or {}).get("ms_per_generation")
        speedup = row.get("speedup")
        name = row["strategy"]
        if "note" in row:
            name += f" [{_footnote(notes, row['note'])}]"
        memory = row.get("memory_ratio")
        lines.append(
            f"| {name} | {row['population_size']:,} | {row['num_dims']:,} | "
            f"{_number(esjax_ms)} | {_number(evosax_ms)} | "
            f"{'–' if speedup is None else f'{speedup:.2f}×'} | "
            f"{'–' if memory is None else f'{memory:.2f}'} |"
        )
    if notes:
        lines += ["", *(f"[{i}] {note}" for i, note in enumerate(notes, 1))]
    return lines


def train_section(result: dict) -> list[str]:
    lines = _table_head(
        f"**Training to {100 * result['target_accuracy']:.0f}% test accuracy** "
        f"(`benchmarks/train.py`): {result['task']}, MLP with {result['num_params']:,} "
        f"parameters, minibatches of {result['batch_size']:,}, evaluated every "
        f"{result['eval_every']} steps; wall-clock excludes compilation and evaluation, a "
        "backprop step counts as 3 forward passes. ",
        result,
        [
            "method",
            "library",
            "steps to target",
            "seconds to target",
            "forward passes to target",
            "ms / step",
            "steps run",
            "best test accuracy",
        ],
        text_columns=2,
    )
    for row in result["rows"]:
        lines.append(
            f"| {row['label']} | {row['library']} | {_number(row['steps_to_target'])} | "
            f"{_number(row['seconds_to_target'])} | "
            f"{_number(row['forward_passes_to_target'])} | {_number(row['ms_per_step'])} | "
            f"{row['steps']:,} | {100 * row['best_test_accuracy']:.1f}% |"
        )
    comparison = result.get("comparison", {})
    if comparison:
        lines.append("")
        lines.append(
            "evosax / esjax OpenAI-ES: "
            + ", ".join(
                f"{name.removeprefix('evosax_over_esjax_').replace('_', ' ')} {value:.2f}×"
                for name, value in comparison.items()
            )
            + " (above 1: esjax faster)."
        )
    reference = result.get("evosax_reference_h100")
    if reference:
        lines.append(
            f"For scale, evosax's own H100 reference: Open_ES {reference['Open_ES_seconds_to_95']}"
            f" s to 95%, Adam {reference['adam_seconds_to_95']} s."
        )
    return lines


def convnet_section(result: dict) -> list[str]:
    lines = _table_head(
        f"**ConvNet population forward** (`benchmarks/convnet.py`): {result['model']} "
        f"({result['num_params']:,} parameters), images per second for "
        f"population {result['population_size']} × {result['batch_size']:,} synthetic 28×28 "
        f"images, best of {result['repeats']}. ",
        result,
        ["method", "dtype", "population chunk", "population", "images / s", "temporaries (GB)"],
        text_columns=2,
    )
    for row in result["rows"]:
        chunk = "all" if row["population_chunk"] is None else row["population_chunk"]
        temp = row.get("temp_bytes")
        rate = _number(row["images_per_second"]) if row["status"] == "ok" else row["status"]
        method = "naive `vmap(apply)`" if row["method"] == "naive" else "`population_apply`"
        lines.append(
            f"| {method} | {row['dtype']} | {chunk} | {row['population_size']} | {rate} | "
            f"{'–' if temp is None else f'{temp / 1e9:.2f}'} |"
        )
    ratio = result.get("summary", {}).get("esjax_over_naive_images_per_second")
    if ratio:
        lines += ["", f"Best `population_apply` / best naive images per second: {ratio:.1f}×."]
    return lines


def distributed_section(result: dict) -> list[str]:
    columns = [k for k in result["rows"][0] if k == "unsharded" or k.startswith("devices_")]
    lines = _table_head(
        f"**Sharded runs** (`benchmarks/distributed.py`), {result.get('unit')}. "
        + (f"{result['note']}. " if result.get("note") else ""),
        result,
        ["strategy", "problem", "population", "dimensions", *map(_devices_heading, columns)],
        text_columns=2,
    )
    for row in result["rows"]:
        lines.append(
            f"| {row['strategy']} | {row['problem']} | {row['population_size']:,} | "
            f"{row['num_dims']:,} | " + " | ".join(_number(row.get(c), 1) for c in columns) + " |"
        )
    return lines


def prng_section(result: dict) -> list[str]:
    lines = _table_head(
        "**Random numbers** (`benchmarks/prng.py`): millions of numbers per second for one "
        "population-sized draw, written to memory or summed in the same program (as a strategy "
        "consumes it), and the ratio to `jax.random` with its default Threefry key. ",
        result,
        ["generator", "rows × dim", "written (M/s)", "× default", "fused (M/s)", "× default"],
        text_columns=2,
    )
    for row in result["rows"]:
        lines.append(
            f"| `{row['generator']}` | {row['rows']:,} × {row['dim']:,} | "
            f"{_number(row['materialised_million_per_second'], 0)} | "
            f"{row['materialised_vs_default']:.2f} | "
            f"{_number(row['fused_million_per_second'], 0)} | {row['fused_vs_default']:.2f} |"
        )
    lines += [
        "",
        "`random_bits` and `standard_normal` put a block's two words in two different columns, so "
        "a kernel that consumes them fused evaluates the cipher once per word, twice per block; "
        "`random_pairs` hands both words to the same element, which is why PSO draws through it.",
    ]
    return lines


def _devices_heading(column: str) -> str:
    if column == "unsharded":
        return column
    count = int(column.removeprefix("devices_"))
    return f"{count} device{'s' if count > 1 else ''}"


SECTIONS = {
    "throughput": throughput_section,
    "train": train_section,
    "convnet": convnet_section,
    "distributed": distributed_section,
    "prng": prng_section,
}


def performance_markdown(results: Path = RESULTS) -> str:
    """The whole section as one Markdown string."""
    lines = [
        "## Performance",
        "",
        "Measured by the scripts in `benchmarks/` (JSON in `benchmarks/results/`); regenerate "
        "this section with `python benchmarks/performance_md.py`.",
    ]
    for benchmark, results_of_kind in latest_results(results).items():
        for result in results_of_kind:
            lines += ["", *SECTIONS[benchmark](result)]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS), help="folder of result JSON files")
    args = parser.parse_args(argv)
    text = performance_markdown(Path(args.results))
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
