"""advise() on model files: each number against an independent measurement, the rules that
produced it, and the command line (overrides, JSON, plot, one-line errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from lradvisor.advisor import advise, problem_from_config
from lradvisor.advisor.choice import first_failure
from lradvisor.advisor.sharpness import measure_sharpness
from lradvisor.cli import main
from lradvisor.measure.hessian import config_loss_function, dense_spectrum
from lradvisor.prediction import _initial_parameters

from conftest import make_config


def _dense_lambda_max(config, seed):
    state, shapes, theta = _initial_parameters(config, seed, None)
    loss_fn = config_loss_function(config, shapes, state.data)
    return dense_spectrum(loss_fn, theta).lambda_max


@pytest.fixture(scope="module")
def ce_advice():
    config = make_config(training={"steps": 400}, sweep={"seeds": [3, 4, 5]})
    return config, advise(config)


def test_sharpness_is_the_exact_top_eigenvalue_and_the_bound_two_over_it(ce_advice):
    config, advice = ce_advice
    exact = _dense_lambda_max(config, 3)  # 60 samples: the sharpness sees them all
    assert advice.lambda_max == pytest.approx(exact, rel=1e-3)
    assert advice.eos_lr == pytest.approx(2.0 / exact, rel=1e-3)
    assert advice.bound["kind"] == "gradient descent"
    assert advice.bound["value"] == pytest.approx(advice.eos_lr)


def test_recommendation_is_the_best_stable_finalist_and_the_range_tops_on_a_good_rate(ce_advice):
    _, advice = ce_advice
    rows = advice.probe["rows"]
    failure = first_failure(rows)
    cap = failure[0] / 2 if failure else float("inf")
    safe = [r for r in rows if r["status"] == "finalist" and r["lr"] <= cap * (1 + 1e-9)]
    assert advice.recommended_lr == min(safe, key=lambda r: r["final_score"])["lr"]
    lo, hi = advice.lr_range
    assert lo < advice.recommended_lr <= hi
    top = next(r for r in rows if r["lr"] == hi)
    assert (
        top["status"] in ("finalist", "dropped")
        and top["rung_score"] < advice.probe["initial_score"]
    )
    assert list(advice.probe["seeds"]) == [3, 4] and advice.score == "training loss"
    for key in (
        "lambda_max",
        "eos_lr",
        "bound",
        "recommended_lr",
        "lr_range",
        "probe",
        "alpha_predicted",
        "tau",
        "schedule",
        "regime",
    ):
        assert advice.rules[key], key


def test_ce_compression_tau_and_schedule(ce_advice):
    _, advice = ce_advice
    tau = advice.tau
    assert tau["a"] > 0 and tau["r2"] > 0.9
    rates = sorted(tau["per_rate"])
    assert tau["per_rate"][rates[0]] > tau["per_rate"][rates[-1]]  # faster compression at larger η
    trajectory = [p["lambda_max"] for p in tau["lambda_max_trajectory"]]
    assert trajectory[-1] < trajectory[0]  # the Hessian compresses
    lrs = [p["lr"] for p in advice.schedule]
    assert lrs[0] == pytest.approx(0.9 * advice.eos_lr, rel=0.05)
    assert max(lrs) <= advice.lr_range[1] + 1e-12


def test_alpha_prediction_lies_between_one_and_two_below_the_bound(ce_advice):
    _, advice = ce_advice
    assert 1.0 <= advice.alpha_predicted <= 2.0
    below = [p for p in advice.drift_curve if not p["beyond_eos"]]
    drifts = [p["drift"] for p in below]
    assert drifts == sorted(drifts)


def test_minibatch_bound_uses_minibatch_sharpness():
    config = make_config(training={"loss": "mse", "batch_size": 8, "steps": 200})
    advice = advise(config)
    assert advice.batch_lambda_max is not None
    assert advice.batch_lambda_max > advice.lambda_max  # single batches are sharper
    assert advice.bound["value"] == pytest.approx(2 / advice.batch_lambda_max)
    assert "mini-batch" in " ".join(advice.does_not_apply)
    assert advice.tau is None and advice.schedule is None


@pytest.mark.parametrize(
    ("training", "kind", "factor"),
    [
        ({"momentum": 0.9}, "heavy-ball momentum", 2 * 1.9),
        ({"momentum": 0.9, "nesterov": True}, "Nesterov momentum", 2 * 1.9 / 2.8),
        ({"momentum": 0.5, "weight_decay": 0.1}, "heavy-ball momentum", None),
    ],
)
def test_momentum_bounds_follow_the_optimizer(training, kind, factor):
    config = make_config(training={"steps": 60, **training})
    lam = measure_sharpness(problem_from_config(config)).lambda_max
    advice = advise(config)
    assert advice.bound["kind"] == kind
    if factor is None:  # coupled decay adds to the curvature
        assert advice.bound["value"] == pytest.approx(2 * 1.5 / (lam + 0.1), rel=1e-6)
    else:
        assert advice.bound["value"] == pytest.approx(factor / lam, rel=1e-6)
    assert advice.alpha_predicted is None  # no spectral formula beyond plain GD
    assert any("identity" in line for line in advice.does_not_apply)


def test_adam_gets_no_bound_at_init_and_a_measured_adaptive_diagnostic():
    advice = advise(make_config(training={"optimizer": "adamw", "weight_decay": 0.01, "steps": 80}))
    assert advice.bound["value"] is None
    assert advice.optimizer.startswith("AdamW(")
    assert advice.adaptive["threshold_lr"] == pytest.approx(
        38 / advice.adaptive["preconditioned_sharpness"]
    )
    assert advice.adaptive["ratio"] == pytest.approx(
        advice.recommended_lr / advice.adaptive["threshold_lr"]
    )


def _model_file(tmp_path, **training):
    raw = {
        "name": "small",
        "model": {"hidden": [16]},
        "data": {"source": "gaussian_mixture", "n": 60, "dim": 8, "classes": 3},
        "training": {"loss": "ce", "steps": 300, **training},
        "sweep": {"seeds": [1, 2, 3]},
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_suggest_cli_json_fields_widths_probe_and_plot(tmp_path):
    path = _model_file(tmp_path)
    out, png = tmp_path / "advice.json", tmp_path / "advice.png"
    result = CliRunner().invoke(
        main,
        [
            "suggest",
            "--model",
            str(path),
            "--probe",
            "--widths",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recommended_lr" in result.stdout and "α fitted" in result.stdout
    assert "lradvisor: 3/5 probe" in result.stderr  # a line per stage outside a terminal
    data = json.loads(out.read_text())
    for key in (
        "lambda_max",
        "eos_lr",
        "bound",
        "recommended_lr",
        "lr_range",
        "alpha_predicted",
        "regime",
        "tau",
        "schedule",
        "drift_curve",
        "alpha_fitted",
        "alpha_ci",
        "probe",
        "eos_lr_by_width",
        "width_law",
    ):
        assert data[key] not in (None, {}, []), key
    assert len(data["eos_lr_by_width"]) == 3
    assert len(set(np.round(list(data["eos_lr_by_width"].values()), 6))) == 3
    assert png.stat().st_size > 10_000


def test_suggest_cli_overrides_the_optimizer_and_budget(tmp_path):
    path = _model_file(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "suggest",
            "--model",
            str(path),
            "--optimizer",
            "nesterov",
            "--momentum",
            "0.8",
            "--steps",
            "40",
            "--batch-size",
            "16",
            "--seeds",
            "7,8",
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bound"]["kind"] == "Nesterov momentum" and "momentum=0.8" in data["optimizer"]
    assert (data["steps"], data["batch_size"], data["probe"]["seeds"]) == (40, 16, [7, 8])


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["--optimizer", "adam", "--momentum", "0.9"], "training.momentum"),
        (["--seeds", "1,x"], "--seeds"),
        (["--device", "cuda:7"], "training.device"),
    ],
)
def test_suggest_cli_bad_overrides_are_one_line_errors(tmp_path, arguments, words):
    result = CliRunner().invoke(
        main, ["suggest", "--model", str(_model_file(tmp_path)), *arguments]
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr
