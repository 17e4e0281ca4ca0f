"""Least-squares fits the product reports: drift exponent α, τ(η), decay timescales, width laws."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lradvisor.errors import LRAdvisorError
from lradvisor.records import PowerLawFit, TauFit
from lradvisor.theory import _checks

_MIN_POINTS = 3


class _Line(NamedTuple):
    slope: float
    intercept: float
    r2: float
    slope_stderr: float


def _fit_line(x: np.ndarray, y: np.ndarray, *, what: str) -> _Line:
    """Ordinary least squares y ≈ intercept + slope·x, its R² and the slope's standard error."""
    _checks.enough_points(x.size, minimum=_MIN_POINTS, what=what)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise LRAdvisorError(f"{what} needs at least 2 distinct x values, but got 1.")
    if np.ptp(y) == 0:
        # A flat line fits exactly but explains no variance: R² is 0/0.
        return _Line(0.0, float(y[0]), math.nan, 0.0)
    slope = float(dx @ (y - y.mean())) / sxx
    intercept = float(y.mean() - slope * x.mean())
    residual = y - intercept - slope * x
    ssr = float(residual @ residual)
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ssr / sst
    stderr = math.sqrt(ssr / (x.size - 2) / sxx)
    return _Line(slope, intercept, r2, stderr)


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise LRAdvisorError(f"confidence must be in (0, 1), but got {confidence!r}.")
    return float(confidence)


def _seed_columns(etas: object, drifts: object) -> tuple[np.ndarray, np.ndarray]:
    """Checked η of shape (n,) and |drift| of shape (n, n_seed), non-finite entries as NaN."""
    eta = _checks.positive_array("etas", etas, ndim=1)
    magnitude = np.abs(np.asarray(drifts, dtype=float))
    if magnitude.ndim not in (1, 2):
        raise LRAdvisorError(
            f"drifts must have shape (n_eta,) or (n_eta, n_seed), but got {magnitude.shape}."
        )
    _checks.same_length("etas", eta, "drifts", magnitude)
    columns = magnitude.reshape(eta.size, -1)
    return eta, np.where(np.isfinite(columns), columns, np.nan)


def _bootstrap_slopes(
    log_eta: np.ndarray, columns: np.ndarray, *, n_bootstrap: int, seed: object
) -> np.ndarray:
    """Slopes refitted on seed columns resampled with replacement, all resamples at once.

    A resample draws each column a multinomial number of times; per η the mean is taken over
    the drawn finite entries, and η with none (or a zero mean) are left out of that refit.
    """
    n_seed = columns.shape[1]
    finite = np.isfinite(columns)
    draws = np.random.default_rng(seed).multinomial(
        n_seed, np.full(n_seed, 1 / n_seed), size=n_bootstrap
    )
    totals = draws @ np.where(finite, columns, 0.0).T
    counts = draws @ finite.T.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mean = np.log(totals / counts)
    used = np.isfinite(log_mean)
    weight = used.astype(float)
    log_mean = np.where(used, log_mean, 0.0)
    n_used = weight.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_bar = (weight * log_eta).sum(axis=1) / n_used
        y_bar = (weight * log_mean).sum(axis=1) / n_used
        dx = log_eta - x_bar[:, np.newaxis]
        sxx = (weight * dx**2).sum(axis=1)
        slopes = (weight * dx * (log_mean - y_bar[:, np.newaxis])).sum(axis=1) / sxx
    return np.where((n_used >= _MIN_POINTS) & (sxx > 0), slopes, np.nan)


