"""Power-law, τ(η), decay-timescale and width-law fits recover what synthetic data hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lradvisor.errors import LRAdvisorError
from lradvisor.theory import (
    eos_by_width,
    eos_learning_rate,
    fit_decay_timescale,
    fit_power_law,
    fit_tau,
    fit_width_law,
    gradient_imbalance_sum,
    local_alpha,
    local_slope,
)

EXACT = 1e-12
PAPER_ETAS = np.array([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5, 1.0])


@settings(max_examples=100, deadline=None)
@given(
    st.floats(-3.0, 3.0).filter(lambda a: abs(a) > 1e-3), st.floats(1e-3, 1e3), st.integers(3, 12)
)
def test_exact_power_law_is_recovered(alpha, scale, n):
    etas = np.geomspace(1e-4, 1.0, n)
    fit = fit_power_law(etas, scale * etas**alpha)
    assert fit.alpha == pytest.approx(alpha, abs=EXACT)
    assert fit.intercept == pytest.approx(math.log(scale), abs=1e-10)
    assert fit.r2 == pytest.approx(1.0, abs=EXACT)
    assert fit.ci_method == "t"
    assert fit.n_points == n


def test_seed_offsets_keep_the_mean_a_power_law_and_collapse_the_bootstrap():
    offsets = np.array([0.5, 1.0, 2.0, 4.0])
    drifts = -(PAPER_ETAS[:, None] ** 1.16) * offsets  # signs are dropped
    fit = fit_power_law(drifts=drifts, etas=PAPER_ETAS, n_bootstrap=500)
    assert fit.alpha == pytest.approx(1.16, abs=EXACT)
    assert fit.ci_method == "bootstrap-seeds"
    assert fit.alpha_ci[0] == pytest.approx(1.16, abs=1e-10)
    assert fit.alpha_ci[1] == pytest.approx(1.16, abs=1e-10)


def noisy_drifts(n_seed: int, seed: int, alpha: float = 1.16, sigma: float = 0.3):
    noise = np.random.default_rng(seed).standard_normal((PAPER_ETAS.size, n_seed))
    return 2.5 * PAPER_ETAS[:, None] ** alpha * np.exp(sigma * noise)


def test_single_seed_matches_scipy_linregress():
    drifts = noisy_drifts(1, seed=10)[:, 0]
    reference = stats.linregress(np.log(PAPER_ETAS), np.log(drifts))
    fit = fit_power_law(PAPER_ETAS, drifts)
    assert fit.alpha == pytest.approx(reference.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(reference.intercept, rel=1e-12)
    assert fit.r2 == pytest.approx(reference.rvalue**2, rel=1e-12)
    assert fit.alpha_stderr == pytest.approx(reference.stderr, rel=1e-12)
    half = stats.t.ppf(0.975, PAPER_ETAS.size - 2) * reference.stderr
    assert fit.alpha_ci == pytest.approx((reference.slope - half, reference.slope + half))


def test_constant_drift_has_zero_alpha_and_undefined_r2():
    fit = fit_power_law(PAPER_ETAS, np.full(PAPER_ETAS.size, 3.0))
    assert fit.alpha == 0.0
    assert math.isnan(fit.r2)


def coverage(n_seed: int, *, trials: int, n_bootstrap: int) -> float:
    hits = 0
    for trial in range(trials):
        fit = fit_power_law(
            PAPER_ETAS, noisy_drifts(n_seed, seed=trial), n_bootstrap=n_bootstrap, seed=trial
        )
        hits += fit.alpha_ci[0] < 1.16 < fit.alpha_ci[1]
    return hits / trials


def test_single_seed_t_interval_has_its_nominal_coverage():
    # 400 data sets: the binomial standard deviation of the coverage is about 0.011.
    assert 0.92 <= coverage(1, trials=400, n_bootstrap=1) <= 0.98


def test_five_seed_bootstrap_under_covers_as_documented():
    assert 0.7 <= coverage(5, trials=300, n_bootstrap=300) <= 0.92


def test_noisy_seeds_bracket_the_true_alpha_and_are_deterministic():
    drifts = noisy_drifts(20, seed=11)
    fit = fit_power_law(PAPER_ETAS, drifts, seed=3)
    assert fit.ci_method == "bootstrap-seeds"
    assert fit.alpha_ci[0] < 1.16 < fit.alpha_ci[1]
    assert fit.alpha_ci[0] < fit.alpha < fit.alpha_ci[1]
    assert fit_power_law(PAPER_ETAS, drifts, seed=3) == fit
    assert fit_power_law(PAPER_ETAS, drifts, seed=4).alpha_ci != fit.alpha_ci


def loop_bootstrap_interval(etas, drifts, *, n_bootstrap, seed, confidence):
    """Reference: one explicit refit per resample, drawing the same seed counts."""
    n_seed = drifts.shape[1]
    draws = np.random.default_rng(seed).multinomial(
        n_seed, np.full(n_seed, 1 / n_seed), size=n_bootstrap
    )
    slopes = []
    for counts in draws:
        resample = np.abs(drifts[:, np.repeat(np.arange(n_seed), counts)])
        resample[~np.isfinite(resample)] = np.nan
        present = np.isfinite(resample).any(axis=1)
        means = np.nanmean(resample[present], axis=1)
        slopes.append(np.polyfit(np.log(etas[present]), np.log(means), 1)[0])
    tail = (1 - confidence) / 2
    return tuple(np.quantile(slopes, [tail, 1 - tail]))


def test_vectorised_bootstrap_matches_an_explicit_loop():
    drifts = noisy_drifts(4, seed=12)
    drifts[2, 1] = np.nan
    drifts[6, [0, 3]] = np.inf
    fit = fit_power_law(PAPER_ETAS, drifts, n_bootstrap=300, seed=5, confidence=0.9)
    reference = loop_bootstrap_interval(PAPER_ETAS, drifts, n_bootstrap=300, seed=5, confidence=0.9)
    assert fit.alpha_ci == pytest.approx(reference, rel=1e-10)


def test_diverged_trials_are_ignored_per_seed_and_empty_etas_dropped():
    drifts = noisy_drifts(3, seed=13)
    drifts[4, 0] = np.nan
    drifts[5, 2] = np.inf
    drifts[9, :] = np.nan
    fit = fit_power_law(PAPER_ETAS, drifts)
    clean = drifts[:9].copy()
    means = np.array([row[np.isfinite(row)].mean() for row in clean])
    reference = stats.linregress(np.log(PAPER_ETAS[:9]), np.log(means))
    assert fit.n_points == 9
    assert fit.alpha == pytest.approx(reference.slope, rel=1e-12)


@pytest.mark.parametrize(
    ("etas", "drifts", "options", "message"),
    [
        ([1e-3, 1e-2], [1.0, 2.0], {}, "needs at least 3 usable points, but got 2"),
        ([1e-3, 1e-2, 0.1], [1.0, np.nan, 2.0], {}, "needs at least 3 usable points, but got 2"),
        ([0.0, 1e-2, 0.1], [1.0, 2.0, 3.0], {}, "etas must be positive"),
        ([1e-3, 1e-2, 0.1], [1.0, 2.0], {}, "must have the same length, but got 3 and 2"),
        ([1e-3, 1e-2, 0.1], np.ones((3, 2, 2)), {}, r"drifts must have shape \(n_eta,\)"),
        ([0.1, 0.1, 0.1], [1.0, 2.0, 3.0], {}, "at least 2 distinct x values"),
        ([1e-3, 1e-2, 0.1], [1.0, 2.0, 3.0], {"confidence": 1.0}, r"confidence must be in \(0"),
        ([1e-3, 1e-2, 0.1], [1.0, 2.0, 3.0], {"n_bootstrap": 0}, "n_bootstrap must be a posit"),
    ],
)
def test_fit_power_law_refuses_bad_input(etas, drifts, options, message):
    with pytest.raises(LRAdvisorError, match=message):
        fit_power_law(etas, drifts, **options)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(-100.0, 100.0))
def test_fit_tau_recovers_a_over_eta_plus_b(a, b):
    etas = np.array([1e-3, 3e-3, 1e-2, 3e-2, 0.1])
    fit = fit_tau(etas, a / etas + b)
    assert fit.a == pytest.approx(a, rel=1e-9)
    assert fit.b == pytest.approx(b, abs=1e-7 * max(1.0, a * 1e3))
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(fit(etas), a / etas + b, rtol=1e-9)


def test_fit_tau_skips_unmeasured_timescales():
    etas = np.array([0.01, 0.02, 0.05, 0.1, 0.2])
    taus = 3.0 / etas + 7.0
    taus[2] = np.inf
    fit = fit_tau(etas, taus)
    assert (fit.a, fit.b) == pytest.approx((3.0, 7.0), rel=1e-10)


def test_decay_timescale_recovers_tau_after_the_transient():
    steps = np.arange(200)
    values = 3.0 * np.exp(-steps / 25.0)
    values[:20] = 50.0  # a catapult-like transient the fit must skip
    values[150:] = 0.0  # float32 underflow
    assert fit_decay_timescale(steps, values, start=19) == pytest.approx(25.0, rel=1e-10)
    assert fit_decay_timescale(steps, values) != pytest.approx(25.0, rel=1e-2)


def test_decay_timescale_is_infinite_without_decay():
    steps = np.arange(10)
    assert fit_decay_timescale(steps, np.exp(steps / 5.0)) == math.inf


def test_decay_timescale_needs_points_after_start():
    with pytest.raises(LRAdvisorError, match="needs at least 3 usable points, but got 1"):
        fit_decay_timescale(np.arange(5), np.ones(5), start=3)


def test_width_law_and_eos_by_width():
    widths = np.array([16.0, 32.0, 64.0, 128.0, 256.0])
    coefficient, exponent, r2 = fit_width_law(widths, 0.8 * widths**0.5)
    assert (coefficient, exponent, r2) == pytest.approx((0.8, 0.5, 1.0), rel=1e-12)
    predicted = eos_by_width(widths, coefficient, exponent)
    expected = [eos_learning_rate(0.8 * m**0.5) for m in widths]
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_width_law([8.0, 16.0, 32.0], [1.0, -1.0, 2.0]), "lambda_max must be pos"),
        (lambda: eos_by_width([8.0], 0.0, 0.5), "coefficient must be a positive finite number"),
        (lambda: eos_by_width([0.0], 1.0, 0.5), "widths must be positive"),
        (lambda: local_slope([1.0, 1.0], [1.0, 2.0]), "x must be strictly increasing"),
    ],
)
def test_width_and_slope_helpers_refuse_bad_input(call, message):
    with pytest.raises(LRAdvisorError, match=message):
        call()


def test_local_slope_of_a_power_law_is_its_exponent():
    x = np.geomspace(1e-3, 1.0, 7)
    np.testing.assert_allclose(local_slope(x, 4.0 * x**1.3), np.full(6, 1.3), rtol=1e-12)


def test_local_slope_is_nan_where_y_is_not_positive():
    slopes = local_slope([1.0, 2.0, 4.0, 8.0], [1.0, 0.0, 4.0, 8.0])
    assert np.isnan(slopes[:2]).all()
    assert slopes[2] == pytest.approx(1.0)


def test_local_slope_of_the_predicted_drift_tracks_local_alpha():
    lambdas, weights, steps = np.array([3.0, 0.4, 0.02]), np.array([1.0, 2.0, 5.0]), 2000
    etas = np.geomspace(1e-5, 0.5, 400)
    drift = etas**2 * gradient_imbalance_sum(etas, lambdas, weights, steps=steps)
    midpoints = np.sqrt(etas[1:] * etas[:-1])
    np.testing.assert_allclose(
        local_slope(etas, drift),
        local_alpha(midpoints, lambdas, weights, steps=steps),
        rtol=2e-3,
    )


def test_e_folding_time_exact_on_an_exponential_and_interpolated():
    from lradvisor.theory import e_folding_time

    t = np.arange(0, 200, 10, dtype=float)
    assert e_folding_time(t, np.exp(-t / 37.0)) == pytest.approx(37.0, rel=1e-12)
    assert e_folding_time(t, 2.0 * np.exp(-t / 55.0)) == pytest.approx(55.0, rel=1e-12)
    assert e_folding_time(t, np.ones_like(t)) == np.inf
    # a power law 1/(1 + t/s) falls by e at t = (e − 1)·s: window-free
    s = 20.0
    assert e_folding_time(
        np.arange(0, 400, 0.5), 1 / (1 + np.arange(0, 400, 0.5) / s)
    ) == pytest.approx((np.e - 1) * s, rel=1e-3)
