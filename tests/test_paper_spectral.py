"""The spectral/observable experiment kinds of `lradvisor reproduce` (E8–E23 spectral rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lradvisor.config import parse_config
from lradvisor.engine.batched import run_sweep
from lradvisor.measure.hessian import dense_spectrum, flat_gradient
from lradvisor.prediction import predict_imbalance_sum
from lradvisor.replication.claims import beats
from lradvisor.replication.kinds import (
    KINDS,
    ck_validation,
    common,
    coupling,
    hessian_evolution,
    hessian_time,
    spectral_prediction,
    tau,
    width_switch,
)
from lradvisor.replication.kinds import modes as mode_algebra
from lradvisor.replication.outcome import Figure, Outcome
from lradvisor.replication.spec import load_experiment
from lradvisor.theory import gradient_imbalance_sum, mode_coefficients

EXACT = 1e-10
STUDIES = Path(__file__).resolve().parents[1] / "studies"
OUR_STUDIES = ("E08", "E10", "E15", "E16", "E18", "E20", "E21", "E23")

TINY_MODEL = {
    "model": {"hidden": [8], "activation": "relu", "bias": False},
    "data": {"source": "gaussian_mixture", "n": 40, "dim": 6, "classes": 3, "separation": 2.0},
    "training": {"loss": "ce", "steps": 40},
}


def _tiny(**protocol) -> dict:
    return {"model": TINY_MODEL, "steps": 40, "seeds": [42], **protocol}


# --- per-mode algebra -----------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 1e-9, 0.3, 7.0, 14.0])
def test_mode_sums_are_the_geometric_sums(lam: float) -> None:
    lr, steps = 0.1, 50
    explicit = sum((1 - lr * lam) ** (2 * t) for t in range(steps))
    got = mode_algebra.mode_sums(lr, np.array([lam]), steps=steps)[0]
    assert got == pytest.approx(explicit, rel=1e-9)


def _quadratic_run(lrs, eigenvalues, a0, steps, seed=0):
    """GD on ½ θᵀHθ with H = V diag(λ) Vᵀ: projections a_k(t) = g(t)·v_k at every step."""
    rng = np.random.default_rng(seed)
    V, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    H = V @ np.diag(eigenvalues) @ V.T
    theta0 = V @ (a0 / eigenvalues)  # so that g(0) = Hθ₀ = V a0
    runs = []
    for lr in lrs:
        theta, rows = theta0.copy(), []
        for _ in range(steps):
            g = H @ theta
            rows.append(V.T @ g)
            theta = theta - lr * g
        runs.append(np.array(rows))
    return runs


def test_empirical_coefficients_recover_planted_ck_on_a_quadratic() -> None:
    eigenvalues = np.array([9.0, 4.0, 1.5, 0.4, 0.05])
    a0 = np.array([0.7, -1.2, 0.3, 2.0, -0.9])
    delta0, steps = 3.0, 200
    planted = delta0 * a0**2 / (a0**2).sum()
    for lr, projections in zip(
        [1e-3, 0.05, 0.2], _quadratic_run([1e-3, 0.05, 0.2], eigenvalues, a0, steps), strict=True
    ):
        s_formula = gradient_imbalance_sum(lr, eigenvalues, planted, steps=steps)
        empirical = mode_algebra.empirical_coefficients(
            projections, eigenvalues, lr, imbalance_sum=float(s_formula)
        )
        np.testing.assert_allclose(empirical, planted, rtol=1e-9)


def test_empirical_coefficients_reproduce_the_measured_sum() -> None:
    eigenvalues = np.array([3.0, 1.0, 0.2])
    rng = np.random.default_rng(1)
    projections = rng.normal(size=(30, 3))  # any history, not a quadratic one
    empirical = mode_algebra.empirical_coefficients(
        projections, eigenvalues, 0.1, imbalance_sum=-7.5
    )
    total = (empirical * mode_algebra.mode_sums(0.1, eigenvalues, steps=30)).sum()
    assert total == pytest.approx(7.5, rel=EXACT)


def test_correlations_identical_and_permuted_spectra() -> None:
    c = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    assert mode_algebra.spectrum_correlations(c, c.copy(), modes=6) == pytest.approx((1.0, 1.0))
    shuffled = c[[3, 0, 5, 1, 4, 2]]
    sorted_r, matched_r = mode_algebra.spectrum_correlations(c, shuffled, modes=6)
    assert sorted_r == pytest.approx(1.0)
    assert matched_r < 0.5


def test_correlations_use_the_largest_predicted_modes() -> None:
    predicted = np.array([0.01, 10.0, 0.02, 5.0, 2.0])
    empirical = np.array([99.0, 10.0, -50.0, 5.0, 2.0])  # wrong only on the small modes
    assert mode_algebra.spectrum_correlations(predicted, empirical, modes=3) == pytest.approx(
        (1.0, 1.0)
    )


# --- τ fits -----------------------------------------------------------------------------------


def test_tau_fit_recovers_a_planted_law() -> None:
    lrs = np.array([0.003, 0.005, 0.01, 0.02, 0.03])
    steps = np.arange(0, 3001, 10, dtype=float)
    a, b = 1.33, 29.0
    curves = [0.8 * np.exp(-steps / (a / lr + b)) for lr in lrs]
    law = tau._tau_law(lrs, tau._tau_table(steps, curves, start=25, floor=0.0))
    assert law["a"] == pytest.approx(a, rel=1e-9)
    assert law["b"] == pytest.approx(b, rel=1e-7)
    assert law["r2"] == pytest.approx(1.0, abs=1e-12)


def test_tau_floor_ends_the_window_at_the_same_point_of_a_power_law_decay() -> None:
    """A decay in ηt with a power-law tail: a window to a fixed step loses the 1/η law."""
    lrs = np.array([0.003, 0.005, 0.01, 0.02, 0.03])
    steps = np.arange(0, 3001, 10, dtype=float)
    curves = [0.8 / (1 + lr * steps / 0.3) for lr in lrs]
    literal = tau._tau_law(lrs, tau._tau_table(steps, curves, start=25, floor=0.0))
    floored = tau._tau_law(lrs, tau._tau_table(steps, curves, start=25, floor=0.05))
    assert floored["r2"] > 0.99
    assert literal["r2"] < floored["r2"]


# --- the kinds on tiny protocols --------------------------------------------------------------


def _check(outcome: Outcome, keys: list[str]) -> None:
    assert isinstance(outcome, Outcome)
    for key in keys:
        assert key in outcome.values, key
    assert outcome.figures and all(isinstance(f, Figure) for f in outcome.figures.values())
    assert outcome.wall_time > 0
    yaml.safe_dump(outcome.values)  # JSON/YAML-able: plain numbers, strings, lists, dicts


def test_spectral_prediction_errors_and_nulls_are_those_of_the_library_prediction() -> None:
    """E8's numbers recomputed outside the kind: the sweep, the dense prediction, the nulls."""
    calls = []
    lrs = [1e-3, 1e-2, 0.1]
    protocol = _tiny(
        lrs=lrs, variants={"linear": {"model": {"activation": "identity"}}, "relu": {}}
    )
    outcome = spectral_prediction.spectral_prediction(
        protocol, quick=False, progress=lambda d, t, label: calls.append(label)
    )
    _check(outcome, ["linear", "relu"])
    assert set(calls) == {"linear", "relu"}
    for name, overrides in protocol["variants"].items():
        config = common.config_from(protocol, **overrides)
        measured = run_sweep(config, lrs=lrs, seeds=[42]).imbalance_sum[:, 0]
        library = predict_imbalance_sum(config, lrs=np.array(lrs), seeds=[42], steps=40)
        predicted = library.imbalance_sum[:, 0]
        below = np.array(lrs) < 2.0 / library.lambda_max.max()
        errors = np.abs(predicted - np.abs(measured)) / np.abs(measured)
        values = outcome.values[name]
        assert values["median_error"] == pytest.approx(np.median(errors[below]), rel=1e-9)
        inverse = 1.0 / np.array(lrs)[below]
        target = np.abs(measured)[below]
        scaled = inverse * np.exp(np.mean(np.log(target) - np.log(inverse)))
        no_hessian = np.median(np.abs(scaled - target) / target)
        assert values["nulls"]["no_hessian"] == pytest.approx(no_hessian, rel=1e-9)
        assert set(values["nulls"]) == {"no_hessian", "constant_spectrum", "random_directions"}


