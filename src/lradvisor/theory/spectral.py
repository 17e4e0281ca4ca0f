"""The spectral crossover formula for the gradient imbalance sum S(η) (docs/theory.md §3, §4, §6).

Every mode k contributes c_k times a geometric sum of ρ_k² = (1 − ηλ_k)² over the T steps.
All sums are evaluated through ``y = ln ρ²`` with ``log1p``/``expm1``, so they stay accurate
for ηλ → 0 (the sum tends to T) and at ρ² = 1 exactly, and overflow only where the true
value does (beyond the Edge of Stability).
"""

from __future__ import annotations

import numpy as np

from lradvisor.errors import LRAdvisorError
from lradvisor.theory import _checks

# Below |T·y| = 1e-4 the two 1/y terms of the mean step cancel; a two-term series is exact
# to ~1e-15 there and the closed form loses no more than ~1e-11 above it.
_SERIES_LIMIT = 1e-4


def _log_rho_squared(step_curvature: np.ndarray) -> np.ndarray:
    """y = ln (1 − u)², via log1p on the side of u = 1 where it is accurate."""
    u = step_curvature
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * np.where(u <= 1.0, np.log1p(-u), np.log1p(u - 2.0))


def _log_geometric_sum(y: np.ndarray, steps: int) -> np.ndarray:
    """ln Σ_{t<T} e^{t y}, using Σ e^{ty} = e^{(T−1)y} Σ e^{−ty} to avoid overflow for y > 0."""
    z = -np.abs(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        below_one = np.log(-np.expm1(steps * z)) - np.log(-np.expm1(z))
    log_sum = np.maximum(y, 0.0) * (steps - 1) + below_one
    return np.where(y == 0.0, np.log(steps), log_sum)


def _mean_step(y: np.ndarray, steps: int) -> np.ndarray:
    """d/dy ln Σ_{t<T} e^{t y}: the mean of t under weights e^{t y}, in [0, T − 1]."""
    z = -np.abs(y)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        closed = 1.0 / np.expm1(-z) - steps / np.expm1(-steps * z)
    series = (steps - 1) / 2.0 + (steps**2 - 1) * z / 12.0
    below_one = np.where(np.abs(steps * z) < _SERIES_LIMIT, series, closed)
    return np.where(y > 0.0, (steps - 1) - below_one, below_one)


def _spectrum(eigenvalues: object, coefficients: object) -> tuple[np.ndarray, np.ndarray]:
    lambdas = _checks.finite_array("eigenvalues", eigenvalues, ndim=1)
    weights = _checks.finite_array("coefficients", coefficients, ndim=1)
    _checks.same_length("eigenvalues", lambdas, "coefficients", weights)
    if lambdas.size == 0:
        raise LRAdvisorError("eigenvalues must hold at least 1 mode, but got 0.")
    if np.any(weights < 0):
        raise LRAdvisorError(f"coefficients must be non-negative, but got {weights.min()!r}.")
    return lambdas, weights


def _mode_terms(eta: object, eigenvalues: object, coefficients: object, steps: object):
    """Checked inputs and y = ln ρ_k² on a grid of shape ``eta.shape + (K,)``."""
    steps = _checks.positive_int("steps", steps)
    etas = _checks.positive_array("eta", eta)
    lambdas, weights = _spectrum(eigenvalues, coefficients)
    step_curvature = etas[..., np.newaxis] * lambdas
    return steps, step_curvature, weights, _log_rho_squared(step_curvature)


def gradient_imbalance_sum(
    eta: np.ndarray | float,
    eigenvalues: np.ndarray,
    coefficients: np.ndarray,
    *,
    steps: int,
) -> np.ndarray:
    """Spectral prediction of the gradient imbalance sum S(η), so that the drift is η²·S(η).

    .. math::

        S(\\eta) = \\sum_k c_k \\sum_{t=0}^{T-1} \\rho_k^{2t}
                 = \\sum_k c_k \\frac{1 - \\rho_k^{2T}}{\\eta\\lambda_k (2 - \\eta\\lambda_k)},
        \\qquad \\rho_k = 1 - \\eta \\lambda_k

    with η = ``eta``, λ_k = ``eigenvalues``, c_k = ``coefficients`` and T = ``steps``.

    Args:
        eta: learning rate(s) > 0, any shape.
        eigenvalues: Hessian eigenvalues λ_k at initialisation, shape ``(K,)``; zero and
            negative values are allowed.
        coefficients: mode coefficients c_k ≥ 0, shape ``(K,)``.
        steps: number of gradient-descent steps T ≥ 1.

    Returns:
        S(η), float64, with the shape of ``eta`` (0-d for a scalar).

    Example:
        >>> round(float(gradient_imbalance_sum(1e-9, [1.0], [2.0], steps=100)), 6)  # ≈ c·T
        199.99998

    .. note::
        docs/theory.md §4 states the closed form; the code evaluates the geometric sum itself,
        which equals it wherever both are defined and takes the limit c_k·T where the closed
        form is 0/0 (ηλ_k = 0 and ηλ_k = 2). For finite T the term therefore does **not**
        diverge as ηλ_k → 2 from below: it returns to c_k·T, and only grows (as |ρ_k|^{2T})
        beyond the Edge of Stability, where overflow to ``inf`` is accepted. It is the
        converged approximation c_k / (ηλ_k(2 − ηλ_k)) that diverges at ηλ_k = 2.
    """
    steps, _, weights, y = _mode_terms(eta, eigenvalues, coefficients, steps)
    # 0 · inf must read 0: a mode without weight contributes nothing, however unstable.
    with np.errstate(over="ignore", invalid="ignore"):
        per_mode = np.exp(_log_geometric_sum(y, steps))
        return np.where(weights > 0, weights * per_mode, 0.0).sum(axis=-1)


def local_alpha(
    eta: np.ndarray | float,
    eigenvalues: np.ndarray,
    coefficients: np.ndarray,
    *,
    steps: int,
) -> np.ndarray:
    """Local drift exponent α(η) = 2 + d ln S / d ln η of the spectral formula, analytically.

    .. math::

        \\alpha(\\eta) = 2 + \\frac{d \\ln S}{d \\ln \\eta}
            = \\sum_k w_k \\alpha_k, \\qquad
        w_k = \\frac{c_k f_k}{S}, \\quad
        f_k = \\sum_{t=0}^{T-1} \\rho_k^{2t},

        \\alpha_k = 2 - \\frac{2 \\eta\\lambda_k}{\\rho_k}\\, m_T(\\ln \\rho_k^2), \\qquad
        m_T(y) = \\frac{\\sum_t t\\, e^{t y}}{\\sum_t e^{t y}}

    with η = ``eta``, λ_k = ``eigenvalues``, c_k = ``coefficients``, T = ``steps``.
    For one converged mode (ρ^{2T} ≈ 0) this is α_k ≈ 2/(2 − ηλ_k); α_k = 2 at ηλ_k ∈ {0, 1}
    and α_k = 2T at ηλ_k = 2. For c_k ≥ 0 and 0 < ηλ_k < 2, 1 ≤ α ≤ 2 whenever
    ηλ_max ≤ 1, and α ≥ 1 up to the Edge of Stability.

    Args:
        eta: learning rate(s) > 0, any shape.
        eigenvalues: Hessian eigenvalues λ_k, shape ``(K,)``.
        coefficients: mode coefficients c_k ≥ 0, shape ``(K,)``, not all zero.
        steps: number of gradient-descent steps T ≥ 1.

    Returns:
        α(η), float64, with the shape of ``eta`` (0-d for a scalar). It stays finite beyond
        the Edge of Stability, where S itself overflows: the weights are formed in log space.

    Example:
        >>> round(float(local_alpha(0.05, [1.0], [1.0], steps=2000)), 6)  # 2 / 1.95
        1.025641
    """
    steps, u, weights, y = _mode_terms(eta, eigenvalues, coefficients, steps)
    if not np.any(weights > 0):
        raise LRAdvisorError("coefficients must not all be zero, but got all zeros.")
    rho = 1.0 - u
    with np.errstate(divide="ignore", invalid="ignore"):
        mode_alpha = np.where(rho == 0.0, 2.0, 2.0 - 2.0 * u * _mean_step(y, steps) / rho)
        log_weight = np.log(weights) + _log_geometric_sum(y, steps)
    share = np.exp(log_weight - log_weight.max(axis=-1, keepdims=True))
    return (share * mode_alpha).sum(axis=-1) / share.sum(axis=-1)


def crossover_rates(eigenvalues: np.ndarray, *, steps: int) -> np.ndarray:
    """Per-mode crossover learning rates η_k* = 1/(λ_k T), where mode k starts to converge.

    .. math::

        \\eta_k^* = \\frac{1}{\\lambda_k T}

    with λ_k = ``eigenvalues`` and T = ``steps``. Below η_k* the mode contributes α = 2,
    well above it α ≈ 1 (docs/theory.md §4).

    Returns:
        η_k*, same shape as ``eigenvalues``; ``inf`` where λ_k ≤ 0 (the mode never converges).

    .. note::
        The crossover is a scale, not a sharp threshold: for large T a single mode has
        α(η_k*) = 1 + 2/(e² − 1) ≈ 1.31.
    """
    steps = _checks.positive_int("steps", steps)
    lambdas = _checks.finite_array("eigenvalues", eigenvalues)
    with np.errstate(divide="ignore"):
        return np.where(lambdas > 0, 1.0 / (np.maximum(lambdas, 0.0) * steps), np.inf)


def eos_learning_rate(lambda_max: float) -> float:
    """The Edge-of-Stability learning rate 2/λ_max of the local quadratic model.

    .. math::

        \\eta_{\\mathrm{EoS}} = \\frac{2}{\\lambda_{\\max}}

    with λ_max = ``lambda_max``, the largest Hessian eigenvalue (> 0).

    .. note::
        docs/theory.md §8: for full-batch GD with cross-entropy the best constant rate was found
        above this bound (the Hessian compresses during training), and for mini-batch SGD
        far below it. This is the bound at the point where λ_max was measured, not advice.
    """
    return 2.0 / _checks.positive_float("lambda_max", lambda_max)


def is_stable(eta: np.ndarray | float, lambda_max: float) -> bool | np.ndarray:
    """Whether gradient descent on the local quadratic stays below the Edge of Stability.

    .. math::

        \\eta < \\frac{2}{\\lambda_{\\max}}

    with η = ``eta`` and λ_max = ``lambda_max`` (> 0).

    Returns:
        A ``bool`` for a scalar ``eta``, else a boolean array of its shape.

    .. note::
        Evaluated as η·λ_max < 2, so it agrees exactly with
        :func:`quadratic_divergence_factor` (which is ≥ 1 at η·λ_max = 2: marginal, not
        stable).
    """
    bound = _checks.positive_float("lambda_max", lambda_max)
    etas = _checks.positive_array("eta", eta)
    stable = etas * bound < 2.0
    return bool(stable) if stable.ndim == 0 else stable


def quadratic_divergence_factor(eta: np.ndarray | float, eigenvalues: np.ndarray) -> np.ndarray:
    """Per-step growth factor of the slowest-decaying (or fastest-growing) quadratic mode.

    .. math::

        \\max_k \\lvert 1 - \\eta \\lambda_k \\rvert

    with η = ``eta`` and λ_k = ``eigenvalues``. Above 1, gradient descent on the quadratic
    model diverges; with positive eigenvalues that happens exactly when η > 2/λ_max.

    Returns:
        The factor, with the shape of ``eta`` (0-d for a scalar).

    .. note::
        A negative eigenvalue makes the factor exceed 1 for every η > 0: the quadratic model
        escapes along negative curvature, which is not an Edge-of-Stability oscillation.
    """
    etas = _checks.positive_array("eta", eta)
    lambdas = _checks.finite_array("eigenvalues", eigenvalues, ndim=1)
    if lambdas.size == 0:
        raise LRAdvisorError("eigenvalues must hold at least 1 mode, but got 0.")
    return np.abs(1.0 - etas[..., np.newaxis] * lambdas).max(axis=-1)
