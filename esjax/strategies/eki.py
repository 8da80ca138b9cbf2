"""Ensemble Kalman inversion (EKI): a derivative-free least-squares solver on residual vectors.

Reference: Kovachki & Stuart, "Ensemble Kalman Inversion: A Derivative-Free Technique for Machine
Learning Tasks", 2019, arXiv:1808.03620. Tikhonov-EKI: Chada, Stuart & Tong, "Tikhonov
Regularization within Ensemble Kalman Inversion", 2020, arXiv:1901.10382.

**Residuals, not a scalar fitness.** EKI solves ``y = G(u) + η`` with ``η ~ N(0, Γ)``: it needs
the whole output vector of every member, not a scalar loss. Its ``tell`` therefore takes
``residuals`` of shape ``(ensemble_size, m)``, row ``j`` being ``G(u_j) - y`` for member ``u_j``
(predictions minus targets, flattened). The targets live with the data, in the function that
evaluates a member: under :func:`esjax.run` that function returns the residual vector instead of
a scalar, and with ``fitness_takes_key=True`` it can draw a minibatch from the per-generation key,
shared by every member, so the targets may change every generation as in the paper's
mini-batched experiments (``m`` is fixed: the minibatch size times the outputs per example).
``Γ`` is the ``noise_cov`` hyperparameter (a scalar, or an ``(m,)`` diagonal).

**The update.** With ``J = ensemble_size`` members ``u_j``, residuals ``r_j = G(u_j) - y``,
means ``ū``, ``r̄`` and the ensemble covariances::

    C^up = 1/J Σ_j (u_j - ū)(r_j - r̄)ᵀ        C^pp = 1/J Σ_j (r_j - r̄)(r_j - r̄)ᵀ

each member moves by the Kalman step with time step ``h`` (``step_size``)::

    u_j ← u_j + h C^up (h C^pp + Γ)⁻¹ (ξ_j - r_j),      ξ_j ~ N(0, h⁻¹ Σ)        ("kalman")

where ``Σ = Γ`` with ``perturb_observations=True`` (the stochastic EnKF update) and ``Σ = 0``
otherwise. ``update="euler"`` instead takes the explicit Euler step of the continuous-time limit
of this scheme, ``u_j ← u_j + h C^up Γ⁻¹ (ξ_j - r_j) = u_j - (h/J) Σ_k D_jk u_k``, with
``D_jk = ⟨r_k - r̄, Γ⁻¹ r_j⟩``. ``adaptive_step=True`` uses the paper's adaptive time step
``h_n = h / (‖D‖_F + ε)`` in either update.

**Ensemble space.** Nothing of size ``(m, m)`` or ``(d, d)`` is formed. Stack the scaled output
anomalies ``b_j = √(h/J) Γ^{-1/2} (r_j - r̄)`` as the rows of ``B`` (``J × m``), the parameter
anomalies ``(u_j - ū)/√J`` as the rows of ``ΔU`` (``J × d``) and let
``e_j = √h Γ^{-1/2} (ξ_j - r_j)``. Then ``C^up = ΔUᵀ B Γ^{1/2}/√h`` and the push-through
identity ``B (I_m + Bᵀ B)⁻¹ = (I_J + B Bᵀ)⁻¹ B`` reduces the step to ``J × J`` algebra::

    h C^up (h C^pp + Γ)⁻¹ (ξ_j - r_j) = ΔUᵀ (I_J + B Bᵀ)⁻¹ B e_j

and the ``(J, d)`` update ``U ← U + Mᵀ ΔU`` with ``M = (I_J + B Bᵀ)⁻¹ B Eᵀ`` (``E``: rows
``e_j``). ``M`` is computed from the thin SVD ``B = V S Wᵀ`` as
``V diag(s / (1 + s²)) Wᵀ Eᵀ``, never from the Gram matrix ``B Bᵀ``: that squares ``B``'s
condition number, and in float32 the rounding of ``B Eᵀ`` along its (near-)null eigenvectors
came back multiplied by ``h`` (garbage once ``h ‖Γ^{-1/2} Δr‖² ≳ 1/eps``, e.g. residuals of
1e4 at ``h = 1``). The SVD comes from reduced QR factorisations of ``Bᵀ`` (and ``ΔUᵀ``) and
the SVD of their small triangular factors, so a generation costs ``O(J² (m + d) + J³)``.

**Tikhonov-EKI** (``tikhonov = λ > 0``) applies the same update to the augmented problem
``[y; 0] = [G(u); u] + N(0, diag(Γ, I/λ))``, i.e. it minimises
``½‖Γ^{-1/2}(G(u) - y)‖² + ½λ‖u‖²``; the extra block appends ``√(hλ) ΔU`` to ``B``'s columns
(only as its ``√λ``-scaled triangular factor in the SVD) and the matching innovations to
``E``'s.

**Inflation.** ``ask`` returns the ensemble, optionally inflated:
``ū + ρ (u_j - ū) + σ_a ε_j`` with ``ρ = inflation`` and ``σ_a = additive_inflation``. Without
additive inflation every member stays in ``ū_0 + span{u_j(0) - ū_0}`` (the subspace property),
so on a linear problem the mean converges to the least-squares solution *within that affine
span*; fresh additive noise lets the ensemble leave it (needed when ``J ≪ d``, e.g. networks).

**Non-finite residuals.** A member whose residual row has any NaN/±inf carries no information:
it is left out of ``ū``, ``r̄``, ``C^up`` and ``C^pp`` and is not moved this generation; if every
member is non-finite the ensemble is unchanged. A member whose row itself is non-finite is
treated the same way, after :func:`esjax.base.make_strategy` has replaced it by the best solution.

**Random numbers.** Member ``j``'s initial noise, additive-inflation noise and observation
perturbations are row ``j`` of :func:`esjax.prng.member_normals` under the respective key, a
function of ``(key, j)`` alone.

**Usage.** The evaluated function returns the residual vector of one member::

    def residuals(params, key):                      # a minibatch shared by all members
        index = jax.random.choice(key, num_train, (batch,), replace=False)
        probabilities = jax.nn.softmax(apply(params, x_train[index]))
        return (probabilities - jax.nn.one_hot(y_train[index], 10)).ravel()

    es = esjax.eki(ensemble_size=20, step_size=10.0, additive_inflation=0.03)
    state = es.init(key, params)
    state, metrics = esjax.run(es, residuals, key, state, 100, fitness_takes_key=True)
    params = state.unravel(state.mean)

**Best solution.** ``best_fitness`` is the smallest data misfit ``Φ(u_j) = ½‖Γ^{-1/2} r_j‖²`` of
any *member* evaluated so far (on that generation's data, so with minibatches it is a noisy
record), and ``best_solution`` that member. The ensemble mean, the paper's estimate, is
``state.mean``; it is never evaluated by the strategy itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from esjax.base import (
    Capabilities,
    Strategy,
    StrategyState,
    check_int,
    check_params,
    check_residuals,
    make_strategy,
)
from esjax.prng import member_normals

UPDATES = ("kalman", "euler")

# ε in the adaptive step h / (‖D‖_F + ε): only guards ‖D‖_F = 0 (a collapsed ensemble or a
# perfect fit). The steps stay bounded as ‖D‖_F → 0: the Euler step h_n D is at most h, and the
# Kalman step tends to the Gauss-Newton step within the ensemble's span.
ADAPTIVE_EPS = 1e-8


@struct.dataclass
class EKIParams:
    """Numeric hyperparameters (state leaves, so they can be vmapped over).

    The defaults are those of :func:`eki`, whose ``default_params`` holds them.

    Attributes:
      init_std: standard deviation of the initial ensemble around ``x0`` (> 0).
      step_size: time step ``h`` (> 0); ``h → ∞`` in the Kalman update is a Gauss-Newton step
        within the ensemble's span.
      noise_cov: observation noise covariance ``Γ``: a scalar or an ``(m,)`` diagonal (> 0).
      inflation: multiplicative inflation ``ρ >= 1`` of the anomalies in ``ask``.
      additive_inflation: standard deviation ``σ_a >= 0`` of fresh noise added in ``ask``.
      tikhonov: Tikhonov weight ``λ >= 0`` on ``½‖u‖²``.
    """

    init_std: float | jax.Array
    step_size: float | jax.Array
    noise_cov: float | jax.Array
    inflation: float | jax.Array
    additive_inflation: float | jax.Array
    tikhonov: float | jax.Array


PARAM_RANGES = {
    "init_std": (0.0, None, False, True),
    "step_size": (0.0, None, False, True),
    "inflation": (1.0, None),
    "additive_inflation": (0.0, None),
    "tikhonov": (0.0, None),
}


def _check_eki_params(params: EKIParams) -> None:
    check_params(params, PARAM_RANGES)
    noise_cov = params.noise_cov
    if isinstance(noise_cov, jax.core.Tracer):
        return
    values = np.asarray(noise_cov)
    if values.ndim > 1:
        raise ValueError(
            f"noise_cov must be a scalar or an (m,) diagonal, got shape {values.shape}"
        )
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError("noise_cov must be finite and > 0 (a scalar or a positive diagonal)")


@struct.dataclass
class EKIState(StrategyState):
    """EKI state: the ``(ensemble_size, num_dims)`` ensemble, a key and last-update diagnostics.

    Attributes:
      ensemble: the members ``u_j`` after the last update (``ask`` may inflate them).
      key: PRNG key for the observation perturbations ``ξ_j`` drawn in ``tell``.
      misfit: mean data misfit ``Φ`` of the finite members at the last ``tell``.
      spread: root-mean-square distance of the members to their mean after the last update.
      step: the time step ``h_n`` used by the last update.
      params: the hyperparameters.
    """

    ensemble: jax.Array
    key: jax.Array
    misfit: jax.Array
    spread: jax.Array
    step: jax.Array
    params: EKIParams

    @property
    def mean(self) -> jax.Array:
        """The ensemble mean ``ū`` (flat), the EKI estimate."""
        return jnp.mean(self.ensemble, axis=0)


def _rms_spread(ensemble: jax.Array) -> jax.Array:
    anomalies = ensemble - jnp.mean(ensemble, axis=0)
    return jnp.sqrt(jnp.mean(jnp.sum(anomalies**2, axis=1)))


def _whiten(state: EKIState, residuals: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(valid, whitened, misfits)``: which members have all-finite residuals, their residuals
    ``Γ^{-1/2} r_j`` (rows of invalid members zeroed) and misfits ``½‖Γ^{-1/2} r_j‖²``.

    Checks at trace time that ``noise_cov`` is a scalar or has the residuals' width ``m``.
    """
    dtype = state.ensemble.dtype
    noise_cov = jnp.asarray(state.params.noise_cov, dtype)
    num_outputs = residuals.shape[1]
    if noise_cov.ndim == 1 and noise_cov.shape[0] != num_outputs:
        raise ValueError(
            f"noise_cov must be a scalar or have shape (m,) = ({num_outputs},), "
            f"got {noise_cov.shape}"
        )
    # A member with any non-finite output is dropped from every statistic; `where` (not a
    # multiply by 0) keeps NaN out of the sums.
    valid = jnp.all(jnp.isfinite(residuals), axis=1)
    whitened = jnp.where(valid[:, None], residuals.astype(dtype), 0.0) * jax.lax.rsqrt(noise_cov)
    return valid, whitened, 0.5 * jnp.sum(whitened**2, axis=1)


