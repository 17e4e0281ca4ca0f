from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from lradvisor.cli import main

SMALL = {
    "name": "small",
    "model": {"hidden": [16]},
    "data": {"source": "gaussian_mixture", "n": 60, "dim": 8, "classes": 3},
    "training": {"loss": "ce", "steps": 200, "dtype": "float64"},
    "sweep": {"lrs": [0.001, 0.01, 0.1], "seeds": [1, 2]},
}


def _write(tmp_path, raw, name="m.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sweep_prints_table_fit_and_prediction_and_writes_json(tmp_path):
    path = _write(tmp_path, SMALL)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["sweep", "--model", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "α = " in result.output and "R² = " in result.output
    assert "S predicted" in result.output
    data = json.loads(out.read_text())
    assert {"alpha", "alpha_ci", "r2", "records"} <= data.keys()
    assert len(data["records"]) == 6
    assert data["alpha_ci"][0] <= data["alpha"] <= data["alpha_ci"][1]
    record = data["records"][0]
    assert {
        "lr",
        "seed",
        "drift",
        "imbalance_sum",
        "identity_residual",
        "final_loss",
        "diverged",
    } <= record.keys()
    assert max(r["identity_residual"][0] for r in data["records"]) < 1e-9


def test_overrides_from_the_command_line(tmp_path):
    path = _write(tmp_path, SMALL)
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            "--model",
            str(path),
            "--lrs",
            "0.01,0.02,0.04",
            "--seeds",
            "3",
            "--steps",
            "50",
            "--no-predict",
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert sorted({r["lr"] for r in data["records"]}) == [0.01, 0.02, 0.04]
    assert {r["seed"] for r in data["records"]} == {3}
    assert data["steps"] == 50
    assert data["alpha_ci"] is not None


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda raw: raw["model"].pop("hidden"), "model.hidden"),
        (lambda raw: raw["model"].update(activation="gelu"), "model.activation"),
        (lambda raw: raw["sweep"].update(lrs=[-0.1]), "sweep.lrs.0"),
        (lambda raw: raw.update(data={"source": "file", "path": "missing.csv"}), "data.path"),
    ],
    ids=["missing-field", "unknown-activation", "negative-lr", "missing-data-file"],
)
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, edit, field):
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    edit(raw)
    path = _write(tmp_path, raw)
    proc = subprocess.run(
        [sys.executable, "-m", "lradvisor.cli", "sweep", "--model", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and f"'{field}'" in lines[0] and "expected" in lines[0]
    assert "Traceback" not in proc.stderr


def test_negative_lr_on_the_command_line(tmp_path):
    path = _write(tmp_path, SMALL)
    result = CliRunner().invoke(main, ["sweep", "--model", str(path), "--lrs", "0.1,-1"])
    assert result.exit_code == 2
    assert "--lrs" in result.output and "learning rates > 0" in result.output