def test_hessian_time_prediction_at_step_zero_is_the_init_prediction() -> None:
    lrs = [1e-3, 1e-2, 0.05]
    outcome = hessian_time.hessian_time_prediction(
        _tiny(lrs=lrs, train_lr=0.05, hessian_steps=[0, 20]), quick=True, progress=None
    )
    _check(outcome, ["r_at_0", "r_at_20", "by_step", "best_step", "nulls_at_20"])
    config = parse_config(TINY_MODEL)
    library = predict_imbalance_sum(config, lrs=np.array(lrs), seeds=[42], steps=40)
    ours = common.config_from(_tiny())
    data, weights = common.seed_data(ours, 42)
    mine, _ = hessian_time._predict_from(ours, data, common.flat(weights), np.array(lrs), 40)
    np.testing.assert_allclose(mine, library.imbalance_sum[:, 0], rtol=1e-9)
    measured = np.abs(run_sweep(config, lrs=lrs, seeds=[42]).imbalance_sum[:, 0])
    usable = np.array(lrs) < 2.0 / library.lambda_max.max()
    expected = np.corrcoef(np.log(mine[usable]), np.log(measured[usable]))[0, 1]
    assert outcome.values["r_at_0"] == pytest.approx(expected, rel=1e-12)
    no_hessian = np.corrcoef(-np.log(np.array(lrs)[usable]), np.log(measured[usable]))[0, 1]
    assert outcome.values["nulls_at_0"]["no_hessian"] == pytest.approx(no_hessian, rel=1e-12)


