"""The spectral formula S(η), its local exponent α(η) and the Edge-of-Stability helpers."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lradvisor.errors import LRAdvisorError
from lradvisor.theory import (
    crossover_rates,
    eos_learning_rate,
    gradient_imbalance_sum,
    is_stable,
    local_alpha,
    quadratic_divergence_factor,
    spectral,
)

# Tolerances, set once. The closed form and the explicit loop differ by round-off only.
FORMULATION_RTOL = 1e-10
BOUND_SLACK = 1e-9

positive_eigenvalues = st.lists(st.floats(1e-3, 1e3, allow_nan=False), min_size=1, max_size=6).map(
    np.array
)
step_counts = st.integers(1, 5000)


@st.composite
def spectra(draw, *, eigenvalues=positive_eigenvalues):
    """(λ, c) with c ≥ 0 and at least one positive coefficient."""
    lambdas = draw(eigenvalues)
    weights = draw(st.lists(st.floats(0.0, 10.0), min_size=lambdas.size, max_size=lambdas.size))
    weights = np.array(weights)
    weights[draw(st.integers(0, lambdas.size - 1))] += 0.5
    return lambdas, weights


def explicit_sum(eta: float, lambdas: np.ndarray, weights: np.ndarray, steps: int) -> float:
    rho = 1.0 - eta * lambdas
    return float(sum((weights * rho ** (2 * t)).sum() for t in range(steps)))


@settings(max_examples=150, deadline=None)
@given(
    spectra(eigenvalues=st.lists(st.floats(-1.0, 3.0), min_size=1, max_size=5).map(np.array)),
    st.floats(1e-4, 1.2),
    st.integers(1, 60),
)
def test_closed_form_matches_the_explicit_geometric_sum(spectrum, eta, steps):
    lambdas, weights = spectrum
    predicted = gradient_imbalance_sum(eta, lambdas, weights, steps=steps)
    assert predicted == pytest.approx(
        explicit_sum(eta, lambdas, weights, steps), rel=FORMULATION_RTOL
    )


def test_zero_and_eos_curvature_take_the_limit_t():
    # ηλ = 0 and ηλ = 2 make the closed form 0/0; both geometric sums equal T.
    got = gradient_imbalance_sum(0.5, [0.0, 4.0], [1.0, 3.0], steps=37)
    assert got == pytest.approx(37 * 1.0 + 37 * 3.0, rel=1e-14)


@settings(max_examples=100, deadline=None)
@given(spectra(), step_counts)
def test_small_eta_gives_alpha_two_and_s_equal_to_c_t(spectrum, steps):
    lambdas, weights = spectrum
    eta = 1e-6 / (lambdas.max() * steps)
    assert abs(local_alpha(eta, lambdas, weights, steps=steps) - 2.0) < 1e-3
    assert gradient_imbalance_sum(eta, lambdas, weights, steps=steps) == pytest.approx(
        weights.sum() * steps, rel=1e-5
    )


def test_converged_single_mode_has_alpha_two_over_two_minus_eta_lambda():
    # ρ^{2T} = 0.95^{4000} ≈ 1e-89, so α = 2/(2 − ηλ) exactly in float64.
    alpha = local_alpha(0.05, [1.0], [1.0], steps=2000)
    assert alpha == pytest.approx(2.0 / 1.95, abs=1e-12)
    assert 1.0 <= alpha < 1.1


def test_alpha_at_the_crossover_rate():
    steps = 100_000
    eta_star = crossover_rates(np.array([1.0]), steps=steps)[0]
    expected = 1.0 + 2.0 / (math.e**2 - 1.0)
    assert local_alpha(eta_star, [1.0], [1.0], steps=steps) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 10, 2000])
def test_single_mode_at_the_edge_of_stability(steps):
    # ρ = −1: S returns to c·T and α = 2T (ln S rises with slope 2(T − 1) in ln η there).
    assert gradient_imbalance_sum(2.0, [1.0], [3.0], steps=steps) == pytest.approx(3.0 * steps)
    assert local_alpha(2.0, [1.0], [3.0], steps=steps) == pytest.approx(2.0 * steps, rel=1e-12)


def test_alpha_is_two_where_rho_is_zero():
    assert local_alpha(1.0, [1.0], [1.0], steps=50) == 2.0


@settings(max_examples=200, deadline=None)
@given(spectra(), step_counts, st.floats(1e-6, 1.0, exclude_max=True))
def test_alpha_is_at_least_one_below_the_edge_of_stability(spectrum, steps, share):
    lambdas, weights = spectrum
    eta = share * eos_learning_rate(lambdas.max())
    assert local_alpha(eta, lambdas, weights, steps=steps) >= 1.0 - BOUND_SLACK


@settings(max_examples=200, deadline=None)
@given(spectra(), step_counts, st.floats(1e-6, 1.0))
def test_alpha_is_at_most_two_up_to_one_over_lambda_max(spectrum, steps, share):
    lambdas, weights = spectrum
    eta = share / lambdas.max()
    assert local_alpha(eta, lambdas, weights, steps=steps) <= 2.0 + BOUND_SLACK


def test_alpha_exceeds_two_between_one_and_two_over_lambda():
    etas = np.array([1.2, 1.5, 1.9])
    assert np.all(local_alpha(etas, [1.0], [1.0], steps=100) > 2.0)


def finite_difference_alpha(eta, lambdas, weights, steps, h=1e-6):
    up = gradient_imbalance_sum(eta * math.exp(h), lambdas, weights, steps=steps)
    down = gradient_imbalance_sum(eta * math.exp(-h), lambdas, weights, steps=steps)
    return 2.0 + (math.log(up) - math.log(down)) / (2 * h)


@settings(max_examples=150, deadline=None)
@given(
    spectra(eigenvalues=st.lists(st.floats(-1.0, 10.0), min_size=1, max_size=5).map(np.array)),
    st.integers(1, 200),
    st.floats(1e-4, 3.0),
)
def test_analytic_alpha_matches_a_finite_difference_of_ln_s(spectrum, steps, share):
    lambdas, weights = spectrum
    # |ηλ| ≤ 3 keeps S finite for T ≤ 200 (|ρ|^{2T} ≤ 4^400), on both sides of the edge.
    eta = share / max(np.abs(lambdas).max(), 1e-3)
    analytic = local_alpha(eta, lambdas, weights, steps=steps)
    numeric = finite_difference_alpha(eta, lambdas, weights, steps)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-5)


@settings(max_examples=150, deadline=None)
@given(spectra(), step_counts, st.floats(1e-4, 1.0), st.floats(1e-4, 1.0))
def test_s_falls_and_drift_rises_below_the_edge_of_stability(spectrum, steps, a, b):
    lambdas, weights = spectrum
    low, high = sorted((a, b))
    if high < low * (1 + 1e-6):
        return
    eos = eos_learning_rate(lambdas.max())
    etas = np.array([low, high]) * eos
    s_low, s_high = gradient_imbalance_sum(etas, lambdas, weights, steps=steps)
    drift_low, drift_high = etas**2 * np.array([s_low, s_high])
    assert drift_high > drift_low
    assert etas[1] * s_high >= etas[0] * s_low * (1 - 1e-12)
    if high <= 0.5:
        assert s_high <= s_low * (1 + 1e-12)


@settings(max_examples=100, deadline=None)
@given(spectra(), step_counts, st.floats(1e-6, 1.0))
def test_s_lies_between_sum_c_and_sum_c_t_below_the_edge(spectrum, steps, share):
    lambdas, weights = spectrum
    s = gradient_imbalance_sum(share * 2.0 / lambdas.max(), lambdas, weights, steps=steps)
    assert weights.sum() * (1 - 1e-12) <= s <= weights.sum() * steps * (1 + 1e-12)


def test_finite_t_term_stays_bounded_where_the_converged_approximation_diverges():
    steps = 2000
    eta = 2.0 - np.array([1e-2, 1e-4, 1e-8])
    converged_approximation = 1.0 / (eta * (2.0 - eta))
    s = gradient_imbalance_sum(eta, [1.0], [1.0], steps=steps)
    assert np.all(s <= steps)
    assert converged_approximation[-1] > 1e7


def test_beyond_the_edge_s_grows_geometrically_and_may_overflow_silently():
    rho = 1.0 - 2.1
    steps = 40
    closed = (1 - rho ** (2 * steps)) / (2.1 * (2 - 2.1))
    assert gradient_imbalance_sum(2.1, [1.0], [1.0], steps=steps) == pytest.approx(closed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = gradient_imbalance_sum(3.0, [1.0, 0.5], [1.0, 1.0], steps=2000)
        alpha = local_alpha(3.0, [1.0, 0.5], [1.0, 1.0], steps=2000)
    assert s == np.inf
    # The unstable mode dominates; for ρ^{2T} ≫ 1 its mean step is T − 1 − 1/(ρ² − 1),
    # so α → 2 + 2u (T − 1 − 1/(ρ² − 1)) / (u − 1) with u = 3, ρ² = 4.
    assert alpha == pytest.approx(2.0 + 2 * 3.0 * (1999 - 1 / 3) / 2.0, rel=1e-12)


def test_a_weightless_unstable_mode_contributes_nothing():
    s = gradient_imbalance_sum(3.0, [1.0, 0.1], [0.0, 2.0], steps=5000)
    assert s == pytest.approx(2.0 / (0.3 * 1.7), rel=1e-12)


def test_output_has_the_shape_of_eta():
    etas = np.full((2, 3), 0.1)
    assert gradient_imbalance_sum(etas, [1.0, 2.0], [1.0, 1.0], steps=5).shape == (2, 3)
    assert local_alpha(etas, [1.0, 2.0], [1.0, 1.0], steps=5).shape == (2, 3)
    assert gradient_imbalance_sum(0.1, [1.0], [1.0], steps=5).shape == ()


def test_crossover_rates():
    rates = crossover_rates(np.array([2.0, 0.0, -1.0]), steps=10)
    assert rates[0] == pytest.approx(0.05)
    assert np.all(np.isinf(rates[1:]))


@settings(max_examples=200, deadline=None)
@given(positive_eigenvalues, st.floats(1e-6, 3.0))
def test_divergence_factor_exceeds_one_exactly_beyond_the_edge(lambdas, share):
    eta = share * 2.0 / lambdas.max()
    factor = quadratic_divergence_factor(eta, lambdas)
    assert (factor > 1.0) == (eta * lambdas.max() > 2.0)
    assert is_stable(eta, lambdas.max()) == (eta * lambdas.max() < 2.0)
    if abs(share - 1.0) > 1e-9:
        assert (factor > 1.0) == (share > 1.0)


def test_divergence_factor_with_negative_curvature_always_exceeds_one():
    assert quadratic_divergence_factor(1e-3, [-0.5, 1.0]) > 1.0


def test_eos_learning_rate_and_is_stable():
    assert eos_learning_rate(4.0) == 0.5
    assert is_stable(0.49, 4.0) is True
    assert is_stable(0.5, 4.0) is False
    assert is_stable(np.array([0.1, 0.6]), 4.0).tolist() == [True, False]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_eos_learning_rate_rejects_non_positive_curvature(bad):
    with pytest.raises(LRAdvisorError, match="lambda_max must be a positive finite number"):
        eos_learning_rate(bad)


@pytest.mark.parametrize("steps", [0, -3, 1.5, True])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(LRAdvisorError, match=r"steps must be a positive integer, but got"):
        gradient_imbalance_sum(0.1, [1.0], [1.0], steps=steps)


@pytest.mark.parametrize(
    ("eta", "lambdas", "weights", "message"),
    [
        (0.0, [1.0], [1.0], "eta must be positive"),
        (-0.1, [1.0], [1.0], "eta must be positive"),
        (math.nan, [1.0], [1.0], "eta must be finite"),
        (0.1, [1.0, 2.0], [1.0], "must have the same length, but got 2 and 1"),
        (0.1, [1.0], [-1.0], "coefficients must be non-negative"),
        (0.1, [[1.0]], [1.0], "eigenvalues must have 1 axis"),
        (0.1, [], [], "at least 1 mode"),
    ],
)
def test_bad_spectra_are_refused(eta, lambdas, weights, message):
    with pytest.raises(LRAdvisorError, match=message):
        gradient_imbalance_sum(eta, lambdas, weights, steps=10)


def test_alpha_needs_a_positive_coefficient():
    with pytest.raises(LRAdvisorError, match="coefficients must not all be zero"):
        local_alpha(0.1, [1.0, 2.0], [0.0, 0.0], steps=10)


def test_docstring_examples_run():
    assert doctest.testmod(spectral).failed == 0
