"""The sweep kinds: axes map to the right models, analyses on known inputs, sweep reuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lradvisor.replication.kinds import drift as drift_kind
from lradvisor.replication.kinds import grid as grid_kind
from lradvisor.replication.kinds import sweeps
from lradvisor.theory import additive_interaction

MODEL = {
    "model": {"hidden": [8]},
    "data": {"n": 40, "dim": 6, "classes": 3},
    "training": {"steps": 80, "dtype": "float64"},
}
BASE = {"model": MODEL, "lrs": [0.003, 0.03, 0.3], "seeds": [1, 2]}


def test_interpolated_activation_end_points_are_identity_and_relu_exactly():
    grid = grid_kind.grid_sweep(
        {**BASE, "grid": {"activation_eps": [0.0, 1.0]}}, quick=True, progress=None
    ).values
    plain = drift_kind.drift_sweep(
        {
            **BASE,
            "compare": [
                {"label": "linear", "model": {"model": {"activation": "identity"}}},
                {"label": "relu", "model": {"model": {"activation": "relu"}}},
            ],
        },
        quick=True,
        progress=None,
    ).values["variants"]
    assert grid["alpha"]["0"] == plain["linear"]["alpha"]
    assert grid["alpha"]["1"] == plain["relu"]["alpha"]


def test_grid_analyses_and_progress():
    calls = []
    outcome = grid_kind.grid_sweep(
        {
            **BASE,
            "grid": {"width": [4, 8], "loss": ["mse", "ce"]},
            "contrast": {"axis": "loss", "of": "mse", "minus": "ce", "along": "width"},
            "transition": {"axis": "width", "by": "loss", "threshold": 0.0},
        },
        quick=True,
        progress=lambda done, total, label: calls.append((done, total)),
    )
    values = outcome.values
    alpha = values["alpha"]
    assert values["contrast"]["all"] == pytest.approx(
        [alpha["4"]["mse"] - alpha["4"]["ce"], alpha["8"]["mse"] - alpha["8"]["ce"]]
    )
    assert values["alpha_by"]["loss"]["ce"] == [alpha["4"]["ce"], alpha["8"]["ce"]]
    assert values["transition"]["at"] == [4.0, 4.0]
    table = np.array([[alpha["4"]["mse"], alpha["4"]["ce"]], [alpha["8"]["mse"], alpha["8"]["ce"]]])
    widths = [p["alpha_ci"][1] - p["alpha_ci"][0] for p in values["points"]]
    interaction, noise = additive_interaction(table), float(np.mean(widths)) / 2
    assert values["interaction_rms"] == pytest.approx(interaction, rel=1e-12)
    assert values["non_additive"]["holds"] is (interaction > noise)
    assert calls[-1][0] == calls[-1][1] and all(d <= t for d, t in calls)
    assert outcome.figures["alpha_grid"].series


def test_identical_sweeps_run_once(monkeypatch):
    sweeps.clear_cache()
    runs = []
    original = sweeps.run_sweep

    def counting(*args, **kwargs):
        runs.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sweeps, "run_sweep", counting)
    first = drift_kind.drift_sweep(BASE, quick=True, progress=None).values
    renamed = {**BASE, "model": {**MODEL, "name": "another"}}
    second = drift_kind.drift_sweep(renamed, quick=True, progress=None).values
    assert len(runs) == 1 and first["alpha"] == second["alpha"]
    sweeps.clear_cache()


def test_ratio_and_the_reference_for_a_target():
    lrs = [1e-4, 1e-3, 1e-2, 0.5]
    drift = [lr**1.5 for lr in lrs]
    ratio = drift_kind._ratios(
        {"ratio": {"at": 0.5, "references": [1e-3], "target": 1000}}, lrs, drift
    )
    assert ratio["by_reference"]["0.001"] == pytest.approx(500**1.5)
    assert ratio["reference_for_target"] == pytest.approx(0.5 / 1000 ** (1 / 1.5))


def test_the_protocol_grid_is_the_fit_and_a_window_is_kept_beside_it():
    lrs = [1e-3, 3e-3, 0.01, 0.03, 0.3]
    values = drift_kind.drift_sweep(
        {**BASE, "fit_max_lr": 0.1, "lrs": lrs}, quick=True, progress=None
    ).values
    assert values["fit_max_lr"] == 0.1 and values["n_points"] == 5
    drift = np.array(values["drift"])
    assert values["alpha"] == pytest.approx(np.polyfit(np.log(lrs), np.log(drift), 1)[0])
    window = np.polyfit(np.log(lrs[:4]), np.log(drift[:4]), 1)[0]
    assert values["alpha_window"] == pytest.approx(window)


def test_the_paper_comparable_drift_is_c_summed_in_the_run_dtype():
    """float64: C summed in float64 is the exact drift to round-off, and the floor is ~1e-16."""
    values = drift_kind.drift_sweep(BASE, quick=True, progress=None).values
    np.testing.assert_allclose(values["direct_drift"], values["drift"], rtol=1e-9)
    assert values["alpha_direct"] == pytest.approx(values["alpha"], abs=1e-9)
    assert max(values["rounding_floor"]) < 1e-13 and not any(values["near_floor"])


def test_variants_report_their_relative_alpha_difference():
    values = drift_kind.drift_sweep(
        {
            **BASE,
            "compare": [
                {"label": "linear", "model": {"model": {"activation": "identity"}}},
                {"label": "relu", "model": {}},
            ],
        },
        quick=True,
        progress=None,
    ).values
    a, b = values["variants"]["relu"]["alpha"], values["variants"]["linear"]["alpha"]
    assert values["alpha_relative_difference"]["relu"] == pytest.approx(abs(a - b) / ((a + b) / 2))


def test_a_transition_beyond_the_grid_is_infinite():
    values = grid_kind.grid_sweep(
        {
            **BASE,
            "grid": {"width": [4, 8]},
            "transition": {"axis": "width", "by": "width", "threshold": 9.0},
        },
        quick=True,
        progress=None,
    ).values
    assert values["transition"]["at"] == [math.inf, math.inf]
    assert values["transition"]["reached"] == [False, False]


def test_grid_variants_and_the_common_range():
    values = grid_kind.grid_sweep(
        {
            **BASE,
            "lrs": [0.003, 0.03, 0.3, 30.0],
            "grid": {"width": [4, 8], "loss": ["mse", "ce"]},
            "common_range": True,
            "variants": {"linear": {"model": {"activation": "identity"}}},
        },
        quick=True,
        progress=None,
    ).values
    assert values["common_range"] == [0.003, 0.3]  # η = 30 diverges somewhere in the grid
    assert "non_additive_common" in values and "interaction_rms_common" in values
    linear = values["variants"]["linear"]
    assert linear["alphas"] != values["alphas"] and len(linear["alphas"]) == 4


def test_additive_interaction():
    rows, cols = np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0])
    assert additive_interaction(rows[:, None] + cols[None, :]) == pytest.approx(0.0, abs=1e-12)
    table = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert additive_interaction(table) == pytest.approx(0.5)
    with pytest.raises(Exception, match="at least 2 × 2"):
        additive_interaction(np.ones((1, 3)))
    assert math.isfinite(additive_interaction(np.random.default_rng(0).normal(size=(3, 5))))
