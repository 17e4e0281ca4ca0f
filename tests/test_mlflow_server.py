"""MLflow logging against a real ``mlflow server`` on loopback: layout, numbers, outages, workers.

The numbers MLflow holds are checked against the Optuna storage they came from; the outage
tests kill the server (SIGKILL) in the middle of a study and compare run and metric-point
counts with a run that had no outage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.trial import TrialState

from _mlflow_server import MlflowServer
from _mlflow_server import study_file as _study_file
from lradvisor.cli import main
from lradvisor.integrations._attrs import decode
from lradvisor.integrations._mlflow_payloads import metric_key, parent_key
from lradvisor.integrations.mlflow import _SenderProcess
from lradvisor.studies import run_study
from lradvisor.studies.objective import StudyObjective
from lradvisor.studies.storage import OWNER_ATTR, StorageSpec

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models: one torch thread (see conftest.one_thread)."""


@pytest.fixture(autouse=True)
def _patient_requests(monkeypatch) -> None:
    """The servers here are healthy (or stopped: refused at once), but on a loaded CI
    machine one request can take longer than the 3 s after which lradvisor calls a server
    away and keeps the payloads for later (CI saw it once). That behaviour has its own tests
    against a server that hangs (tests/test_mlflow_resilience.py); here requests get 30 s,
    in a sender child started with that setting."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setattr(_SenderProcess, "_shared", None)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield running
    running.kill()


@pytest.fixture
def spool(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "spool"
    monkeypatch.setenv("LRADVISOR_MLFLOW_SPOOL", str(folder))
    return folder


def _optuna_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    kind = "rdb" if "://" in storage else "journal"
    study = optuna.load_study(study_name=name, storage=StorageSpec(kind, storage).open())
    return study.get_trials(deepcopy=False)


def _runs(client: MlflowClient, experiment: str) -> tuple[object, list, list]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("lradvisor.role") == "study"]
    children = [r for r in runs if r.data.tags.get("lradvisor.role") == "trial"]
    return found, parents, children


def _counts(client: MlflowClient, experiment: str) -> dict[str, int]:
    """Runs, and metric points (every logged value of every key) over all runs."""
    _, parents, children = _runs(client, experiment)
    points = 0
    for run in parents + children:
        for key in run.data.metrics:
            points += len(client.get_metric_history(run.info.run_id, key))
    return {"parents": len(parents), "children": len(children), "points": points}


def test_study_logs_parent_children_metrics_and_figures_equal_to_optuna(
    server: MlflowServer, spool: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    summary = run_study(
        _study_file(tmp_path), storage=storage, progress=False, tracking_uri=server.uri
    )
    trials = _optuna_trials(storage, "mlflow-e2e")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 6 and summary.counts["PRUNED"] >= 2, summary.counts
    assert not list(spool.glob("*.json")), "everything was sent"

    client = MlflowClient(server.uri)
    experiment, parents, children = _runs(client, "mlflow-e2e")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["lradvisor.parent_key"] == parent_key("mlflow-e2e")
    assert len(children) == len(finished)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}

    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert set(by_number) == {t.number for t in finished}
    for trial in finished:
        run = by_number[trial.number]
        attrs = trial.user_attrs
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == ("FINISHED" if trial.state == TrialState.COMPLETE else "KILLED")
        assert float(run.data.params["lr"]) == trial.params["lr"]
        assert run.data.params["conservation_laws"] == "0->2"
        if trial.state == TrialState.PRUNED:
            assert run.data.tags["lradvisor.prune_reason"] == attrs["lradvisor.prune_reason"]
        history = client.get_metric_history(run.info.run_id, "loss")
        assert {m.step: m.value for m in history} == dict(trial.intermediate_values)
        assert run.data.metrics["sharpness"] == attrs["lradvisor.lambda_max"]
        for law, value in (decode(attrs.get("lradvisor.final_drift")) or {}).items():
            if value is not None:
                assert run.data.metrics[metric_key("final_drift", law)] == value
        for entry in attrs.get("lradvisor.drift_history") or []:
            step, observed, predicted, by_law = entry[0], entry[1], entry[2], entry[3]
            observed_history = client.get_metric_history(run.info.run_id, "drift_observed")
            assert {m.step: m.value for m in observed_history}[step] == observed
            below_bound = trial.params["lr"] < attrs["lradvisor.eos_lr"]
            assert (run.data.tags["lradvisor.prediction"] == "logged") == below_bound
            if not below_bound:  # the diverging quadratic model: not logged
                assert "drift_predicted" not in run.data.metrics
            elif predicted is not None:
                predicted_history = client.get_metric_history(run.info.run_id, "drift_predicted")
                assert {m.step: m.value for m in predicted_history}[step] == predicted
                s_history = client.get_metric_history(run.info.run_id, "S_observed/0_to_2")
                s_value = {m.step: m.value for m in s_history}[step]
                assert s_value == pytest.approx(by_law["0->2"] / trial.params["lr"] ** 2, rel=1e-12)
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["value"] == trial.value

    metrics = parent.data.metrics
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert metrics["trials_complete"] == len(complete)
    assert metrics["trials_pruned"] == summary.counts["PRUNED"]
    assert metrics["alpha_predicted"] == summary.alpha_predicted
    group = summary.alpha_groups[0]
    assert metrics["alpha_fitted"] == group.alpha and metrics["alpha_r2"] == group.r2
    assert (metrics["alpha_ci_low"], metrics["alpha_ci_high"]) == group.alpha_ci
    assert -1.0 <= metrics["drift_correlation"] <= 1.0
    assert math.isfinite(metrics["drift_median_relative_error"])
    advice = optuna.load_study(study_name="mlflow-e2e", storage=storage).user_attrs[
        "lradvisor.advice"
    ]
    assert metrics["template_eos_lr"] == advice["eos_lr"]
    assert metrics["template_lambda_max"] == advice["lambda_max"]
    for key in ("a", "b", "r2"):
        assert metrics.get(f"tau_{key}") == advice["tau"][key]
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {
        "figures/drift_vs_lr.png",
        "figures/predicted_vs_observed.png",
        "figures/ce_lambda_max.png",
        "figures/ce_concentration.png",
    }
    assert experiment.name == "mlflow-e2e"


def test_two_workers_log_one_parent_run_with_every_child(
    server: MlflowServer, spool: Path, tmp_path: Path
) -> None:
    journal = str(tmp_path / "studies.journal")
    summary = run_study(
        _study_file(tmp_path, name="mlflow-workers"),
        n_trials=6,
        workers=2,
        storage=journal,
        progress=False,
        predict=False,
        tracking_uri=server.uri,
    )
    assert summary.finished == 6
    client = MlflowClient(server.uri)
    _, parents, children = _runs(client, "mlflow-workers")
    assert len(parents) == 1
    finished = [
        t
        for t in _optuna_trials(journal, "mlflow-workers")
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    assert len(children) == len(finished) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    owners = {t.user_attrs[OWNER_ATTR] for t in finished}
    assert len(owners) == 2, "both workers ran trials"


def _run_with_outage(
    tmp_path: Path, server: MlflowServer, name: str, *, kill_at: int, restart_at: int | None
) -> None:
    """Run the study; SIGKILL the server when trial ``kill_at`` starts (restart at another)."""
    original = StudyObjective.__call__

    def objective(self, trial):
        if trial.number == kill_at:
            server.kill()
        if trial.number == restart_at:
            server.start()
        return original(self, trial)

    storage = f"sqlite:///{tmp_path / (name + '.db')}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StudyObjective, "__call__", objective)
        run_study(
            _study_file(tmp_path, name=name),
            storage=storage,
            progress=False,
            tracking_uri=server.uri,
        )


def test_outage_mid_study_keeps_everything_and_sync_sends_it(
    tmp_path_factory, spool: Path, tmp_path: Path, capfd
) -> None:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-outage")).start()
    try:
        reference = f"sqlite:///{tmp_path / 'reference.db'}"
        run_study(
            _study_file(tmp_path, name="outage-reference"),
            storage=reference,
            progress=False,
            tracking_uri=server.uri,
        )
        capfd.readouterr()
        _run_with_outage(tmp_path, server, "outage", kill_at=3, restart_at=None)
        warnings = [
            line for line in capfd.readouterr().err.splitlines() if "MLflow unreachable" in line
        ]
        assert len(warnings) == 1, warnings
        kept = list(spool.glob("*.json"))
        assert kept, "payloads were kept on disk while the server was down"

        server.start()
        result = CliRunner().invoke(main, ["mlflow", "sync", "--json"])
        assert result.exit_code == 0, result.output
        assert '"pending": 0' in result.output
        assert not list(spool.glob("*.json"))
        client = MlflowClient(server.uri)
        assert _counts(client, "outage") == _counts(client, "outage-reference")
        # Sync again: nothing left, nothing duplicated.
        assert CliRunner().invoke(main, ["mlflow", "sync"]).exit_code == 0
        assert _counts(client, "outage") == _counts(client, "outage-reference")

        # Down at trial 2, back at trial 5: the retry after later trials sends the rest.
        _run_with_outage(tmp_path, server, "outage-retry", kill_at=2, restart_at=5)
        assert not list(spool.glob("*.json")), "sent by the automatic retry, no sync needed"
        assert _counts(client, "outage-retry") == _counts(client, "outage-reference")
    finally:
        server.kill()
