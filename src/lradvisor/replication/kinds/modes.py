"""Per-mode algebra of the spectral formula (pure numpy, tested on planted values)."""

from __future__ import annotations

import math

import numpy as np

from lradvisor.theory import fit_decay_timescale, spectrum_correlation


def mode_sums(lr: float, eigenvalues: np.ndarray, *, steps: int) -> np.ndarray:
    """B_k(η) = Σ_{t<T} ρ_k^{2t}, ρ_k = 1 − ηλ_k: each mode's basis function in S(η).

    Evaluated as (1 − ρ^{2T}) / (1 − ρ²) through ``log1p``/``expm1`` (accurate as ηλ → 0,
    where it tends to T).
    """
    u = lr * np.asarray(eigenvalues, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_rho2 = 2.0 * np.where(u < 1.0, np.log1p(-np.minimum(u, 1.0)), np.log(np.abs(u - 1.0)))
        sums = np.expm1(steps * log_rho2) / np.expm1(log_rho2)
    return np.where(np.abs(steps * log_rho2) < 1e-12, float(steps), sums)


def empirical_coefficients(
    projections: np.ndarray, eigenvalues: np.ndarray, lr: float, *, imbalance_sum: float
) -> np.ndarray:
    """Empirical c_k of one run: c_k = (S / Σ_j w_j) · w_k / B_k(η), w_k = Σ_t a_k(t)².

    ``projections`` is a_k(t) = g(t)·v_k at every step t < T (shape ``(T, K)``),
    ``eigenvalues`` the λ_k > 0 of the v_k, ``imbalance_sum`` the measured S(η). Then
    Σ_k c_k B_k(η) = S(η); for a_k(t) = ρ_k^t a_k(0) the c_k are ∝ a_k(0)² (the recipe).
    """
    steps = projections.shape[0]
    energy = (np.asarray(projections, dtype=float) ** 2).sum(axis=0)
    basis = mode_sums(lr, eigenvalues, steps=steps)
    return abs(imbalance_sum) * (energy / basis) / energy.sum()


def spectrum_correlations(
    predicted: np.ndarray, empirical: np.ndarray, *, modes: int
) -> tuple[float, float]:
    """(sorted R, matched R) over the ``modes`` modes with the largest predicted c_k."""
    top = np.argsort(-predicted)[: min(modes, predicted.size)]
    return (
        spectrum_correlation(predicted[top], empirical[top]),
        spectrum_correlation(predicted[top], empirical[top], matched=True),
    )


def decay_time(steps: np.ndarray, values: np.ndarray, *, start: int) -> float:
    """τ of a log-linear fit for t > ``start`` (the paper's τ), NaN if it cannot be fitted."""
    usable = (steps > start) & np.isfinite(values) & (values > 0)
    if usable.sum() < 3:
        return math.nan
    return fit_decay_timescale(steps, values, start=start)
