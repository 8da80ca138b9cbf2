"""What ``esjax run`` and ``esjax compare`` share about their outputs: run folders that never
destroy a finished run, strict JSON written atomically, appends that never leave half a row, the
one metrics-CSV writer both commands use, and the YAML reader both config loaders use.

Nothing here deletes a file the user wrote: a run folder is claimed only when it holds no
earlier esjax output, or when the user asked to ``resume`` or to ``overwrite`` (and then only
esjax's own output files are removed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from esjax import checkpoint


class OutputExistsError(FileExistsError):
    """A run folder already holds the outputs of an earlier run."""


def check_run_name(name: Any, key: str = "name") -> str:
    """A run name is one folder name: no path separators, not ``.``/``..``, not empty."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"config key {key!r} must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("~"):
        raise ValueError(
            f"config key {key!r} must be a plain folder name (no '/', '\\\\', '..' or '~'): "
            f"outputs go to <output_dir>/<{key}>/; got {name!r}"
        )
    return name


def claim_run_dir(
    run_dir: Path, outputs: tuple[str, ...], *, resume: bool = False, overwrite: bool = False
) -> Path:
    """Create ``run_dir`` for a run whose outputs are the file or folder names ``outputs``.

    An existing folder that holds any of them is refused unless ``resume`` (the caller continues
    that run) or ``overwrite`` (they, and the previous checkpoint, are removed; nothing else).

    Raises:
      OutputExistsError: earlier outputs found, naming ``--resume`` and ``--overwrite``.
      NotADirectoryError / PermissionError: ``run_dir`` or a parent is a file, or read-only.
    """
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"output path {parent} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise PermissionError(f"cannot create the output folder {run_dir}: {error}") from None
    if not os.access(run_dir, os.W_OK):
        raise PermissionError(f"the output folder {run_dir} is not writable")
    found = sorted(name for name in outputs if (run_dir / name).exists())
    if found and not resume and not overwrite:
        raise OutputExistsError(
            f"{run_dir} already holds an earlier run's {', '.join(found)}; pass --resume to "
            "continue it, --overwrite to replace it, or choose another --output-dir/--name"
        )
    if overwrite and not resume:
        for name in found:
            remove_output(run_dir / name)
    return run_dir


def remove_output(path: Path) -> None:
    """Remove one esjax output (a file, a checkpoint with its previous copy, or a folder of
    outputs: only the files esjax writes are removed, and the folder only when it is empty)."""
    if path.is_dir():
        for name in ("metrics.csv", "summary.json", "solution.msgpack", checkpoint_file()):
            remove_output(path / name)
        try:
            path.rmdir()
        except OSError:
            pass  # it holds something esjax did not write: leave it
        return
    path.unlink(missing_ok=True)
    if path.name == checkpoint_file():
        checkpoint.previous_path(path).unlink(missing_ok=True)


def checkpoint_file() -> str:
    return "checkpoint.msgpack"


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, fsync, then rename it over ``path``: a reader (or a run
    resumed after a crash) sees the old file or the new one, never half of one. A failed write
    (a full disk) leaves ``path`` as it was and no temporary file behind."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def append_text(path: Path, text: str, sync: bool = False) -> None:
    """Append ``text`` to ``path``; if the write fails (a full disk), the file is cut back to
    its previous length, so no half-written row is left."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with path.open("a", newline="") as handle:
            handle.write(text)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
    except BaseException:
        with path.open("r+") as handle:
            handle.truncate(size)
        raise


# The columns a metrics file starts with, where present: a run's rows are generations, a
# comparison's are evaluations (step, wall-clock and forward passes first). The other metrics
# follow in the order they first appear.
METRICS_FIRST = ("generation", "step", "wall_clock_s", "forward_passes")


def _metric_rows(metrics: Mapping | list[dict]) -> tuple[list[dict], list[str]]:
    # The rows and the file's columns (a mapping names its columns even when it has no rows).
    if not isinstance(metrics, Mapping):
        rows = [dict(row) for row in metrics]
        return rows, metrics_columns(rows)
    names = list(metrics)
    columns = [np.asarray(metrics[name]).tolist() for name in names]
    rows = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    return rows, metrics_columns([dict.fromkeys(names)])


def metrics_columns(rows: list[dict]) -> list[str]:
    """The column order of a metrics file: :data:`METRICS_FIRST`, then first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return [n for n in METRICS_FIRST if n in seen] + [n for n in seen if n not in METRICS_FIRST]


