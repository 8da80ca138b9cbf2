"""Experiment configs: YAML files → validated :class:`ExperimentConfig` dataclasses.

A config names a strategy with its hyperparameters, a problem, a budget and a seed::

    name: sphere_openai_es
    seed: 0
    generations: 1000
    strategy:
      name: openai_es
      population_size: 64
      sigma: 0.1
      optimizer: {name: adam, learning_rate: 0.05}
    problem:
      name: sphere
      num_dims: 100
      x0: 1.0

Unknown keys and wrong types are errors whose message lists the valid choices, raised before
anything is compiled.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optax

from esjax import nn
from esjax.base import Strategy, check_int
from esjax.experiments.outputs import check_run_name, read_yaml
from esjax.experiments.resolve import is_reference, resolve_callable
from esjax.experiments.schema import check_keys, check_section
from esjax.experiments.setup import check_problem_section
from esjax.prng import NoiseTable
from esjax.strategies import get_strategy

# Seeds go to jax.random.key, which takes a 64-bit integer.
SEED_RANGE = (-(2**63), 2**63 - 1)

# Strategies whose ``tell`` takes per-member residual vectors instead of a scalar fitness.
RESIDUAL_STRATEGIES = ("eki",)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment.

    Attributes:
      name: run name; outputs go to ``<output_dir>/<name>/``.
      strategy: ``{"name": ..., **factory kwargs}``.
      problem: ``{"name": ..., **problem kwargs}``.
      generations: number of generations to run (>= 1).
      seed: integer seed for every PRNG key of the run.
      log_every: generations per scanned chunk / metrics flush (default ~20 chunks).
      population_batch_size: evaluate the population in chunks of this many members (the
        key compare configs use; ``batch_size`` is its deprecated name in run configs, where
        it meant members, while in compare configs it means examples per step).
      checkpoint_every: save a checkpoint every this many generations (0: never).
      output_dir: parent folder of the run folder.
      max_nonfinite_generations: stop (non-zero exit) after this many consecutive generations
        in which no member had a finite fitness.
      config_dir: the config file's folder (set by :func:`load_config`, not a config key):
        ``"module:attribute"`` references are imported from there first.
    """

    name: str
    strategy: dict
    problem: dict
    generations: int
    seed: int = 0
    log_every: int | None = None
    population_batch_size: int | None = None
    checkpoint_every: int = 0
    output_dir: str = "results"
    max_nonfinite_generations: int = 20
    config_dir: str | None = dataclasses.field(default=None, compare=False)


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "strategy": (dict,),
    "problem": (dict,),
    "generations": (int,),
    "seed": (int,),
    "log_every": (int, type(None)),
    "population_batch_size": (int, type(None)),
    "checkpoint_every": (int,),
    "output_dir": (str,),
    "max_nonfinite_generations": (int,),
}


# Run-config keys renamed so that one key means one thing in run and compare configs:
# old name -> new name. The old name still works, with a FutureWarning.
RENAMED_KEYS = {"batch_size": "population_batch_size"}


def _renamed_keys(raw: dict) -> dict:
    for old, new in RENAMED_KEYS.items():
        if old not in raw:
            continue
        if new in raw:
            raise ValueError(
                f"config keys {old!r} and {new!r} are the same setting ({old!r} is the old "
                f"name); keep only {new!r}"
            )
        warnings.warn(
            f"config key {old!r} in a run config is deprecated: it is {new!r} (members "
            f"evaluated at a time), as in compare configs, where {old!r} means examples per "
            "step; rename it",
            FutureWarning,
            stacklevel=3,
        )
        raw = {(new if key == old else key): value for key, value in raw.items()}
    return raw


def select_methods(parsed: tuple, wanted: list[str] | None) -> tuple[tuple, list[str]]:
    """``(the methods named in wanted (all for None), every label)`` of a config's parsed
    methods (anything with a ``label``): labels must be unique, ``wanted`` must name only
    labels the config has, and at least one method must remain."""
    labels = [m.label for m in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"method labels must be unique, got {labels}")
    if wanted:
        unknown = sorted(set(wanted) - set(labels))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; the config has {labels}")
        parsed = tuple(m for m in parsed if m.label in wanted)
    if not parsed:
        raise ValueError("methods must list at least one method")
    return parsed, labels


