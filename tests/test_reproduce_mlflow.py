"""`lradvisor reproduce E5` in MLflow as theory against practice, on a real local store."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from lradvisor.cli import main


def test_reproduce_e5_logs_predicted_and_observed_drift_per_rate(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = CliRunner().invoke(
        main,
        ["reproduce", "E5", "--quick", "--tracking-uri", store],
        env={"LRADVISOR_MLFLOW_SPOOL": str(tmp_path / "spool")},
    )
    assert out.exit_code == 0, out.output
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("paper E5 drift scaling law")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags["lradvisor.role"], []).append(run)
    (parent,) = by_role["replication"]
    metrics = parent.data.metrics
    assert 1.0 < metrics["alpha_fitted"] < 1.3 and 1.0 < metrics["alpha_predicted"] < 1.3
    assert metrics["alpha_fitted_all_rates"] == metrics["alpha"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "verdicts.md" in artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "verdicts.md", str(tmp_path)))
    assert "| E5 |" in table.read_text() and "verdicts:" in table.read_text()
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/drift_vs_lr.png" in figures
    trials = by_role["trial"]
    assert len(trials) == 20  # quick: 10 rates × 2 seeds
    assert {run.data.params["seed"] for run in trials} == {"42", "137"}
    predicted = [r for r in trials if r.data.tags["lradvisor.regime"] == "sub-EoS"]
    assert len(predicted) >= 10
    for run in trials:
        m = run.data.metrics
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert m["S_observed"] > 0 and m["drift_observed"] > 0
        assert m["drift_observed"] == pytest.approx(m["S_observed"] * m["lr"] ** 2, rel=1e-9)
    for run in predicted:
        m = run.data.metrics
        assert {"drift_predicted", "S_predicted", "relative_error"} <= m.keys()
        assert m["drift_predicted"] == pytest.approx(m["S_predicted"] * m["lr"] ** 2)
        assert m["relative_error"] < 0.3
        assert {k for k in m if k.startswith("S_nulls/")} == {
            "S_nulls/no_hessian",
            "S_nulls/constant_spectrum",
            "S_nulls/random_directions",
        }
    (prediction,) = [r for r in by_role["claim"] if r.info.run_name == "claim prediction"]
    assert {k for k in prediction.data.metrics if k.startswith("null/")} == {
        "null/no_hessian",
        "null/constant_spectrum",
        "null/random_directions",
    }
