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
    assert values["non_additive"]["holds"] in (True, False)
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


def test_fit_range_keeps_the_full_grid_fit_beside_it():
    values = drift_kind.drift_sweep(
        {**BASE, "fit_max_lr": 0.1, "lrs": [1e-3, 3e-3, 0.01, 0.03, 0.3]}, quick=True, progress=None
    ).values
    assert values["fit_max_lr"] == 0.1 and values["n_points"] == 4
    assert values["alpha_all_lrs"] != values["alpha"]


def test_additive_interaction():
    rows, cols = np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0])
    assert additive_interaction(rows[:, None] + cols[None, :]) == pytest.approx(0.0, abs=1e-12)
    table = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert additive_interaction(table) == pytest.approx(0.5)
    with pytest.raises(Exception, match="at least 2 × 2"):
        additive_interaction(np.ones((1, 3)))
    assert math.isfinite(additive_interaction(np.random.default_rng(0).normal(size=(3, 5))))