def parse_config(raw: dict, config_dir: str | Path | None = None) -> ExperimentConfig:
    """Validate a config dict (as loaded from YAML) and build an :class:`ExperimentConfig`.

    ``config_dir`` is where ``"module:attribute"`` references are looked for first."""
    if not isinstance(raw, dict):
        raise TypeError(f"a config must be a mapping at the top level, got {type(raw).__name__}")
    if "methods" in raw:
        raise ValueError("this is a comparison config (it has 'methods'): use `esjax compare`")
    raw = _renamed_keys(raw)
    required = [
        f.name for f in dataclasses.fields(ExperimentConfig) if f.default is dataclasses.MISSING
    ]
    check_section("", raw, _TYPES, required, label="the config")
    config = ExperimentConfig(**raw, config_dir=None if config_dir is None else str(config_dir))
    check_run_name(config.name)
    check_int("seed", config.seed, *SEED_RANGE)
    check_int("generations", config.generations, 1)
    check_int("checkpoint_every", config.checkpoint_every, 0)
    check_int("max_nonfinite_generations", config.max_nonfinite_generations, 1)
    for optional in ("log_every", "population_batch_size"):
        if getattr(config, optional) is not None:
            check_int(optional, getattr(config, optional), 1)
    if "name" not in config.strategy:
        raise ValueError("config section 'strategy' needs a 'name'")
    check_problem_section(config.problem)  # name or function, keys: before a run folder is made
    validate_strategy_section(config.strategy, config_dir=config.config_dir)
    if "loss" in config.problem:
        nn.check_loss_kind(
            config.problem["loss"],
            takes_residuals=config.strategy["name"] in RESIDUAL_STRATEGIES,
            where="problem.loss",
        )
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML config file, apply top-level ``overrides``, and validate it."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(raw, config_dir=Path(path).resolve().parent)


def build_optimizer(spec: dict | optax.GradientTransformation) -> optax.GradientTransformation:
    """``{"name": "adam", "learning_rate": 0.01}`` → ``optax.adam(learning_rate=0.01)``."""
    if isinstance(spec, optax.GradientTransformation):
        return spec
    if not isinstance(spec, dict) or "name" not in spec:
        raise TypeError("optimizer must be a mapping with a 'name' (an optax optimizer)")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if isinstance(kwargs.get("learning_rate"), dict):
        kwargs["learning_rate"] = build_schedule(kwargs["learning_rate"])
    factory = getattr(optax, spec["name"], None)
    if not callable(factory):
        raise ValueError(
            f"optimizer name must be an optax optimizer such as 'adam', 'sgd', 'adamw'; "
            f"got {spec['name']!r}"
        )
    check_keys(f"optimizer {spec['name']!r}", kwargs, list(inspect.signature(factory).parameters))
    return factory(**kwargs)


def build_schedule(spec: dict) -> optax.Schedule:
    """``{"schedule": "exponential_decay", "init_value": 0.05, ...}`` → an optax schedule."""
    if "schedule" not in spec:
        raise ValueError("a learning_rate mapping needs a 'schedule' (an optax schedule name)")
    kwargs = {k: v for k, v in spec.items() if k != "schedule"}
    factory = getattr(optax.schedules, spec["schedule"], None)
    if not callable(factory):
        raise ValueError(
            "schedule must be an optax schedule such as 'exponential_decay' or "
            f"'cosine_decay_schedule'; got {spec['schedule']!r}"
        )
    check_keys(
        f"schedule {spec['schedule']!r}", kwargs, list(inspect.signature(factory).parameters)
    )
    return factory(**kwargs)