def _csv_text(rows: list[dict], names: list[str], header: bool) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, restval="", lineterminator="\r\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_metrics_csv(path: Path, metrics: Mapping | list[dict]) -> None:
    """Write a metrics file atomically: one row per generation (``esjax run``: ``metrics`` maps
    names to per-generation arrays) or per evaluation (``esjax compare``: a list of row dicts).

    Columns: :func:`metrics_columns`; a row without a column leaves its cell empty."""
    rows, names = _metric_rows(metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, _csv_text(rows, names, header=True))


def _header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="") as handle:
        return next(csv.reader(handle), None)


def append_metrics_csv(path: Path, metrics: Mapping | list[dict], sync: bool = False) -> None:
    """Append one chunk's rows to ``path`` (header first if the file is new); ``sync``: fsync.

    The rows go in one write that is undone if it fails (a full disk), so the file never ends
    in half a row. Rows whose columns differ from the file's header are refused (they would be
    misread), naming both."""
    rows, names = _metric_rows(metrics)
    header = _header(path)
    if header is not None and rows and header != names:
        raise ValueError(
            f"{path} has columns {header}, the new rows {names}: they come from another run; "
            "start over in a new folder (or with --overwrite)"
        )
    append_text(path, _csv_text(rows, header or names, header=header is None), sync=sync)


def metrics_rows(path: Path) -> int:
    """How many data rows ``path`` holds (0 if it does not exist)."""
    if not path.exists():
        return 0
    with path.open(newline="") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def trim_metrics_csv(path: Path, last: int, column: str = "generation") -> None:
    """Keep the header and the complete rows whose ``column`` is at most ``last`` (those a
    checkpoint covers), atomically.

    Rows written after the checkpoint, and a last row cut short by a crash, are dropped: the
    resumed run writes them again, identically.
    """
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, kept = rows[0], [rows[0]]
    index = header.index(column)
    for row in rows[1:]:
        if len(row) == len(header) and int(float(row[index])) <= last:
            kept.append(row)
    text = io.StringIO()
    csv.writer(text).writerows(kept)
    replace_text(path, text.getvalue())


def strict_json(value: Any) -> tuple[Any, list[str]]:
    """``value`` with every NaN/±inf float replaced by ``None``, and the key paths replaced.

    ``json.dumps`` writes ``Infinity`` and ``NaN`` by default, which strict parsers reject.
    """
    replaced: list[str] = []

    def clean(item, path):
        if isinstance(item, float) and not math.isfinite(item):
            replaced.append(path)
            return None
        if isinstance(item, dict):
            return {
                key: clean(child, f"{path}.{key}" if path else str(key))
                for key, child in item.items()
            }
        if isinstance(item, list | tuple):
            return [clean(child, f"{path}[{i}]") for i, child in enumerate(item)]
        return item

    return clean(value, ""), replaced


def write_json(path: Path, value: dict) -> dict:
    """Write ``value`` as strict JSON, atomically. Non-finite numbers become ``null`` and their
    key paths are listed under ``"non_finite"`` (so a diverged run cannot pass for a number).
    Returns what was written."""
    cleaned, replaced = strict_json(value)
    if replaced:
        cleaned["non_finite"] = replaced
    replace_text(path, json.dumps(cleaned, indent=2, allow_nan=False) + "\n")
    return cleaned


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: ``1e-2`` is a number, not a string."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML config: ``FileNotFoundError`` if missing, a one-line ``ValueError`` naming the
    file, line and column if it is not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open() as handle:
            return yaml.load(handle, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"config file {path} is not valid YAML{where}: {problem}") from None


__all__ = [
    "METRICS_FIRST",
    "OutputExistsError",
    "append_metrics_csv",
    "append_text",
    "check_run_name",
    "checkpoint_file",
    "claim_run_dir",
    "metrics_columns",
    "metrics_rows",
    "read_yaml",
    "remove_output",
    "replace_text",
    "strict_json",
    "trim_metrics_csv",
    "write_json",
    "write_metrics_csv",
]
