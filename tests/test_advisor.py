"""advise(): each number against an independent measurement, and the rules that produced it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lradvisor.advisor import _curvature, _lambda_max, _modes, advise
from lradvisor.cli import main
from lradvisor.measure.hessian import config_loss_function, dense_spectrum
from lradvisor.prediction import _initial_parameters

from conftest import make_config


def _dense_lambda_max(config, seed):
    state, shapes, theta = _initial_parameters(config, seed, None)
    data = state.data
    loss_fn = config_loss_function(config, shapes, data)
    return dense_spectrum(loss_fn, theta).lambda_max


@pytest.fixture(scope="module")
def ce_advice():
    config = make_config(training={"steps": 400}, sweep={"seeds": [3, 4, 5]})
    return config, advise(config)


def test_stability_bound_is_two_over_the_exact_sharpness(ce_advice):
    config, advice = ce_advice
    exact = _dense_lambda_max(config, 3)
    assert advice.lambda_max == pytest.approx(exact, rel=1e-3)
    assert advice.eos_lr == pytest.approx(2.0 / exact, rel=1e-3)


def test_recommendation_range_and_rules(ce_advice):
    _, advice = ce_advice
    lo, hi = advice.lr_range
    assert lo < advice.recommended_lr <= hi
    assert advice.recommended_lr in advice.probe["lrs"]
    for key in (
        "lambda_max",
        "eos_lr",
        "eos_lr_by_width",
        "recommended_lr",
        "lr_range",
        "alpha_predicted",
        "tau",
        "schedule",
        "regime",
    ):
        assert advice.rules[key], key
    # three widths measured, and the bound moves with width
    assert len(advice.eos_lr_by_width) == 3
    assert len(set(np.round(list(advice.eos_lr_by_width.values()), 6))) == 3


def test_ce_compression_tau_and_schedule(ce_advice):
    _, advice = ce_advice
    tau = advice.tau
    assert tau["a"] > 0 and tau["r2"] > 0.9
    rates = sorted(tau["per_rate"])
    assert tau["per_rate"][rates[0]] > tau["per_rate"][rates[-1]]  # faster compression at larger η
    trajectory = [p["lambda_max"] for p in tau["lambda_max_trajectory"]]
    assert trajectory[-1] < trajectory[0]  # the Hessian compresses
    lrs = [p["lr"] for p in advice.schedule]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(0.9 * advice.eos_lr, rel=1e-6)


def test_alpha_prediction_lies_between_one_and_two_below_the_bound(ce_advice):
    _, advice = ce_advice
    assert 1.0 <= advice.alpha_predicted <= 2.0
    below = [p for p in advice.drift_curve if not p["beyond_eos"]]
    drifts = [p["drift"] for p in below]
    assert drifts == sorted(drifts)


def test_quadrature_modes_agree_with_the_exact_spectrum():
    from lradvisor.theory import gradient_imbalance_sum

    config = make_config(training={"steps": 400})
    curvature, *_ = _curvature(config, 1, None)
    exact = _modes(curvature, curvature.deltas[0])
    curvature.dense = None
    approx = _modes(curvature, curvature.deltas[0])
    assert approx[3].startswith("Lanczos quadrature")
    rates = np.geomspace(1e-3, 0.2 * 2 / _lambda_max(curvature).lambda_max, 6)
    s_exact = gradient_imbalance_sum(rates, exact[0], exact[1], steps=400)
    s_approx = gradient_imbalance_sum(rates, approx[0], approx[1], steps=400)
    np.testing.assert_allclose(s_approx, s_exact, rtol=0.15)


def test_minibatch_bound_uses_minibatch_sharpness():
    config = make_config(training={"loss": "mse", "batch_size": 8, "steps": 200})
    advice = advise(config)
    assert advice.batch_lambda_max is not None
    assert advice.batch_lambda_max > advice.lambda_max  # single batches are sharper
    assert advice.batch_eos_lr == pytest.approx(2 / advice.batch_lambda_max)
    assert "mini-batch" in " ".join(advice.does_not_apply)
    assert advice.tau is None and advice.schedule is None


def test_non_sgd_optimizer_says_what_does_not_apply():
    advice = advise(make_config(training={"optimizer": "adam", "steps": 100}))
    assert any("identity" in line for line in advice.does_not_apply)


def test_suggest_cli_json_fields_and_probe(tmp_path):
    import yaml

    raw = {
        "name": "small",
        "model": {"hidden": [16]},
        "data": {"source": "gaussian_mixture", "n": 60, "dim": 8, "classes": 3},
        "training": {"loss": "ce", "steps": 300},
        "sweep": {"seeds": [1, 2, 3]},
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "advice.json"
    png = tmp_path / "advice.png"
    result = CliRunner().invoke(
        main, ["suggest", "--model", str(path), "--probe", "--json", str(out), "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert "recommended_lr" in result.output and "α fitted" in result.output
    data = json.loads(out.read_text())
    for key in (
        "lambda_max",
        "eos_lr",
        "eos_lr_by_width",
        "recommended_lr",
        "lr_range",
        "alpha_predicted",
        "regime",
        "tau",
        "schedule",
        "drift_curve",
        "alpha_fitted",
        "alpha_ci",
    ):
        assert data[key] is not None, key
    assert png.stat().st_size > 10_000
