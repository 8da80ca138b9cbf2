"""Checkpoints of strategy states: msgpack (flax.serialization), written atomically, verified.

``save(path, state, metadata)`` writes any strategy state (or another ``flax.struct`` state, such
as a gradient trainer's :class:`esjax.baselines.GradientState`); ``load(path, like=state)``
restores it into the structure of ``like`` (a freshly ``init``-ed state of the same strategy, or
``jax.eval_shape`` of one), leaf for leaf and bit for bit. No pickle is involved: the arrays go
through ``flax.serialization.msgpack_serialize``, so a checkpoint does not depend on Python class
layouts or on the JAX version that wrote it.

File layout (all integers big-endian)::

    b"ESJAXCKP"                 8 bytes, identifies the format
    format version              uint32
    header length H             uint64
    payload length P            uint64
    sha256(header + payload)    32 bytes
    header                      H bytes, UTF-8 JSON: esjax version, state class, strategy,
                                num_dims, generation, leaf shapes/dtypes, user metadata
    payload                     P bytes, msgpack of the state dict

A truncated file (a crash mid-copy, a full disk) fails the length check, a corrupted one the
checksum, each with a message naming the file. Writes go to a temporary file in the same folder
that is fsynced and then renamed over ``path`` (``os.replace`` is atomic), so ``path`` always
holds either the old or the new checkpoint, never half of one. Before that rename the previous
checkpoint is kept as ``previous_path(path)`` (``checkpoint.msgpack`` →
``checkpoint.previous.msgpack``), a fallback should the latest one be damaged later.

Typed PRNG keys (``jax.random.key``) are stored as their raw key data plus the name of their
implementation and re-wrapped on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from esjax.base import StrategyState

MAGIC = b"ESJAXCKP"
FORMAT_VERSION = 1
_FRAME = struct.Struct(">8sIQQ32s")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the state it is loaded into (strategy, dimension, ...)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that is truncated, corrupted or not an esjax checkpoint at all."""