def _member_misfits(state: EKIState, residuals: jax.Array) -> jax.Array:
    """The data misfit ``Φ(u_j) = ½‖Γ^{-1/2} r_j‖²`` of every member, ``inf`` where invalid."""
    valid, _, misfits = _whiten(state, residuals)
    return jnp.where(valid, misfits, jnp.inf)


def _kalman_coefficients(
    data_anomalies: jax.Array,
    data_innovations: jax.Array,
    prior_anomalies: jax.Array,
    prior_innovations: jax.Array,
    tikhonov: jax.Array,
    step: jax.Array,
) -> jax.Array:
    """``M = h (I_J + h A Aᵀ)⁻¹ A Fᵀ`` (``J × J``) from a thin SVD of ``A``, never forming ``A Aᵀ``.

    ``A = [B̃, √λ ΔU]`` (``J × (m + d)``) stacks the anomalies (``B̃ = B/√h``:
    ``data_anomalies``, ``ΔU``: ``prior_anomalies``) and ``F = [Ẽ, F_p]`` the innovations
    (``Ẽ = E/√h``: ``data_innovations``; ``F_p``, rows ``√λ (ξ'_j - u_j)``:
    ``prior_innovations``), so ``M`` is the module docstring's ``(I + B Bᵀ)⁻¹ B Eᵀ`` with the
    Tikhonov block included. With the thin SVD ``A = V S Wᵀ`` the push-through identity gives

        M = V diag(h s / (1 + h s²)) Wᵀ Fᵀ:

    each innovation is projected onto the right singular vectors first, so a (near-)null
    direction of ``A`` is weighted by its own ``h s / (1 + h s²) ≈ h s``, and every weight is
    at most ``√h / 2``. Taking ``(I + h A Aᵀ)⁻¹`` from an eigendecomposition of the Gram matrix
    ``A Aᵀ`` instead squares the condition number, and the round-off of ``A Fᵀ`` (relative
    ``eps`` of ``‖A‖ ‖F‖``) along the Gram matrix's computed null space is multiplied by
    ``h / (1 + 0)``: garbage once ``h ‖A‖² ≳ 1/eps`` (large residuals, a long step).

    ``A`` is not stacked either (``J × (m + d)`` entries): the reduced QR factorisations
    ``B̃ᵀ = Q₁ R₁`` and ``ΔUᵀ = Q₂ R₂`` (``Q_i`` with orthonormal columns) give
    ``Aᵀ = diag(Q₁, Q₂) [R₁; √λ R₂]``, and the SVD ``[R₁; √λ R₂] = P S Vᵀ`` of that
    ``(k₁ + k₂) × J`` stack (``k₁ = min(m, J)``, ``k₂ = min(d, J)``) is the one of ``A`` with
    ``W = diag(Q₁, Q₂) P``. Cost ``O(J² (m + d) + J³)``, as for the Gram matrices.
    """
    data_q, data_r = jnp.linalg.qr(data_anomalies.T)  # B̃ᵀ = Q₁ R₁: (m, k₁), (k₁, J)
    prior_q, prior_r = jnp.linalg.qr(prior_anomalies.T)  # ΔUᵀ = Q₂ R₂: (d, k₂), (k₂, J)
    factors = jnp.concatenate([data_r, jnp.sqrt(tikhonov) * prior_r])  # [R₁; √λ R₂]
    # LAPACK's SVD (gesdd) does not return on an inf entry (it loops; measured on CPU), and
    # anomalies that overflow the QR give inf: it gets a finite stand-in and the step is NaN,
    # so the ensemble and then the fitness report the overflow instead of a hang.
    finite = jnp.all(jnp.isfinite(factors))
    factors = jnp.where(finite, factors, jnp.zeros((), factors.dtype))
    rotation, singular, right = jnp.linalg.svd(factors, full_matrices=False)  # P, s, Vᵀ
    singular = jnp.where(finite, singular, jnp.nan)
    # Wᵀ Fᵀ = Pᵀ [Q₁ᵀ Ẽᵀ; Q₂ᵀ F_pᵀ]: (k, J).
    projected = rotation.T @ jnp.concatenate(
        [data_q.T @ data_innovations.T, prior_q.T @ prior_innovations.T]
    )
    gains = step * singular / (1.0 + step * singular**2)
    return right.T @ (gains[:, None] * projected)


