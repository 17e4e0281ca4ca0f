r"""Stability thresholds of the optimizers people use, on the local quadratic (docs/theory.md §9).

Gradient descent on a quadratic mode of curvature λ is stable iff η·λ < 2 (the paper's
Edge of Stability). With momentum, the mode obeys a two-term recursion whose companion
matrix must have spectral radius below one; each function here gives the largest stable
rate for one optimizer, and :func:`mode_spectral_radius` is the same condition computed
from the companion matrix, so the two formulations can be checked against each other.

Per mode, with a = η·λ_eff (λ_eff = λ + weight decay for coupled L2 decay):

.. math::

    \text{GD:}\quad & x_{t+1} = (1 - a)\,x_t
        && \Rightarrow\ a < 2 \\
    \text{heavy ball } (\beta):\quad & x_{t+1} = (1 + \beta - a')\,x_t - \beta\,x_{t-1},
        \ a' = (1 - d)\,a && \Rightarrow\ a' < 2(1 + \beta) \\
    \text{Nesterov } (\beta):\quad & x_{t+1} = (1 + \beta)(1 - a)\,x_t - \beta(1 - a)\,x_{t-1}
        && \Rightarrow\ a < \frac{2(1 + \beta)}{1 + 2\beta} \\
    \text{Adam, frozen } P\ (\beta_1):\quad & \text{heavy ball with } a' = (1 - \beta_1)\,\eta\,
        \lambda(P^{-1}H) && \Rightarrow\
        \eta\,\lambda(P^{-1}H) < \frac{2 + 2\beta_1}{1 - \beta_1}

where d is PyTorch's ``dampening``. The Nesterov recursion is PyTorch's form
(b_t = βb_{t−1} + g_t, step g_t + βb_t); the Jury conditions of its characteristic
polynomial z² − (1 + β)(1 − a)z + β(1 − a) reduce to the one above (the other two, a > 0 and
a < 1 + 1/β, are looser). The Adam threshold is that of Cohen et al. (2022) for a
preconditioner P = diag(√v̂ + ε) held fixed; bias corrections only change the first steps.

Example::

    >>> round(momentum_threshold(2.0, momentum=0.9), 3)   # heavy ball: 2(1 + β)/λ
    1.9
    >>> round(momentum_threshold(2.0, momentum=0.9, nesterov=True), 3)
    0.679

References:
    B. T. Polyak, "Some methods of speeding up the convergence of iteration methods", 1964
    (heavy ball); Y. Nesterov, 1983; E. I. Jury, *Theory and Application of the
    z-Transform Method*, 1964 (stability of the characteristic polynomial);
    J. Cohen et al., "Adaptive Gradient Methods at the Edge of Stability", arXiv:2207.14484
    (2022).

.. note::
    These are thresholds of the quadratic model at the point where λ was measured. On real
    networks the curvature moves (cross-entropy compresses the Hessian, BatchNorm makes the
    loss scale-invariant, Adam's P adapts), so lradvisor uses them to place and label a
    probe, never as the advice itself (docs/theory.md §8–9).
"""

from __future__ import annotations

import numpy as np

from lradvisor.errors import LRAdvisorError
from lradvisor.theory import _checks

__all__ = [
    "adam_threshold",
    "mode_spectral_radius",
    "momentum_threshold",
]


def _momentum(value: float) -> float:
    beta = float(value)
    if not 0.0 <= beta < 1.0:
        raise LRAdvisorError(f"momentum must be in [0, 1), but got {value!r}.")
    return beta


def momentum_threshold(
    lambda_max: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
) -> float:
    r"""Largest stable rate of PyTorch's SGD (plain, heavy-ball or Nesterov) on the quadratic.

    .. math::

        \eta^* = \frac{2(1 + \beta)}{(1 - d)\,(\lambda + w)} \ \text{(heavy ball)}, \qquad
        \eta^* = \frac{2(1 + \beta)}{(1 + 2\beta)(\lambda + w)} \ \text{(Nesterov)},

    with λ = ``lambda_max`` (> 0), β = ``momentum``, d = ``dampening``, w = ``weight_decay``
    (coupled L2 decay adds w to every eigenvalue). β = 0 gives the paper's 2/λ.
    """
    lam = _checks.positive_float("lambda_max", lambda_max)
    beta = _momentum(momentum)
    decay = float(weight_decay)
    if not (np.isfinite(decay) and decay >= 0.0):
        raise LRAdvisorError(f"weight_decay must be >= 0, but got {weight_decay!r}.")
    if not 0.0 <= dampening < 1.0:
        raise LRAdvisorError(f"dampening must be in [0, 1), but got {dampening!r}.")
    if nesterov and dampening:
        raise LRAdvisorError("Nesterov momentum requires dampening = 0 (as in torch.optim.SGD).")
    curvature = lam + decay
    if nesterov:
        return 2.0 * (1.0 + beta) / ((1.0 + 2.0 * beta) * curvature)
    return 2.0 * (1.0 + beta) / ((1.0 - dampening) * curvature)


def adam_threshold(preconditioned_sharpness: float, *, beta1: float = 0.9) -> float:
    r"""Largest stable Adam rate for a frozen preconditioner (the "adaptive EoS").

    .. math::

        \eta^* = \frac{2 + 2\beta_1}{(1 - \beta_1)\,\lambda_{\max}(P^{-1} H)}

    with λ_max(P⁻¹H) = ``preconditioned_sharpness`` (> 0) and β₁ = ``beta1``
    (38/λ for β₁ = 0.9).

    .. note::
        P adapts during training; the threshold holds only while P is steady. lradvisor
        reports it as a diagnostic measured on a trained state, not as a bound at θ₀
        (docs/theory.md §9).
    """
    lam = _checks.positive_float("preconditioned_sharpness", preconditioned_sharpness)
    beta = _momentum(beta1)
    return (2.0 + 2.0 * beta) / ((1.0 - beta) * lam)


def mode_spectral_radius(
    step: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    ema: bool = False,
) -> float:
    r"""Spectral radius of the companion matrix of one quadratic mode's recursion.

    ``step`` is a = η·λ (for ``ema=True``, Adam's first-moment average with β₁ = ``momentum``
    and a frozen preconditioner, a = η·λ(P⁻¹H)). The mode decays iff the radius is < 1; the
    thresholds of :func:`momentum_threshold` and :func:`adam_threshold` are where it
    crosses 1.

    .. math::

        \begin{pmatrix} x_{t+1} \\ x_t \end{pmatrix} =
        \begin{pmatrix} c_1 & -c_0 \\ 1 & 0 \end{pmatrix}
        \begin{pmatrix} x_t \\ x_{t-1} \end{pmatrix}

    with (c₁, c₀) = (1 + β − a(1 − d), β) for heavy ball, ((1 + β)(1 − a), β(1 − a)) for
    Nesterov and (1 + β − (1 − β)a, β) for the EMA form.
    """
    beta = _momentum(momentum)
    if nesterov:
        c1, c0 = (1.0 + beta) * (1.0 - step), beta * (1.0 - step)
    elif ema:
        c1, c0 = 1.0 + beta - (1.0 - beta) * step, beta
    else:
        c1, c0 = 1.0 + beta - (1.0 - dampening) * step, beta
    companion = np.array([[c1, -c0], [1.0, 0.0]])
    return float(np.max(np.abs(np.linalg.eigvals(companion))))
