"""Null predictions of S(η): what a validation has to beat (pure numpy).

A validation of the spectral formula means little if a prediction without the formula's
ingredients scores as well (a sorted-spectrum correlation is 0.93–0.97 even for unrelated
spectra, docs/theory.md §8). Each null below keeps all but one ingredient:

* ``no_hessian``: S ∝ 1/η, no Hessian at all (the converged-mode limit of the formula);
* ``constant_spectrum``: every eigenvalue replaced by one constant, the c-weighted mean
  λ̄ = Σ c_k λ_k / Σ c_k (one mode carrying all of |δ(0)|);
* ``random_directions``: the gradient projected on random directions instead of the
  eigenvectors — c_k ∝ z_k² with z ~ N(0, I), the eigenvalues kept (the median over draws
  of the resulting metric is reported);
* ``other_seed``: another seed's Hessian and gradient (another net and data set), where a
  comparison is made per seed.

Scale: a null gets the best overall scale in hindsight — fitted to the measurement by least
squares in ln S (:func:`oracle_scale`) — while the prediction gets none. A prediction that
beats a null (:func:`lradvisor.replication.claims.beats`) therefore beats it on shape.
"""

from __future__ import annotations

import numpy as np

from lradvisor.theory import gradient_imbalance_sum

RANDOM_DRAWS = 20


def oracle_scale(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """``predicted`` times the factor that best fits ``measured`` in ln S (least squares)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    usable = (predicted > 0) & (measured > 0) & np.isfinite(predicted) & np.isfinite(measured)
    if not usable.any():
        return np.full_like(predicted, np.nan)
    factor = np.exp(np.mean(np.log(measured[usable]) - np.log(predicted[usable])))
    return predicted * factor


def no_hessian(lrs: np.ndarray) -> np.ndarray:
    """S ∝ 1/η (unscaled)."""
    return 1.0 / np.asarray(lrs, float)


def mean_eigenvalue(eigenvalues: np.ndarray, coefficients: np.ndarray) -> float:
    """λ̄ = Σ c_k λ_k / Σ c_k over the modes with λ_k > 0."""
    lam, c = np.asarray(eigenvalues, float), np.asarray(coefficients, float)
    kept = lam > 0
    return float((c[kept] * lam[kept]).sum() / c[kept].sum())


def constant_spectrum(
    lrs: np.ndarray, eigenvalues: np.ndarray, coefficients: np.ndarray, *, steps: int
) -> np.ndarray:
    """The formula with every λ_k replaced by λ̄ (one mode of weight Σ c_k)."""
    lam = mean_eigenvalue(eigenvalues, coefficients)
    total = float(np.asarray(coefficients, float)[np.asarray(eigenvalues) > 0].sum())
    return gradient_imbalance_sum(lrs, [lam], [total], steps=steps)


def random_coefficients(
    eigenvalues: np.ndarray, total: float, *, rng: np.random.Generator
) -> np.ndarray:
    """c_k ∝ z_k² over the modes with λ_k > 0 (z ~ N(0, I)), summing to ``total``."""
    lam = np.asarray(eigenvalues, float)
    weights = np.where(lam > 0, rng.standard_normal(lam.size) ** 2, 0.0)
    return total * weights / weights.sum()


def random_directions(
    lrs: np.ndarray,
    eigenvalues: np.ndarray,
    total: float,
    *,
    steps: int,
    rng: np.random.Generator,
    draws: int = RANDOM_DRAWS,
) -> np.ndarray:
    """S(η) of ``draws`` random-direction coefficient sets, shape (draws, η)."""
    lam = np.asarray(eigenvalues, float)
    kept = lam > 0
    return np.stack(
        [
            gradient_imbalance_sum(
                lrs, lam[kept], random_coefficients(lam, total, rng=rng)[kept], steps=steps
            )
            for _ in range(draws)
        ]
    )


def median_relative_error(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Median over η of |predicted − measured| / measured (NaN if nothing is comparable)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    usable = np.isfinite(predicted) & np.isfinite(measured) & (measured > 0)
    if not usable.any():
        return float("nan")
    return float(np.median(np.abs(predicted[usable] - measured[usable]) / measured[usable]))


def log_correlation(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Pearson R of ln predicted and ln measured (NaN with < 3 positive pairs or no spread)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    usable = (predicted > 0) & (measured > 0) & np.isfinite(predicted) & np.isfinite(measured)
    if usable.sum() < 3:
        return float("nan")
    a, b = np.log(predicted[usable]), np.log(measured[usable])
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