def eki(
    ensemble_size: int,
    init_std: float = 0.1,
    step_size: float = 1.0,
    noise_cov: float | jax.Array = 1.0,
    update: str = "kalman",
    adaptive_step: bool = False,
    perturb_observations: bool = False,
    inflation: float = 1.0,
    additive_inflation: float = 0.0,
    tikhonov: float = 0.0,
) -> Strategy:
    """Build ensemble Kalman inversion (Kovachki & Stuart 2019); it minimises ``½‖Γ^{-1/2} r‖²``.

    Unlike the scalar-fitness strategies, ``tell(state, population, residuals)`` takes the
    per-member residual vectors ``G(u_j) - y`` as an ``(ensemble_size, m)`` array (see the module
    docstring); :func:`esjax.run` passes them through when the evaluated function returns a vector.

    Args:
      ensemble_size: number of members ``J`` (>= 2); also the ``population_size``.
      init_std: the initial ensemble is ``x0 + init_std · ε_j``, with ``ε`` centred so ``ū = x0``.
      step_size: time step ``h`` (> 0).
      noise_cov: ``Γ``, a scalar or an ``(m,)`` positive diagonal.
      update: ``"kalman"`` (the discrete EKI update, default) or ``"euler"`` (explicit Euler
        step of its continuous-time limit, no inverse).
      adaptive_step: use ``h_n = h / (‖D‖_F + ε)``.
      perturb_observations: perturb the targets with ``ξ_j ~ N(0, Γ/h)`` (``Σ = Γ``); default
        ``Σ = 0``, the deterministic update.
      inflation: multiplicative anomaly inflation ``ρ >= 1`` applied in ``ask``.
      additive_inflation: standard deviation of fresh Gaussian noise added in ``ask`` (>= 0).
      tikhonov: ``λ >= 0``: minimise ``½‖Γ^{-1/2}(G(u) - y)‖² + ½λ‖u‖²`` (Tikhonov-EKI).

    Returns:
      A :class:`~esjax.base.Strategy` whose ``tell`` takes residuals.

    Example:
      >>> es = eki(ensemble_size=20)
      >>> state = es.init(jax.random.key(0), jnp.zeros(5))
      >>> population, state = es.ask(jax.random.key(1), state)
      >>> state = es.tell(state, population, population @ A.T - y)   # A: (m, 5), y: (m,)
    """
    ensemble_size = check_int("ensemble_size", ensemble_size, 2)
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    for name, flag in (
        ("adaptive_step", adaptive_step),
        ("perturb_observations", perturb_observations),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    members = jnp.arange(ensemble_size)

    def init(key: jax.Array, mean: jax.Array, params: EKIParams) -> dict:
        init_key, state_key = jax.random.split(key)
        noise = member_normals(init_key, members, mean.shape[0], mean.dtype)
        ensemble = mean + params.init_std * (noise - jnp.mean(noise, axis=0))
        return {
            "ensemble": ensemble,
            "key": state_key,
            "misfit": jnp.array(jnp.inf, mean.dtype),
            "spread": _rms_spread(ensemble),
            "step": params.step_size,
        }

    def ask(key: jax.Array, state: EKIState) -> tuple[jax.Array, EKIState]:
        mean = state.mean
        noise = member_normals(key, members, state.num_dims, state.ensemble.dtype)
        population = (
            mean
            + state.params.inflation * (state.ensemble - mean)
            + state.params.additive_inflation * noise
        )
        return population, state

    def update_ensemble(state: EKIState, population: jax.Array, residuals: jax.Array) -> EKIState:
        dtype = state.ensemble.dtype
        params = state.params
        valid, whitened, misfits = _whiten(state, residuals)
        count = jnp.sum(valid)
        weight = valid.astype(dtype)[:, None]
        scale = jnp.sqrt(jnp.maximum(count, 1).astype(dtype))

        def anomalies(values):
            center = jnp.sum(weight * values, axis=0) / jnp.maximum(count, 1)
            return weight * (values - center) / scale

        output_anomalies = anomalies(whitened)  # B / √h: (J, m), Γ-whitened, 1/√J-scaled
        parameter_anomalies = anomalies(population)  # ΔU: (J, d)

        step = params.step_size
        if adaptive_step or update == "euler":
            # data_cross[k, j] = ⟨b_k, -Γ^{-1/2} r_j⟩ / √h, the unperturbed innovations.
            data_cross = -(output_anomalies @ whitened.T)
        if adaptive_step:
            # ‖D‖_F with D_jk = ⟨r_k - r̄, Γ⁻¹ r_j⟩ = -√J · data_cross[k, j].
            step = step / (scale * jnp.sqrt(jnp.sum(data_cross**2)) + ADAPTIVE_EPS)
        key, output_key, prior_key = jax.random.split(state.key, 3)
        if perturb_observations:
            # ξ_j ~ N(0, Γ/h): whitened by Γ^{-1/2} it is N(0, 1/h).
            xi = member_normals(output_key, members, whitened.shape[1], dtype) * jax.lax.rsqrt(step)
            xi = weight * xi
            # Tikhonov block: outputs u with target 0 and covariance I/λ; whitened by √λ its
            # anomalies are √λ ΔU and its innovations √λ (ξ'_j - u_j), ξ'_j ~ N(0, I/(λh)):
            # prior_xi_j is √λ ξ'_j ~ N(0, 1/h), the same law as ξ_j's.
            prior_normals = member_normals(prior_key, members, state.num_dims, dtype)
            prior_xi = weight * (prior_normals * jax.lax.rsqrt(step))

        if update == "kalman":
            tikhonov = jnp.asarray(params.tikhonov, dtype)
            data_innovations = xi - whitened if perturb_observations else -whitened
            prior_innovations = -jnp.sqrt(tikhonov) * (weight * population)
            if perturb_observations:
                prior_innovations = prior_innovations + prior_xi
            coefficients = _kalman_coefficients(
                output_anomalies,
                data_innovations,
                parameter_anomalies,
                prior_innovations,
                tikhonov,
                step,
            )
        else:
            # The Euler step needs no inverse: h A Fᵀ (A, F as in _kalman_coefficients), with
            # cross[k, j] = ⟨b_k, e_j⟩ / h and the Tikhonov block's terms added.
            cross = data_cross
            if perturb_observations:
                cross = cross + output_anomalies @ xi.T
            cross = cross - params.tikhonov * (parameter_anomalies @ (weight * population).T)
            if perturb_observations:
                cross = cross + jnp.sqrt(params.tikhonov) * (parameter_anomalies @ prior_xi.T)
            coefficients = step * cross
        # Invalid members have zero innovation columns, so they do not move (nor does anyone
        # when every member is invalid: all anomalies are then zero).
        ensemble = population + coefficients.T @ parameter_anomalies

        mean_misfit = jnp.sum(jnp.where(valid, misfits, 0.0)) / jnp.maximum(count, 1)
        return state.replace(
            ensemble=ensemble.astype(dtype),
            key=key,
            misfit=jnp.where(count > 0, mean_misfit, jnp.inf).astype(dtype),
            spread=_rms_spread(ensemble).astype(dtype),
            step=jnp.asarray(step, dtype),
        )

    def info(state: EKIState) -> dict:
        return {"misfit": state.misfit, "spread": state.spread, "step_size": state.step}

    return make_strategy(
        name="eki",
        population_size=ensemble_size,
        default_params=EKIParams(
            init_std=init_std,
            step_size=step_size,
            noise_cov=noise_cov,
            inflation=inflation,
            additive_inflation=additive_inflation,
            tikhonov=tikhonov,
        ),
        param_checks=_check_eki_params,
        state_type=EKIState,
        init=init,
        ask=ask,
        update=update_ensemble,
        info=info,
        capabilities=Capabilities(
            fitness="residuals",
            solution="mean",
            init_uses_key=True,
            state_holds_key=True,
            score=_member_misfits,
        ),
    )


__all__ = [
    "ADAPTIVE_EPS",
    "PARAM_RANGES",
    "UPDATES",
    "EKIParams",
    "EKIState",
    "check_residuals",
    "eki",
]
