"""`lradvisor reproduce`: the table, --json, --report, and one-line errors (exit 2)."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from lradvisor.cli import main
from lradvisor.replication.outcome import Figure, Outcome, Series
from lradvisor.replication.reproduce import (
    QUICK_NOTE,
    ExperimentRow,
    ReplicationResult,
    apply_stability,
    render_table,
    reproduce,
    stable_digits,
)
from lradvisor.replication.spec import load_experiment

TINY = {
    "id": "E3",
    "name": "drift vs learning rate",
    "kind": "drift_sweep",
    "protocol": {
        "model": {
            "model": {"hidden": [8]},
            "data": {"n": 40, "dim": 6, "classes": 3},
            "training": {"steps": 60, "dtype": "float64"},
        },
        "lrs": [0.001, 0.01, 0.1],
        "seeds": [1, 2],
    },
    "quick": {"seeds": [1], "steps": 30},
    "claims": [
        {
            "id": "grows",
            "published": "drift grows with η",
            "metric": "drift",
            "check": "increasing",
        },
        {
            "id": "alpha",
            "published": "α ≈ 1",
            "metric": "alpha",
            "check": "approx",
            "value": 1.0,
        },
    ],
}


def _studies(tmp_path, **files):
    for name, raw in files.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    return tmp_path


def test_cli_quick_table_and_json(tmp_path):
    (tmp_path / "studies").mkdir()
    studies = _studies(tmp_path / "studies", E03=TINY)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        main, ["reproduce", "E3", "--quick", "--studies", str(studies), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "QUICK mode" in result.output
    assert "drift grows with η" in result.output and "E3" in result.output
    data = json.loads(out.read_text())
    assert data["mode"] == "quick"
    (row,) = data["experiments"]
    drift, alpha = row["values"]["drift"], row["values"]["alpha"]
    grows = drift[0] < drift[1] < drift[2]
    near_one = abs(alpha - 1.0) <= 0.1
    expected = {(True, True): "reproduced", (False, False): "not reproduced"}.get(
        (grows, near_one), "partly"
    )
    assert row["id"] == "E3" and row["verdict"] == expected
    assert [c["holds"] for c in row["claims"]] == [grows, near_one]
    assert [c["id"] for c in row["claims"]] == ["grows", "alpha"]
    assert row["values"]["lrs"] == [0.001, 0.01, 0.1]
    assert len(row["values"]["drift"]) == 3
    assert row["claims"][1]["measured"] == row["values"]["alpha"]
    assert row["figures"]["drift_vs_lr"]["logx"] is True


def test_repository_experiment_in_quick_mode():
    result = reproduce(["E1"], quick=True)
    (row,) = result.rows
    assert row.id == "E1" and row.outcome is not None and row.wall_time < 10
    assert row.outcome.values["variants"]["2-layer"]["relative_drift"][0] > 0
    assert "QUICK" in render_table(result)


def test_bad_ids_and_files_are_one_line_errors(tmp_path):
    (tmp_path / "s").mkdir()
    studies = _studies(tmp_path / "s", E03=TINY)
    runner = CliRunner()
    result = runner.invoke(main, ["reproduce", "E99", "--studies", str(studies)])
    assert result.exit_code == 2
    assert result.output.startswith("lradvisor: error: no study file for E99")
    assert result.output.count("\n") == 1
    result = runner.invoke(main, ["reproduce", "banana", "--studies", str(studies)])
    assert result.exit_code == 2 and "E5 or E05" in result.output
    broken = {**TINY, "protocol": {**TINY["protocol"], "lrs": "fast"}}
    _studies(studies, E03=broken)
    result = runner.invoke(main, ["reproduce", "E3", "--studies", str(studies)])
    assert result.exit_code == 2
    assert "E03.yaml: field 'protocol.lrs'" in result.output


def test_report_writes_markdown_and_figures(tmp_path):
    from lradvisor.replication.report import write_report

    (tmp_path / "s").mkdir()
    experiment = load_experiment(_studies(tmp_path / "s", E03=TINY) / "E03.yaml")
    figure = Figure(
        "drift",
        "η",
        "drift",
        [Series([1e-3, 1e-2], [1e-6, 1e-5], "d", "points")],
        logx=True,
        logy=True,
    )
    row = ExperimentRow(
        id="E3",
        name="drift vs learning rate",
        kind="drift_sweep",
        file=experiment.file,
        notes="a note",
        verdict="reproduced",
        reason="all 2 claims hold",
        claims=(),
        wall_time=1.0,
        outcome=Outcome(values={}, figures={"drift_vs_lr": figure}),
    )
    result = ReplicationResult([row], quick=True, wall_time=1.0, commit="abc", date="today")
    path = write_report(result, tmp_path / "docs" / "replication.md")
    text = path.read_text()
    assert "commit: `abc`" in text and QUICK_NOTE in text
    assert "| E3 | drift vs learning rate |" in text
    assert "![drift](replication/E3_drift_vs_lr.png)" in text
    assert (tmp_path / "docs" / "replication" / "E3_drift_vs_lr.png").stat().st_size > 1000


def test_stable_digits_are_those_every_run_agrees_on():
    assert stable_digits([2.733]) == 4
    assert stable_digits([2.7332, 2.7332]) == 4
    assert stable_digits([2.733, 2.749]) == 2
    assert stable_digits([2.733, 2.789]) == 1  # E6 at 8 layers, AVX-512 vs AVX2 kernels
    assert stable_digits([[1.161, 2.733], [1.161, 2.749]]) == 2
    assert stable_digits([None, 1.0]) == 4


def test_a_claim_whose_verdict_changes_between_runs_cannot_be_settled():
    from lradvisor.replication.claims import judge
    from lradvisor.replication.spec import Claim

    claims = (
        Claim("a", "α = 1.72", "a", "approx", value=1.72),
        Claim("r", "R² > 0.99", "r", "greater", value=0.99),
    )
    verdict = judge(claims, {"a": 1.80, "r": 0.995})
    row = ExperimentRow(
        "E6",
        "depth",
        "grid_sweep",
        "f",
        "",
        verdict.verdict,
        verdict.reason,
        verdict.results,
        1.0,
        None,
    )
    assert row.verdict == "reproduced"
    apply_stability(
        row,
        {
            "other": {
                "a": {"measured": 1.95, "holds": False},
                "r": {"measured": 0.995, "holds": True},
            }
        },
    )
    assert [c.holds for c in row.claims] == [None, True]
    assert row.verdict == "partly" and "unstable" in row.reason
    assert row.digits("a") == 1 and row.digits("r") == 4
    assert row.shown(row.claims[0]) == "? 2 (runs 1.8–1.95)"