def fit_power_law(
    etas: np.ndarray,
    drifts: np.ndarray,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PowerLawFit:
    """Drift exponent α: least-squares line through (ln η, ln mean-over-seeds |drift|).

    .. math::

        \\ln \\overline{|D|}(\\eta_i) \\approx \\text{intercept} + \\alpha \\ln \\eta_i,
        \\qquad
        \\overline{|D|}(\\eta_i) = \\frac{1}{|F_i|} \\sum_{s \\in F_i} |D_{i s}|

    with η_i = ``etas[i]``, D_is = ``drifts[i, s]`` and F_i the seeds whose drift at η_i is
    finite (docs/theory.md §3, the published procedure).

    Args:
        etas: learning rates > 0, shape ``(n_eta,)``.
        drifts: drifts, shape ``(n_eta,)`` or ``(n_eta, n_seed)``; signs are dropped, NaN and
            ±inf (diverged trials) are ignored per seed.
        n_bootstrap: resamples of the seed columns for the interval.
        seed: seed of ``np.random.default_rng`` for the bootstrap; the fit is deterministic.
        confidence: coverage of ``alpha_ci``, in (0, 1).

    Returns:
        :class:`~lradvisor.records.PowerLawFit`. ``alpha_ci`` is the percentile interval of
        the refitted slopes when ≥ 2 seeds carry data ("bootstrap-seeds"), else the Student-t
        interval of the OLS slope ("t"). ``alpha_stderr`` is the OLS standard error either
        way; ``n_points`` counts the η that entered the fit.

    .. note::
        An η is dropped when no seed is finite there or its mean drift is 0 (ln 0 is
        undefined). With few seeds the percentile interval is too narrow: simulated on the
        paper's 10 learning rates with log-normal seed noise (σ = 0.3, 2000 data sets), a
        nominal 95 % interval covered the true α 75 % of the time with 3 seeds, 85 % with
        5, 89 % with 10 and 93 % with 20 (the 1-seed t interval: 95 %). Read it as a lower
        bound on the uncertainty.
        ``r2`` is NaN when all mean drifts are equal.
    """
    eta, columns = _seed_columns(etas, drifts)
    n_bootstrap = _checks.positive_int("n_bootstrap", n_bootstrap)
    confidence = _check_confidence(confidence)
    finite = np.isfinite(columns)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_mean = np.log(np.where(finite, columns, 0.0).sum(axis=1) / finite.sum(axis=1))
    keep = np.isfinite(log_mean)
    eta, columns, log_mean = eta[keep], columns[keep], log_mean[keep]
    line = _fit_line(np.log(eta), log_mean, what="fit_power_law")
    seeds_with_data = int(np.isfinite(columns).any(axis=0).sum())
    if seeds_with_data >= 2:
        slopes = _bootstrap_slopes(np.log(eta), columns, n_bootstrap=n_bootstrap, seed=seed)
        tail = (1 - confidence) / 2
        low, high = np.nanquantile(slopes, [tail, 1 - tail])
        method = "bootstrap-seeds"
    else:
        from scipy import special  # here, not at import: scipy.special costs ~0.2 s to load

        half = special.stdtrit(eta.size - 2, (1 + confidence) / 2) * line.slope_stderr
        low, high = line.slope - half, line.slope + half
        method = "t"
    return PowerLawFit(
        alpha=line.slope,
        intercept=line.intercept,
        r2=line.r2,
        alpha_ci=(float(low), float(high)),
        alpha_stderr=line.slope_stderr,
        ci_method=method,
        n_points=int(eta.size),
    )


def fit_tau(etas: np.ndarray, taus: np.ndarray) -> TauFit:
    """Spectral-compression timescale model τ(η) = a/η + b, least squares on (1/η, τ).

    .. math::

        \\tau(\\eta) \\approx \\frac{a}{\\eta} + b

    with η = ``etas`` (> 0) and τ = ``taus`` (docs/theory.md §5).

    .. note::
        Pairs whose τ is not finite (no decay was measured, see
        :func:`fit_decay_timescale`) are left out; at least 3 must remain.
    """
    eta = _checks.positive_array("etas", etas, ndim=1)
    tau = _checks.vector("taus", taus)
    _checks.same_length("etas", eta, "taus", tau)
    usable = np.isfinite(tau)
    line = _fit_line(1.0 / eta[usable], tau[usable], what="fit_tau")
    return TauFit(a=line.slope, b=line.intercept, r2=line.r2)


def fit_decay_timescale(steps: np.ndarray, values: np.ndarray, *, start: int = 0) -> float:
    """Exponential decay timescale τ of a positive series, from a log-linear fit after ``start``.

    .. math::

        \\ln v(t) \\approx \\beta_0 - t / \\tau \\quad (t > t_0)

    with t = ``steps``, v = ``values`` (e.g. mean_i (1 − q_i)(t)) and t₀ = ``start``.

    Returns:
        τ in steps; ``inf`` when the fitted slope is ≥ 0 (no decay).

    .. note::
        Entries that are ≤ 0 or not finite (a float32 series that underflowed) are left out.
        A single exponential is a heuristic: if the series bends, the fit averages the rates.
    """
    t = _checks.finite_array("steps", steps, ndim=1)
    v = _checks.vector("values", values)
    _checks.same_length("steps", t, "values", v)
    usable = (t > start) & np.isfinite(v) & (v > 0)
    line = _fit_line(t[usable], np.log(v[usable]), what="fit_decay_timescale")
    return -1.0 / line.slope if line.slope < 0 else math.inf


def e_folding_time(steps: np.ndarray, values: np.ndarray) -> float:
    """Steps until a positive series first falls by a factor e from its first value.

    .. math::

        \\tau_e = \\min\\{t : v(t) \\le v(t_0)/e\\}

    with t = ``steps`` (increasing), v = ``values``; the crossing is interpolated linearly in
    ln v between the two recorded steps around it.

    Returns:
        τ_e in steps; ``inf`` when the series never falls that far.

    .. note::
        docs/theory.md §5 defines the compression timescale as the steps for a decay by a factor e.
        Unlike a log-linear fit over a fixed window, τ_e does not assume a single exponential:
        1 − q̄(t) decays more like a power of t once the data are separated, and a window fit
        then measures the window rather than the rate.
    """
    t = _checks.finite_array("steps", steps, ndim=1)
    v = _checks.vector("values", values)
    _checks.same_length("steps", t, "values", v)
    usable = np.isfinite(v) & (v > 0)
    t, v = t[usable], v[usable]
    if len(v) < 2:
        raise LRAdvisorError(f"e_folding_time needs at least 2 positive values, but got {len(v)}.")
    target = math.log(v[0]) - 1.0
    logs = np.log(v)
    below = np.flatnonzero(logs <= target)
    if not len(below):
        return math.inf
    j = int(below[0])
    fraction = (logs[j - 1] - target) / (logs[j - 1] - logs[j])
    return float(t[j - 1] + fraction * (t[j] - t[j - 1]))


def fit_width_law(widths: np.ndarray, lambda_max: np.ndarray) -> tuple[float, float, float]:
    """Power law of the initial sharpness in the width, fitted on log-log axes.

    .. math::

        \\lambda_{\\max}(m) \\approx C \\, m^{p}

    with m = ``widths``, λ_max(m) = ``lambda_max``; returns (C, p, R²) as
    ``(coefficient, exponent, r2)``.

    .. note::
        docs/theory.md §6 only says λ_max at initialisation depends on width; the power-law form
        is a heuristic for interpolating between measured widths, not a result of the paper.
    """
    m = _checks.positive_array("widths", widths, ndim=1)
    sharpness = _checks.positive_array("lambda_max", lambda_max, ndim=1)
    _checks.same_length("widths", m, "lambda_max", sharpness)
    line = _fit_line(np.log(m), np.log(sharpness), what="fit_width_law")
    return math.exp(line.intercept), line.slope, line.r2


def eos_by_width(widths: np.ndarray, coefficient: float, exponent: float) -> np.ndarray:
    """Edge-of-Stability learning rate predicted at each width from a fitted width law.

    .. math::

        \\eta_{\\mathrm{EoS}}(m) = \\frac{2}{C \\, m^{p}}

    with m = ``widths``, C = ``coefficient`` (> 0) and p = ``exponent``.
    """
    m = _checks.positive_array("widths", widths)
    scale = _checks.positive_float("coefficient", coefficient)
    power = float(_checks.finite_array("exponent", exponent, ndim=0))
    return 2.0 / (scale * m**power)


def local_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Slopes of ln y against ln x between consecutive points.

    .. math::

        s_i = \\frac{\\ln y_{i+1} - \\ln y_i}{\\ln x_{i+1} - \\ln x_i}

    with x = ``x`` (> 0, strictly increasing) and y = ``y``.

    Returns:
        Shape ``(n - 1,)``; NaN where either y is ≤ 0 or not finite.
    """
    grid = _checks.positive_array("x", x, ndim=1)
    values = _checks.vector("y", y)
    _checks.same_length("x", grid, "y", values)
    if np.any(np.diff(grid) <= 0):
        raise LRAdvisorError(f"x must be strictly increasing, but got {_checks.shown(grid)}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_y = np.log(np.where(values > 0, values, np.nan))
    return np.diff(log_y) / np.diff(np.log(grid))


def additive_interaction(table: np.ndarray) -> float:
    """RMS residual of the best additive (row + column) model of a two-way table.

    .. math::

        a_{ij} \\approx \\mu + r_i + c_j, \\qquad
        \\text{RMS} = \\sqrt{\\tfrac{1}{IJ} \\sum_{ij}
            (a_{ij} - \\bar a_{i\\cdot} - \\bar a_{\\cdot j} + \\bar a_{\\cdot\\cdot})^2}

    with a = ``table`` (shape I × J, I, J ≥ 2), e.g. α over activation ε × loss ε (E12).

    Returns:
        0 when the two factors' effects add exactly; larger the more they interact.

    .. note::
        The least-squares additive fit of a complete two-way table is the row mean plus the
        column mean minus the grand mean; the residual is the interaction term.
    """
    a = _checks.finite_array("table", table, ndim=2)
    if min(a.shape) < 2:
        raise LRAdvisorError(f"table must be at least 2 × 2, but got shape {a.shape}.")
    residual = a - a.mean(axis=1, keepdims=True) - a.mean(axis=0, keepdims=True) + a.mean()
    return float(np.sqrt((residual**2).mean()))
