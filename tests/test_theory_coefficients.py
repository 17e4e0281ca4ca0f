"""Mode coefficients c_k from the initial gradient, the linear-network recipe, spectrum R."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lradvisor.errors import LRAdvisorError
from lradvisor.records import ModeCoefficients
from lradvisor.theory import (
    linear_network_coefficients,
    mode_coefficients,
    spectrum_correlation,
)

RTOL = 1e-12


def orthonormal_basis(size: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((size, size)))
    return q


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 12),
    st.integers(0, 2**32 - 1),
    st.floats(-5.0, 5.0).filter(lambda d: abs(d) > 1e-6),
    st.booleans(),
)
def test_coefficients_sum_to_the_initial_imbalance(size, seed, delta0, positive_only):
    rng = np.random.default_rng(seed)
    basis = orthonormal_basis(size, seed)
    lambdas = rng.uniform(-1.0, 3.0, size)
    lambdas[0] = 1.0  # at least one kept mode
    result = mode_coefficients(
        rng.standard_normal(size), basis, lambdas, delta0=delta0, positive_only=positive_only
    )
    assert isinstance(result, ModeCoefficients)
    assert result.coefficients.sum() == pytest.approx(abs(delta0), rel=RTOL)
    assert np.all(result.coefficients >= 0)
    assert 0.0 <= result.outside_fraction <= 1.0


def test_complete_basis_leaves_nothing_outside():
    basis = orthonormal_basis(8, 1)
    gradient = np.random.default_rng(2).standard_normal(8)
    result = mode_coefficients(gradient, basis, np.linspace(1.0, 8.0, 8), delta0=0.3)
    assert result.outside_fraction == pytest.approx(0.0, abs=1e-12)
    assert result.eigenvalues.tolist() == np.linspace(1.0, 8.0, 8).tolist()


def test_half_basis_reports_the_missing_gradient_mass():
    basis = orthonormal_basis(10, 3)
    # 1² + 2² inside the first five directions, 3² outside: outside share 9 / 14.
    gradient = 1.0 * basis[:, 0] + 2.0 * basis[:, 4] + 3.0 * basis[:, 7]
    result = mode_coefficients(gradient, basis[:, :5], np.ones(5), delta0=-1.4)
    assert result.outside_fraction == pytest.approx(9.0 / 14.0, rel=RTOL)
    expected = np.array([1.0, 0.0, 0.0, 0.0, 4.0]) / 5.0 * 1.4
    np.testing.assert_allclose(result.coefficients, expected, rtol=RTOL, atol=1e-14)


def test_non_positive_modes_are_dropped_and_counted_outside():
    basis = np.eye(3)
    gradient = np.array([1.0, 1.0, 2.0])
    lambdas = np.array([2.0, -0.5, 0.0])
    kept = mode_coefficients(gradient, basis, lambdas, delta0=1.0)
    assert kept.eigenvalues.tolist() == [2.0]
    assert kept.coefficients.tolist() == [1.0]
    assert kept.outside_fraction == pytest.approx(5.0 / 6.0, rel=RTOL)
    everything = mode_coefficients(gradient, basis, lambdas, delta0=1.0, positive_only=False)
    np.testing.assert_allclose(everything.coefficients, [1 / 6, 1 / 6, 4 / 6], rtol=RTOL)
    assert everything.outside_fraction == pytest.approx(0.0, abs=1e-15)


def test_coefficients_ignore_gradient_scale_and_sign():
    basis = orthonormal_basis(6, 4)
    gradient = np.random.default_rng(5).standard_normal(6)
    lambdas = np.arange(1.0, 7.0)
    base = mode_coefficients(gradient, basis, lambdas, delta0=2.0).coefficients
    scaled = mode_coefficients(-7.5 * gradient, basis, lambdas, delta0=2.0).coefficients
    np.testing.assert_allclose(scaled, base, rtol=1e-12)


def test_float32_eigenvectors_are_accepted():
    basis = orthonormal_basis(20, 6).astype(np.float32)
    gradient = np.random.default_rng(7).standard_normal(20).astype(np.float32)
    result = mode_coefficients(gradient, basis, np.ones(20), delta0=1.0)
    assert result.outside_fraction < 1e-5


@pytest.mark.parametrize(
    ("gradient", "vectors", "lambdas", "message"),
    [
        (np.ones(3), np.eye(3)[:, :2], np.ones(3), r"shape \(len\(gradient\), len\(eigenval"),
        (np.zeros(3), np.eye(3), np.ones(3), "gradient must be non-zero"),
        (np.ones(3), 2.0 * np.eye(3), np.ones(3), "eigenvectors must be orthonormal columns"),
        (np.ones(3), np.eye(3), -np.ones(3), "must carry a positive total"),
        (np.array([1.0, 0.0]), np.eye(2)[:, 1:], np.ones(1), "must carry a positive total"),
        (np.ones(2), np.eye(2), np.array([1.0, np.nan]), "eigenvalues must be finite"),
    ],
)
def test_mode_coefficients_refuse_bad_input(gradient, vectors, lambdas, message):
    with pytest.raises(LRAdvisorError, match=message):
        mode_coefficients(gradient, vectors, lambdas, delta0=1.0)


def test_linear_network_coefficients_weight_error_by_squared_data_eigenvalue():
    # masses e²λ² = [1·9, 4·1] = [9, 4]
    got = linear_network_coefficients([1.0, 2.0], [3.0, 1.0], delta0=-2.6)
    np.testing.assert_allclose(got, [1.8, 0.8], rtol=RTOL)


def test_linear_network_vector_error_uses_its_squared_norm():
    vector = np.array([[3.0, 4.0], [0.0, 1.0]])
    scalar = np.array([5.0, 1.0])
    np.testing.assert_allclose(
        linear_network_coefficients(vector, [1.0, 2.0], delta0=1.0),
        linear_network_coefficients(scalar, [1.0, 2.0], delta0=1.0),
        rtol=RTOL,
    )


@pytest.mark.parametrize(
    ("error", "lambdas", "message"),
    [
        ([1.0, 2.0], [1.0], "must have the same length, but got 2 and 1"),
        (1.0, [1.0], "initial_error must have one entry per mode"),
        ([0.0, 0.0], [1.0, 2.0], "must carry a positive total"),
    ],
)
def test_linear_network_coefficients_refuse_bad_input(error, lambdas, message):
    with pytest.raises(LRAdvisorError, match=message):
        linear_network_coefficients(error, lambdas, delta0=1.0)


def test_sorted_and_matched_correlation_differ_on_a_permuted_spectrum():
    spectrum = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    permuted = spectrum[[3, 0, 5, 1, 4, 2]]
    assert spectrum_correlation(spectrum, permuted) == pytest.approx(1.0, abs=1e-12)
    assert spectrum_correlation(spectrum, permuted, matched=True) < 0.5


def test_matched_correlation_is_pearson():
    rng = np.random.default_rng(8)
    a, b = rng.exponential(size=12), rng.exponential(size=12)
    assert spectrum_correlation(a, b, matched=True) == pytest.approx(
        np.corrcoef(a, b)[0, 1], rel=1e-12
    )


def test_sorting_alone_makes_independent_spectra_look_correlated():
    rng = np.random.default_rng(9)
    draws = rng.exponential(size=(200, 2, 20))
    sorted_r = np.array([spectrum_correlation(a, b) for a, b in draws])
    matched_r = np.array([spectrum_correlation(a, b, matched=True) for a, b in draws])
    assert np.median(sorted_r) > 0.85
    assert abs(np.median(matched_r)) < 0.15


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0, 10.0), min_size=3, max_size=10).filter(lambda a: np.ptp(a) > 1e-3),
    st.floats(0.1, 10.0),
    st.floats(0.0, 5.0),
)
def test_correlation_is_invariant_to_positive_affine_rescaling(spectrum, scale, shift):
    a = np.array(spectrum)
    b = a[::-1]
    assert spectrum_correlation(a, scale * b + shift) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0, 2.0], [1.0], "must have the same length, but got 2 and 1"),
        ([1.0], [2.0], "needs at least 2 usable points, but got 1"),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "not constant"),
    ],
)
def test_spectrum_correlation_refuses_bad_input(a, b, message):
    with pytest.raises(LRAdvisorError, match=message):
        spectrum_correlation(a, b)