def test_activation_coupling_reports_a_qualitative_verdict() -> None:
    outcome = coupling.activation_coupling(
        _tiny(lrs=[1e-3, 1e-2, 0.1], seeds=[42, 137]), quick=True, progress=None
    )
    _check(outcome, ["hamming", "alpha_local", "smooth", "largest_alpha_step"])
    assert isinstance(outcome.values["smooth"]["holds"], bool)
    assert outcome.values["smooth"]["reason"]
    assert len(outcome.values["alpha_local"]) == 2


def test_width_switch_rate_runs_each_width_and_its_eos_rate() -> None:
    protocol = _tiny(
        widths=[4, 8, 16],
        lrs=[1e-2, 0.1],
        steps=30,
        variants={"ce": {}, "mse": {"training": {"loss": "mse"}}},
    )
    outcome = width_switch.width_switch_rate(protocol, quick=True, progress=None)
    assert set(outcome.values) == {"ce", "mse"}
    for variant in outcome.values.values():
        for key in ("exponent_at_largest_lr", "exponent_at_eos", "eos_lr", "lambda_max"):
            assert key in variant
        for width, lr in variant["eos_lr"].items():
            assert lr == pytest.approx(2.0 / variant["lambda_max"][width])
    assert outcome.values["ce"]["lambda_max"] != outcome.values["mse"]["lambda_max"]
    _check(outcome, [])


def test_hessian_evolution_lambda_max_matches_the_dense_hessian_at_init() -> None:
    outcome = hessian_evolution.hessian_evolution(
        _tiny(lr=0.05, ns=[30, 60], checkpoints=[0, 20, 40], fall_step=20),
        quick=True,
        progress=None,
    )
    _check(outcome, ["fall_factor", "fall_factor_last", "tau_spread", "lambda_initial", "by_n"])
    config = common.config_from(_tiny(), data={"n": 30})
    data, weights = common.seed_data(config, 42)
    loss_fn = common.loss_function(config, data)
    dense = dense_spectrum(loss_fn, common.flat(weights)).lambda_max
    assert outcome.values["by_n"]["30"]["lambda_initial"] == pytest.approx(dense, rel=1e-6)
    assert outcome.values["fall_step"] == 20


def test_projection_ck_cannot_tell_the_eigenvalues_apart() -> None:
    """The flaw the nulls expose: at a small η the projection c_k equal the prediction's
    (they are built from the same projections), and they equal them just as well with every
    eigenvalue replaced by one constant — R = 1 carries no information about the spectrum."""
    protocol = _tiny(lrs=[1e-6, 2e-6], modes=10, first_principles=True, fit_rates=6, bins=4)
    protocol["model"] = {
        **TINY_MODEL,
        "model": {"hidden": [8], "activation": "identity", "bias": False},
        "training": {"loss": "mse", "steps": 40, "dtype": "float64"},
    }
    outcome = ck_validation.ck_validation(protocol, quick=True, progress=None)
    values = outcome.values
    _check(outcome, ["r_sorted", "r_matched", "r_binned", "nulls_binned", "nulls_matched"])
    assert values["r_matched_by_lr"]["1e-06"] == pytest.approx(1.0, abs=1e-6)
    null = values["nulls_matched"]["constant_spectrum"]
    assert null == pytest.approx(1.0, abs=1e-6) and not beats(values["r_matched"], null, "higher")
    assert beats(values["r_matched"], values["nulls_matched"]["random_directions"], "higher")
    assert set(values["nulls_first_principles"]) == {"random_directions"}  # one seed: no other


