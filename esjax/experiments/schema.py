"""One validator and one resume fingerprint for every config the CLI reads.

``esjax run``, ``esjax compare`` and ``esjax sweep`` check their sections with the same three
functions, so an unknown key, a missing key or a value of the wrong type reads the same whatever
the command, names the key path (``methods[2].strategy``) and lists what is allowed:

- :func:`check_keys`: no key outside the section's valid keys (with a close match suggested);
- :func:`check_types`: each value one of the key's allowed types, a bool never passing for a
  number (YAML's ``yes`` is not ``1``);
- :func:`check_section`: a mapping, then both of the above and the required keys.

A checkpoint or a finished summary records its run's :func:`fingerprint`: everything that
changes the run's trajectory or where it ends. :func:`check_fingerprint` refuses to resume from
one whose fingerprint differs, naming the differing keys.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from esjax import checkpoint


def key_path(where: str, key: Any) -> str:
    """``where.key`` (``key`` alone at the top level, where ``where`` is ``""``)."""
    return f"{where}.{key}" if where else str(key)


def check_keys(where: str, given: Mapping, valid: Iterable[str]) -> None:
    """Refuse keys of ``given`` outside ``valid``, naming them, the section and the valid keys.

    Raises:
      ValueError: ``unknown key(s) [...] in <where>; valid keys are [...]``, with a suggestion
        when an unknown key is close to a valid one (a typo).
    """
    valid = sorted(valid)
    unknown = sorted((str(key) for key in given if key not in valid), key=str)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys are {valid}{hint}")


def type_names(types: tuple[type, ...]) -> str:
    """``int or null``: the names a config author knows (YAML's ``null`` for ``None``)."""
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_types(where: str, given: Mapping, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """Each value of ``given`` must be an instance of its key's types in ``types``.

    A bool passes only where ``bool`` itself is allowed (``isinstance(True, int)`` holds in
    Python, but ``stop_at_target: yes`` is not a number of generations).

    Raises:
      TypeError: ``config key '<where.key>' must be <types>, got <type> <value>``.
    """
    for key, value in given.items():
        allowed = types[key] if isinstance(types[key], tuple) else (types[key],)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise TypeError(
                f"config key {key_path(where, key)!r} must be {type_names(allowed)}, got "
                f"{type(value).__name__} {value!r}"
            )


def check_section(
    where: str,
    given: Any,
    types: Mapping[str, type | tuple[type, ...]],
    required: Iterable[str] = (),
    *,
    label: str | None = None,
) -> dict:
    """Validate one section: a mapping, only keys of ``types``, every ``required`` key present,
    every value of its key's types. Returns the section as a dict.

    ``where`` is the key path used in type errors (``""`` for the top level); ``label`` is how
    the section is named in key errors (default ``where``, e.g. ``"the sweep config"``)."""
    label = label or where
    if not isinstance(given, Mapping):
        raise TypeError(f"{label} must be a mapping, got {type(given).__name__}")
    check_keys(label, given, types)
    missing = [key for key in required if key not in given]
    if missing:
        raise ValueError(f"{label} is missing required key(s) {missing}")
    check_types(where, given, types)
    return dict(given)


def fingerprint(parts: Mapping[str, Any]) -> dict:
    """``parts`` as JSON would store them (tuples as lists, other objects as their ``str``), so
    a fingerprint read back from a checkpoint compares equal to a freshly computed one."""
    return json.loads(json.dumps(dict(parts), default=str))


def check_fingerprint(
    path: Path | str, saved: Mapping | None, expected: Mapping, *, remedy: str
) -> None:
    """Refuse to resume from ``path`` unless its ``saved`` fingerprint equals ``expected``.

    Raises:
      esjax.checkpoint.CheckpointError: ``... config differs in [keys]; <remedy>`` (every key
        when nothing was saved).
    """
    expected = fingerprint(expected)
    saved = None if saved is None else fingerprint(saved)
    if saved == expected:
        return
    keys = set(expected) | set(saved or {})
    differing = sorted(key for key in keys if saved is None or saved.get(key) != expected.get(key))
    raise checkpoint.CheckpointError(
        f"{path} was written by a run whose config differs in {differing}; {remedy}"
    )


__all__ = [
    "check_fingerprint",
    "check_keys",
    "check_section",
    "check_types",
    "fingerprint",
    "key_path",
    "type_names",
]
