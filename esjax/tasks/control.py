"""Control tasks in pure JAX: CartPole-v1 and Pendulum-v1, whole episodes under ``lax.scan``.

The dynamics follow the published equations and constants of OpenAI Gym's classic-control
environments (as also used by gymnax, Lange 2022, github.com/RobertTLange/gymnax):

CartPole-v1 (Barto, Sutton & Anderson 1983; Euler step ``τ = 0.02``; g = 9.8, cart mass 1.0,
pole mass 0.1, pole half-length 0.5, force ±10)::

    F      = +10 if action == 1 else -10
    temp   = (F + m_p l θ'² sin θ) / (m_c + m_p)
    θ''    = (g sin θ - cos θ · temp) / (l (4/3 - m_p cos² θ / (m_c + m_p)))
    x''    = temp - m_p l θ'' cos θ / (m_c + m_p)
    x ← x + τ x',  x' ← x' + τ x'',  θ ← θ + τ θ',  θ' ← θ' + τ θ''

reward 1 per step including the one that ends the episode; the episode ends when
``|x| > 2.4`` or ``|θ| > 12°`` or after 500 steps (return ≤ 500). Start state ~ U(-0.05, 0.05)⁴.

Pendulum-v1 (dt = 0.05, g = 10, m = l = 1, torque ``u`` clipped to ±2, speed clipped to ±8)::

    cost   = angle_normalize(θ)² + 0.1 θ'² + 0.001 u²       (reward = -cost, before the step)
    θ'     ← clip(θ' + (3 g / (2 l) sin θ + 3 / (m l²) u) dt, -8, 8)
    θ      ← θ + θ' dt

200 steps; start θ ~ U(-π, π), θ' ~ U(-1, 1); observation ``(cos θ, sin θ, θ')``.

An :class:`Env` is a tuple of pure functions; :func:`episode_return` scans one whole episode
(freezing the state once it is done), and :func:`control_fitness` averages it over episodes
(``vmap``), so a population evaluation is population × episodes vmapped. With
``backend="gymnax"`` (optional ``rl`` extra) :func:`make_env` wraps gymnax's own environments
behind the same interface.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from esjax.nn import FlaxModel

PyTree = Any


class Env(NamedTuple):
    """An episodic environment as pure functions.

    Attributes:
      name: e.g. ``"CartPole-v1"``.
      observation_size: length of the observation vector.
      action_size: number of discrete actions, or the length of a continuous action.
      discrete: whether actions are integers in ``[0, action_size)``.
      action_high: bound of a continuous action (policies squash into ``[-high, high]``).
      max_steps: episode length limit.
      reset: ``key -> state``.
      step: ``(state, action) -> (state, reward, done)``.
      observe: ``state -> observation``.
    """

    name: str
    observation_size: int
    action_size: int
    discrete: bool
    action_high: float
    max_steps: int
    reset: Callable[[jax.Array], PyTree]
    step: Callable[[PyTree, jax.Array], tuple[PyTree, jax.Array, jax.Array]]
    observe: Callable[[PyTree], jax.Array]


CARTPOLE = {
    "gravity": 9.8,
    "masscart": 1.0,
    "masspole": 0.1,
    "length": 0.5,
    "force_mag": 10.0,
    "tau": 0.02,
    "theta_threshold": 12 * 2 * math.pi / 360,
    "x_threshold": 2.4,
    "max_steps": 500,
}

PENDULUM = {
    "max_speed": 8.0,
    "max_torque": 2.0,
    "dt": 0.05,
    "g": 10.0,
    "m": 1.0,
    "l": 1.0,
    "max_steps": 200,
}


def cartpole_step(state: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One CartPole-v1 Euler step of ``state = (x, x', θ, θ')``; returns (state, reward, done)."""
    c = CARTPOLE
    x, x_dot, theta, theta_dot = state[0], state[1], state[2], state[3]
    total_mass = c["masscart"] + c["masspole"]
    polemass_length = c["masspole"] * c["length"]
    force = jnp.where(action == 1, c["force_mag"], -c["force_mag"])
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
    theta_acc = (c["gravity"] * sin - cos * temp) / (
        c["length"] * (4.0 / 3.0 - c["masspole"] * cos**2 / total_mass)
    )
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    new_state = jnp.stack(
        [
            x + c["tau"] * x_dot,
            x_dot + c["tau"] * x_acc,
            theta + c["tau"] * theta_dot,
            theta_dot + c["tau"] * theta_acc,
        ]
    )
    done = (jnp.abs(new_state[0]) > c["x_threshold"]) | (
        jnp.abs(new_state[2]) > c["theta_threshold"]
    )
    return new_state, jnp.ones((), state.dtype), done


