"""Null predictions, and a deliberately wrong prediction that the replication must not pass."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from lradvisor.records import Spectrum
from lradvisor.replication import nulls
from lradvisor.replication.claims import REPRODUCED, judge
from lradvisor.replication.kinds import KINDS, ck_validation, hessian_time
from lradvisor.replication.spec import load_experiment
from lradvisor.theory import gradient_imbalance_sum

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Small models: one torch thread (see conftest.one_thread)."""


def test_oracle_scale_fits_a_proportional_curve_exactly():
    measured = np.array([4.0, 2.0, 1.0])
    assert nulls.oracle_scale(measured / 7.0, measured) == pytest.approx(measured)
    scaled = nulls.oracle_scale(np.array([1.0, 1.0]), np.array([1.0, 4.0]))
    assert scaled == pytest.approx([2.0, 2.0])  # the geometric mean: least squares in ln S


def test_constant_spectrum_is_one_mode_at_the_weighted_mean_eigenvalue():
    lrs = np.array([1e-3, 1e-2, 0.1])
    eigenvalues, coefficients = np.array([4.0, 1.0, -0.5]), np.array([1.0, 3.0, 5.0])
    assert nulls.mean_eigenvalue(eigenvalues, coefficients) == pytest.approx(7.0 / 4.0)
    expected = gradient_imbalance_sum(lrs, [1.75], [4.0], steps=100)
    got = nulls.constant_spectrum(lrs, eigenvalues, coefficients, steps=100)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_random_coefficients_keep_the_total_on_the_positive_modes():
    rng = np.random.default_rng(0)
    eigenvalues = np.array([3.0, 0.0, 1.0, -1.0])
    c = nulls.random_coefficients(eigenvalues, 2.5, rng=rng)
    assert c.sum() == pytest.approx(2.5) and c[1] == c[3] == 0.0 and (c[[0, 2]] > 0).all()
    draws = nulls.random_directions(np.array([0.01, 0.1]), eigenvalues, 2.5, steps=10, rng=rng)
    assert draws.shape == (nulls.RANDOM_DRAWS, 2)


def test_errors_and_correlations():
    assert nulls.median_relative_error([1.1, 2.0, 2.7], [1.0, 2.0, 3.0]) == pytest.approx(0.1)
    lrs = np.array([1e-3, 1e-2, 0.1, 1.0])
    assert nulls.log_correlation(nulls.no_hessian(lrs), 5.0 / lrs) == pytest.approx(1.0)
    assert np.isnan(nulls.log_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


# --- a deliberately wrong prediction --------------------------------------------------------


def _constant_spectrum(original):
    """dense_spectrum with every eigenvalue replaced by the mean positive one (a wrong Hessian)."""

    def wrong(loss_fn, theta):
        spectrum = original(loss_fn, theta)
        positive = spectrum.eigenvalues[spectrum.eigenvalues > 0]
        flat = np.full_like(spectrum.eigenvalues, positive.mean())
        return Spectrum(flat, spectrum.eigenvectors, method="constant", n_hvp=spectrum.n_hvp)

    return wrong


def _small(name: str) -> tuple:
    """The study file's quick protocol on a 16-wide net (the study's claims unchanged)."""
    experiment = load_experiment(STUDIES / f"{name}.yaml", kinds=KINDS)
    protocol = copy.deepcopy(experiment.protocol_for(quick=True))
    protocol["model"]["model"]["hidden"] = [16]
    return experiment, protocol


@pytest.mark.parametrize(
    ("name", "module", "claim"),
    [
        ("E16", hessian_time, "r_t250"),
        ("E20", ck_validation, "r_binned"),
        ("E21", ck_validation, "r_every_lr"),
    ],
)
def test_a_constant_spectrum_prediction_is_not_reproduced(monkeypatch, name, module, claim):
    """E16, E20, E21 with the Hessian's eigenvalues replaced by one constant: the claims
    used to pass such a prediction (R 0.987–0.996); now the constant-spectrum null equals it,
    so it cannot beat that null and the verdict is not "reproduced"."""
    experiment, protocol = _small(name)
    monkeypatch.setattr(module, "dense_spectrum", _constant_spectrum(module.dense_spectrum))
    outcome = KINDS[experiment.kind](protocol, quick=True, progress=None)
    verdict = judge(experiment.claims, outcome.values)
    assert verdict.verdict != REPRODUCED
    (result,) = [r for r in verdict.results if r.claim.id == claim]
    assert result.holds is not True
    assert len(result.nulls) >= 2
    assert result.beaten.get("constant_spectrum") is False