def _factory_arguments(factory: Callable) -> list[str]:
    return [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


_SCALARS = {"bool", "int", "float", "None"}


def check_value_type(where: str, value: Any, annotation: Any) -> None:
    """Check a config value against a factory argument's annotation, naming the key path.

    Only what the annotation settles is checked: a string or a bool where only numbers belong,
    a string or number where only a bool belongs (YAML reads ``no`` as False, but ``"no"`` stays
    a string, which Python would take as True). Richer annotations (lists, callables, optax
    transformations) are left to the factory.
    """
    names = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", str(annotation)))
    if not names or not names <= _SCALARS:
        return
    if value is None:
        if "None" not in names:
            raise TypeError(f"{where} must not be null")
        return
    expected = sorted(names - {"None"})
    if isinstance(value, bool):
        ok = "bool" in names
    elif isinstance(value, int):
        ok = bool(names & {"int", "float"})
    elif isinstance(value, float):
        ok = "float" in names
    else:
        ok = False
    if not ok:
        raise TypeError(
            f"{where} must be {' or '.join(expected)}, got {type(value).__name__} {value!r}"
        )


def strategy_factory(
    name: str, where: str = "strategy.name", config_dir: str | Path | None = None
) -> Callable[..., Strategy]:
    """A registered strategy name, or ``"module:factory"`` for a strategy of your own."""
    if is_reference(name):
        return resolve_callable(name, where, config_dir)
    return get_strategy(name)


def validate_strategy_section(
    section: dict, where: str = "strategy", config_dir: str | Path | None = None
) -> None:
    """Check the strategy name, that every other key is an argument of its factory, and each
    value's type where the factory's annotation settles it (errors name the key path)."""
    if not isinstance(section, dict) or "name" not in section:
        raise ValueError(f"{where} must be a mapping with a 'name'")
    factory = strategy_factory(section["name"], f"{where}.name", config_dir)
    kwargs = {k: v for k, v in section.items() if k != "name"}
    check_keys(f"{where} ({section['name']!r})", kwargs, _factory_arguments(factory))
    parameters = inspect.signature(factory).parameters
    for key, value in kwargs.items():
        check_value_type(f"{where}.{key}", value, parameters[key].annotation)
    if isinstance(kwargs.get("optimizer"), dict):
        _check_optimizer_values(kwargs["optimizer"], f"{where}.optimizer")
    if "noise" in kwargs:
        build_noise_table(kwargs["noise"], f"{where}.noise")


NOISE_KEYS = ("size", "seed")


def build_noise_table(spec: Any, where: str = "strategy.noise") -> NoiseTable | None:
    """``noise: {size: 16777216, seed: 0}`` → an :class:`esjax.prng.NoiseTable` (null: none).

    Every key is optional (``size`` defaults to 2²⁵ floats, ``seed`` to 0); errors name the key
    path and the allowed range.
    """
    if spec is None or isinstance(spec, NoiseTable):
        return spec
    if not isinstance(spec, dict):
        raise TypeError(
            f"{where} must be a mapping such as {{size: 16777216, seed: 0}} or null, "
            f"got {type(spec).__name__} {spec!r}"
        )
    check_keys(where, spec, NOISE_KEYS)
    size, seed = spec.get("size", 2**25), spec.get("seed", 0)
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= 2**31 - 1:
        raise ValueError(f"{where}.size must be an integer in [2, 2**31 - 1], got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"{where}.seed must be an integer in [0, 2**32), got {seed!r}")
    return NoiseTable(size, seed)


def _check_optimizer_values(spec: dict, where: str) -> None:
    """A string where an optax argument takes numbers (``learning_rate: abc``) is an error naming
    the key path (``1e-2`` is a number: :func:`~esjax.experiments.outputs.read_yaml`)."""
    factory = getattr(optax, str(spec.get("name")), None)
    if not callable(factory):
        return  # build_optimizer names the unknown optimizer
    parameters = inspect.signature(factory).parameters
    for key, value in spec.items():
        if key == "name" or key not in parameters or not isinstance(value, str):
            continue
        names = set(re.findall(r"[A-Za-z_]+", str(parameters[key].annotation)))
        if "float" in names and "str" not in names:
            raise TypeError(f"{where}.{key} must be a number, got the string {value!r}")


def build_strategy(section: dict, config_dir: str | Path | None = None) -> Strategy:
    """Build the strategy a config section describes (``optimizer`` mappings become optax)."""
    validate_strategy_section(section, config_dir=config_dir)
    kwargs = {k: v for k, v in section.items() if k != "name"}
    if "optimizer" in kwargs and kwargs["optimizer"] is not None:
        kwargs["optimizer"] = build_optimizer(kwargs["optimizer"])
    if "noise" in kwargs:
        kwargs["noise"] = build_noise_table(kwargs["noise"], "strategy.noise")
    return strategy_factory(section["name"], "strategy.name", config_dir)(**kwargs)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain dict (for ``summary.json``; without ``config_dir``, which says
    where the file was, not what it asks for)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "config_dir"}


__all__ = [
    "NOISE_KEYS",
    "RENAMED_KEYS",
    "select_methods",
    "ExperimentConfig",
    "RESIDUAL_STRATEGIES",
    "SEED_RANGE",
    "build_noise_table",
    "check_value_type",
    "build_optimizer",
    "build_schedule",
    "build_strategy",
    "config_to_dict",
    "strategy_factory",
    "load_config",
    "parse_config",
    "validate_strategy_section",
]
