"""What every benchmark script records alongside its numbers, and where it writes them."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Hashable
from importlib.metadata import version
from pathlib import Path

import jax

import esjax

RESULTS = Path(__file__).resolve().parent / "results"


def versions() -> dict[str, str]:
    """jax, esjax and Python versions, plus evosax's when it is installed."""
    found = {"jax": jax.__version__, "esjax": esjax.__version__}
    found["python"] = platform.python_version()
    if importlib.util.find_spec("evosax") is not None:
        found["evosax"] = version("evosax")
    return found


def source_state() -> dict:
    """The checkout measured: its commit and the files under ``esjax/`` changed since (others
    may be editing the library while a benchmark runs)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "esjax")
    return {
        "commit": None if commit is None else commit.strip(),
        "esjax_changed_since_commit": None
        if changed is None
        else sorted(line[3:] for line in changed.splitlines() if line.strip()),
    }


def environment(benchmark: str) -> dict:
    """The fields every results file starts with: which benchmark, on what, when, with what."""
    device = jax.devices()[0]
    return {
        "benchmark": benchmark,
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "host_cpu_cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "versions": versions(),
        # 1-, 5- and 15-minute load averages when the script started (see host_load).
        "host_load_at_start": host_load(),
        "source": source_state(),
    }


def host_load() -> list[float]:
    """``os.getloadavg()``: the host's 1-, 5- and 15-minute load averages (processes wanting a
    CPU). Above ``os.cpu_count()``, other work competed for the cores during the measurement."""
    return [round(value, 2) for value in os.getloadavg()]


# The clocks a timing reads: wall-clock (what a user waits for) and the process's CPU time (all
# its threads: the work done, which other processes on a loaded host disturb less).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_seconds(
    calls: dict[Hashable, Callable[[int], object]],
    repeats: int,
    *,
    clocks: dict[str, Callable[[], float]] | None = None,
    wait: Callable[[object], object] = jax.block_until_ready,
) -> dict[Hashable, dict[str, list[float]]]:
    """Every timing of each call on every clock, ``name -> clock -> [seconds per repeat]``.

    Each call gets the repeat's index and its result is waited for. The calls take turns within
    a repeat, and the order rotates by one each repeat, so a slow spell of a shared host falls on
    all of them alike instead of on whichever ran during it (or always ran first). ``clocks``
    (default: wall-clock only) and ``wait`` are swappable for a test's fake clock.
    """
    clocks = clocks or {"wall": time.perf_counter}
    names = list(calls)
    times = {name: {clock: [] for clock in clocks} for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = {clock: read() for clock, read in clocks.items()}
            wait(calls[name](repeat))
            for clock, read in clocks.items():
                times[name][clock].append(read() - start[clock])
    return times


def best_seconds(calls: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` interleaved wall-clock timings of each call
    (:func:`interleaved_seconds`), ``name -> seconds``."""
    timed = interleaved_seconds(calls, repeats)
    return {name: min(times["wall"]) for name, times in timed.items()}


def steady_state(
    loops: dict[str, Callable[[int, int], object]],
    lengths: tuple[int, int] | dict[str, tuple[int, int]],
    repeats: int,
    *,
    clocks: dict[str, Callable[[], float]] | None = None,
    wait: Callable[[object], object] = jax.block_until_ready,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Seconds per iteration of each loop in its steady state, from two loop lengths.

    ``loops[name](length, repeat)`` runs ``length`` iterations after whatever the loop does once
    (its setup: e.g. a strategy's ``init`` and the first evaluation of a swarm). Its time is
    ``T(n) = setup + n · per_iteration``, so ``(T(long) - T(short)) / (long - short)`` is the
    per-iteration time with the setup cancelled, and ``T(short) - short · per_iteration`` the
    setup. ``lengths`` is ``(short, long)``, or one such pair per loop. Every loop runs at both
    of its lengths in each of ``repeats`` interleaved rounds (:func:`interleaved_seconds`); each
    round gives one estimate, so the spread over rounds is the measurement's.

    Returns:
      ``name -> clock -> {"per_iteration", "setup", "short", "long"}``, lists of seconds with one
      entry per repeat.
    """
    if not isinstance(lengths, dict):
        lengths = dict.fromkeys(loops, lengths)
    for name, (short, long) in lengths.items():
        if not 0 <= short < long:
            raise ValueError(f"{name}: need 0 <= short < long, got short={short}, long={long}")
    calls = {
        (name, which): (lambda repeat, loop=loop, n=lengths[name][which]: loop(n, repeat))
        for which in (0, 1)
        for name, loop in loops.items()
    }
    times = interleaved_seconds(calls, repeats, clocks=clocks, wait=wait)
    results = {}
    for name in loops:
        short, long = lengths[name]
        results[name] = {}
        for clock in times[(name, 0)]:
            t_short, t_long = times[(name, 0)][clock], times[(name, 1)][clock]
            per_iteration = [(b - a) / (long - short) for a, b in zip(t_short, t_long, strict=True)]
            results[name][clock] = {
                "per_iteration": per_iteration,
                "setup": [a - short * p for a, p in zip(t_short, per_iteration, strict=True)],
                "short": t_short,
                "long": t_long,
            }
    return results


def spread(values: list[float | None]) -> dict[str, float | None]:
    """``{"median", "min", "max"}`` of the values that are not None (all None if none are)."""
    kept = sorted(v for v in values if v is not None and math.isfinite(v))
    if not kept:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(kept), "min": kept[0], "max": kept[-1]}


def write_result(result: dict, benchmark: str, output: str | None = None) -> Path:
    """Write ``result`` as JSON to ``output``, or to
    ``results/<benchmark>-<platform>-<device kind>-<date>.json``; print and return the path."""
    device = jax.devices()[0]
    slug = "".join(c if c.isalnum() else "_" for c in device.device_kind).strip("_").lower()
    path = (
        Path(output)
        if output
        else RESULTS / f"{benchmark}-{device.platform}-{slug}-{result['date']}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
