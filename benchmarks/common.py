"""What every benchmark script records alongside its numbers, and where it writes them."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
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
    }


def best_seconds(calls: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` wall-clock timings of each call, ``name -> seconds``.

    Each call gets the repeat's index and its result is waited for. The calls take turns within
    a repeat, so a slow spell of a shared host falls on all of them alike instead of on whichever
    ran during it.
    """
    best = dict.fromkeys(calls, float("inf"))
    for repeat in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(repeat))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


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