def cartpole_reset(key: jax.Array) -> jax.Array:
    """Start state ``(x, x', θ, θ') ~ U(-0.05, 0.05)⁴``."""
    return jax.random.uniform(key, (4,), minval=-0.05, maxval=0.05)


def angle_normalize(theta: jax.Array) -> jax.Array:
    """Wrap an angle to ``[-π, π)``."""
    return (theta + jnp.pi) % (2 * jnp.pi) - jnp.pi


def pendulum_step(state: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Pendulum-v1 step of ``state = (θ, θ')`` under torque ``action``; never done early."""
    p = PENDULUM
    theta, theta_dot = state[0], state[1]
    u = jnp.clip(jnp.reshape(action, ()), -p["max_torque"], p["max_torque"])
    cost = angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * u**2
    theta_dot_new = (
        theta_dot
        + (3 * p["g"] / (2 * p["l"]) * jnp.sin(theta) + 3.0 / (p["m"] * p["l"] ** 2) * u) * p["dt"]
    )
    theta_dot_new = jnp.clip(theta_dot_new, -p["max_speed"], p["max_speed"])
    theta_new = theta + theta_dot_new * p["dt"]
    return jnp.stack([theta_new, theta_dot_new]), -cost, jnp.zeros((), bool)


def pendulum_reset(key: jax.Array) -> jax.Array:
    """Start state ``θ ~ U(-π, π)``, ``θ' ~ U(-1, 1)``."""
    high = jnp.array([jnp.pi, 1.0])
    return jax.random.uniform(key, (2,), minval=-high, maxval=high)


def pendulum_observe(state: jax.Array) -> jax.Array:
    """``(cos θ, sin θ, θ')``."""
    return jnp.stack([jnp.cos(state[0]), jnp.sin(state[0]), state[1]])


def cartpole() -> Env:
    """CartPole-v1 in pure JAX (observation = state, 2 actions, 500 steps)."""
    return Env(
        name="CartPole-v1",
        observation_size=4,
        action_size=2,
        discrete=True,
        action_high=1.0,
        max_steps=CARTPOLE["max_steps"],
        reset=cartpole_reset,
        step=cartpole_step,
        observe=lambda state: state,
    )


def pendulum() -> Env:
    """Pendulum-v1 in pure JAX (3 observations, 1 torque in [-2, 2], 200 steps)."""
    return Env(
        name="Pendulum-v1",
        observation_size=3,
        action_size=1,
        discrete=False,
        action_high=PENDULUM["max_torque"],
        max_steps=PENDULUM["max_steps"],
        reset=pendulum_reset,
        step=pendulum_step,
        observe=pendulum_observe,
    )


def gymnax_env(name: str) -> Env:
    """gymnax's own ``name`` environment behind the :class:`Env` interface (needs ``gymnax``).

    Uses ``step_env`` (no automatic reset); both environments here are deterministic, so the
    step key is a constant.
    """
    try:
        import gymnax
    except ImportError as error:
        raise ImportError(
            "backend='gymnax' needs gymnax: pip install 'esjax[rl]' (or use backend='jax')"
        ) from error
    env, params = gymnax.make(name)
    step_key = jax.random.key(0)

    def reset(key):
        return env.reset_env(key, params)[1]

    def step(state, action):
        _, state, reward, done, _ = env.step_env(step_key, state, action, params)
        return state, jnp.asarray(reward, jnp.float32), jnp.asarray(done, bool)

    return ENVS[name]()._replace(reset=reset, step=step, observe=env.get_obs)


ENVS: dict[str, Callable[[], Env]] = {"CartPole-v1": cartpole, "Pendulum-v1": pendulum}


def make_env(name: str, backend: str = "jax") -> Env:
    """``"CartPole-v1"`` or ``"Pendulum-v1"``; ``backend="jax"`` (built in) or ``"gymnax"``."""
    if name not in ENVS:
        raise ValueError(f"env name must be one of {sorted(ENVS)}, got {name!r}")
    if backend == "jax":
        return ENVS[name]()
    if backend == "gymnax":
        return gymnax_env(name)
    raise ValueError(f"backend must be 'jax' or 'gymnax', got {backend!r}")


def policy_action(env: Env, outputs: jax.Array) -> jax.Array:
    """Network outputs → action: ``argmax`` (discrete) or ``action_high · tanh`` (continuous)."""
    if env.discrete:
        return jnp.argmax(outputs, axis=-1)
    return env.action_high * jnp.tanh(outputs)


def episode_return(env: Env, model: FlaxModel, params: PyTree, key: jax.Array) -> jax.Array:
    """Undiscounted return of one whole episode (``max_steps`` steps scanned).

    Once the episode is done the state is frozen and rewards stop counting, so every episode
    costs the same fixed-length scan (no data-dependent control flow).
    """

    def body(carry, _):
        state, alive, total = carry
        action = policy_action(env, model.apply(params, env.observe(state)))
        next_state, reward, done = env.step(state, action)
        total = total + jnp.where(alive, reward, 0.0).astype(total.dtype)
        state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(alive, new, old), next_state, state
        )
        return (state, alive & ~done, total), None

    # The default float type: float64 under jax_enable_x64, so the carry keeps one dtype.
    start = (env.reset(key), jnp.array(True), jnp.zeros((), jnp.result_type(float)))
    (_, _, total), _ = jax.lax.scan(body, start, None, length=env.max_steps)
    return total


def control_fitness(
    env: Env, model: FlaxModel, num_episodes: int = 8, eval_key: jax.Array | None = None
) -> Callable[..., jax.Array]:
    """``fitness(params, key=None) -> -mean return`` over ``num_episodes`` episodes (minimised).

    With ``fitness_takes_key=True`` every member of a generation plays the same start states
    (common random numbers); without a key the episodes start from ``eval_key``
    (default ``key(0)``).
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    default_key = jax.random.key(0) if eval_key is None else eval_key

    def fitness(params: PyTree, key: jax.Array | None = None) -> jax.Array:
        keys = jax.random.split(default_key if key is None else key, num_episodes)
        returns = jax.vmap(lambda k: episode_return(env, model, params, k))(keys)
        return -jnp.mean(returns)

    return fitness


def mean_return(
    env: Env, model: FlaxModel, params: PyTree, key: jax.Array, num_episodes: int = 32
) -> jax.Array:
    """Mean return of ``params`` over ``num_episodes`` fresh episodes started from ``key``."""
    return -control_fitness(env, model, num_episodes)(params, key)


__all__ = [
    "CARTPOLE",
    "ENVS",
    "Env",
    "PENDULUM",
    "PyTree",
    "angle_normalize",
    "cartpole",
    "cartpole_reset",
    "cartpole_step",
    "control_fitness",
    "episode_return",
    "gymnax_env",
    "make_env",
    "mean_return",
    "pendulum",
    "pendulum_observe",
    "pendulum_reset",
    "pendulum_step",
    "policy_action",
]