def test_mode_shares_of_the_imbalance_sum_to_delta_over_a_complete_basis() -> None:
    """Σ_k (g·v_k)(Dg·v_k) = gᵀDg = δ = ‖G₂‖² − ‖G₁‖² when the v_k span the space."""
    config = common.config_from(_tiny())
    data, weights = common.seed_data(config, 42)
    loss_fn = common.loss_function(config, data)
    theta0 = common.flat(weights)
    vectors = torch.from_numpy(dense_spectrum(loss_fn, theta0).eigenvectors)
    thetas = torch.stack([theta0, 1.1 * theta0, theta0.flip(0)])
    energy, imbalance = ck_validation._projections(
        loss_fn, thetas, vectors, ck_validation._imbalance_signs(config, data)
    )
    for row, theta in enumerate(thetas):
        gradient = flat_gradient(loss_fn, theta)
        delta = common.first_law_imbalance(config, data, gradient)
        assert (energy[row] * imbalance[row]).sum() == pytest.approx(delta, rel=1e-9, abs=1e-14)
        assert (energy[row] ** 2).sum() == pytest.approx(float(gradient @ gradient), rel=1e-9)


def test_first_principles_coefficients_are_the_end_to_end_gradient_energy() -> None:
    """c_k ∝ ‖e_k‖²λ_x,k² is the energy of ∂L/∂M along the data eigen-directions u_k."""
    config = common.config_from(
        {"model": {**TINY_MODEL, "model": {"hidden": [8], "activation": "identity"}}}
    )
    data, weights = common.seed_data(config, 42)
    coefficients = ck_validation._first_principles(data, weights)
    X = data.X.double()
    target = torch.nn.functional.one_hot(data.y, data.classes).double()
    M = (weights[1] @ weights[0]).clone().requires_grad_(True)
    loss = ((X @ M.T - target) ** 2).mean()
    (grad_m,) = torch.autograd.grad(loss, M)
    _, directions = torch.linalg.eigh(X.T @ X / X.shape[0])
    energy = ((grad_m @ directions) ** 2).sum(0).numpy()
    np.testing.assert_allclose(coefficients, energy / energy.sum(), rtol=1e-8, atol=1e-14)


def test_tau_fit_kind_returns_the_law_and_its_window_sensitivity() -> None:
    protocol = _tiny(lrs=[0.05, 0.1, 0.2, 0.4], steps=200, fit_start=5, fit_floor=0.05)
    protocol["model"] = {**TINY_MODEL, "training": {"loss": "ce", "steps": 200}}
    outcome = tau.tau_fit(protocol, quick=True, progress=None)
    _check(outcome, ["tau", "a", "b", "r2", "literal", "by_floor", "efold"])
    assert outcome.values["fit_floor"] == 0.05
    assert "0.05" in outcome.values["by_floor"]


def test_mode_coefficients_and_formula_agree_with_the_sum_of_mode_terms() -> None:
    eigenvalues = np.array([4.0, 1.0, 0.1])
    vectors = np.eye(3)
    gradient = np.array([1.0, 2.0, 0.5])
    modes = mode_coefficients(gradient, vectors, eigenvalues, delta0=2.0)
    by_terms = (modes.coefficients * mode_algebra.mode_sums(0.1, eigenvalues, steps=100)).sum()
    formula = gradient_imbalance_sum(0.1, eigenvalues, modes.coefficients, steps=100)
    assert by_terms == pytest.approx(float(formula), rel=1e-12)


# --- the study files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OUR_STUDIES)
def test_study_files_name_our_kinds_and_metrics(name: str) -> None:
    """Valid files of these kinds; every prediction-vs-measurement claim names its nulls."""
    experiment = load_experiment(STUDIES / f"{name}.yaml", kinds=KINDS)
    study = yaml.safe_load((STUDIES / f"{name}.yaml").read_text())
    if experiment.kind in ("spectral_prediction", "hessian_time_prediction", "ck_validation"):
        for claim in experiment.claims:
            assert claim.nulls and claim.better == (
                "lower" if "error" in claim.metric else "higher"
            )
    parse_config(study["protocol"]["model"])
    assert set(study["quick"]) <= set(study["protocol"])
