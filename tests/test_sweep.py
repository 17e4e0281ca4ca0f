"""`lradvisor sweep`: the paper-comparable direct drift, the rounding-floor warning, the law of
the top-level α, the fit window and the divergence rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from lradvisor.cli import main
from lradvisor.config import load_config, parse_config
from lradvisor.sweep import fit_mask, fit_table, run

E5 = {
    "name": "e5",
    "model": {"hidden": [64], "activation": "relu", "bias": False},
    "data": {"source": "gaussian_mixture", "n": 200, "dim": 20, "classes": 5, "separation": 2.0},
    "training": {"loss": "ce", "optimizer": "sgd", "steps": 2000, "dtype": "float32"},
    "sweep": {"lrs": [1e-4, 1e-3, 1e-2], "seeds": [42, 137]},
}


@pytest.fixture(scope="module")
def e5_direct():
    """The E5 sweep of examples/e5.yaml (10 rates × 5 seeds × 2000 steps), direct drift."""
    return run(load_config("examples/e5.yaml"), drift="direct", predict=False)


def test_e5_direct_float32_drift_gives_the_published_alpha(e5_direct):
    fit = e5_direct.fit
    assert e5_direct.drift == "direct" and fit.n_points == 10
    assert abs(fit.alpha - 1.16) <= 0.01
    exact = fit_table(e5_direct.result, e5_direct.result.drift(0))
    assert round(exact.alpha, 3) == 1.161 and round(exact.r2, 4) == 0.9925
    # the direct drift is C(T) − C(0) of float32 sums: it misses η²·S by about the floor
    gap = np.abs(e5_direct.direct[:, 0] - e5_direct.result.drift_identity[:, 0])
    assert np.median(gap) < 3 * np.median(e5_direct.floor[:, 0])


def test_the_floor_warning_fires_for_a_deep_float32_net_at_small_rates():
    raw = {**E5, "model": {**E5["model"], "hidden": [64, 64, 64]}}
    report = run(parse_config(raw), drift="direct", predict=False)
    near = report.near_floor(0)
    assert near.tolist()[0] is True  # η = 1e-4
    assert (
        report.warnings
        and "0.0001" in report.warnings[0]
        and "rounding floor" in report.warnings[0]
    )
    rows = report.per_lr(0)
    assert rows[0]["near_floor"] and rows[0]["drift_mean"] < 10 * rows[0]["rounding_floor"]
    exact = run(parse_config(raw), predict=False)
    assert exact.warnings and "would be within" in exact.warnings[0]


def test_no_floor_warning_for_e5_in_float64():
    raw = {**E5, "training": {**E5["training"], "dtype": "float64"}}
    report = run(parse_config(raw), drift="direct", predict=False)
    assert not report.warnings and not any(report.near_floor(0))
    assert report.floor.max() < 1e-13


def _write(tmp_path, raw) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


SMALL = {
    "name": "small",
    "model": {"hidden": [8, 8], "activation": "relu", "bias": False},
    "data": {"source": "gaussian_mixture", "n": 40, "dim": 6, "classes": 3},
    "training": {"loss": "ce", "steps": 100, "dtype": "float64"},
    "sweep": {"lrs": [0.001, 0.003, 0.01, 0.03, 0.1], "seeds": [1, 2]},
}


def test_law_selects_the_top_level_alpha_and_the_window_the_fit(tmp_path):
    path = _write(tmp_path, SMALL)
    runner = CliRunner()
    out = runner.invoke(
        main, ["sweep", "--model", path, "--law", "2", "--no-predict", "--json", "-"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["law"] == "C2" and data["alpha"] == data["fits_by_law"]["C2"]["alpha"]
    assert data["alpha"] != data["fits_by_law"]["C1"]["alpha"]
    out = runner.invoke(
        main, ["sweep", "--model", path, "--fit-lrs", "0.003:0.03", "--no-predict", "--json", "-"]
    )
    data = json.loads(out.output)
    assert data["fit_lrs"] == [0.003, 0.03] and data["fit"]["n_points"] == 3
    assert [row["in_fit"] for row in data["per_lr"]["C1"]] == [False, True, True, True, False]
    rows = data["per_lr"]["C1"][1:4]
    lrs, drift = [r["lr"] for r in rows], [r["drift_mean"] for r in rows]
    assert data["alpha"] == pytest.approx(np.polyfit(np.log(lrs), np.log(drift), 1)[0])


def test_table_says_drift_kind_window_and_rule(tmp_path):
    path = _write(tmp_path, SMALL)
    out = CliRunner().invoke(
        main,
        [
            "sweep",
            "--model",
            path,
            "--drift",
            "direct",
            "--fit-lrs",
            "0.003:0.1",
            "--diverged",
            "drop-rate",
            "--no-predict",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "C(T) − C(0) with C summed in float64 (direct" in out.output
    assert "in fit" in out.output and "η in [0.003, 0.1]" in out.output
    assert "rates with a diverged trial left out" in out.output


@pytest.mark.parametrize("text", ["0.1", "0.1:0.01", "a:b", "0:1", "1:2:3"])
def test_a_bad_fit_window_is_one_line_exit_2(tmp_path, text):
    path = _write(tmp_path, SMALL)
    out = CliRunner().invoke(main, ["sweep", "--model", path, "--fit-lrs", text])
    assert out.exit_code == 2
    assert "--fit-lrs" in out.output and "LO:HI" in out.output


def test_diverged_trials_leave_their_rate_or_their_rate_leaves_the_fit():
    report = run(parse_config(SMALL), predict=False)
    result = report.result
    k = int(np.flatnonzero((result.lrs == 0.1) & (result.seeds == 1))[0])
    result.diverged[k] = True
    result.drift_identity[k] = np.nan
    kept = fit_table(result, result.drift(0), diverged="exclude")
    dropped = fit_table(result, result.drift(0), diverged="drop-rate")
    assert kept.n_points == 5 and dropped.n_points == 4
    lrs, table = result.grid(np.abs(result.drift(0)))
    assert dropped.alpha == pytest.approx(
        np.polyfit(np.log(lrs[:4]), np.log(np.nanmean(table[:4], axis=1)), 1)[0]
    )
    flags = np.zeros((5, 2), dtype=bool)
    flags[4, 0] = True
    assert fit_mask(lrs, flags, None, "drop-rate").tolist() == [True] * 4 + [False]
    assert fit_mask(lrs, flags, (0.002, 0.05), "exclude").tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]
