"""Your own code from a config: ``"module:attribute"`` names a Python callable.

A config can name its own objective (``problem: {function: "my_module:my_fitness", ...}``) and
its own strategy factory (``strategy: {name: "my_module:mu_lambda_es", ...}``, a strategy
written as the README's "Writing your own strategy" shows). The module is searched in the
config file's folder first, then the working directory, then installed packages.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path


def is_reference(name: object) -> bool:
    """Whether ``name`` is a ``"module:attribute"`` reference rather than a registered name."""
    return isinstance(name, str) and ":" in name


@contextmanager
def _search_path(folders: Sequence[Path]):
    added = [str(Path(folder).resolve()) for folder in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


def resolve_callable(reference: str, where: str, config_dir: str | Path | None = None) -> Callable:
    """The callable ``"package.module:attribute"`` names (ValueError naming ``where`` if not).

    Args:
      reference: ``"module:attribute"`` (the attribute may be dotted: ``"module:Class.method"``).
      where: the config key path, for error messages (e.g. ``"problem.function"``).
      config_dir: the config file's folder, searched before the working directory.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{where} must look like 'module:attribute', got {reference!r}")
    folders = [Path(config_dir)] if config_dir is not None else []
    with _search_path([*folders, Path.cwd()]):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            searched = ", ".join(str(f) for f in [*folders, Path.cwd()])
            raise ValueError(
                f"{where}: cannot import module {module_name!r} ({error}); searched {searched} "
                "and the installed packages"
            ) from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{where}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{where}: {reference!r} is not callable")
    return target


__all__ = ["is_reference", "resolve_callable"]