def previous_path(path: str | Path) -> Path:
    """Where :func:`save` keeps the checkpoint that ``path`` held before the latest save."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _esjax_version() -> str:
    from esjax import __version__

    return __version__


def _state_class(state: Any) -> str:
    cls = type(state)
    return f"{cls.__module__}.{cls.__qualname__}"


def _strategy_name(strategy: Any) -> str | None:
    if strategy is None or isinstance(strategy, str):
        return strategy
    return strategy.name


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _flat_state_dict(state: Any) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(serialization.to_state_dict(state), keep_empty_nodes=True)


def _is_leaf(value: Any) -> bool:
    # flatten_dict(keep_empty_nodes=True) marks empty sub-states (optax's EmptyState) this way.
    return value is not traverse_util.empty_node


def _leaf_name(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _generation(state: Any) -> int | list | None:
    # Batched states (vmapped over seeds or hyperparameters) carry one generation per member;
    # a gradient trainer's state counts steps.
    count = getattr(state, "generation", getattr(state, "step", None))
    return None if count is None else np.asarray(count).tolist()


def _check_state(state: Any, name: str) -> None:
    # Strategy states, and other flax.struct states such as esjax.baselines.GradientState (a
    # plain dataclass is not registered with flax.serialization: to_state_dict returns it as is).
    if not isinstance(state, StrategyState) and not (
        dataclasses.is_dataclass(state)
        and not isinstance(state, type)
        and isinstance(serialization.to_state_dict(state), dict)
    ):
        raise TypeError(
            f"{name} must be a strategy state (a StrategyState) or another flax.struct dataclass "
            f"state such as esjax.baselines.GradientState, got {type(state).__name__}"
        )


def _problem_header(state: Any) -> dict:
    if not isinstance(state, StrategyState):
        return {"num_dims": None, "x0_shapes": None, "dtype": None}
    return {
        "num_dims": state.num_dims,
        "x0_shapes": [list(shape) for shape in state.spec.shapes],
        "dtype": str(state.spec.dtype),
    }


def save(
    path: str | Path,
    state: Any,
    metadata: dict | None = None,
    *,
    strategy: Any = None,
    keep_previous: bool = True,
) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces.

    Args:
      path: file to write (its folder is created); e.g. ``run_dir / "checkpoint.msgpack"``.
      state: any strategy state (a ``flax.struct`` dataclass deriving from ``StrategyState``),
        possibly batched by ``vmap``, or another ``flax.struct`` state such as a gradient
        trainer's :class:`esjax.baselines.GradientState`.
      metadata: JSON-serialisable dict stored in the header (a config, elapsed seconds, ...);
        read it back with :func:`read_header`.
      strategy: the :class:`~esjax.base.Strategy` (or its name), recorded so that ``load`` can
        refuse a checkpoint of another strategy.
      keep_previous: move the checkpoint ``path`` held to :func:`previous_path` first.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    _check_state(state, "state")
    path = Path(path)
    flat = _flat_state_dict(jax.device_get(state))
    leaves, key_impls = {}, {}
    for name, leaf in flat.items():
        if _is_leaf(leaf) and _is_key(leaf):
            key_impls[_leaf_name(name)] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        leaves[name] = np.asarray(leaf) if _is_leaf(leaf) else leaf
    header = {
        "format": "esjax-checkpoint",
        "format_version": FORMAT_VERSION,
        "esjax_version": _esjax_version(),
        "jax_version": jax.__version__,
        "state_class": _state_class(state),
        "strategy": _strategy_name(strategy),
        **_problem_header(state),
        "generation": _generation(state),
        "leaves": {
            _leaf_name(name): {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
            for name, leaf in leaves.items()
            if _is_leaf(leaf)
        },
        "key_impls": key_impls,
        "metadata": metadata,
    }
    payload = serialization.msgpack_serialize(traverse_util.unflatten_dict(leaves))
    return _write_framed(path, header, payload, keep_previous=keep_previous)


def _write_framed(path: Path, header: dict, payload: bytes, *, keep_previous: bool) -> Path:
    """Frame, checksum and write ``header`` + ``payload`` atomically (see the module docstring)."""
    try:
        header_bytes = json.dumps(header, sort_keys=True).encode()
    except TypeError as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from error
    digest = hashlib.sha256(header_bytes + payload).digest()
    frame = _FRAME.pack(MAGIC, FORMAT_VERSION, len(header_bytes), len(payload), digest)

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); a checkpoint is as readable as other outputs.
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as file:
            file.write(frame)
            file.write(header_bytes)
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous and path.exists():
            _keep_copy(path, previous_path(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def save_solution(path: str | Path, solution: Any, metadata: dict | None = None) -> Path:
    """Write a solution (a flat vector or any pytree of arrays: Flax params, ...) atomically.

    The file has a checkpoint's frame and checksum; :func:`load_solution` reads it back without
    a template. ``metadata`` (JSON) goes into the header (e.g. the strategy and its fitness).
    """
    from flax import nnx

    path = Path(path)
    tree = jax.device_get(solution)
    if isinstance(tree, nnx.State):  # nnx parameters: stored as their pure nested dict
        tree = nnx.to_pure_dict(tree)
    header = {
        "format": "esjax-solution",
        "format_version": FORMAT_VERSION,
        "esjax_version": _esjax_version(),
        "metadata": metadata,
    }
    payload = serialization.msgpack_serialize(serialization.to_state_dict(tree))
    return _write_framed(path, header, payload, keep_previous=False)


def load_solution(path: str | Path) -> Any:
    """The solution :func:`save_solution` wrote: a NumPy array for a flat vector, nested dicts of
    arrays for a pytree. Flax linen params come back as the params dict; nnx params as their
    pure dict: ``graphdef, params = nnx.split(model, nnx.Param, ...)[:2]``, then
    ``nnx.replace_by_pure_dict(params, loaded)`` and ``nnx.update(model, params)``."""
    path = Path(path)
    header, payload = _read_verified(path)
    if header.get("format") != "esjax-solution":
        raise CheckpointError(f"{path} is a state checkpoint, not a solution: use load(path, like)")
    return serialization.msgpack_restore(payload)


def _keep_copy(source: Path, destination: Path) -> None:
    # Link (or copy) under a temporary name, then rename: ``destination`` is never half-written
    # and ``source`` stays in place until the new checkpoint replaces it.
    staging = destination.with_name(f".{destination.name}.staging")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:
        shutil.copyfile(source, staging)
    os.replace(staging, destination)


def _fsync_folder(folder: Path) -> None:
    # Makes the renames durable on POSIX; folders cannot be opened this way on Windows.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _read_verified(path: Path) -> tuple[dict, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    data = path.read_bytes()
    if len(data) < _FRAME.size:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or not an esjax checkpoint: {len(data)} bytes, "
            f"shorter than the {_FRAME.size}-byte frame"
        )
    magic, version, header_size, payload_size, digest = _FRAME.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpointError(f"{path} is not an esjax checkpoint (bad magic bytes)")
    if version > FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"checkpoint {path} has format version {version}; this esjax reads up to "
            f"{FORMAT_VERSION} (upgrade esjax)"
        )
    expected = _FRAME.size + header_size + payload_size
    if len(data) != expected:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupted: expected {expected} bytes, "
            f"found {len(data)}"
        )
    body = data[_FRAME.size :]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptCheckpointError(
            f"checkpoint {path} is corrupted: its sha256 checksum does not match its contents"
        )
    header = json.loads(body[:header_size].decode())
    return header, body[header_size:]


def read_header(path: str | Path) -> dict:
    """The verified header of a checkpoint: versions, state class, num_dims, generation, metadata.

    Raises:
      FileNotFoundError: no file at ``path``.
      CorruptCheckpointError: the file is truncated, corrupted or not a checkpoint.
    """
    header, _ = _read_verified(Path(path))
    return header


def intact_header(path: str | Path) -> tuple[Path, dict]:
    """The newest intact checkpoint for ``path`` and its verified header, for resuming.

    That is ``path`` itself, or, if it is missing, truncated or corrupted while
    :func:`previous_path` holds the checkpoint it replaced, that one (a warning on stderr says
    so). Load the state from the returned path.

    Raises:
      FileNotFoundError, CorruptCheckpointError: neither file is usable.
    """
    path = Path(path)
    try:
        return path, read_header(path)
    except (CorruptCheckpointError, FileNotFoundError) as error:
        previous = previous_path(path)
        if not previous.exists():
            raise
        print(f"esjax: warning: {error}; resuming from {previous}", file=sys.stderr)
        return previous, read_header(previous)


def load(path: str | Path, like: Any, *, strategy: Any = None) -> Any:
    """Restore the state saved at ``path`` into the structure of ``like``.

    Args:
      path: a file written by :func:`save`.
      like: a state of the same strategy and problem (e.g. ``es.init(key, x0)``, or
        ``jax.eval_shape`` of it), or of the same other ``flax.struct`` type (a
        ``GradientState``, checked leaf by leaf); it supplies the pytree structure, the static
        ``spec`` and, for arrays, the sharding the restored leaves are placed with. Its values
        are not used.
      strategy: if given (a Strategy or its name), the checkpoint must have been saved with the
        same strategy name.

    Returns:
      The saved state, exactly (bit for bit).

    Raises:
      FileNotFoundError: no file at ``path``.
      CorruptCheckpointError: the file is truncated, corrupted or not a checkpoint.
      CheckpointError: the checkpoint belongs to another strategy, dimension, dtype or structure.
    """
    path = Path(path)
    header, payload = _read_verified(path)
    _check_compatible(path, header, like, _strategy_name(strategy))
    try:
        restored = serialization.msgpack_restore(payload)
    except Exception as error:  # a valid checksum over an unreadable payload: a foreign writer
        raise CorruptCheckpointError(
            f"checkpoint {path} has an unreadable payload: {error}"
        ) from error
    saved = traverse_util.flatten_dict(restored, keep_empty_nodes=True)
    expected = _flat_state_dict(like)
    missing = sorted(_leaf_name(n) for n in set(expected) - set(saved))
    extra = sorted(_leaf_name(n) for n in set(saved) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {path} does not match the structure of like "
            f"({_state_class(like)}): missing {missing}, unexpected {extra}"
        )
    leaves = {}
    for name, template in expected.items():
        value = saved[name]
        if not _is_leaf(template):
            leaves[name] = template
            continue
        leaves[name] = _restore_leaf(path, name, template, value, header["key_impls"])
    return serialization.from_state_dict(like, traverse_util.unflatten_dict(leaves))


def _check_compatible(path: Path, header: dict, like: Any, strategy: str | None) -> None:
    if header.get("format") != "esjax-checkpoint":
        raise CorruptCheckpointError(f"{path} is not an esjax checkpoint (bad header)")
    _check_state(like, "like")
    if strategy is not None and header["strategy"] not in (None, strategy):
        raise CheckpointError(
            f"checkpoint {path} was saved by strategy {header['strategy']!r}, not {strategy!r}"
        )
    if header["state_class"] != _state_class(like):
        raise CheckpointError(
            f"checkpoint {path} holds a {header['state_class']} "
            f"(strategy {header['strategy']!r}), but like is a {_state_class(like)}: "
            "it was saved by another strategy"
        )
    if not isinstance(like, StrategyState):
        return  # no problem metadata; leaf shapes and dtypes are checked on restore
    if header["num_dims"] != like.num_dims:
        raise CheckpointError(
            f"checkpoint {path} has num_dims={header['num_dims']}, but like has "
            f"num_dims={like.num_dims}: it was saved for another problem dimension"
        )
    shapes = [list(shape) for shape in like.spec.shapes]
    if header["x0_shapes"] != shapes:
        raise CheckpointError(
            f"checkpoint {path} was saved for x0 leaves of shapes {header['x0_shapes']}, "
            f"but like has {shapes}"
        )


def _restore_leaf(path: Path, name: tuple, template: Any, value: Any, key_impls: dict) -> Any:
    label = _leaf_name(name)
    if not hasattr(template, "shape"):
        template = np.asarray(template)
    if _is_key(template):
        if label not in key_impls:
            raise CheckpointError(f"checkpoint {path}: leaf {label!r} was not saved as a PRNG key")
        value = jax.random.wrap_key_data(jnp.asarray(value), impl=key_impls[label])
    else:
        value = np.asarray(value)
    if value.shape != template.shape or value.dtype != template.dtype:
        raise CheckpointError(
            f"checkpoint {path}: leaf {label!r} is {value.dtype}{list(value.shape)}, but like "
            f"expects {template.dtype}{list(template.shape)} (another population size, dtype "
            "or configuration?)"
        )
    sharding = getattr(template, "sharding", None)
    if isinstance(template, jax.Array) or sharding is not None:
        return jax.device_put(value, sharding)
    return jnp.asarray(value)


__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "FORMAT_VERSION",
    "MAGIC",
    "intact_header",
    "load",
    "load_solution",
    "previous_path",
    "read_header",
    "save",
    "save_solution",
]
