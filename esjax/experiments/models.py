"""Config ``model`` sections → :class:`esjax.nn.FlaxModel`: the built-in MLP or your own class.

Built in (the default)::

    model: {hidden: [32], activation: tanh, api: linen}      # or api: nnx

Your own Flax model, named like a problem function or a strategy factory (imported from the
config's folder, then the working directory, then installed packages)::

    model: {class: "my_models:ConvNet", features: 16}

Every other key of the section is a constructor argument. The constructor also receives
``num_inputs`` / ``num_outputs`` (the data set's feature and class counts) when it takes them and
the section does not set them, and, for an ``nnx.Module``, ``rngs=nnx.Rngs(seed)`` drawn from the
model key. A ``linen.Module`` is initialised on one example of the data set's shape
(``module.init(key, zeros((1, num_inputs)))``). Either way its parameters are the searched ones.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import linen, nnx

from esjax import nn
from esjax.experiments.resolve import resolve_callable

BUILT_IN_KEYS = ("hidden", "activation", "api")
BUILT_IN_DEFAULTS = {"hidden": [32], "activation": "tanh", "api": "linen"}
SIZE_ARGUMENTS = ("num_inputs", "num_outputs")


def is_custom(section: dict) -> bool:
    """Whether a model section names a class of its own (``class: "module:Name"``)."""
    return "class" in section


def model_section(raw: dict | None, where: str = "model") -> dict:
    """The section with the built-in defaults filled in, keys checked (errors name ``where``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}")
    if is_custom(raw):
        if not isinstance(raw["class"], str) or ":" not in raw["class"]:
            raise ValueError(
                f"{where}.class must be 'module:ClassName' (a Flax linen or nnx module), got "
                f"{raw['class']!r}"
            )
        return dict(raw)
    section = {**BUILT_IN_DEFAULTS, **raw}
    unknown = sorted(set(section) - set(BUILT_IN_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where}; valid keys are {sorted(BUILT_IN_KEYS)}, or "
            f"'class' for a model of your own"
        )
    return section


def _constructor_arguments(cls: type) -> set[str] | None:
    """Argument names of ``cls``'s constructor (None when it takes ``**kwargs``)."""
    if dataclasses.is_dataclass(cls):  # linen modules are dataclasses
        return {field.name for field in dataclasses.fields(cls) if field.init}
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def build_model(
    section: dict,
    num_inputs: int,
    num_outputs: int,
    key: jax.Array,
    config_dir: str | Path | None = None,
    where: str = "model",
) -> nn.FlaxModel:
    """The :class:`~esjax.nn.FlaxModel` a (checked) model section describes."""
    section = model_section(section, where)
    if not is_custom(section):
        return nn.mlp(
            num_inputs,
            num_outputs,
            section["hidden"],
            section["activation"],
            key=key,
            api=section["api"],
        )
    if config_dir is None:
        config_dir = section.get("_config_dir")  # set by the config loader: the file's folder
    cls = resolve_callable(section["class"], f"{where}.class", config_dir)
    is_linen = isinstance(cls, type) and issubclass(cls, linen.Module)
    is_nnx = isinstance(cls, type) and issubclass(cls, nnx.Module)
    if not (is_linen or is_nnx):
        raise TypeError(
            f"{where}.class must name a flax.linen.Module or flax.nnx.Module subclass, got "
            f"{section['class']!r} ({type(cls).__name__})"
        )
    kwargs = {k: v for k, v in section.items() if k != "class" and not k.startswith("_")}
    accepted = _constructor_arguments(cls)
    for name, value in zip(SIZE_ARGUMENTS, (num_inputs, num_outputs), strict=True):
        if name not in kwargs and (accepted is None or name in accepted):
            kwargs[name] = value
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted - {"rngs"})
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in {where}: {section['class']} takes "
                f"{sorted(accepted - {'rngs', 'parent', 'name'})}"
            )
    try:
        if is_linen:
            module = cls(**kwargs)
            return nn.from_linen(module, key, jnp.zeros((1, num_inputs)))
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        module = cls(**kwargs, rngs=nnx.Rngs(seed))
    except TypeError as error:
        raise TypeError(f"{where}: building {section['class']} failed: {error}") from error
    return nn.from_nnx(module)


__all__ = ["BUILT_IN_KEYS", "build_model", "is_custom", "model_section"]
