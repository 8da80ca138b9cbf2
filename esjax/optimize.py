"""A ``scipy.optimize.minimize``-shaped entry point for users coming from scipy and pycma.

    result = esjax.minimize(fun, x0, method="cma_es", options={"sigma": 0.5, "maxfev": 20_000})
    result.x, result.fun, result.nfev, result.nit, result.status, result.message

``fun`` scores one point shaped like ``x0`` and returns a scalar to minimise (it is jitted and
vmapped over the population). ``options`` holds the method's own arguments (those of
``esjax.<method>``) and the generic stopping options below; the run stops at the first that
fires, checked after every generation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from esjax.base import PyTree, Strategy, StrategyState, check_int, check_key, check_range
from esjax.driver import run
from esjax.flatten import flatten_x0
from esjax.strategies import get_strategy

STOPPING_OPTIONS = ("maxfev", "maxiter", "ftarget", "xtol", "ftol")
# Methods whose own termination tests take scipy's xtol / ftol meanings (CMA-type tolx/tolfun).
_TOLERANCES = {"xtol": "tolx", "ftol": "tolfun"}


class MinimizeResult(NamedTuple):
    """What :func:`minimize` returns (the fields of ``scipy.optimize.OptimizeResult`` it shares).

    Attributes:
      x: the best point evaluated, shaped like ``x0``.
      fun: its value.
      nfev: function evaluations made.
      nit: generations (iterations) run.
      status: 0 maxfev/maxiter reached, 1 ftarget reached, 2 the method's own termination
        signal (xtol/ftol for CMA-type methods), 3 no finite value was ever seen.
      success: whether ``ftarget`` or the method's own convergence test ended the run.
      message: why the run ended, in words.
      state: the final strategy state (``es.solution(state)`` is the method's own estimate,
        e.g. CMA-ES's mean, which may differ from ``x``).
    """

    x: PyTree
    fun: float
    nfev: int
    nit: int
    status: int
    success: bool
    message: str
    state: StrategyState


def _build(method: str | Strategy, num_dims: int, options: dict) -> tuple[Strategy, dict]:
    if isinstance(method, Strategy):
        return method, {}
    factory = get_strategy(method)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; valid: "
            f"{sorted([*accepted, *STOPPING_OPTIONS])}"
        )
    if "num_dims" in accepted and "num_dims" not in options:
        options = {**options, "num_dims": num_dims}  # default population sizes need it
    return factory(**options), options


def minimize(
    fun: Callable[[PyTree], jax.Array],
    x0: PyTree,
    method: str | Strategy = "cma_es",
    options: dict | None = None,
    *,
    seed: int = 0,
    key: jax.Array | None = None,
) -> MinimizeResult:
    """Minimise ``fun`` from ``x0`` with an esjax strategy, scipy-style.

    Args:
      fun: scalar function of one point shaped like ``x0``.
      x0: the starting point (a flat vector or any pytree of float arrays).
      method: a registered strategy name (``esjax.STRATEGIES``) or a built :class:`Strategy`.
      options: the method's own arguments (e.g. ``sigma``, ``population_size``) and the generic
        stopping options: ``maxfev`` (default ``1000 · n``), ``maxiter``, ``ftarget`` (stop once
        a value <= it is seen), and for methods with CMA-type termination tests ``xtol`` and
        ``ftol`` (their ``tolx`` / ``tolfun``).
      seed: the run's seed when ``key`` is not given.
      key: the run's PRNG key (default ``jax.random.key(seed)``).

    Example:
      >>> result = esjax.minimize(esjax.problems.rosenbrock, jnp.zeros(5), "cma_es",
      ...                         {"sigma": 0.5, "ftarget": 1e-8})
      >>> result.x, result.fun, result.nfev
    """
    options = dict(options or {})
    stopping = {name: options.pop(name) for name in STOPPING_OPTIONS if name in options}
    flat, _ = flatten_x0(x0)
    num_dims = flat.shape[0]
    es, _ = _build(method, num_dims, options)
    maxfev = check_int("maxfev", stopping.get("maxfev", 1000 * num_dims), 1)
    per_generation = es.capabilities.evaluations_per_generation or es.population_size
    maxiter = check_int("maxiter", stopping.get("maxiter", -(-maxfev // per_generation)), 1)
    ftarget = stopping.get("ftarget")
    if ftarget is not None:
        check_range("ftarget", ftarget)
    key = jax.random.key(seed) if key is None else check_key(key)
    init_key, run_key = jax.random.split(key)
    state = es.init(init_key, x0)
    tolerances = {
        _TOLERANCES[name]: stopping[name] for name in ("xtol", "ftol") if name in stopping
    }
    if tolerances:
        fields = type(state.params).__dataclass_fields__
        missing = [name for name in tolerances if name not in fields]
        if missing:
            raise ValueError(
                f"options xtol/ftol are not meaningful for method {es.name!r} (it has no "
                f"termination test on {missing}); use maxfev, maxiter or ftarget"
            )
        params = state.params.replace(**{k: np.asarray(v) for k, v in tolerances.items()})
        state = es.init(init_key, x0, params)

    reached = {"ftarget": False}

    def stop(state: StrategyState, chunk: dict) -> bool:
        if ftarget is not None and float(state.best_fitness) <= ftarget:
            reached["ftarget"] = True
            return True
        return int(state.evaluations) + per_generation > maxfev

    state, _ = run(es, fun, run_key, state, maxiter, log_every=1, progress=False, callback=stop)
    best = float(state.best_fitness)
    if not np.isfinite(best):
        status, message = 3, "no finite function value was seen"
    elif reached["ftarget"]:
        status, message = 1, f"ftarget={ftarget} reached"
    elif bool(es.terminated(state)):
        flags = [
            k for k, v in jax.device_get(es.info(state)).items() if k.startswith("stop_") and v
        ]
        status, message = 2, "the method's termination test fired: " + ", ".join(flags)
    elif int(state.evaluations) + per_generation > maxfev:
        status, message = 0, f"maxfev={maxfev} function evaluations reached"
    else:
        status, message = 0, f"maxiter={maxiter} iterations reached"
    return MinimizeResult(
        x=state.best_params,
        fun=best,
        nfev=int(state.evaluations),
        nit=int(state.generation),
        status=status,
        success=status in (1, 2),
        message=message,
        state=state,
    )


__all__ = ["STOPPING_OPTIONS", "MinimizeResult", "minimize"]
